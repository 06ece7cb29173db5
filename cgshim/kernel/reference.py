"""Reference path: TASKSTATS / CGROUPSTATS requests encoded and decoded by pyroute2.

The same three requests as :mod:`cgshim.kernel.netlink` (family lookup, CGROUPSTATS_CMD_GET,
TASKSTATS_CMD_GET; kernel/taskstats.c), but every netlink message is built and parsed
by pyroute2's ``genlmsg``/``ctrlmsg`` classes and its ``Marshal`` instead of cgshim's C
core, so the two paths cross-check each other. Used when the native module cannot load.

Two deliberate departures from pyroute2's own ``TaskStats`` socket:

- The struct taskstats payload is taken as raw bytes and decoded by
  :func:`cgshim.kernel.taskstats.decode_taskstats` (pyroute2 0.9.7 decodes version 16
  with the old layout and leaves ac_comm NUL-padded).
- The socket I/O is a plain AF_NETLINK socket with a receive deadline, not pyroute2's
  GenericNetlinkSocket: that one (0.9.x) runs an asyncio loop and a separate socket per
  calling thread, has no request timeout, and keeps stray ACKs queued forever. The kernel
  sends nothing at all for CGROUPSTATS on a closed fd, so an unbounded wait would hang.

Every request carries NLM_F_ACK and is complete when its ACK (or NLMSG_ERROR) arrives;
answers to earlier requests that timed out are skipped by sequence number.
"""
import errno
import os
import socket
import struct
import threading
import time

try:
    from pyroute2.netlink import (
        CTRL_CMD_GETFAMILY,
        GENL_ID_CTRL,
        NLM_F_ACK,
        NLM_F_REQUEST,
        NLMSG_ERROR,
        ctrlmsg,
        genlmsg,
        nla,
    )
    from pyroute2.netlink.exceptions import NetlinkError as _Pyroute2NetlinkError
    from pyroute2.netlink.marshal import Marshal
except ModuleNotFoundError as exc:  # pyroute2 is the extra cgshim[reference], not a dependency
    if (exc.name or "").partition(".")[0] != "pyroute2":
        raise
    raise ModuleNotFoundError("the pyroute2 reference path needs pyroute2: "
                              "pip install 'cgshim[reference]'", name="pyroute2") from exc

from cgshim.errors import FamilyNotFound, MalformedReply, NetlinkError, NetlinkTimeout
from cgshim.model import TaskCounts
from cgshim.kernel.taskstats import decode_taskstats

NETLINK_GENERIC = 16
TASKSTATS_GENL_NAME = "TASKSTATS"
TASKSTATS_GENL_VERSION = 1

TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_NEW = 2
CGROUPSTATS_CMD_GET = 4
CGROUPSTATS_CMD_NEW = 5

# struct cgroupstats (include/uapi/linux/cgroupstats.h): nr_sleeping, nr_running,
# nr_stopped, nr_uninterruptible, nr_io_wait, in host byte order.
_CGROUPSTATS = struct.Struct("=5Q")
_CGROUPSTATS_SIZE = _CGROUPSTATS.size
_RECV_SIZE = 65536


class _cmd(genlmsg):
    """A TASKSTATS family request (include/uapi/linux/taskstats.h, cgroupstats.h)."""

    __slots__ = ()
    nla_map = (
        (1, "TASKSTATS_CMD_ATTR_PID", "uint32"),      # also CGROUPSTATS_CMD_ATTR_FD
        (2, "TASKSTATS_CMD_ATTR_TGID", "uint32"),
    )


class _reply(genlmsg):
    """TASKSTATS_CMD_NEW / CGROUPSTATS_CMD_NEW; payloads kept as raw bytes."""

    __slots__ = ()
    nla_map = (
        (1, "CGROUPSTATS_TYPE_CGROUP_STATS", "cdata"),  # top level of CGROUPSTATS_CMD_NEW
        (3, "TASKSTATS_TYPE_STATS", "cdata"),
        (4, "TASKSTATS_TYPE_AGGR_PID", "aggr"),
        (5, "TASKSTATS_TYPE_AGGR_TGID", "aggr"),
        (6, "TASKSTATS_TYPE_NULL", "none"),
    )

    class aggr(nla):
        __slots__ = ()
        nla_map = (
            (1, "TASKSTATS_TYPE_PID", "uint32"),
            (2, "TASKSTATS_TYPE_TGID", "uint32"),
            (3, "TASKSTATS_TYPE_STATS", "cdata"),
            (6, "TASKSTATS_TYPE_NULL", "none"),
        )


