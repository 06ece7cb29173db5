"""Typed errors: every failure cgshim reports is a CgshimError subclass.

Callers that only care whether a reading was produced catch CgshimError; the
subclasses say what went wrong in terms a person can act on.

:func:`translate` is the one errno map: every module that meets an OSError on a kernel
file turns it into a cgshim error through it (table: :data:`ERRNO_TABLE`).
"""
import errno as _errno
import os


class CgshimError(Exception):
    """Base class of every error cgshim raises.

    An error made by :func:`translate` from an OSError carries ``errno`` and ``path``
    (None otherwise)."""

    errno = None
    path = None


class NetlinkError(CgshimError):
    """A netlink request failed; ``errno`` is the kernel's (or the socket's) errno.

    Raised for NLMSG_ERROR answers (e.g. EINVAL for CGROUPSTATS on a cgroup2
    directory, ESRCH for a pid that does not exist, EPERM without CAP_NET_ADMIN)
    and for socket-level failures.
    """

    def __init__(self, errno, message=None):
        self.errno = errno
        if message is None:
            message = os.strerror(errno)
        super().__init__(f"[errno {errno} {_errno.errorcode.get(errno, '?')}] {message}")


class NetlinkTimeout(NetlinkError):
    """The kernel sent no answer within the socket's timeout (errno ETIMEDOUT)."""

    def __init__(self, message="no netlink reply within the timeout"):
        super().__init__(_errno.ETIMEDOUT, message)


class MalformedReply(NetlinkError):
    """A netlink reply (or bytes given to a parser) is truncated, lies about a
    length, lacks a required attribute or is otherwise not what the kernel sends
    (errno EBADMSG)."""

    def __init__(self, message="malformed netlink message"):
        super().__init__(_errno.EBADMSG, message)


class FamilyNotFound(NetlinkError):
    """The TASKSTATS generic netlink family does not answer (errno ENOENT): the
    kernel lacks CONFIG_TASKSTATS, or, on older kernels, this process is outside
    the host network namespace."""

    def __init__(self, message="generic netlink family TASKSTATS not found"):
        super().__init__(_errno.ENOENT, message)


class CgroupNotFound(CgshimError):
    """No cgroup exists at the given path (or it was removed while being read)."""


class NotACgroup(CgshimError):
    """The path is not a directory on a cgroup filesystem, or escapes one through
    ``..`` or a symlink."""


class PermissionDenied(CgshimError):
    """The kernel refused access (EACCES/EPERM) to a file cgshim needs."""


class ParseError(CgshimError):
    """A kernel file's contents could not be parsed (garbage, truncated, wrong format)."""


class Unsupported(CgshimError):
    """The kernel does not offer the interface (e.g. PSI disabled: EOPNOTSUPP), or a
    backend asked for cannot serve this host or this kind of cgroup."""


class KernelError(CgshimError):
    """The kernel answered an errno that has no more specific meaning for cgshim (EIO, an
    out-of-descriptors EMFILE/ENFILE, ...). ``errno`` and ``path`` say which and where."""


class ConfigError(CgshimError):
    """A configuration file given by the user is invalid (e.g. the exporter's
    ``--web.config.file``); the message names the file and the key."""


class BpfError(CgshimError):
    """The BPF backend failed; ``errno`` is the kernel's (or libbpf's) errno.

    E.g. EPERM loading without CAP_BPF and CAP_PERFMON (or bpf() refused by seccomp),
    EOPNOTSUPP when a per-cgroup pass did not fit one read.
    """

    def __init__(self, errno, message=None):
        self.errno = errno
        if message is None:
            message = os.strerror(errno)
        super().__init__(f"[errno {errno} {_errno.errorcode.get(errno, '?')}] {message}")


class MalformedPass(BpfError, ParseError):
    """The bytes of a BPF pass are not what cgshim's program writes (truncated, a size
    that lies, an unknown record, no END): errno EBADMSG."""

    def __init__(self, message="malformed BPF pass"):
        BpfError.__init__(self, _errno.EBADMSG, message)


