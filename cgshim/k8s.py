"""Kubernetes pod and container cgroup names, both ways, and discovery on a node.

Names follow kubelet (pkg/kubelet/cm/cgroup_manager_linux.go: ``CgroupName.ToCgroupfs``,
``ToSystemd``, ``escapeSystemdCgroupName``; pod_container_manager_linux.go and
qos_container_manager_linux.go: the ``kubepods`` root, the ``burstable``/``besteffort`` QoS
levels and the ``pod<uid>`` pod level) and the runtimes that create the container level:

- cgroupfs driver: ``kubepods[/<qos>]/pod<uid>/<container>``; Guaranteed pods sit directly
  under ``kubepods``. containerd and docker name the container cgroup by its bare id; CRI-O
  names it ``crio-<id>`` (cri-o internal/config/cgmgr/cgroupfs*.go ``ContainerCgroupPath``).
- systemd driver: the same levels joined with ``-`` into one slice name, with each level's
  ``-`` escaped as ``_`` (so pod uids show ``_``), expanded cumulatively
  (``a-b-c.slice`` -> ``a.slice/a-b.slice/a-b-c.slice``, runc libcontainer ``ExpandSlice``);
  containers are ``<prefix>-<id>.scope`` with prefix ``cri-containerd``, ``crio`` or ``docker``.

:func:`pod_cgroup` and :func:`container_cgroup` return cgroup names as kubelet writes them
(``CgroupName.ToCgroupfs`` returns ``"/" + path.Join(...)``; ``ToSystemd`` the expanded slice path,
also with its leading ``/``) and as cAdvisor labels them: absolute within the hierarchy, the form
:func:`cgshim.get_cpu_load` and :meth:`cgshim.Reader.cpu_load` take. The cgroup's directory is
``os.path.join(mount_point, name.lstrip("/"))`` for a mount whose root is ``/``.
:func:`parse_cgroup` takes a name with or without the leading ``/`` (and a trailing one), as
/proc/<pid>/cgroup and a walk relative to a root give them. :func:`discover` returns names
relative to the root it walked.
"""
import os
import re

import attrs

from cgshim.errors import CgroupNotFound, NotACgroup, translate

__all__ = ["K8sCgroup", "QOS_CLASSES", "DRIVERS", "RUNTIMES", "pod_cgroup", "container_cgroup",
           "parse_cgroup", "discover"]

QOS_CLASSES = ("guaranteed", "burstable", "besteffort")
DRIVERS = ("systemd", "cgroupfs")
RUNTIMES = ("containerd", "crio", "docker")

# systemd scope prefix per runtime (containerd: "cri-containerd" as set by its CRI plugin).
_SCOPE_PREFIX = {"containerd": "cri-containerd", "crio": "crio", "docker": "docker"}
_RUNTIME_OF_PREFIX = {v: k for k, v in _SCOPE_PREFIX.items()}

_HEX = "[0-9a-f]"
# API-server pods carry an RFC 4122 uuid; static (file/URL) pods an md5 hex digest
# (pkg/kubelet/config/common.go applyDefaults).
_UID_RE = re.compile(rf"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}|{_HEX}{{32}}")
_ID_RE = re.compile(rf"{_HEX}{{64}}")
_SCOPE_RE = re.compile(rf"(cri-containerd|crio|docker)-({_HEX}{{64}})\.scope")
_CRIO_CGROUPFS_RE = re.compile(rf"crio-({_HEX}{{64}})")

# kubepods / kubepods.slice, qos, pod, container: the deepest level discover() looks at.
_MAX_DEPTH = 4


@attrs.frozen
class K8sCgroup:
    """What a pod or container cgroup name says.

    ``pod_uid`` is the uid as the API shows it (dashes, not systemd's underscores).
    ``container_id`` is None for a pod cgroup. ``runtime`` is None for a pod cgroup and for
    a cgroupfs-driver container named by its bare id (containerd and docker look the same);
    it is ``"crio"`` for a cgroupfs ``crio-<id>`` directory.
    """

    qos: str
    pod_uid: str
    container_id: str | None
    runtime: str | None
    driver: str


