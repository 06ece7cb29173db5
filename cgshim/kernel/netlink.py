"""Taskstats and cgroupstats over generic netlink (kernel/taskstats.c), via the C core.

The TASKSTATS generic netlink family answers two requests:

- CGROUPSTATS_CMD_GET with an open fd of a **cgroup v1** directory: the task counts of
  that cgroup's own tasks (struct cgroupstats, include/uapi/linux/cgroupstats.h). A
  cgroup2 directory answers EINVAL, a removed cgroup ENOENT; an fd that is not open gets
  no answer but the ACK, reported as EBADF.
- TASKSTATS_CMD_GET for a pid or tgid: struct taskstats (needs CAP_NET_ADMIN; a pid
  that does not exist answers ESRCH).

The socket work and the reply parsing live in cgshim/_native/netlink.c (one parser used
for the socket's replies and for :func:`parse_cgroupstats` / :func:`parse_taskstats`);
struct taskstats is decoded by :mod:`cgshim.kernel.taskstats`. :func:`open_socket` is
the one place that picks this native socket or, when the extension is not built, the
pure-Python :class:`cgshim.kernel.reference.TaskstatsSocket`.

Errors are :class:`~cgshim.errors.NetlinkError` (``.errno`` is the kernel's) and its
subclasses: :class:`~cgshim.errors.NetlinkTimeout` (no answer in time),
:class:`~cgshim.errors.MalformedReply` (EBADMSG: a reply that is truncated, lies about
a length, has the wrong command, lacks an attribute, is multipart or NLMSG_DONE) and
:class:`~cgshim.errors.FamilyNotFound` (no TASKSTATS family: CONFIG_TASKSTATS off, or an
older kernel outside the host network namespace).
"""
import errno
import math
import os
import socket
import threading

import attrs

from cgshim import _native
from cgshim.errors import FamilyNotFound, MalformedReply, NetlinkError, NetlinkTimeout, Unsupported
from cgshim.model import TaskCounts
from cgshim.kernel.taskstats import TaskStats, decode_taskstats

# Room for struct taskstats as sent; v17 is 688 bytes. A longer one is fetched again.
_STATS_CAP = 4096


@attrs.frozen
class RawTaskstats:
    """A TASKSTATS_CMD_NEW reply before decoding: the PID/TGID attribute, which of the
    two it was, and the TASKSTATS_TYPE_STATS payload exactly as the kernel sent it."""

    id: int
    is_tgid: bool
    payload: bytes


def _lib():
    mod = _native.netlink
    if mod is None:
        raise Unsupported(
            "the native netlink extension cgshim._native._netlink is not built or does not "
            f"load ({_native.load_errors.get('netlink')}); build it with "
            "`python cgshim/_native/build.py netlink` or use cgshim.kernel.netlink.open_socket()")
    return mod


def _error(rc, what, hints=None):
    """The cgshim error for a positive errno ``rc`` returned by the C core."""
    if rc == errno.ETIMEDOUT:
        return NetlinkTimeout(f"{what}: no netlink answer within the socket's timeout")
    if rc == errno.EBADMSG:
        return MalformedReply(f"{what}: malformed netlink reply (truncated, a length that "
                              "lies, wrong command, missing attribute, multipart or DONE)")
    hint = (hints or {}).get(rc)
    text = os.strerror(rc)
    return NetlinkError(rc, f"{what}: {text}" + (f" ({hint})" if hint else ""))


_CGROUPSTATS_HINTS = {
    errno.EINVAL: "not the directory of a cgroup v1 hierarchy; cgroup2 directories answer "
                  "EINVAL: count the v2 cgroup's threads from /proc instead",
    errno.ENOENT: "the cgroup was removed",
    errno.EBADF: "the fd is not open in this process: the kernel sent only an ACK",
}
_TASKSTATS_HINTS = {
    errno.ESRCH: "no such task in this pid namespace",
    errno.EPERM: "TASKSTATS_CMD_GET needs CAP_NET_ADMIN",
}


def _counts(cs):
    # TaskCounts is frozen, and a cgroup's counts repeat from one read to the next: hand out
    # one object per distinct answer (building the attrs object cost more than the lookup)
    key = (cs.nr_running, cs.nr_sleeping, cs.nr_uninterruptible, cs.nr_stopped, cs.nr_io_wait)
    counts = _COUNTS_MEMO.get(key)
    if counts is None:
        if len(_COUNTS_MEMO) >= 4096:
            _COUNTS_MEMO.clear()
        counts = _COUNTS_MEMO[key] = TaskCounts(*key)
    return counts