class TaskstatsSocket:
    """A generic netlink socket for the TASKSTATS family, driven through pyroute2.

    ``timeout`` (seconds, > 0) bounds each request as a whole. Thread-safe: requests are
    serialised by a lock. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, timeout: float = 1.0):
        if not timeout or timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout!r}")
        self._timeout = float(timeout)
        self._lock = threading.Lock()
        self._family = None
        self._seq = 0
        self._marshal = Marshal()
        self._marshal.msg_map[GENL_ID_CTRL] = ctrlmsg
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                 NETLINK_GENERIC)
        except OSError as exc:
            raise NetlinkError(exc.errno, f"cannot open a generic netlink socket: {exc}") from exc
        try:
            sock.bind((0, 0))
        except OSError as exc:
            sock.close()
            raise NetlinkError(exc.errno, f"cannot bind a generic netlink socket: {exc}") from exc
        self._sock = sock

    # -- public interface ------------------------------------------------------------

    @property
    def family_id(self) -> int:
        """The TASKSTATS generic netlink family id (resolved once, then cached)."""
        with self._lock:
            if self._sock is None:
                raise NetlinkError(errno.EBADF, "the TaskstatsSocket is closed")
            return self._family_locked()

    def cgroupstats(self, dir_fd: int) -> TaskCounts:
        """CGROUPSTATS_CMD_GET for an open directory fd of a cgroup v1 cgroup.

        Raises NetlinkError(EINVAL) for a cgroup2 (or non-cgroup) directory,
        NetlinkError(ENOENT) for a removed cgroup, NetlinkError(EBADF) when ``dir_fd``
        is not open (the kernel then answers with nothing but the ACK).
        """
        dir_fd = int(dir_fd)
        if not 0 <= dir_fd <= 0x7FFFFFFF:
            raise NetlinkError(errno.EBADF, f"cgroupstats: {dir_fd} is not a file descriptor")
        with self._lock:
            msgs = self._request_family(CGROUPSTATS_CMD_GET, "TASKSTATS_CMD_ATTR_PID", dir_fd)
            if not msgs:
                raise NetlinkError(
                    errno.EBADF,
                    f"CGROUPSTATS sent no answer for fd {dir_fd}: it is not an open file"
                    " descriptor in this process")
            msg = self._one(msgs, CGROUPSTATS_CMD_NEW)
            raw = msg.get_attr("CGROUPSTATS_TYPE_CGROUP_STATS")
            if raw is None or len(raw) < _CGROUPSTATS_SIZE:
                raise MalformedReply(
                    "CGROUPSTATS_CMD_NEW without a whole struct cgroupstats "
                    f"({0 if raw is None else len(raw)} of {_CGROUPSTATS_SIZE} bytes)")
            sleeping, running, stopped, uninterruptible, io_wait = _CGROUPSTATS.unpack_from(raw)
            return TaskCounts(running, sleeping, uninterruptible, stopped, io_wait)

    def taskstats(self, pid: int, tgid: bool = False):
        """TASKSTATS_CMD_GET for a thread (``tgid=False``) or a whole thread group.

        Needs CAP_NET_ADMIN (else NetlinkError(EPERM)); NetlinkError(ESRCH) when no such
        task exists. Returns a :class:`cgshim.kernel.taskstats.TaskStats`.
        """
        pid = int(pid)
        if not 0 < pid <= 0x7FFFFFFF:
            raise NetlinkError(errno.ESRCH, f"taskstats: {pid} is not a valid pid")
        attr = "TASKSTATS_CMD_ATTR_TGID" if tgid else "TASKSTATS_CMD_ATTR_PID"
        aggr = "TASKSTATS_TYPE_AGGR_TGID" if tgid else "TASKSTATS_TYPE_AGGR_PID"
        id_attr = "TASKSTATS_TYPE_TGID" if tgid else "TASKSTATS_TYPE_PID"
        with self._lock:
            msgs = self._request_family(TASKSTATS_CMD_GET, attr, pid)
            if not msgs:
                raise NetlinkError(errno.ENODATA,
                                   f"TASKSTATS acknowledged the request for {pid} but sent no stats")
            msg = self._one(msgs, TASKSTATS_CMD_NEW)
            nest = msg.get_attr(aggr)
            if nest is None:
                raise MalformedReply(f"TASKSTATS_CMD_NEW for {pid} lacks {aggr}")
            got = nest.get_attr(id_attr)
            if got != pid:
                raise MalformedReply(f"TASKSTATS answered for {id_attr}={got}, asked for {pid}")
            raw = nest.get_attr("TASKSTATS_TYPE_STATS")
            if raw is None:
                raise MalformedReply(f"TASKSTATS_CMD_NEW for {pid} lacks TASKSTATS_TYPE_STATS")
            return decode_taskstats(raw)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        """Close the socket. Idempotent; later requests raise NetlinkError(EBADF)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()

    # -- internals (called with self._lock held) -------------------------------------

    def _family_locked(self):
        if self._family is None:
            self._family = self._resolve_family()
        return self._family

    def _resolve_family(self):
        msg = ctrlmsg()
        msg["cmd"] = CTRL_CMD_GETFAMILY
        msg["version"] = 1
        msg["attrs"].append(["CTRL_ATTR_FAMILY_NAME", TASKSTATS_GENL_NAME])
        try:
            replies = self._transact(msg, GENL_ID_CTRL)
        except NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                raise FamilyNotFound(
                    "generic netlink family TASKSTATS not found: the kernel lacks "
                    "CONFIG_TASKSTATS, or (kernels before 6.x) this process is outside the "
                    "host network namespace") from None
            raise
        for reply in replies:
            family = reply.get_attr("CTRL_ATTR_FAMILY_ID")
            if family is not None:
                self._marshal.msg_map[family] = _reply
                return family
        raise MalformedReply("nlctrl answered the TASKSTATS lookup without CTRL_ATTR_FAMILY_ID")

    def _request_family(self, cmd, attr, value):
        """One request to the TASKSTATS family; re-resolves the family id once on ENOENT."""
        family = self._family_locked()
        try:
            return self._transact(self._build(cmd, attr, value), family)
        except NetlinkError as exc:
            if exc.errno != errno.ENOENT or isinstance(exc, (NetlinkTimeout, MalformedReply)):
                raise
            # ENOENT may mean "no such family any more" (module reloaded: new id) or be
            # the request's own answer (a removed cgroup). Look the family up again.
            stale, self._family = family, None
            self._marshal.msg_map.pop(stale, None)
            family = self._family_locked()
            if family == stale:
                raise
            return self._transact(self._build(cmd, attr, value), family)

    @staticmethod
    def _build(cmd, attr, value):
        msg = _cmd()
        msg["cmd"] = cmd
        msg["version"] = TASKSTATS_GENL_VERSION
        msg["attrs"].append([attr, value])
        return msg

    @staticmethod
    def _one(msgs, cmd):
        if len(msgs) != 1:
            raise MalformedReply(f"expected one reply message, got {len(msgs)}")
        msg = msgs[0]
        if msg["cmd"] != cmd:
            raise MalformedReply(f"reply has genl command {msg['cmd']}, expected {cmd}")
        return msg

    def _transact(self, msg, msg_type):
        """Send ``msg`` with NLM_F_ACK; return the data replies of its sequence number.

        The kernel queues the reply and then the ACK before send() returns, so waiting for
        the ACK costs nothing and leaves no stale message behind. Raises NetlinkError for NLMSG_ERROR,
        NetlinkTimeout when the deadline passes, MalformedReply for undecodable data.
        """
        sock = self._sock
        if sock is None:
            raise NetlinkError(errno.EBADF, "the TaskstatsSocket is closed")
        self._seq = self._seq % 0x7FFFFFFF + 1
        seq = self._seq
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
        msg["header"]["sequence_number"] = seq
        msg["header"]["pid"] = 0
        msg.encode()
        deadline = time.monotonic() + self._timeout
        try:
            sock.settimeout(self._timeout)
            sock.send(msg.data)
        except OSError as exc:
            raise NetlinkError(exc.errno or errno.EIO, f"netlink send failed: {exc}") from exc
        replies = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NetlinkTimeout(f"no netlink answer within {self._timeout} s")
            try:
                sock.settimeout(left)
                data, _, flags, _ = sock.recvmsg(_RECV_SIZE)
            except socket.timeout:
                raise NetlinkTimeout(f"no netlink answer within {self._timeout} s") from None
            except OSError as exc:
                raise NetlinkError(exc.errno or errno.EIO, f"netlink recv failed: {exc}") from exc
            if flags & socket.MSG_TRUNC:
                raise MalformedReply(f"netlink message longer than {_RECV_SIZE} bytes")
            for reply in self._parse(data):
                header = reply["header"]
                if header.get("sequence_number") != seq:
                    continue  # late answer to an earlier, timed-out request
                error = header.get("error")
                if error is not None:
                    if isinstance(error, _Pyroute2NetlinkError):
                        raise NetlinkError(error.code, self._describe(msg, error.code))
                    raise MalformedReply(f"undecodable netlink reply: {error}")
                if header.get("type") == NLMSG_ERROR:
                    return replies  # ACK (error 0): the request is complete
                replies.append(reply)

    def _parse(self, data):
        try:
            return list(self._marshal.parse(data))
        except Exception as exc:  # pyroute2 raises assorted types on garbage
            raise MalformedReply(f"undecodable netlink message: {exc!r}") from exc

    @staticmethod
    def _describe(msg, code):
        what = {CTRL_CMD_GETFAMILY: "family lookup", CGROUPSTATS_CMD_GET: "CGROUPSTATS",
                TASKSTATS_CMD_GET: "TASKSTATS"}.get(msg["cmd"], f"command {msg['cmd']}")
        hint = {
            errno.EINVAL: "not a cgroup v1 directory (cgroup2 is not served by CGROUPSTATS)"
            if msg["cmd"] == CGROUPSTATS_CMD_GET else "invalid request",
            errno.ESRCH: "no such task",
            errno.EPERM: "needs CAP_NET_ADMIN",
            errno.ENOENT: "the cgroup was removed" if msg["cmd"] == CGROUPSTATS_CMD_GET
            else "not found",
        }.get(code, os.strerror(code))
        return f"{what}: {hint}"


__all__ = ["TaskstatsSocket"]