class PassFormatMismatch(BpfError):
    """The pass comes from a program of another record format (e.g. a pin made by an
    older or newer cgshim): nothing of it is used. Re-pin with this cgshim
    (``python -m cgshim bpf pin``). errno EPROTO."""

    def __init__(self, message="BPF pass of another format"):
        BpfError.__init__(self, _errno.EPROTO, message)


# ----------------------------------------------------------------------- the errno map

#: The one errno map: errno -> (error type, what it means), for an OSError met on a kernel
#: file (or an errno the C core returns for one). ``translate`` applies it; no other module
#: maps OSError to cgshim errors. ENOENT is "gone" only where the object is a cgroup: see
#: ``translate``.
ERRNO_TABLE = {
    # kernfs answers ENOENT for a name that is not (or no longer) there; a cgroup being
    # removed answers ENODEV at open() *and* at read(): kernfs_fop_open() and
    # kernfs_fop_read_iter() fail kernfs_get_active() on a deactivated node
    # (fs/kernfs/file.c). Both mean the cgroup is gone.
    _errno.ENOENT: (CgroupNotFound, "no such cgroup: it does not exist or was removed"),
    _errno.ENODEV: (CgroupNotFound, "the cgroup was removed while being read"),
    _errno.ENOTDIR: (NotACgroup, "a component of the path is not a directory"),
    _errno.ELOOP: (NotACgroup, "too many levels of symbolic links"),
    _errno.ENAMETOOLONG: (NotACgroup, "name too long"),
    _errno.EACCES: (PermissionDenied, "permission denied"),
    _errno.EPERM: (PermissionDenied, "operation not permitted"),
    # psi_show()/cgroup_pressure_show() with PSI off at boot (kernel/sched/psi.c,
    # kernel/cgroup/cgroup.c); cgroup.procs of a threaded cgroup (cgroup_procs_start()).
    _errno.EOPNOTSUPP: (Unsupported, "the kernel does not offer this here"),
    _errno.EMFILE: (KernelError, "out of file descriptors; raise RLIMIT_NOFILE or lower "
                                 "Reader(max_cgroups=..., max_fds=...)"),
    _errno.ENFILE: (KernelError, "out of file descriptors system-wide (ENFILE)"),
}
#: Any errno not in the table (EIO, EINVAL, EISDIR, ...): the same everywhere.
DEFAULT_ENTRY = (KernelError, "the kernel refused the operation")


def translate(err, path, *, cgroup=None, optional=False, hint=None):
    """The cgshim error for ``err`` (an OSError or an errno number) met on ``path``.

    One table, :data:`ERRNO_TABLE`, for every module. ``cgroup`` is the cgroup directory
    ``path`` belongs to (``path`` itself when it is the directory); None when ``path`` is
    not part of a cgroup (mountinfo, the proc root): then ENOENT/ENODEV mean "not there"
    (Unsupported), not a gone cgroup. ``optional=True`` says a live cgroup of some kind
    may lack the file (cgroup.stat on v1): ENOENT then means Unsupported while the
    cgroup's directory still exists. ``hint`` is appended to the message.

    The returned error carries ``errno`` and ``path``; the caller raises it ``from`` the
    OSError.
    """
    number = err.errno if isinstance(err, OSError) else err
    number = number or _errno.EIO
    kind, meaning = ERRNO_TABLE.get(number, DEFAULT_ENTRY)
    if kind is CgroupNotFound:
        if cgroup is None:
            kind, meaning = Unsupported, "not there"
        elif optional and number == _errno.ENOENT and os.path.isdir(cgroup):
            kind, meaning = Unsupported, f"the cgroup {cgroup} has no such file"
    name = _errno.errorcode.get(number, "?")
    text = f"{path}: {meaning} ([errno {number} {name}] {os.strerror(number)})"
    if hint:
        text = f"{text}; {hint}"
    error = kind(text)
    error.errno = number
    error.path = path
    return error


class RuntimeUnavailable(CgshimError):
    """The container runtime did not answer a CRI call: no socket at the endpoint, refused,
    timed out, or an answer that is not CRI runtime.v1. Series then carry only what the
    cgroup path tells."""
