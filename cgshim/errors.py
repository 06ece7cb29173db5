"""Typed errors: every failure cgshim reports is a CgshimError subclass.

Callers that only care whether a reading was produced catch CgshimError; the
subclasses say what went wrong in terms a person can act on.
"""
import errno as _errno
import os


class CgshimError(Exception):
    """Base class of every error cgshim raises."""


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
    """The kernel does not offer the interface (e.g. PSI disabled: EOPNOTSUPP)."""
