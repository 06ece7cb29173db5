"""Where the cgroup hierarchies are mounted, and which directory a cgroup path names.

Reads ``/proc/self/mountinfo`` (format: Documentation/filesystems/proc.rst, "3.5
/proc/<pid>/mountinfo"; written by fs/proc_namespace.c show_mountinfo). cgroup v1
super options list the hierarchy's controllers (kernel/cgroup/cgroup-v1.c
cgroup1_show_options); cgroup2 has a single hierarchy (Documentation/admin-guide/cgroup-v2.rst).

``parse_mountinfo`` and ``_hierarchy_from`` are pure; ``hierarchy()`` reads the file once.
``resolve`` turns a filesystem path or a cgroup name ("/kubepods.slice/...", as kubelet and
cAdvisor write them) into a checked cgroup directory. Pass a ``Hierarchy`` to ``resolve`` in
a loop: then it costs a few stat calls and never re-reads mountinfo.
"""
from __future__ import annotations

import os
import re
import stat

import attrs

from cgshim.errors import CgroupNotFound, NotACgroup, ParseError, Unsupported, translate

MOUNTINFO = "/proc/self/mountinfo"

# Super options cgroup1_show_options prints that are flags, not controllers
# (plus "rw"/"ro" from show_sb_opts). "name=" is a named hierarchy: kept, as "name=systemd".
_V1_FLAGS = frozenset({"rw", "ro", "noprefix", "xattr", "cpuset_v2_mode", "favordynmods",
                       "clone_children", "sync", "dirsync", "mand", "lazytime", "none"})

_OCTAL = re.compile(rb"\\([0-3][0-7][0-7])")


@attrs.frozen
class MountInfo:
    """One line of /proc/<pid>/mountinfo, octal escapes decoded.

    ``options`` (per-mount) and ``super_options`` (per-superblock) are split at "," before
    decoding, so an escaped comma (\\054, e.g. in a v1 ``name=``) stays inside its option.
    ``optional_fields`` are the "tag[:value]" fields (shared:N, master:N, ...) before " - ".
    """

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    options: tuple
    optional_fields: tuple
    fstype: str
    source: str
    super_options: tuple


@attrs.frozen
class Mount:
    """A mounted cgroup hierarchy.

    ``root`` is the cgroup (within the whole hierarchy) shown at ``mount_point``: "/" for a
    full mount, another path for a bind mount of a subtree or a mount seen from inside a
    cgroup namespace. ``controllers`` is () for cgroup2. ``device`` is the st_dev of files
    on this mount (os.makedev of mountinfo's major:minor), None if unknown.
    """

    mount_point: str
    root: str
    version: int
    controllers: tuple = ()
    device: int | None = None


@attrs.frozen
class Hierarchy:
    """The cgroup layout seen by this process.

    ``mode``: "unified" (cgroup2 only), "hybrid" (v1 controllers and a cgroup2 mount),
    "legacy" (v1 controllers only). ``v1`` holds one Mount per v1 hierarchy, ``v2`` the
    cgroup2 mount; ``mounts`` every visible cgroup mount, duplicates included (a path under
    any of them resolves). ``skipped_lines``: mountinfo lines left out because they are not
    in the documented grammar and are no cgroup mount (see :func:`parse_mountinfo`).
    """

    mode: str
    v1: tuple
    v2: Mount | None
    mounts: tuple = ()
    skipped_lines: int = 0

    def v1_mount(self, controller: str) -> Mount | None:
        """The v1 hierarchy carrying ``controller`` ("cpu", "memory", "name=systemd"), or None."""
        for m in self.v1:
            if controller in m.controllers:
                return m
        return None


@attrs.frozen
class Resolved:
    """A checked cgroup directory: ``path`` absolute, ``name`` the cgroup's name within its
    hierarchy ("/" for the root, the mount root included), ``version`` 1 or 2."""

    path: str
    name: str
    version: int
    mount: Mount


# --------------------------------------------------------------------------- mountinfo