def _check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}: expected one of {', '.join(choices)}")


def _check_uid(pod_uid):
    if not isinstance(pod_uid, str) or not _UID_RE.fullmatch(pod_uid):
        raise ValueError(
            f"pod uid {pod_uid!r} is not a Kubernetes pod uid: expected a lowercase uuid "
            "(8-4-4-4-12 hex digits) or a static pod's 32 hex digits, with dashes (not underscores)"
        )


def _check_container_id(container_id):
    if not isinstance(container_id, str) or not _ID_RE.fullmatch(container_id):
        raise ValueError(
            f"container id {container_id!r} is not a container id: expected 64 lowercase hex "
            "digits without a runtime prefix (strip 'containerd://' and the like)"
        )


def pod_cgroup(pod_uid, qos, *, driver):
    """The cgroup name (leading ``/``) kubelet gives the pod with ``pod_uid`` in QoS class ``qos``.

    ``qos``: guaranteed | burstable | besteffort; ``driver``: systemd | cgroupfs.
    ValueError for an unknown qos or driver or a malformed uid.
    """
    _check_uid(pod_uid)
    _check_choice(qos, "qos class", QOS_CLASSES)
    _check_choice(driver, "cgroup driver", DRIVERS)
    levels = ["kubepods"] if qos == "guaranteed" else ["kubepods", qos]
    levels.append("pod" + pod_uid)
    if driver == "cgroupfs":
        return "/" + "/".join(levels)
    # systemd: escape "-" inside each level, join levels with "-", expand the slice.
    escaped = [level.replace("-", "_") for level in levels]
    return "/" + "/".join("-".join(escaped[: i + 1]) + ".slice" for i in range(len(escaped)))


def container_cgroup(pod_uid, qos, container_id, *, driver, runtime="containerd"):
    """The cgroup name (leading ``/``) of a container of that pod, as ``runtime`` creates it.

    ``container_id`` is the 64-hex id (without ``containerd://``); ``runtime``: containerd |
    crio | docker. ValueError for anything unknown or malformed.
    """
    pod = pod_cgroup(pod_uid, qos, driver=driver)
    _check_container_id(container_id)
    _check_choice(runtime, "container runtime", RUNTIMES)
    if driver == "systemd":
        leaf = f"{_SCOPE_PREFIX[runtime]}-{container_id}.scope"
    elif runtime == "crio":
        leaf = f"crio-{container_id}"
    else:
        leaf = container_id
    return f"{pod}/{leaf}"


def _parse_cgroupfs(parts):
    rest = parts[1:]
    qos = "guaranteed"
    if rest and rest[0] in ("burstable", "besteffort"):
        qos, rest = rest[0], rest[1:]
    if not rest or len(rest) > 2 or not rest[0].startswith("pod"):
        return None
    uid = rest[0][3:]
    if not _UID_RE.fullmatch(uid):
        return None
    if len(rest) == 1:
        return K8sCgroup(qos=qos, pod_uid=uid, container_id=None, runtime=None, driver="cgroupfs")
    leaf = rest[1]
    if _ID_RE.fullmatch(leaf):
        return K8sCgroup(qos=qos, pod_uid=uid, container_id=leaf, runtime=None, driver="cgroupfs")
    m = _CRIO_CGROUPFS_RE.fullmatch(leaf)
    if m:
        return K8sCgroup(qos=qos, pod_uid=uid, container_id=m.group(1), runtime="crio",
                         driver="cgroupfs")
    return None