_COUNTS_MEMO = {}


def parse_cgroupstats(msg: bytes) -> TaskCounts:
    """Task counts from one whole CGROUPSTATS_CMD_NEW netlink message as the kernel sends
    it. An NLMSG_ERROR message raises its errno (a bare ACK: ENODATA); anything malformed
    raises :class:`MalformedReply`."""
    mod = _lib()
    msg = bytes(msg)
    out = mod.ffi.new("struct cg_nl_cgroupstats *")
    rc = mod.lib.cg_nl_parse_cgroupstats(msg, len(msg), 0, out)
    if rc:
        raise _error(rc, "cgroupstats reply", _CGROUPSTATS_HINTS)
    return _counts(out)


def parse_taskstats_raw(msg: bytes) -> RawTaskstats:
    """The PID/TGID attribute and struct taskstats bytes of one whole TASKSTATS_CMD_NEW
    message; errors as :func:`parse_cgroupstats`."""
    mod = _lib()
    msg = bytes(msg)
    out = mod.ffi.new("struct cg_nl_taskstats_reply *")
    buf = mod.ffi.new("uint8_t[]", max(len(msg), 1))  # the payload cannot be longer
    rc = mod.lib.cg_nl_parse_taskstats(msg, len(msg), 0, out, buf, len(buf))
    if rc:
        raise _error(rc, "taskstats reply", _TASKSTATS_HINTS)
    return RawTaskstats(out.id, bool(out.is_tgid), bytes(mod.ffi.buffer(buf, out.stats_len)))


def parse_taskstats(msg: bytes) -> TaskStats:
    """struct taskstats from one whole TASKSTATS_CMD_NEW message (see
    :func:`parse_taskstats_raw`); a payload shorter than version 8 raises MalformedReply."""
    return decode_taskstats(parse_taskstats_raw(msg).payload)