def _unescape(field: str) -> str:
    """Decode the kernel's octal escapes (\\040 space, \\011 tab, \\012 newline, \\134 backslash)."""
    if "\\" not in field:
        return field
    try:
        raw = os.fsencode(field)
    except UnicodeEncodeError:
        raise ParseError(f"mountinfo field {field!r} holds characters that are not bytes") from None
    raw = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), raw)
    return os.fsdecode(raw)


def _split_options(field: str) -> tuple:
    return tuple(_unescape(o) for o in field.split(",") if o)


_CGROUP_FSTYPES = ("cgroup", "cgroup2")


def _parse_line(line: str, lineno: int) -> MountInfo:
    """One mountinfo line (show_mountinfo) or ParseError.

    The super options are the rest of the line after fstype and source: show_mountinfo
    escapes root, mount point and source (seq_escape / mangle), but a filesystem's
    ->show_options prints what it likes, and some printed raw spaces (older cifs
    cifs_show_options, prefixpath= and the like). cgroup1_show_options escapes everything
    it prints (seq_show_option), so a cgroup line never has more than three fields after
    " - ": the caller refuses one that does.
    """
    fields = line.split(" ")
    try:
        sep = fields.index("-", 6)
    except ValueError:
        raise ParseError(f"mountinfo line {lineno}: no ' - ' separator: {line[:200]!r}") from None
    after = fields[sep + 1:]
    if len(after) < 3:
        raise ParseError(f"mountinfo line {lineno}: want fstype, source and super options "
                         f"after ' - ', got {after!r}")
    try:
        mount_id, parent_id = int(fields[0]), int(fields[1])
        major_s, minor_s = fields[2].split(":")
        major, minor = int(major_s), int(minor_s)
    except ValueError:
        raise ParseError(f"mountinfo line {lineno}: bad ids or major:minor: {line[:200]!r}") from None
    if not (fields[0].isdigit() and fields[1].isdigit() and major_s.isdigit() and minor_s.isdigit()):
        raise ParseError(f"mountinfo line {lineno}: bad ids or major:minor: {line[:200]!r}")
    if not fields[3] or not fields[4] or not after[0]:
        raise ParseError(f"mountinfo line {lineno}: empty root, mount point or fstype: "
                         f"{line[:200]!r}")
    fstype = _unescape(after[0])
    if fstype in _CGROUP_FSTYPES and len(after) != 3:
        raise ParseError(f"mountinfo line {lineno}: a {fstype} mount with "
                         f"{len(after) - 2} super option fields (cgroup1_show_options escapes "
                         f"spaces, so there is one): {line[:200]!r}")
    return MountInfo(
        mount_id=mount_id, parent_id=parent_id, major=major, minor=minor,
        root=_unescape(fields[3]), mount_point=_unescape(fields[4]),
        options=_split_options(fields[5]), optional_fields=tuple(fields[6:sep]),
        fstype=fstype, source=_unescape(after[1]),
        super_options=_split_options(" ".join(after[2:])),
    )


def parse_mountinfo(text: str, *, skipped: list | None = None) -> list[MountInfo]:
    """Parse the text of /proc/<pid>/mountinfo, tolerating lines outside the grammar.

    A line that does not follow proc.rst's grammar is left out, and ``(lineno, reason)`` is
    appended to ``skipped`` (a list, when given), unless it may be a cgroup mount (its
    fstype, or any of its fields, is "cgroup" or "cgroup2"): then ParseError, since a
    cgroup mount that cannot be read would make every answer about this host wrong. One
    odd line of an unrelated filesystem (see :func:`_parse_line`) does not break the host.

    Non-UTF-8 bytes should arrive surrogate-escaped (os.fsdecode); they stay so in the result.
    """
    out = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        try:
            out.append(_parse_line(line, lineno))
        except ParseError as exc:
            if any(f in _CGROUP_FSTYPES for f in line.split(" ")):
                raise
            if skipped is not None:
                skipped.append((lineno, str(exc)))
    return out


