"""Which cgroups a consumer shows, and under which names: shared by ``top`` and the exporter.

- With no root given, the host's tree of its mode, as :func:`cgshim.reader.default_roots`
  (the library's one choice, also Reader.sweep's): the v1 ``cpu`` hierarchy where one is
  mounted (legacy and hybrid hosts: kubelet's CPU cgroups, and the kernel's own CGROUPSTATS
  counts, are there; a v1 cgroup's PSI comes from its cgroup2 twin), else the cgroup2 mount.
  A legacy host without a v1 ``cpu`` hierarchy has neither: Unsupported, asking for a root.
- :func:`resolve_roots`: the roots resolved once, at start, so a mistyped root fails before
  anything is drawn or served.
- :func:`walk`: each root and every cgroup below it (:func:`cgshim.kernel.cgroupfs.walk`),
  found anew at each call so cgroups come and go, each named within its hierarchy as
  :attr:`cgshim.kernel.mounts.Resolved.name` names a root ("/kubepods.slice/..."). A path
  reached from two roots is kept once, from the first; a root that fails is reported with
  its error and the other roots are still walked.

Which cgroup2 directory holds a cgroup's ``*.pressure`` files (its own on v2, its twin on
v1): :func:`cgshim.kernel.mounts.pressure_dir`.
"""
from __future__ import annotations

from cgshim.errors import CgshimError, Unsupported
from cgshim.kernel import cgroupfs
from cgshim.kernel.mounts import Hierarchy, Resolved, resolve
from cgshim.reader import default_roots

__all__ = ["resolve_roots", "walk"]


def resolve_roots(roots, hier: Hierarchy) -> list[Resolved]:
    """``roots`` (cgroup directories or names; none: :func:`cgshim.reader.default_roots`)
    resolved against ``hier``. CgroupNotFound / NotACgroup for a root that does not resolve,
    Unsupported when none is given and the host has no default (see the module docstring)."""
    if isinstance(roots, (str, bytes)):
        raise TypeError("roots must be a list of cgroup paths, not one string")
    roots = list(roots or ()) or default_roots(hier)
    if not roots:
        mounted = ", ".join(m.mount_point for m in hier.v1) or "none"
        raise Unsupported(f"no default cgroup root on this {hier.mode} host: no v1 cpu hierarchy "
                          f"and no cgroup2 mount (v1 hierarchies: {mounted}); pass --root PATH")
    return [resolve(root, hier) for root in roots]


def walk(roots: list[Resolved]) -> tuple[list[Resolved], list[tuple[str, CgshimError]]]:
    """Every root and its descendants now, as ``Resolved`` (named within the hierarchy),
    and ``(root path, error)`` for each root that could not be walked (removed meanwhile,
    unreadable)."""
    found: dict[str, Resolved] = {}
    errors = []
    for root in roots:
        try:
            paths = [root.path, *cgroupfs.walk(root.path)]
        except CgshimError as exc:
            errors.append((root.path, exc))
            continue
        # walk() yields root.path + "/" + the relative path: the name is the root's name
        # with that tail (string slicing: this runs for every cgroup at every tick)
        top = root.path.rstrip("/")
        base = "/" + "/".join(p for p in root.name.split("/") if p)
        for path in paths:
            if path in found:
                continue
            tail = path[len(top):]
            name = base if not tail else (base.rstrip("/") + tail)
            found[path] = Resolved(path=path, name=name, version=root.version, mount=root.mount)
    return list(found.values()), errors