class TaskstatsSocket:
    """One generic netlink socket for TASKSTATS requests through the C core.

    ``timeout`` (seconds) bounds each wait for an answer. Safe to share between threads:
    one lock serialises requests (the C call runs without the GIL). Not fork-safe: a
    child process opens its own. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, timeout: float = 1.0):
        if not (isinstance(timeout, (int, float)) and timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        mod = _lib()
        self._ffi, self._c = mod.ffi, mod.lib
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._fd = -1
        self._family = None
        self._seq = 0
        self._rcvbuf_set = False
        ms = min(max(1, math.ceil(timeout * 1000)), 2**31 - 1)
        fdp = self._ffi.new("int *")
        rc = self._c.cg_nl_open(ms, fdp)
        if rc:
            raise _error(rc, "opening a NETLINK_GENERIC socket")
        self._fd = fdp[0]
        self._cs = self._ffi.new("struct cg_nl_cgroupstats *")
        self._reply = self._ffi.new("struct cg_nl_taskstats_reply *")
        self._stats = self._ffi.new("uint8_t[]", _STATS_CAP)
        self._taskstats_call = self._c.cg_nl_taskstats
        self._cgroupstats_call = self._c.cg_nl_cgroupstats

    # -- lifetime ---------------------------------------------------------------------
    def close(self):
        """Close the socket; later requests raise NetlinkError(EBADF). Idempotent."""
        with self._lock:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            self._fd = -1
            try:
                os.close(fd)
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self._fd < 0

    # -- requests ---------------------------------------------------------------------
    def _next_seq(self):
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _check_open(self):
        if self._fd < 0:
            raise NetlinkError(errno.EBADF, "this TaskstatsSocket is closed")

    def _family_locked(self):
        if self._family is None:
            out = self._ffi.new("uint16_t *")
            rc = self._c.cg_nl_family_id(self._fd, self._next_seq(), out)
            if rc == errno.ENOENT:
                raise FamilyNotFound(
                    "generic netlink family TASKSTATS not found: kernel without "
                    "CONFIG_TASKSTATS, or (kernels before 6.x) outside the host network namespace")
            if rc:
                raise _error(rc, "looking up the TASKSTATS family id")
            self._family = out[0]
        return self._family

    @property
    def family_id(self) -> int:
        """The TASKSTATS family id (dynamic), looked up on first use and cached."""
        with self._lock:
            self._check_open()
            return self._family_locked()

    def _request(self, call):
        """Run ``call(fd, family, seq) -> errno`` under the lock; on ENOENT look the
        family up again once and, if its id changed, repeat the request."""
        self._check_open()
        family = self._family_locked()
        rc = call(self._fd, family, self._next_seq())
        if rc == errno.ENOENT:
            self._family = None
            if self._family_locked() != family:
                rc = call(self._fd, self._family, self._next_seq())
        return rc

    def cgroupstats(self, dir_fd: int) -> TaskCounts:
        """Task counts of the v1 cgroup whose directory ``dir_fd`` is open (its own tasks,
        not descendants; see KERNEL-NOTES for what the kernel counts)."""
        if dir_fd.__class__ is not int:
            dir_fd = int(dir_fd)
        if dir_fd < 0 or dir_fd > 0x7FFFFFFF:
            raise NetlinkError(errno.EBADF, f"cgroupstats: {dir_fd} is not a file descriptor")
        cs = self._cs
        with self._lock:
            # The per-call path agents take: straight-line, no closure.
            family = self._family
            if self._fd < 0 or family is None:
                self._check_open()
                family = self._family_locked()
            seq = self._seq = (self._seq + 1) & 0xFFFFFFFF
            rc = self._cgroupstats_call(self._fd, family, seq, dir_fd, cs)
            if rc == errno.ENOENT:  # maybe a stale family id: look it up again, as _request
                self._family = None
                if self._family_locked() != family:
                    rc = self._c.cg_nl_cgroupstats(self._fd, self._family, self._next_seq(),
                                                   dir_fd, cs)
            if rc:
                raise _error(rc, f"cgroupstats of fd {dir_fd}", _CGROUPSTATS_HINTS)
            return _counts(cs)

    #: receive buffer asked for before the first many-cgroup request: room for ~1,000
    #: queued answers (each costs ~830 bytes of skb truesize here); the kernel caps it
    #: at net.core.rmem_max, and the window then shrinks to what fits
    MANY_RCVBUF = 1 << 20

    def cgroupstats_many_raw(self, dir_fds, *, window=0):
        """CGROUPSTATS for many held v1 directory fds in one native call (the node
        sweep's path): ``(out, errs)``, cffi arrays in the order of ``dir_fds`` --
        ``errs[i]`` 0 with ``out[i]`` a struct cg_nl_cgroupstats, or that cgroup's errno
        (see cg_nl_cgroupstats_many in netlink.h). One cgroup's error never fails the
        call; an error of the socket itself raises NetlinkError."""
        n = len(dir_fds)
        ffi = self._ffi
        fds = ffi.new("int32_t[]", dir_fds) if n else ffi.NULL
        out = ffi.new("struct cg_nl_cgroupstats[]", n)
        errs = ffi.new("int32_t[]", n)
        if n == 0:
            return out, errs
        seq = ffi.new("uint32_t *")
        with self._lock:
            self._check_open()
            family = self._family_locked()
            if not self._rcvbuf_set:
                self._rcvbuf_set = True
                sk = socket.socket(fileno=self._fd)
                try:
                    sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.MANY_RCVBUF)
                except OSError:
                    pass  # the default buffer: smaller windows, same answers
                finally:
                    sk.detach()
            seq[0] = (self._seq + 1) & 0xFFFFFFFF
            rc = self._c.cg_nl_cgroupstats_many(self._fd, family, seq, fds, n, window, out, errs)
            self._seq = (seq[0] - 1) & 0xFFFFFFFF
            if rc == 0 and all(e == errno.ENOENT for e in errs):
                # maybe a stale family id (ids are dynamic): look it up again, as _request
                self._family = None
                if self._family_locked() != family:
                    seq[0] = (self._seq + 1) & 0xFFFFFFFF
                    rc = self._c.cg_nl_cgroupstats_many(self._fd, self._family, seq, fds, n,
                                                        window, out, errs)
                    self._seq = (seq[0] - 1) & 0xFFFFFFFF
        if rc:
            raise _error(rc, f"cgroupstats of {n} cgroups")
        return out, errs

    def cgroupstats_many(self, dir_fds, *, window=0):
        """:meth:`cgroupstats` of each fd in ``dir_fds`` in one native call: a list, in
        order, of TaskCounts or the NetlinkError that cgroup got. ``window``: requests
        per datagram (0: as many as the receive buffer holds answers)."""
        dir_fds = [int(fd) for fd in dir_fds]
        out, errs = self.cgroupstats_many_raw(dir_fds, window=window)
        return [_counts(out[i]) if not e else
                _error(e, f"cgroupstats of fd {fd}", _CGROUPSTATS_HINTS)
                for i, (fd, e) in enumerate(zip(dir_fds, errs))]

    def taskstats_raw(self, pid: int, tgid: bool = False) -> RawTaskstats:
        """The undecoded reply for a task (``tgid=False``) or a whole thread group."""
        pid = int(pid)
        what = f"taskstats of {'tgid' if tgid else 'pid'} {pid}"
        if pid <= 0 or pid > 0x7FFFFFFF:
            raise NetlinkError(errno.ESRCH, f"{what}: not a valid pid")
        with self._lock:
            def call(fd, fam, seq):
                return self._c.cg_nl_taskstats(fd, fam, seq, pid, int(bool(tgid)),
                                               self._reply, self._stats, len(self._stats))
            rc = self._request(call)
            if rc == 0 and self._reply.stats_len > len(self._stats):
                # a struct taskstats longer than our buffer: make room, ask again
                self._stats = self._ffi.new("uint8_t[]", self._reply.stats_len)
                rc = self._request(call)
            if rc:
                raise _error(rc, what, _TASKSTATS_HINTS)
            n = min(self._reply.stats_len, len(self._stats))
            return RawTaskstats(self._reply.id, bool(self._reply.is_tgid),
                                bytes(self._ffi.buffer(self._stats, n)))

    def taskstats(self, pid: int, tgid: bool = False) -> TaskStats:
        """struct taskstats of task ``pid``, or summed over thread group ``pid`` if ``tgid``.

        The per-call path: one C call under the lock, one copy of the payload, and a lazy
        :class:`TaskStats` that decodes a field when it is read. Anything unusual (first
        use, a stale family id, an error, a struct longer than the buffer) takes
        :meth:`taskstats_raw`."""
        if pid.__class__ is int and 0 < pid <= 0x7FFFFFFF:
            reply, stats = self._reply, self._stats
            with self._lock:
                family = self._family
                if self._fd >= 0 and family is not None:
                    seq = self._seq = (self._seq + 1) & 0xFFFFFFFF
                    rc = self._taskstats_call(self._fd, family, seq, pid, 1 if tgid else 0,
                                              reply, stats, _STATS_CAP)
                    if not rc:
                        n = reply.stats_len
                        if n <= _STATS_CAP:
                            return decode_taskstats(self._ffi.buffer(stats, n)[:])
                    elif rc != errno.ENOENT:  # ENOENT: maybe a stale family id, below
                        raise _error(rc, f"taskstats of {'tgid' if tgid else 'pid'} {pid}",
                                     _TASKSTATS_HINTS)
        return decode_taskstats(self.taskstats_raw(pid, tgid).payload)


def open_socket(timeout=1.0):
    """A TaskstatsSocket: the native one, or :class:`cgshim.kernel.reference.TaskstatsSocket`
    (same interface, pyroute2) when the C extension is not built or does not load. Which one
    it is shows in its type; the Reader reports it as ``CpuLoad.implementation``. Neither
    available: Unsupported naming both reasons."""
    if _native.netlink is None:
        try:
            from cgshim.kernel.reference import TaskstatsSocket as ReferenceSocket
        except ImportError as exc:
            raise Unsupported(
                f"the C core's netlink module does not load ({_native.load_errors.get('netlink')}) "
                f"and the pyroute2 fallback cannot be imported ({exc}): build the C core or "
                f"pip install 'cgshim[reference]'") from exc
        return ReferenceSocket(timeout)
    return TaskstatsSocket(timeout)


_default = None
_default_lock = threading.Lock()


def _forget_default_in_child():
    # The parent's socket (and maybe a held lock) must not be used by a forked child;
    # the child's copy of the fd closes when the orphaned object is collected.
    global _default, _default_lock
    _default = None
    _default_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_default_in_child)


def taskstats(pid: int, *, tgid: bool = False) -> TaskStats:
    """struct taskstats of ``pid`` (or of thread group ``pid``) on a shared default socket."""
    global _default
    sock = _default
    if sock is None:
        with _default_lock:
            if _default is None:
                _default = open_socket()
            sock = _default
    return sock.taskstats(pid, tgid)


__all__ = ["TaskstatsSocket", "RawTaskstats", "open_socket", "taskstats",
           "parse_cgroupstats", "parse_taskstats", "parse_taskstats_raw"]