def _v1_controllers(super_options: tuple) -> tuple:
    """Controllers (and "name=X") of a v1 hierarchy from its super options, sorted."""
    ctrls = []
    for opt in super_options:
        if opt in _V1_FLAGS or opt.startswith("release_agent="):
            continue
        ctrls.append(opt)
    return tuple(sorted(ctrls))


def _components(path: str) -> list[str]:
    """Path components, dropping empty ones and "." (".." is kept: it is not lexical here)."""
    return [c for c in path.split("/") if c and c != "."]


def _under(path_parts: list[str], top_parts: list[str]) -> bool:
    return path_parts[: len(top_parts)] == top_parts


def _visible_cgroup_mounts(mounts: list[MountInfo]) -> list[MountInfo]:
    """The cgroup/cgroup2 mounts not covered by a later mount at or above their mount point.

    mountinfo lists mounts in the order they were made (since 6.8 sorted by their unique,
    increasing id; before, in list order). A later mount whose mount point is the same
    directory or an ancestor, and which the earlier one does not sit on, hides it: e.g.
    cgroup2 mounted over the /sys/fs/cgroup tmpfs hides the v1 mounts beneath. Cost is
    O(cgroup mounts x path depth), so hosts with thousands of pod mounts stay cheap.
    """
    by_id = {m.mount_id: m for m in mounts}
    at: dict = {}  # mount point components -> positions of mounts there
    for pos, m in enumerate(mounts):
        at.setdefault(tuple(_components(m.mount_point)), []).append(pos)
    visible = []
    for pos, m in enumerate(mounts):
        if m.fstype not in ("cgroup", "cgroup2"):
            continue
        ancestors = set()
        p = m
        while p.parent_id in by_id and p.parent_id not in ancestors and p.parent_id != p.mount_id:
            ancestors.add(p.parent_id)
            p = by_id[p.parent_id]
        parts = tuple(_components(m.mount_point))
        hidden = any(
            later > pos and mounts[later].mount_id not in ancestors
            for depth in range(len(parts) + 1)
            for later in at.get(parts[:depth], ())
        )
        if not hidden:
            visible.append(m)
    return visible


def _to_mount(mi: MountInfo) -> Mount | None:
    if mi.fstype == "cgroup2":
        return Mount(mi.mount_point, mi.root, 2, (), os.makedev(mi.major, mi.minor))
    if mi.fstype == "cgroup":
        return Mount(mi.mount_point, mi.root, 1, _v1_controllers(mi.super_options),
                     os.makedev(mi.major, mi.minor))
    return None


def _prefer(mounts: list[Mount]) -> Mount:
    """Of several mounts of one hierarchy: root "/" first, then the shortest root, then first seen."""
    return min(enumerate(mounts), key=lambda im: (im[1].root != "/", len(_components(im[1].root)), im[0]))[1]


def _hierarchy_from(mounts: list[MountInfo], skipped_lines: int = 0) -> Hierarchy:
    """Pure: the cgroup layout described by parsed mountinfo.

    systemd (src/basic/cgroup-util.c cg_unified_cached) statfs()es fixed paths: cgroup2 on
    /sys/fs/cgroup -> unified; a tmpfs there with cgroup2 on .../unified (or, v232, on
    .../systemd) -> hybrid; else legacy. When choosing a layout it counts a controller as
    "used by v1" when /proc/cgroups gives it a non-zero hierarchy id
    (cg_any_controller_used_for_v1), which named hierarchies never have. cgshim keeps that
    second rule and applies it to what is mounted, wherever it is mounted: v1 hierarchies
    carrying only a name (name=systemd, kept on some unified hosts for old containers) count
    for nothing. "legacy": a v1 controller hierarchy and no cgroup2; "hybrid": both;
    "unified": cgroup2 and no v1 controller. Neither -> Unsupported. Mounts hidden under a
    later mount are ignored; of several mounts of one hierarchy, root "/" is preferred.
    """
    cg = [m for m in (_to_mount(mi) for mi in _visible_cgroup_mounts(mounts)) if m is not None]
    groups: dict = {}
    for m in cg:
        key = (m.version, m.controllers)
        groups.setdefault(key, []).append(m)
    v1 = tuple(_prefer(ms) for (ver, _), ms in groups.items() if ver == 1)
    v2_all = groups.get((2, ()))
    v2 = _prefer(v2_all) if v2_all else None
    has_ctrl = any(not c.startswith("name=") for m in v1 for c in m.controllers)
    if has_ctrl:
        mode = "hybrid" if v2 is not None else "legacy"
    elif v2 is not None:
        mode = "unified"
    else:
        raise Unsupported("no cgroup controller is mounted (no cgroup2 and no v1 controller "
                          "hierarchy in mountinfo); mount cgroup2 at /sys/fs/cgroup")
    return Hierarchy(mode=mode, v1=v1, v2=v2, mounts=tuple(cg), skipped_lines=skipped_lines)


