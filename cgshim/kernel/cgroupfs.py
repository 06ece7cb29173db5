"""cgroup interface files and the cgroup tree (Documentation/admin-guide/cgroup-v2.rst,
"Core Interface Files"; kernel/cgroup/cgroup.c).

- cgroup.threads / cgroup.procs (and v1 ``tasks``): one decimal id per line, unordered,
  may repeat; only tasks directly in that cgroup.
- cgroup.stat (v2 only): flat keyed, nr_descendants, nr_dying_descendants, and on newer
  kernels nr_subsys_<ctrl> / nr_dying_subsys_<ctrl>.
- cpu.stat: flat keyed; v2: usage_usec, user_usec, system_usec, ... (descendants included);
  v1 cpu controller: nr_periods, nr_throttled, throttled_time, ...

Parsers are pure and keep every key; readers map errno to cgshim errors with
:func:`cgshim.errors.translate`: ENOENT/ENODEV of the cgroup -> CgroupNotFound, EACCES/EPERM
-> PermissionDenied, a file this kind of cgroup does not have -> Unsupported.
"""
from __future__ import annotations

import os

from cgshim.errors import CgroupNotFound, ParseError, Unsupported, translate


def parse_thread_list(data: bytes) -> list[int]:
    """Ids from cgroup.threads / cgroup.procs / tasks, in file order (duplicates kept)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for lineno, line in enumerate(lines, 1):
        if not line.isdigit():  # bytes.isdigit: ASCII digits only; rejects "", " 1", "+1"
            raise ParseError(f"task list line {lineno}: {line[:40]!r} is not a decimal id")
        out.append(int(line))
    return out


def _parse_flat_keyed(text: str, what: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0]:
            raise ParseError(f"{what} line {lineno}: want 'key value', got {line[:80]!r}")
        key, value = parts
        if not (value.isascii() and value.isdigit()):
            raise ParseError(f"{what} line {lineno}: {key}={value[:40]!r} is not a "
                             "non-negative integer")
        if key in out:
            raise ParseError(f"{what} line {lineno}: key {key!r} given twice")
        out[key] = int(value)
    return out


def parse_cgroup_stat(text: str) -> dict[str, int]:
    """cgroup.stat by key (nr_descendants, nr_dying_descendants, nr_subsys_cpu, ...)."""
    return _parse_flat_keyed(text, "cgroup.stat")


def parse_cpu_stat(text: str) -> dict[str, int]:
    """cpu.stat by key (usage_usec, user_usec, system_usec, nr_throttled, ...)."""
    return _parse_flat_keyed(text, "cpu.stat")


def read_file(directory: str, filename: str) -> bytes:
    """The bytes of ``directory/filename``, errors mapped (see module docstring)."""
    try:
        with open(os.path.join(directory, filename), "rb") as f:
            return f.read()
    except OSError as exc:
        raise translate(exc, os.path.join(directory, filename), cgroup=directory,
                        optional=True) from None


def _text(directory: str, filename: str) -> str:
    data = read_file(directory, filename)
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise ParseError(f"{os.path.join(directory, filename)} is not ASCII: {data[:80]!r}") from None


def _parsed(parser, directory: str, filename: str) -> dict[str, int]:
    try:
        return parser(_text(directory, filename))
    except ParseError as exc:
        raise ParseError(f"{os.path.join(directory, filename)}: {exc}") from None


def read_thread_list(directory: str, filename: str = "cgroup.threads") -> list[int]:
    """Ids in ``directory/filename``: cgroup.threads (tids), cgroup.procs (tgids) or v1 tasks.

    cgroup.procs of a threaded cgroup answers EOPNOTSUPP -> Unsupported: read cgroup.threads.
    """
    try:
        return parse_thread_list(read_file(directory, filename))
    except ParseError as exc:
        raise ParseError(f"{os.path.join(directory, filename)}: {exc}") from None


def read_cgroup_stat(directory: str) -> dict[str, int]:
    """Parsed ``directory/cgroup.stat`` (cgroup2). Unsupported on v1, which has no such file."""
    return _parsed(parse_cgroup_stat, directory, "cgroup.stat")


def read_cpu_stat(directory: str) -> dict[str, int]:
    """Parsed ``directory/cpu.stat`` (v2 core file; v1 only in the cpu hierarchy)."""
    return _parsed(parse_cpu_stat, directory, "cpu.stat")


def nr_descendants(directory: str) -> int | None:
    """Live descendant cgroups of a cgroup2 directory; None on v1 (no cgroup.stat)."""
    try:
        stat = read_cgroup_stat(directory)
    except Unsupported:
        return None
    if "nr_descendants" not in stat:
        raise ParseError(f"{directory}/cgroup.stat has no nr_descendants: {sorted(stat)}")
    return stat["nr_descendants"]


def _subdirs(directory: str) -> list[str]:
    with os.scandir(directory) as it:
        return sorted(os.path.join(directory, e.name) for e in it if e.is_dir(follow_symlinks=False))


def children(directory: str) -> list[str]:
    """Immediate child cgroup directories of ``directory`` (joined to it), sorted."""
    try:
        return _subdirs(directory)
    except OSError as exc:
        raise translate(exc, directory, cgroup=directory) from None


def walk(directory: str, *, before_listing=None):
    """Yield every descendant cgroup directory of ``directory``, parents before children.

    ``directory`` itself is not yielded; it missing -> CgroupNotFound. Descendants removed
    during the walk are skipped (a yielded one may already be gone). No fd stays open
    between yields. ``before_listing(path)``, if given, is called for ``directory`` and
    each descendant just before its children are listed (a watcher that adds an inotify
    watch there then misses no child created after the listing).
    """
    if before_listing is not None:
        before_listing(directory)
    stack = list(reversed(children(directory)))
    while stack:
        path = stack.pop()
        yield path
        if before_listing is not None:
            before_listing(path)
        try:
            subs = _subdirs(path)
        except OSError as exc:
            error = translate(exc, path, cgroup=path)
            if isinstance(error, CgroupNotFound):
                continue
            raise error from None
        stack.extend(reversed(subs))
