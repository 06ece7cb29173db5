"""Reader: the one place that chooses how a cgroup's CPU load is read.

Backend chain, per cgroup:

1. ``netlink`` -- CGROUPSTATS_CMD_GET (kernel/taskstats.c, cgroupstats_build() in
   kernel/cgroup/cgroup-v1.c) on the cgroup's directory, when it is on a v1 hierarchy and
   the TASKSTATS family answers.
2. ``scan`` -- the state of each thread listed in ``cgroup.threads`` (v2) or ``tasks``
   (v1), read from /proc/<tid>/task/<tid>/stat by the C scanner: on cgroup2, or on v1 when
   netlink is unavailable (no TASKSTATS family, ENOENT outside the host network namespace
   on older kernels, EPERM, a socket that cannot be made).
3. ``psi`` -- when the threads cannot be enumerated (permission denied on the list or the
   stat files, or none of the tids visible in this pid namespace): counts are None.

``pressure`` comes from ``cpu.pressure`` of the cgroup2 directory (on a hybrid host, the
v1 cgroup's twin in the unified hierarchy, when it exists).

A Reader holds what makes repeated reads cheap: one netlink socket with its family id,
the resolution of each path, and open fds (the v1 directory for CGROUPSTATS, the
cpu.pressure file, the scanner's stat fds). A cached fd of a cgroup that has been removed
answers ENOENT/ENODEV; the entry is then dropped and the path resolved anew, so a
re-created cgroup of the same name is read correctly and a gone one raises CgroupNotFound.
"""
import collections
import errno
import os
import resource
import threading
import time

from cgshim.kernel import cgroupfs, netlink, psi
from cgshim.kernel.mounts import hierarchy as _load_hierarchy, resolve as _resolve, twin_v2 as _twin_v2
from cgshim.errors import (
    CgroupNotFound, CgshimError, FamilyNotFound, NetlinkError, NetlinkTimeout, PermissionDenied,
)
from cgshim.model import CpuLoad
from cgshim.kernel.threadstat import Scanner

_LIST_FILE = {1: "tasks", 2: "cgroup.threads"}
_GONE = (errno.ENOENT, errno.ENODEV)
# Errors that mean "netlink cannot serve this host/process", remembered for the Reader's life.
_NETLINK_DOWN = (errno.ENOENT, errno.EPERM, errno.EACCES, errno.EPROTONOSUPPORT,
                 errno.EAFNOSUPPORT, errno.ESOCKTNOSUPPORT)
# Counts travel as tuples in CpuLoad's field order:
# (nr_running, nr_sleeping, nr_uninterruptible, nr_stopped, nr_io_wait)
_NO_COUNTS = (None,) * 5


class _Target:
    """A resolved cgroup and the fds held open to read it.

    ``lock`` is held while the fds are in use, so that eviction by another thread closes
    them only between reads; a reader that then finds ``closed`` resolves the path again.
    """

    __slots__ = ("resolved", "dir_fd", "dir_id", "psi_fd", "psi_checked", "psi_denied",
                 "lock", "closed", "used")

    def __init__(self, resolved):
        self.resolved = resolved
        self.dir_fd = None
        self.dir_id = None  # (st_dev, st_ino) of the directory dir_fd was opened on
        self.psi_fd = None
        self.psi_checked = None  # monotonic time of the last look for a cpu.pressure file
        self.psi_denied = None  # why cpu.pressure could not be opened, if refused
        self.lock = threading.Lock()
        self.closed = False
        self.used = True  # CLOCK bit: read since the last eviction sweep passed it

    def close(self):
        with self.lock:
            self.closed = True
            for fd in (self.dir_fd, self.psi_fd):
                if fd is not None:
                    os.close(fd)
            self.dir_fd = self.psi_fd = None