def hierarchy(mountinfo: str = MOUNTINFO) -> Hierarchy:
    """Read ``mountinfo`` (default /proc/self/mountinfo) and describe the cgroup layout."""
    try:
        with open(mountinfo, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise translate(exc, mountinfo, hint="is /proc mounted?") from None
    skipped: list = []
    mounts = parse_mountinfo(os.fsdecode(data), skipped=skipped)
    return _hierarchy_from(mounts, len(skipped))


# --------------------------------------------------------------------------- resolution

_NAME_MAX = 255   # include/uapi/linux/limits.h; kernfs itself answers ENOENT, not ENAMETOOLONG
_PATH_MAX = 4096


def _short(path) -> str:
    """repr of a caller's path for messages, cut to a readable length."""
    text = repr(path)
    return text if len(text) <= 160 else text[:120] + "..." + text[-30:]


def _mount_for(parts: list[str], hier: Hierarchy) -> Mount | None:
    """The cgroup mount whose mount point is the deepest lexical prefix of the path."""
    best, best_len = None, -1
    for m in hier.mounts or (hier.v1 + ((hier.v2,) if hier.v2 else ())):
        mp = _components(m.mount_point)
        if len(mp) > best_len and _under(parts, mp):
            best, best_len = m, len(mp)
    return best


def _join_name(root: str, rel: list[str]) -> str:
    parts = _components(root) + rel
    return "/" + "/".join(parts)


def _stat(path: str, what: str):
    """os.stat(path), None if there is no such cgroup (ENOENT/ENODEV)."""
    try:
        return os.stat(path)
    except OSError as exc:
        error = translate(exc, path, cgroup=path, hint=f"resolving {what}")
        if isinstance(error, CgroupNotFound):
            return None
        raise error from None


def _checked_dir(path: str, mount: Mount, what: str):
    """stat ``path``: None if missing; NotACgroup if not a directory on ``mount``."""
    st = _stat(path, what)
    if st is None:
        return None
    if not stat.S_ISDIR(st.st_mode):
        raise NotACgroup(f"{what}: {path} is a file, not a cgroup directory")
    if mount.device is not None and st.st_dev != mount.device:
        raise NotACgroup(f"{what}: {path} is not on the cgroup filesystem mounted at "
                         f"{mount.mount_point} (another filesystem is mounted there)")
    return st


def resolve(path: str, hier: Hierarchy | None = None) -> Resolved:
    """Resolve a cgroup directory path or a cgroup name to a checked ``Resolved``.

    A path under a cgroup mount point is a filesystem path: symlinks and ".." are followed,
    and the result must be a directory on that same mount (else NotACgroup; missing ->
    CgroupNotFound). Any other absolute path is a cgroup name: looked up under the v1 "cpu"
    hierarchy, then cgroup2 (missing in both -> CgroupNotFound naming where it looked).
    """
    what = _short(path)
    try:
        path = os.fspath(path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        encoded = os.fsencode(path)
    except (TypeError, UnicodeError) as exc:
        raise NotACgroup(f"{what} is not a usable path: {exc}") from None
    if len(encoded) >= _PATH_MAX or any(len(c) > _NAME_MAX for c in encoded.split(b"/")):
        raise NotACgroup(f"{what} is too long to name a cgroup (a component over {_NAME_MAX} "
                         f"bytes or the whole over {_PATH_MAX - 1})")
    if "\0" in path:
        raise NotACgroup(f"{what} contains a NUL byte")
    if not path.startswith("/"):
        raise NotACgroup(f"{what} is relative: pass an absolute cgroup directory "
                         "(/sys/fs/cgroup/...) or a cgroup name starting with '/' (/kubepods/...)")
    if hier is None:
        hier = hierarchy()
    parts = _components(path)
    mount = _mount_for(parts, hier)
    if mount is not None:
        return _resolve_fs(path, mount, what)
    return _resolve_name(path, parts, hier, what)


def _resolve_fs(path: str, mount: Mount, what: str) -> Resolved:
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError) as exc:
        raise NotACgroup(f"{what}: cannot resolve: {exc}") from None
    rparts = _components(real)
    mparts = _components(mount.mount_point)
    if not _under(rparts, mparts):
        raise NotACgroup(f"{what} leaves the cgroup mount {mount.mount_point} "
                         f"(through '..' or a symlink) and ends at {real}")
    if _checked_dir(real, mount, what) is None:
        raise CgroupNotFound(f"no cgroup at {real} ({what}): removed, or never created")
    name = _join_name(mount.root, rparts[len(mparts):])
    return Resolved(path=real, name=name, version=mount.version, mount=mount)


def _resolve_name(path: str, parts: list[str], hier: Hierarchy, what: str) -> Resolved:
    if ".." in parts:
        raise NotACgroup(f"cgroup name {what} has a '..' component; names are normalised paths")
    looked = []
    candidates = [hier.v1_mount("cpu"), hier.v2]
    for mount in candidates:
        if mount is None:
            continue
        root = _components(mount.root)
        if not _under(parts, root):
            looked.append(f"not under the root {mount.root} of {mount.mount_point}")
            continue
        rel = parts[len(root):]
        directory = os.path.join(mount.mount_point, *rel) if rel else mount.mount_point
        directory = os.path.normpath(directory)
        if _checked_dir(directory, mount, what) is not None:
            return Resolved(path=directory, name="/" + "/".join(parts), version=mount.version,
                            mount=mount)
        looked.append(directory)
    if _stat(path, what) is not None:
        raise NotACgroup(f"{what} is a filesystem path outside every cgroup mount, and no cgroup "
                         f"of that name exists (looked at {', '.join(looked) or 'nothing'})")
    raise CgroupNotFound(f"no cgroup named {what}: looked at {', '.join(looked) or 'no cgroup mount'}")


def twin_v2(resolved: Resolved, hier: Hierarchy) -> str | None:
    """For a v1 cgroup on a hybrid host, the cgroup2 directory of the same name, if it exists.

    Used to read cpu.pressure (PSI exists only in cgroup2) for a v1 container. None for a
    v2 ``resolved``, on non-hybrid hosts, or when cgroup2 has no cgroup of that name.
    """
    if resolved.version != 1 or hier.v2 is None:
        return None
    parts = _components(resolved.name)
    root = _components(hier.v2.root)
    if not _under(parts, root):
        return None
    rel = parts[len(root):]
    directory = os.path.join(hier.v2.mount_point, *rel) if rel else hier.v2.mount_point
    try:
        st = os.stat(directory)
    except (OSError, ValueError):
        return None
    if not stat.S_ISDIR(st.st_mode) or (hier.v2.device is not None and st.st_dev != hier.v2.device):
        return None
    return directory


def pressure_dir(resolved: Resolved, hier: Hierarchy) -> str | None:
    """The cgroup2 directory whose ``*.pressure`` files describe ``resolved``: its own on
    cgroup2, its :func:`twin_v2` for a v1 cgroup (PSI exists only in cgroup2:
    kernel/cgroup/cgroup.c cgroup_pressure_show and friends are cgroup2 base files), or None."""
    return resolved.path if resolved.version == 2 else twin_v2(resolved, hier)