def _parse_systemd(parts):
    rest = parts[1:]
    qos = "guaranteed"
    stem = "kubepods"
    if rest and rest[0] in ("kubepods-burstable.slice", "kubepods-besteffort.slice"):
        stem = rest[0][: -len(".slice")]
        qos = stem[len("kubepods-"):]
        rest = rest[1:]
    if not rest or len(rest) > 2:
        return None
    pod = rest[0]
    head = f"{stem}-pod"
    if not (pod.startswith(head) and pod.endswith(".slice")):
        return None
    escaped = pod[len(head): -len(".slice")]
    if "-" in escaped:  # kubelet escapes every "-"; a raw one would be a deeper slice level
        return None
    uid = escaped.replace("_", "-")
    if not _UID_RE.fullmatch(uid):
        return None
    if len(rest) == 1:
        return K8sCgroup(qos=qos, pod_uid=uid, container_id=None, runtime=None, driver="systemd")
    m = _SCOPE_RE.fullmatch(rest[1])
    if not m:  # crio-conmon-<id>.scope, a bare sandbox id, *.mount, ...
        return None
    return K8sCgroup(qos=qos, pod_uid=uid, container_id=m.group(2),
                     runtime=_RUNTIME_OF_PREFIX[m.group(1)], driver="systemd")


def parse_cgroup(name):
    """Inverse of :func:`pod_cgroup` / :func:`container_cgroup` for both drivers.

    ``name`` with or without its leading ``/`` (/proc/<pid>/cgroup and kubelet write it,
    :func:`discover` gives it relative to its root; a trailing ``/`` is fine too). Returns None for anything that is not a pod or container cgroup: the kubepods and
    QoS levels themselves, ``crio-conmon-<id>`` cgroups, a systemd sandbox without a scope,
    ``*.mount`` units, cgroups nested inside a container, garbage.
    """
    if not isinstance(name, str):
        return None
    parts = name.strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    if parts[0] == "kubepods":
        return _parse_cgroupfs(parts)
    if parts[0] == "kubepods.slice":
        return _parse_systemd(parts)
    return None


def _default_root():
    from cgshim.kernel.mounts import hierarchy

    h = hierarchy()
    # Where a v1 cpu controller is mounted (v1 and hybrid hosts), kubelet and the runtimes put
    # their controller cgroups there; on a unified host everything is in the cgroup2 mount.
    cpu = h.v1_mount("cpu")
    if cpu is not None:
        return cpu.mount_point
    if h.v2 is not None:
        return h.v2.mount_point
    raise CgroupNotFound("this host has neither a v1 cpu hierarchy nor a cgroup2 mount to search")


def _subdirs(path):
    """Names of the directories in ``path``; [] if it vanished meanwhile."""
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except OSError as exc:
        error = translate(exc, path, cgroup=path, hint="run as root or with CAP_DAC_READ_SEARCH")
        if isinstance(error, (CgroupNotFound, NotACgroup)):
            return []
        raise error from exc


def discover(root=None):
    """Pods and containers present under ``root``: sorted ``[(name, K8sCgroup), ...]``.

    ``root`` is a cgroup directory that holds ``kubepods`` or ``kubepods.slice`` (default: the
    v1 ``cpu`` controller's mount point where there is one, else the cgroup2 mount, from
    :func:`cgshim.kernel.mounts.hierarchy`). Only those subtrees are walked, at most four levels
    deep; ``name`` is relative to ``root``. Cgroups removed during the walk are skipped.
    CgroupNotFound if ``root`` does not exist, NotACgroup if it is not a directory.

    To follow a node's containers with a :class:`cgshim.load.Sampler`::

        root = "/sys/fs/cgroup"  # or the v1 cpu mount on a v1/hybrid host
        Sampler(reader, lambda: [os.path.join(root, name) for name, k in discover(root)
                                 if k.container_id is not None], 10)
    """
    if root is None:
        root = _default_root()
    if not os.path.exists(root):
        raise CgroupNotFound(f"cgroup root {root} does not exist")
    if not os.path.isdir(root):
        raise NotACgroup(f"cgroup root {root} is not a directory")
    found = []
    stack = [top for top in ("kubepods", "kubepods.slice") if os.path.isdir(os.path.join(root, top))]
    while stack:
        name = stack.pop()
        parsed = parse_cgroup(name)
        if parsed is not None:
            found.append((name, parsed))
            if parsed.container_id is not None:
                continue  # nothing of ours below a container
        if name.count("/") + 1 >= _MAX_DEPTH:
            continue
        stack.extend(f"{name}/{child}" for child in _subdirs(os.path.join(root, name)))
    found.sort(key=lambda item: item[0])
    return found