class Reader:
    """A long-lived, thread-safe reader of cgroup CPU load (see the module docstring).

    - ``netlink=False`` never uses CGROUPSTATS: counts on v1 then come from the scan too,
      with the /proc meaning of every state (see :class:`cgshim.CpuLoad`).
    - ``pressure=False`` skips cpu.pressure (``CpuLoad.pressure`` is None).
    - ``proc_root`` and ``mountinfo`` name the /proc to read (e.g. a host's /proc
      mounted into a container).
    - ``timeout`` bounds each netlink request, in seconds.
    - ``max_cgroups`` bounds the resolved cgroups kept with their open fds (up to two
      each; those not read lately are closed first), and is capped to 1/8 of the soft
      RLIMIT_NOFILE; ``max_fds`` bounds the scanner's held-open stat files, capped to 1/4
      (:func:`cgshim.kernel.threadstat.effective_max_fds`). Together at most 1/2 of the limit.
    """

    #: how long a cgroup without a cpu.pressure file waits before looking again, seconds
    PRESSURE_RECHECK = 5.0

    def __init__(self, *, netlink=True, pressure=True, proc_root="/proc",
                 mountinfo="/proc/self/mountinfo", timeout=1.0, max_cgroups=1024, max_fds=4096):
        self.hierarchy = _load_hierarchy(mountinfo)
        self._use_netlink = netlink
        self._use_pressure = pressure
        self._timeout = timeout
        self._max_cgroups = _effective_max_cgroups(max_cgroups)
        self._lock = threading.Lock()
        self._targets = collections.OrderedDict()  # path as given -> _Target
        self._sock = None
        self._netlink_down = None if netlink else "netlink disabled by the caller"
        self._scanner = Scanner(proc_root, max_fds)
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------
    def close(self):
        """Close the netlink socket and every held fd. Idempotent."""
        with self._lock:
            self._closed = True
            targets = list(self._targets.values())
            self._targets.clear()
            sock, self._sock = self._sock, None
        for target in targets:  # outside the Reader lock: close() waits for readers
            target.close()
        if sock is not None:
            sock.close()
        self._scanner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def netlink_unavailable(self):
        """Why netlink is not used by this Reader, or None while it is."""
        return self._netlink_down

    # -- the public read ------------------------------------------------------------
    def cpu_load(self, path, *, recursive=False):
        """Read one cgroup: an absolute directory on a cgroup mount, or a cgroup-relative
        name such as ``/kubepods.slice/...`` (see :func:`cgshim.kernel.mounts.resolve`).

        ``recursive=True`` adds the counts of every descendant cgroup (a pod as the sum of
        its containers); by default only the cgroup's own tasks count, as in the kernel.
        Raises CgroupNotFound, NotACgroup, PermissionDenied (a CgshimError each).
        """
        for _ in range(2):
            target = self._target(path)
            with target.lock:
                if target.closed:
                    continue  # evicted or forgotten by another thread meanwhile: resolve again
                try:
                    return self._read(target, recursive)
                except CgroupNotFound:
                    pass
            # The cached resolution may be stale (removed, maybe re-created): once more afresh.
            self.forget(path)
            break
        # Stale, or the cache is thrashing (more cgroups read than max_cgroups): read through
        # a private target, closed right after.
        target = _Target(_resolve(path, self.hierarchy))
        try:
            with target.lock:
                return self._read(target, recursive)
        finally:
            target.close()

    def _read(self, target, recursive):
        """One reading of target, whose lock the caller holds."""
        counts, source, reason = self._counts(target)
        if recursive and counts is not None:
            counts, reason = self._add_descendants(target, counts, source, reason)
        pressure = self._pressure(target) if self._use_pressure else None
        if counts is None:
            if pressure is None:
                # Nothing readable: an error, not an empty reading.
                if target.psi_denied:
                    reason = f"{reason}; {target.psi_denied}"
                raise PermissionDenied(f"{target.resolved.path}: nothing readable: {reason}")
            counts = _NO_COUNTS
        resolved = target.resolved
        return CpuLoad(resolved.path, resolved.version, source, *counts,
                       pressure, time.monotonic(), reason)

    # -- resolution cache ---------------------------------------------------------------
    def _target(self, path):
        target = self._targets.get(path)  # the hit path takes no lock (dict.get is atomic)
        if target is not None:
            target.used = True
            return target
        if self._closed:
            raise CgshimError("this Reader is closed")
        resolved = _resolve(path, self.hierarchy)
        evicted = []
        with self._lock:
            if self._closed:
                raise CgshimError("this Reader is closed")
            target = self._targets.get(path)
            if target is None:  # else another thread won the race
                target = self._targets[path] = _Target(resolved)
            while len(self._targets) > self._max_cgroups:
                # CLOCK: give each recently read entry a second chance before evicting it.
                old_path, old = self._targets.popitem(last=False)
                if old.used and old is not target:
                    old.used = False
                    self._targets[old_path] = old
                else:
                    evicted.append(old)
        for old in evicted:  # outside the Reader lock: close() waits for readers of old
            old.close()
        return target

    def forget(self, path):
        """Drop what is cached for ``path`` (its resolution and held fds), e.g. once a
        caller knows the cgroup is gone. The next read resolves it afresh."""
        with self._lock:
            target = self._targets.pop(path, None)
        if target is not None:
            target.close()

    # -- backends -------------------------------------------------------------------------
    def _counts(self, target):
        """Return (counts tuple or None, source, reason): the backend chain."""
        reason = None
        if target.resolved.version == 1:
            if self._netlink_down is None:
                try:
                    return self._netlink_counts(target), "netlink", None
                except NetlinkTimeout as exc:
                    reason = f"netlink: {exc}; counted by scan instead"
                except FamilyNotFound as exc:
                    self._netlink_down = str(exc)
                    reason = f"netlink unavailable ({exc})"
                except NetlinkError as exc:
                    if exc.errno in _GONE:
                        raise CgroupNotFound(f"{target.resolved.path}: cgroup was removed") from exc
                    reason = f"netlink: {exc}; counted by scan instead"
            else:
                reason = f"netlink unavailable ({self._netlink_down})"
        try:
            return self._scan_counts(target), "scan", reason
        except PermissionDenied as exc:
            why = f"threads cannot be enumerated: {exc}"
        except _NotVisible as exc:
            why = str(exc)
        return None, "psi", why if reason is None else f"{reason}; {why}"

    def _netlink_counts(self, target):
        sock = self._socket()
        if target.dir_fd is None:
            target.dir_fd = _open_dir(target.resolved.path)
            st = os.fstat(target.dir_fd)
            target.dir_id = (st.st_dev, st.st_ino)
        c = sock.cgroupstats(target.dir_fd)
        counts = (c.nr_running, c.nr_sleeping, c.nr_uninterruptible, c.nr_stopped, c.nr_io_wait)
        if not any(counts):
            # A held fd of a removed v1 cgroup still answers, with all zeros (seen on 6.18:
            # cgroupstats_build() finds the dying cgroup through the fd). rmdir needs an
            # empty cgroup, so only an all-zero answer can come from one: check the path.
            try:
                st = os.stat(target.resolved.path)
            except FileNotFoundError as exc:
                raise CgroupNotFound(f"{target.resolved.path}: cgroup was removed") from exc
            if (st.st_dev, st.st_ino) != target.dir_id:
                raise CgroupNotFound(f"{target.resolved.path}: cgroup was removed (and re-created)")
        return counts

    def _socket(self):
        sock = self._sock
        if sock is not None:
            return sock
        with self._lock:
            if self._closed:
                raise CgshimError("this Reader is closed")
            if self._sock is None and self._netlink_down is None:
                try:
                    sock = netlink.open_socket(self._timeout)
                    sock.family_id  # noqa: B018 -- resolves the family now, once
                except NetlinkError as exc:
                    if exc.errno in _NETLINK_DOWN:
                        self._netlink_down = str(exc)
                    raise
                except OSError as exc:
                    self._netlink_down = f"netlink socket: {exc}"
                    raise NetlinkError(exc.errno or errno.EIO, self._netlink_down) from exc
                self._sock = sock
            if self._sock is None:
                raise NetlinkError(errno.ENOENT, self._netlink_down)
            return self._sock

    def _scan_counts(self, target):
        resolved = target.resolved
        counts = self._scanner.scan_file(os.path.join(resolved.path, _LIST_FILE[resolved.version]))
        if counts.nr_listed and counts.nr_listed == counts.nr_vanished:
            # Either every thread exited in between, or none of the tids is visible in this
            # pid namespace. Look once more: a live cgroup cannot vanish twice in a row.
            counts = self._scanner.scan_file(os.path.join(resolved.path, _LIST_FILE[resolved.version]))
            if counts.nr_listed and counts.nr_listed == counts.nr_vanished:
                raise _NotVisible(f"none of the {counts.nr_listed} listed threads is visible "
                                  f"in this pid namespace's /proc")
        if counts.nr_hidden:
            # Listed as "0": tasks with no pid in this pid namespace. Counting the rest
            # would be a silently wrong (partial) number.
            raise _NotVisible(f"{counts.nr_hidden} of the cgroup's tasks have no pid in this "
                              f"pid namespace")
        if counts.nr_denied:
            raise PermissionDenied(f"{counts.nr_denied} thread stat files of {resolved.path} "
                                   f"are not readable")
        return (counts.nr_running, counts.nr_sleeping, counts.nr_uninterruptible,
                counts.nr_stopped, None)

    def _add_descendants(self, target, counts, source, reason):
        if target.resolved.version == 2 and cgroupfs.nr_descendants(target.resolved.path) == 0:
            return counts, reason
        total = list(counts)
        for child in cgroupfs.walk(target.resolved.path):
            # Locks are taken top-down (a cgroup before its descendants): no cycle.
            child_target = self._target(child)
            with child_target.lock:
                gone = child_target.closed
                if not gone:
                    try:
                        part, child_source, child_reason = self._counts(child_target)
                    except CgroupNotFound:
                        gone = True
            if gone:
                self.forget(child)
                continue  # removed while we walked
            if part is None:
                raise PermissionDenied(f"{child}: {child_reason}")
            if child_source != source and reason is None:
                reason = f"{child}: {child_reason}"
            total = [None if a is None or b is None else a + b for a, b in zip(total, part)]
        return tuple(total), reason

    def _pressure(self, target):
        for _ in range(2):  # a held fd of a removed cgroup's file: reopen by path, once
            if target.psi_fd is None and not self._open_pressure(target):
                return None
            try:
                data = os.pread(target.psi_fd, 4096, 0)
            except OSError as exc:
                fd, target.psi_fd, target.psi_checked = target.psi_fd, None, None
                os.close(fd)
                if exc.errno in _GONE:
                    continue
                if exc.errno == errno.EOPNOTSUPP:
                    return None  # PSI switched off
                raise PermissionDenied(f"cpu.pressure of {target.resolved.path}: {exc}") from exc
            return psi.parse_pressure(data.decode("ascii", "replace"))
        return None

    def _open_pressure(self, target):
        """Open the cpu.pressure file that belongs to target; False if there is none."""
        now = time.monotonic()
        if target.psi_checked is not None and now - target.psi_checked < self.PRESSURE_RECHECK:
            return False
        target.psi_checked = now
        resolved = target.resolved
        v2_dir = resolved.path if resolved.version == 2 else _twin_v2(resolved, self.hierarchy)
        if v2_dir is None:
            return False
        file = os.path.join(v2_dir, "cpu.pressure")
        try:
            target.psi_fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            if exc.errno == errno.ENODEV:  # the cgroup is being removed: ENODEV at open()
                if resolved.version == 1:
                    return False  # only the v1 cgroup's v2 twin is going
                raise CgroupNotFound(f"{resolved.path}: cgroup was removed") from exc
            if not isinstance(exc, PermissionError):
                raise _os_error(exc, file) from exc
            target.psi_denied = f"{file}: {exc.strerror}"
            return False
        target.psi_denied = None
        return True


class _NotVisible(CgshimError):
    """Internal: the cgroup's tids are not visible in this pid namespace."""


def _open_dir(path):
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise CgroupNotFound(f"{path}: no such cgroup") from exc
    except OSError as exc:
        raise _os_error(exc, path) from exc


def _os_error(exc, path):
    """A typed error for an unexpected OSError on ``path``."""
    if isinstance(exc, PermissionError):
        return PermissionDenied(f"{path}: {exc.strerror}")
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return CgshimError(f"{path}: out of file descriptors (errno {errno.errorcode[exc.errno]}); "
                           f"raise RLIMIT_NOFILE or lower Reader(max_cgroups=..., max_fds=...)")
    return CgshimError(f"{path}: {exc}")


def _effective_max_cgroups(max_cgroups):
    """max_cgroups capped to 1/8 of the soft RLIMIT_NOFILE (each holds up to two fds)."""
    if max_cgroups < 1:
        raise ValueError(f"max_cgroups must be >= 1, not {max_cgroups}")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        max_cgroups = min(max_cgroups, max(1, soft // 8))
    return max_cgroups


_default = None
_default_lock = threading.Lock()


def default_reader():
    """The module-level Reader behind :func:`get_cpu_load`, created on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Reader()
    return _default


def get_cpu_load(path, *, recursive=False):
    """Read a cgroup's task counts and CPU pressure on any cgroup host.

    See :meth:`Reader.cpu_load`; this uses one shared module-level Reader.
    """
    return default_reader().cpu_load(path, recursive=recursive)
