"""Reader: the one place that chooses how a cgroup's CPU load is read.

A Reader tries an ordered chain of backends, per cgroup, the first that answers wins
(``Reader(backends=(...))``; the default is every backend in :data:`BACKENDS` order, each
used only for the cgroup versions it reads):

0. ``bpf`` -- for cgroup2 cgroups: cgshim's BPF iterator pass (cgshim/kernel/bpf.py), one
   read for every cgroup's own threads by /proc letter. Pinned by ``python -m cgshim bpf
   pin`` (read by any uid, no capabilities), else loaded by this Reader when it has
   CAP_BPF + CAP_PERFMON; else the chain goes on to the scan, with the reason. A sweep
   reads one pass; one cgroup is read through a link to it alone when this Reader loaded
   the program (BPF_CGROUP_ITER_SELF_ONLY), else through a whole pass of the pin.
1. ``netlink`` -- CGROUPSTATS_CMD_GET (kernel/taskstats.c, cgroupstats_build() in
   kernel/cgroup/cgroup-v1.c) on the cgroup's directory, for cgroups on a v1 hierarchy,
   while the TASKSTATS family answers. Implementation: the C core (``"native"``), or
   pyroute2 (``"pyroute2"``) when the C core does not load.
2. ``scan`` -- the state of each thread listed in ``cgroup.threads`` (v2) or ``tasks``
   (v1), read from /proc/<tid>/task/<tid>/stat: on cgroup2, or on v1 when netlink is not
   chosen or does not answer (no TASKSTATS family, ENOENT outside the host network
   namespace on older kernels, EPERM, a socket that cannot be made, a timeout).
   Implementation: the C scanner (``"native"``) or pure Python (``"python"``).
3. ``psi`` -- when the threads cannot be enumerated (permission denied on the list or the
   stat files, or none of the tids visible in this pid namespace): counts are None.

Every reading names its backend (``CpuLoad.source``) and implementation
(``CpuLoad.implementation``); why a backend earlier in the chain was passed over is in
``CpuLoad.reason``. :func:`backends` says which backends this host offers, and how.
Adding a backend is one class and one entry in :data:`BACKENDS`.

``pressure`` comes from ``cpu.pressure`` of the cgroup2 directory (on a hybrid host, the
v1 cgroup's twin in the unified hierarchy, when it exists).

A Reader holds what makes repeated reads cheap: one netlink socket with its family id,
the resolution of each path, and open fds (the v1 directory for CGROUPSTATS, the
cpu.pressure file, the scanner's stat fds, the bpf link to one cgroup). A cached fd of a cgroup that has been removed
answers ENOENT/ENODEV; the entry is then dropped and the path resolved anew, so a
re-created cgroup of the same name is read correctly and a gone one raises CgroupNotFound.
"""
import collections
import errno
import importlib.util
import os
import resource
import threading
import time
import warnings

from cgshim import _native
from cgshim.kernel import bpf, cgroupfs, netlink, psi, threadstat
from cgshim.kernel.mounts import hierarchy as _load_hierarchy, resolve as _resolve, twin_v2 as _twin_v2
from cgshim.errors import (
    BpfError, CgroupNotFound, CgshimError, FamilyNotFound, NetlinkError, NetlinkTimeout, PermissionDenied,
    Unsupported, translate,
)
from cgshim.kernel.mounts import Resolved
from cgshim.model import BackendStatus, CpuLoad, Sweep
from cgshim.kernel.schedstat import boot_ticks
from cgshim.kernel.threadstat import Scanner
from cgshim.runnable import RunnableTracker

_LIST_FILE = {1: "tasks", 2: "cgroup.threads"}
_GONE = (errno.ENOENT, errno.ENODEV)
# Errors that mean "netlink cannot serve this host/process", remembered for the Reader's life.
_NETLINK_DOWN = (errno.ENOENT, errno.EPERM, errno.EACCES, errno.EPROTONOSUPPORT,
                 errno.EAFNOSUPPORT, errno.ESOCKTNOSUPPORT)


class _Target:
    """A resolved cgroup and the fds held open to read it.

    ``lock`` is held while the fds are in use, so that eviction by another thread closes
    them only between reads; a reader that then finds ``closed`` resolves the path again.
    """

    __slots__ = ("resolved", "dir_fd", "dir_id", "psi_fd", "psi_path", "psi_checked",
                 "psi_denied", "lock", "closed", "used", "list_fd", "clock_key", "clocks",
                 "walk_id", "psi_last", "bpf_fd")

    def __init__(self, resolved):
        self.resolved = resolved
        self.dir_fd = None
        self.dir_id = None  # (st_dev, st_ino) of the directory dir_fd was opened on
        self.psi_fd = None
        self.psi_path = None  # the cpu.pressure file psi_fd was opened on
        self.psi_checked = None  # monotonic time of the last look for a cpu.pressure file
        self.psi_denied = None  # why cpu.pressure could not be opened, if refused
        self.lock = threading.Lock()
        self.closed = False
        self.used = True  # CLOCK bit: read since the last eviction sweep passed it
        self.list_fd = None  # the thread list, held by Reader.sweep's scan
        self.clock_key = None  # (st_dev, st_ino) of the directory: its runnable counters' key
        self.clocks = None  # (run_ns, wait_ns) counters of the current read, if the backend has them
        self.walk_id = None  # (walk generation, (st_dev, st_ino)): the directory as a quiet sweep saw it
        self.psi_last = None  # (bytes, Pressure) of the last cpu.pressure read
        self.bpf_fd = None  # the bpf backend's link of the per-cgroup iterator to this cgroup alone

    def close(self):
        with self.lock:
            self.closed = True
            for fd in (self.dir_fd, self.psi_fd, self.list_fd, self.bpf_fd):
                if fd is not None:
                    os.close(fd)
            self.dir_fd = self.psi_fd = self.list_fd = self.bpf_fd = None


# ------------------------------------------------------------------------------ backends


class _PassOver(CgshimError):
    """Internal: this backend cannot read this cgroup now; ``why`` goes into the reading's
    reason and the next backend in the chain is tried. ``error`` is what to raise when no
    backend is left."""

    def __init__(self, why, error=None):
        super().__init__(why)
        self.why = why
        self.error = error


class _NotVisible(CgshimError):
    """Internal: the cgroup's tids are not visible in this pid namespace."""


class _Backend:
    """One way to count a cgroup's tasks; one instance per Reader.

    ``counts(target)`` (called with ``target.lock`` held) returns a
    :class:`cgshim.model.TaskCounts`, or None for a reading without counts; raises
    :class:`_PassOver` to let the next backend try, or a CgshimError (CgroupNotFound) to
    end the read. ``implementation`` names the code that reads. ``probe()`` is
    :func:`backends`' look at this host.
    """

    name = None
    cgroup_versions = ()
    implementation = None

    def __init__(self, reader, *, proc_root, timeout, max_fds):
        self.reader = reader

    def counts(self, target):
        raise NotImplementedError

    def counts_many(self, targets):
        """The node sweep's read (:meth:`Reader.sweep`): many cgroups in one pass. Returns
        a list in the order of ``targets``, each a 5-tuple of counts in
        :data:`cgshim.model.COUNT_FIELDS` order, None (a reading without counts), a
        :class:`_PassOver`, or the CgshimError that cgroup got. Called by one thread at a
        time (the Reader's sweep lock); the targets are the sweep's own. A backend that
        reads many cgroups natively overrides this; the default asks :meth:`counts`."""
        out = []
        for target in targets:
            try:
                counts = self.counts(target)
            except CgshimError as exc:  # _PassOver included
                out.append(exc)
                continue
            out.append(None if counts is None else
                       (counts.nr_running, counts.nr_sleeping, counts.nr_uninterruptible,
                        counts.nr_stopped, counts.nr_io_wait))
        return out

    def close(self):
        pass

    @classmethod
    def probe(cls, hier, proc_root):
        """(available, implementation, reason) of this backend on this host."""
        raise NotImplementedError


class _Netlink(_Backend):
    name = "netlink"
    cgroup_versions = (1,)

    def __init__(self, reader, *, proc_root, timeout, max_fds):
        super().__init__(reader, proc_root=proc_root, timeout=timeout, max_fds=max_fds)
        self._timeout = timeout
        self._sock = None
        self._lock = threading.Lock()
        self.down = None  # why netlink cannot serve this Reader, remembered
        self.implementation = _netlink_implementation()[0]

    def close(self):
        with self._lock:
            sock, self._sock = self._sock, None
            self.down = self.down or "this Reader is closed"
        if sock is not None:
            sock.close()

    def counts(self, target):
        if self.down is not None:
            raise _PassOver(f"netlink unavailable ({self.down})",
                            Unsupported(f"netlink unavailable: {self.down}"))
        try:
            sock = self._socket()
            if target.dir_fd is None:
                target.dir_fd = _open_dir(target.resolved.path)
                st = os.fstat(target.dir_fd)
                target.dir_id = (st.st_dev, st.st_ino)
            counts = sock.cgroupstats(target.dir_fd)
        except NetlinkTimeout as exc:
            raise _PassOver(f"netlink: {exc}", exc) from exc
        except FamilyNotFound as exc:
            self.down = str(exc)
            raise _PassOver(f"netlink unavailable ({exc})", exc) from exc
        except NetlinkError as exc:
            if exc.errno in _GONE:
                raise CgroupNotFound(f"{target.resolved.path}: cgroup was removed") from exc
            raise _PassOver(f"netlink: {exc}", exc) from exc
        except Unsupported as exc:  # no implementation loads
            self.down = str(exc)
            raise _PassOver(f"netlink unavailable ({exc})", exc) from exc
        if not (counts.nr_running or counts.nr_sleeping or counts.nr_uninterruptible
                or counts.nr_stopped or counts.nr_io_wait):
            _still_there(target)
        return counts

    def counts_many(self, targets):
        """CGROUPSTATS for every target in one native call (cg_nl_cgroupstats_many): the
        requests go out back to back and the answers come back by sequence number, one
        cgroup's error staying with that cgroup. Same verdicts as :meth:`counts`."""
        if self.down is not None:
            why = _PassOver(f"netlink unavailable ({self.down})",
                            Unsupported(f"netlink unavailable: {self.down}"))
            return [why] * len(targets)
        try:
            sock = self._socket()
        except (NetlinkError, Unsupported) as exc:
            if isinstance(exc, Unsupported) or isinstance(exc, FamilyNotFound):
                self.down = self.down or str(exc)
            why = _PassOver(f"netlink unavailable ({exc})", exc)
            return [why] * len(targets)
        if not isinstance(sock, netlink.TaskstatsSocket):  # pyroute2: one by one
            return super().counts_many(targets)
        out = [None] * len(targets)
        fds, where = [], []
        for i, target in enumerate(targets):
            if target.dir_fd is None:
                try:
                    target.dir_fd = _open_dir(target.resolved.path)
                    st = os.fstat(target.dir_fd)
                except CgshimError as exc:
                    out[i] = exc
                    continue
                target.dir_id = (st.st_dev, st.st_ino)
            fds.append(target.dir_fd)
            where.append(i)
        try:
            answers, errs = sock.cgroupstats_many_raw(fds)
        except FamilyNotFound as exc:
            self.down = str(exc)
            why = _PassOver(f"netlink unavailable ({exc})", exc)
            for i in where:
                out[i] = why
            return out
        except NetlinkError as exc:  # the socket itself failed: every cgroup passes over
            why = _PassOver(f"netlink: {exc}", exc)
            for i in where:
                out[i] = why
            return out
        for k, i in enumerate(where):
            err = errs[k]
            target = targets[i]
            if err:
                if err in _GONE:
                    out[i] = CgroupNotFound(f"{target.resolved.path}: cgroup was removed")
                    continue
                exc = netlink._error(err, f"cgroupstats of {target.resolved.path}",
                                     netlink._CGROUPSTATS_HINTS)
                out[i] = _PassOver(f"netlink: {exc}", exc)
                continue
            c = answers[k]
            counts = (c.nr_running, c.nr_sleeping, c.nr_uninterruptible, c.nr_stopped,
                      c.nr_io_wait)
            if not any(counts):
                try:
                    _still_there(target)
                except CgroupNotFound as exc:
                    out[i] = exc
                    continue
            out[i] = counts
        return out

    def _socket(self):
        sock = self._sock
        if sock is not None:
            return sock
        with self._lock:
            if self._sock is None and self.down is None:
                try:
                    sock = netlink.open_socket(self._timeout)
                    sock.family_id  # noqa: B018 -- resolves the family now, once
                except NetlinkError as exc:
                    if exc.errno in _NETLINK_DOWN:
                        self.down = str(exc)
                    raise
                except OSError as exc:
                    self.down = f"netlink socket: {exc}"
                    raise NetlinkError(exc.errno or errno.EIO, self.down) from exc
                self.implementation = "native" if isinstance(sock, netlink.TaskstatsSocket) \
                    else "pyroute2"
                self._sock = sock
            if self._sock is None:
                raise NetlinkError(errno.ENOENT, self.down)
            return self._sock

    @classmethod
    def probe(cls, hier, proc_root):
        implementation, fallback = _netlink_implementation()
        if implementation is None:
            return False, None, fallback
        if hier is not None and not hier.v1:
            return False, None, ("no cgroup v1 hierarchy on this host: CGROUPSTATS reads "
                                 "only v1 cgroups (cgroup2 directories answer EINVAL)")
        try:
            with netlink.open_socket(1.0) as sock:
                sock.family_id  # noqa: B018
        except CgshimError as exc:
            return False, None, str(exc)
        return True, implementation, fallback


def _still_there(target):
    """A held fd of a removed v1 cgroup still answers CGROUPSTATS, with all zeros (seen on
    6.18: cgroupstats_build() finds the dying cgroup through the fd). rmdir needs an empty
    cgroup, so only an all-zero answer can come from one: check the path is still the
    directory the fd was opened on; CgroupNotFound if not."""
    try:
        st = os.stat(target.resolved.path)
    except OSError as exc:  # ENOENT/ENODEV: CgroupNotFound
        raise translate(exc, target.resolved.path, cgroup=target.resolved.path) from exc
    if (st.st_dev, st.st_ino) != target.dir_id:
        raise CgroupNotFound(f"{target.resolved.path}: cgroup was removed (and re-created)")


def _netlink_implementation():
    """(what netlink.open_socket() will use or None, why not the C core or None)."""
    if _native.netlink is not None:
        return "native", None
    why = f"the C core does not load ({_native.load_errors.get('netlink')})"
    if importlib.util.find_spec("pyroute2") is None:
        return None, f"{why}, and pyroute2 is not installed (pip install 'cgshim[reference]')"
    return "pyroute2", f"{why}: pyroute2 reads instead"


class _Scan(_Backend):
    name = "scan"
    cgroup_versions = (1, 2)

    def __init__(self, reader, *, proc_root, timeout, max_fds):
        super().__init__(reader, proc_root=proc_root, timeout=timeout, max_fds=max_fds)
        self.scanner = Scanner(proc_root, max_fds)
        self.implementation = "native" if self.scanner.native else "python"
        self.listed = 0  # threads listed by counts_many since the sweep reset it (sizes the cache)
        self._fitted = None  # (threads, warning) of the last resize that fell short

    def close(self):
        self.scanner.close()

    def counts(self, target):
        try:
            return self._scan(target)
        except PermissionDenied as exc:
            raise _PassOver(f"threads cannot be enumerated: {exc}", exc) from exc
        except _NotVisible as exc:
            raise _PassOver(str(exc), PermissionDenied(f"{target.resolved.path}: {exc}")) from exc

    def _scan(self, target):
        resolved = target.resolved
        list_file = os.path.join(resolved.path, _LIST_FILE[resolved.version])
        exact = self.reader._runnable is not None
        for _ in range(2):
            ticks = boot_ticks()  # before the list is read (RunnableTracker.account)
            if exact:
                counts, clocks = self.scanner.scan_file_clocks(list_file)
            else:
                counts, clocks = self.scanner.scan_file(list_file), None
            if not (counts.nr_listed and counts.nr_listed == counts.nr_vanished):
                break
            # Either every thread exited in between, or none of the tids is visible in this
            # pid namespace. Look once more: a live cgroup cannot vanish twice in a row.
        else:
            raise _NotVisible(f"none of the {counts.nr_listed} listed threads is visible "
                              f"in this pid namespace's /proc")
        _scan_verdict(resolved, counts)
        if clocks is not None:
            self.reader._account(target, clocks, ticks)
        return counts

    def counts_many(self, targets):
        """All thread lists in one C call (cg_scanner_scan_many) over list fds held
        between sweeps; same verdicts as :meth:`counts`. The cache is then sized to the
        node (:meth:`fit_cache`)."""
        if not self.scanner.native:
            return super().counts_many(targets)
        out = [None] * len(targets)
        fds, where, transient = [], [], []
        try:
            for i, target in enumerate(targets):
                fd = target.list_fd
                if fd is None:
                    resolved = target.resolved
                    file = os.path.join(resolved.path, _LIST_FILE[resolved.version])
                    try:
                        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError as exc:
                        out[i] = self._pass_over(translate(exc, file, cgroup=resolved.path))
                        continue
                    if resolved.version == 2:
                        target.list_fd = fd  # cgroup.threads: a pread from 0 lists anew
                    else:
                        # v1 "tasks" keeps the pid list it built for an open file for a
                        # while (kernel/cgroup/cgroup-v1.c, cgroup_pidlist_start and
                        # CGROUP_PIDLIST_DESTROY_DELAY): a held fd reads stale. Open anew.
                        transient.append(fd)
                fds.append(fd)
                where.append(i)
            counts, errs, clocks, ticks = self._scan_many(fds)
            retry = []
            for k, i in enumerate(where):
                out[i] = self._outcome(targets[i], counts[k], errs[k], retry, i)
                if clocks is not None and isinstance(out[i], tuple):
                    self.reader._account(targets[i], clocks[k], ticks)
            if retry:
                # Either every thread exited in between, or none of the tids is visible in
                # this pid namespace. Look once more: a live cgroup cannot vanish twice in a
                # row.
                again = []
                for i in retry:
                    fd = fds[where.index(i)]
                    if targets[i].resolved.version == 1:  # a fresh pid list (see above)
                        try:
                            fd = os.open(os.path.join(targets[i].resolved.path, "tasks"),
                                         os.O_RDONLY | os.O_CLOEXEC)
                        except OSError:
                            pass  # the old one: its error, if any, shows in the scan
                        else:
                            transient.append(fd)
                    again.append(fd)
                counts, errs, clocks, ticks = self._scan_many(again)
                for k, i in enumerate(retry):
                    out[i] = self._outcome(targets[i], counts[k], errs[k], None, i)
                    if clocks is not None and isinstance(out[i], tuple):
                        self.reader._account(targets[i], clocks[k], ticks)
        finally:
            for fd in transient:
                os.close(fd)
        return out

    def _scan_many(self, fds):
        """(counts, errs, clocks or None, boot ticks before the lists were read)."""
        ticks = boot_ticks()
        if self.reader._runnable is None:
            return (*self.scanner.scan_many_raw(fds), None, ticks)
        return (*self.scanner.scan_many_clocks(fds), ticks)

    def _outcome(self, target, c, err, retry, i):
        """One list's result of scan_many as counts_many returns it; with ``retry`` a
        list whose every thread vanished is put there instead (to be scanned again)."""
        if err:
            resolved = target.resolved
            file = os.path.join(resolved.path, _LIST_FILE[resolved.version])
            return self._pass_over(threadstat.list_error(err, file), target)
        if c.nr_listed and c.nr_listed == c.nr_vanished:
            if retry is not None:
                retry.append(i)
                return None
            return self._pass_over(_NotVisible(f"none of the {c.nr_listed} listed threads is "
                                               f"visible in this pid namespace's /proc"), target)
        self.listed += c.nr_listed
        try:
            _scan_verdict(target.resolved, c)
        except (PermissionDenied, _NotVisible) as exc:
            return self._pass_over(exc, target)
        return (c.nr_running, c.nr_sleeping, c.nr_uninterruptible, c.nr_stopped, None)

    @staticmethod
    def _pass_over(exc, target=None):
        if isinstance(exc, PermissionDenied):
            return _PassOver(f"threads cannot be enumerated: {exc}", exc)
        if isinstance(exc, _NotVisible):
            return _PassOver(str(exc), PermissionDenied(f"{target.resolved.path}: {exc}"))
        return exc

    def fit_cache(self, threads, reserve):
        """Size the scanner's fd cache to hold ``threads`` stat files (what the last sweep
        listed, with room to grow), within RLIMIT_NOFILE less the fds the rest of the
        process holds and ``reserve`` more for what it may open; raise the soft limit to the hard one first if that is needed and
        allowed (as node agents do). Returns a warning if the cache cannot hold them."""
        files = "stat"
        if self.reader._runnable is not None:
            threads *= 2  # each thread's stat and schedstat files (exact load)
            files = "stat and schedstat"
        want = threads + threads // 4 + 64
        if want <= self.scanner.max_fds:
            return None
        last = self._fitted
        if last is not None and last[0] <= threads <= last[0] + last[0] // 8:
            return last[1]  # sized for this node already, within the limit it had
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < want + reserve and soft != hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (ValueError, OSError):
                pass
        # what the rest of the process holds now (the caller's own fds count too)
        others = max(0, _open_fd_count() - self.scanner.cached_fds)
        budget = want if soft == resource.RLIM_INFINITY else max(0, soft - others - reserve)
        self.scanner.set_max_fds(min(want, budget))
        warning = None
        if self.scanner.max_fds < threads:
            warning = (f"the scanner's fd cache holds {self.scanner.max_fds} of the node's "
                       f"{threads} {files} files (RLIMIT_NOFILE soft {soft}, hard {hard}): the "
                       f"others are opened and closed on every sweep; raise the hard limit "
                       f"(ulimit -n, LimitNOFILE=, or the container runtime's nofile)"
                       + ("; or Reader(runnable=False) for one file per thread"
                          if self.reader._runnable is not None else ""))
        self._fitted = (threads, warning)
        return warning

    @classmethod
    def probe(cls, hier, proc_root):
        try:
            Scanner(proc_root, 0).close()
        except CgshimError as exc:
            return False, None, str(exc)
        if _native.procscan is not None:
            return True, "native", None
        return True, "python", (f"the C core does not load ({_native.load_errors.get('procscan')}): "
                                f"pure Python scans instead")


def _open_fd_count():
    """How many fds this process holds (counted when the fd cache is resized, not per pass)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the listing's own
    except OSError:
        return 0


def _scan_verdict(resolved, counts):
    """Raise if a scan's counts cannot be the cgroup's counts: tasks without a pid in this
    pid namespace ("0" lines; counting the rest would be a silently wrong, partial number)
    or stat files that were refused."""
    if counts.nr_hidden:
        raise _NotVisible(f"{counts.nr_hidden} of the cgroup's tasks have no pid in this "
                          f"pid namespace")
    if counts.nr_denied:
        raise PermissionDenied(f"{counts.nr_denied} thread stat files of {resolved.path} "
                               f"are not readable")


class _Bpf(_Backend):
    """cgshim's BPF iterators (see cgshim/kernel/bpf.py): a sweep reads one pass of the
    whole hierarchy; one cgroup is read through a link to it alone where this process
    loaded the program (it may attach), else through a whole pass of the pin. Where there
    is neither a pin nor the capabilities to load, it passes over to the next backend with
    the reason, and looks again after RECHECK seconds (a pin may appear)."""

    name = "bpf"
    cgroup_versions = (2,)
    RECHECK = 30.0

    def __init__(self, reader, *, proc_root, timeout, max_fds):
        super().__init__(reader, proc_root=proc_root, timeout=timeout, max_fds=max_fds)
        self._pin_dir, self._proc_root = reader.bpf_pin_dir, proc_root
        v2 = reader.hierarchy.v2
        self._v2_root = None if v2 is None else v2.mount_point
        self._lock = threading.Lock()
        self._source = None
        self.down, self._down_at = None, 0.0
        self.implementation = "native" if _native.bpf is not None else "python"

    def close(self):
        with self._lock:
            source, self._source = self._source, None
            self.down, self._down_at = "this Reader is closed", float("inf")
        if source is not None:
            source.close()

    def _get_source(self):
        source = self._source
        if source is not None:
            return source
        with self._lock:
            if self._source is None:
                if self.down is not None and time.monotonic() - self._down_at < self.RECHECK:
                    raise _PassOver(f"bpf unavailable ({self.down})", Unsupported(f"bpf: {self.down}"))
                try:
                    _check_v2_root(self._v2_root)
                    self._source = bpf.Source.open(self._pin_dir, self._v2_root,
                                                   proc_root=self._proc_root)
                except BpfError as exc:
                    self.down, self._down_at = str(exc), time.monotonic()
                    raise _PassOver(f"bpf unavailable ({exc})", exc) from exc
                self.down = None
            return self._source

    def counts(self, target):
        source = self._get_source()
        if source.links:
            return self._counts_alone(source, target)
        p = self.read_pass()
        self._check_covers(p)
        key = self._dir_key(target)
        counts = p.task_counts(key[1])
        self._account(target, key, counts.sum_exec_runtime, counts.run_delay)
        return counts

    def _counts_alone(self, source, target):
        """One cgroup read through a link of the per-cgroup program to it alone, held
        with the target (a Source that loaded the program: it may attach): the cgroup's
        own threads only, not the node's. Its removal shows as root 0: CgroupNotFound."""
        path = target.resolved.path
        try:
            if target.bpf_fd is None:
                target.bpf_fd = source.self_link(path)
            p = source.read_link(target.bpf_fd)
        except OSError as exc:
            raise translate(exc, path, cgroup=path) from exc
        except BpfError as exc:
            raise _PassOver(f"bpf: {exc}", exc) from exc
        if p.root == 0:
            raise CgroupNotFound(f"{path}: cgroup was removed")
        try:
            st = os.stat(path)
        except OSError as exc:
            raise translate(exc, path, cgroup=path) from exc
        # The link holds its cgroup, not the path. cgroup2 cannot rename, and a removed one
        # reads as root 0 above; this check keeps the reading that of the cgroup the path
        # names now whatever the link was attached to.
        if st.st_ino != p.root:
            raise CgroupNotFound(f"{path}: names another cgroup than the one read before")
        counts = p.task_counts(p.root)
        self._account(target, (st.st_dev, st.st_ino), counts.sum_exec_runtime, counts.run_delay)
        return counts

    def read_pass(self):
        """One fresh pass (a node sweep reads one and looks each cgroup up in it)."""
        try:
            return self._get_source().read_pass()
        except BpfError as exc:
            raise _PassOver(f"bpf: {exc}", exc) from exc

    def counts_many(self, targets):
        """The node sweep: one pass for every target (same verdicts as :meth:`counts`)."""
        try:
            p = self.read_pass()
            self._check_covers(p)
        except _PassOver as exc:
            return [exc] * len(targets)
        # No cgroup created or removed below the swept roots since their walk (the
        # inotify queue still empty after the pass, each root the directory walked): the
        # directories are the ones stat()ed in an earlier quiet sweep of this walk, and a
        # stat each is saved.
        trees = self.reader._trees
        walk = trees.generation if trees.quiet() else None
        out = []
        for target in targets:
            try:
                key = self._dir_key(target, walk)
            except CgshimError as exc:
                out.append(exc)
                continue
            c = p.counts(key[1])
            self._account(target, key, c[5], c[6])
            out.append(c[:5])
        return out

    def _check_covers(self, p):
        """A pin attached below the cgroup2 root (bpf pin --cgroup-root) covers only its
        subtree: _PassOver for every cgroup rather than zeros for those outside it."""
        if p.root > 1 and p.root != os.stat(self._v2_root).st_ino:
            raise _PassOver(f"bpf: the pass covers only cgroup {p.root} and below, not all "
                            f"of {self._v2_root}")

    @staticmethod
    def _dir_key(target, walk=None):
        """(st_dev, st_ino) of target's directory, stat()ed after the pass (a cgroup
        removed meanwhile is not "empty": CgroupNotFound), or as stat()ed in this walk
        when ``walk`` is the generation of a walk nothing has changed since."""
        known = target.walk_id
        if walk is not None and known is not None and known[0] == walk:
            return known[1]
        path = target.resolved.path
        try:
            st = os.stat(path)
        except OSError as exc:
            raise translate(exc, path, cgroup=path) from exc
        key = (st.st_dev, st.st_ino)
        target.walk_id = None if walk is None else (walk, key)
        return key

    def _account(self, target, key, run_sum, wait_sum):
        """Exact load from the pass's per-cgroup sums, when the Reader keeps it."""
        if self.reader._runnable is not None:
            self.reader._account_sums(target, key, run_sum, wait_sum)

    @classmethod
    def probe(cls, hier, proc_root):
        if hier is not None and hier.v2 is None:
            return False, None, "no cgroup2 mount: the bpf pass reads cgroup2 cgroups"
        impl = "native" if _native.bpf is not None else "python"
        try:
            _check_v2_root(hier.v2.mount_point if hier else None)
            with bpf.Source.open(_default_pin_dir(), hier.v2.mount_point if hier else "/sys/fs/cgroup",
                                 proc_root=proc_root) as source:
                source.read_pass()
                how = source.description
        except BpfError as exc:
            return False, None, str(exc)
        return True, impl, None


def _check_v2_root(v2_root):
    """The pass reads this kernel's cgroups: the Reader's cgroup2 mount must be one of them
    (not, say, a fixture tree named by a test's mountinfo)."""
    if v2_root is None:
        raise BpfError(errno.ENOENT, "no cgroup2 mount")
    try:
        m = bpf.mount_of(v2_root)
    except OSError as exc:
        raise BpfError(exc.errno or errno.EIO, f"/proc/self/mountinfo: {exc.strerror}") from exc
    if m is None or m.fstype != "cgroup2":
        raise BpfError(errno.ENODEV, f"{v2_root} is not a cgroup2 mount of this kernel")


def _default_pin_dir():
    """Where Readers look for pins: $CGSHIM_BPF_PIN_DIR, else bpf.DEFAULT_PIN_DIR."""
    return os.environ.get("CGSHIM_BPF_PIN_DIR") or bpf.DEFAULT_PIN_DIR


class _Psi(_Backend):
    """No counts: the reading carries only cpu.pressure (read for every backend)."""

    name = "psi"
    cgroup_versions = (1, 2)
    implementation = "python"

    def counts(self, target):
        return None

    def counts_many(self, targets):
        return [None] * len(targets)

    @classmethod
    def probe(cls, hier, proc_root):
        if hier is not None and hier.v2 is None:
            return False, None, "no cgroup2 mount: cpu.pressure exists only in cgroup2"
        path = os.path.join(proc_root, "pressure", "cpu")
        try:
            pressure = psi.read_pressure(path)
        except CgshimError as exc:
            return False, None, str(exc)
        if pressure is None:
            return False, None, (f"{path}: PSI is off (psi=0 at boot, "
                                 f"CONFIG_PSI_DEFAULT_DISABLED) or the kernel has no CONFIG_PSI")
        return True, "python", None


#: Every backend by name, in the default chain's order. Adding a backend: one class above,
#: one entry here.
BACKENDS = {"bpf": _Bpf, "netlink": _Netlink, "scan": _Scan, "psi": _Psi}


def backends(*, mountinfo="/proc/self/mountinfo", proc_root="/proc"):
    """Which backends this host offers: ``{name: BackendStatus}`` in the default chain's order.

    ``available`` says whether the backend can read cgroups here, ``reason`` why not (or,
    when available, why its preferred implementation is not used), ``implementation`` what
    would read ("native", "python", "pyroute2"). As zstandard.backend, but per backend.
    """
    try:
        hier = _load_hierarchy(mountinfo)
    except CgshimError:
        hier = None  # each probe then says what it can without the mount table
    return {name: BackendStatus(name, *cls.probe(hier, proc_root),
                                cgroup_versions=cls.cgroup_versions)
            for name, cls in BACKENDS.items()}


def _chosen(backends, netlink):
    """The Reader's backend names, checked; ``netlink=False`` drops netlink (deprecated)."""
    if netlink is not None:
        warnings.warn("Reader(netlink=...) is deprecated: pass backends=(...) instead",
                      DeprecationWarning, stacklevel=3)
    if backends is None:
        backends = tuple(BACKENDS)
        if netlink is False:
            backends = tuple(b for b in backends if b != "netlink")
    elif isinstance(backends, str):
        raise TypeError(f"backends must be a sequence of names, not one string: ({backends!r},)")
    backends = tuple(backends)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends or len(set(backends)) != len(backends):
        raise ValueError(f"backends must be distinct names out of {', '.join(BACKENDS)}; "
                         f"got {backends!r}")
    return backends


# -------------------------------------------------------------------------------- Reader


class Reader:
    """A long-lived, thread-safe reader of cgroup CPU load (see the module docstring).

    - ``backends`` is the ordered chain of backend names to try (default: all of
      :data:`BACKENDS`, i.e. netlink -> scan -> psi on v1, bpf -> scan -> psi on v2). For example
      ``backends=("scan",)`` reads v1 cgroups by scan too, with the /proc meaning of every
      state (see :class:`cgshim.CpuLoad`), and raises where the scan cannot read.
      ``netlink=False`` is the deprecated spelling of leaving netlink out.
    - ``pressure=False`` skips cpu.pressure (``CpuLoad.pressure`` is None).
    - ``proc_root`` and ``mountinfo`` name the /proc to read (e.g. a host's /proc
      mounted into a container, or a fixture tree in tests).
    - ``timeout`` bounds each netlink request, in seconds.
    - ``bpf_pin_dir``: where the bpf backend looks for pins (default $CGSHIM_BPF_PIN_DIR,
      else /sys/fs/bpf/cgshim).
    - ``max_cgroups`` bounds the resolved cgroups kept with their open fds (up to two
      each; those not read lately are closed first), and is capped to 1/8 of the soft
      RLIMIT_NOFILE; ``max_fds`` bounds the scanner's held-open stat files, capped to 1/4
      (:func:`cgshim.kernel.threadstat.effective_max_fds`). Together at most 1/2 of the limit.
    - ``runnable=False`` skips exact load: the scan then reads no schedstat clocks and
      ``CpuLoad.runnable_seconds`` / ``runqueue_seconds`` are None (one pread and one held
      fd less per thread). ``runnable_unavailable`` says why they are None when the kernel
      has no schedstat files.
    """

    #: how long a cgroup without a cpu.pressure file waits before looking again, seconds
    PRESSURE_RECHECK = 5.0

    def __init__(self, *, backends=None, netlink=None, pressure=True, proc_root="/proc",
                 mountinfo="/proc/self/mountinfo", timeout=1.0, max_cgroups=1024, max_fds=4096,
                 runnable=True, bpf_pin_dir=None):
        self.backends = _chosen(backends, netlink)
        self.hierarchy = _load_hierarchy(mountinfo)
        self.bpf_pin_dir = bpf_pin_dir or _default_pin_dir()
        self._use_pressure = pressure
        self._max_cgroups = _effective_max_cgroups(max_cgroups)
        self._lock = threading.Lock()
        self._targets = collections.OrderedDict()  # path as given -> _Target
        self._closed = False
        self._backends = {}
        try:
            for name in self.backends:
                self._backends[name] = BACKENDS[name](self, proc_root=proc_root,
                                                      timeout=timeout, max_fds=max_fds)
        except BaseException:
            self.close()
            raise
        # The chain per cgroup version, fixed for the Reader's life.
        self._chains = {v: tuple(b for b in self._backends.values() if v in b.cgroup_versions)
                        for v in (1, 2)}
        # Exact load: per-thread clocks -> per-cgroup counters (cgshim.runnable), for the
        # backends that see threads' schedstat clocks; None (with the reason) if this /proc
        # has no schedstat files (a kernel without CONFIG_SCHED_INFO).
        self.runnable_unavailable = (_schedstat_missing(proc_root) if runnable
                                     else "exact load switched off (Reader(runnable=False))")
        self._runnable = RunnableTracker() if self.runnable_unavailable is None else None
        self._sweep_lock = threading.Lock()
        self._swept = {}  # absolute directory -> _Target held by sweep() between passes
        self._trees = _Trees()  # the cgroup trees sweep() walked, kept while none changes

    # -- lifecycle -------------------------------------------------------------------
    def close(self):
        """Close the netlink socket and every held fd. Idempotent."""
        with self._lock:
            self._closed = True
            targets = list(self._targets.values())
            self._targets.clear()
        with self._sweep_lock:  # after a sweep in flight
            targets += self._swept.values()
            self._swept = {}
            self._trees.close()
        for target in targets:  # outside the Reader lock: close() waits for readers
            target.close()
        for backend in self._backends.values():
            backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def netlink_unavailable(self):
        """Why netlink is not used by this Reader, or None while it is."""
        backend = self._backends.get("netlink")
        if backend is None:
            return "netlink is not among this Reader's backends"
        return backend.down

    @property
    def implementations(self):
        """``{backend name: implementation}`` of this Reader's backends, in chain order."""
        return {name: b.implementation for name, b in self._backends.items()}

    # -- the public read ------------------------------------------------------------
    def cpu_load(self, path, *, recursive=False):
        """Read one cgroup: an absolute directory on a cgroup mount, or a cgroup-relative
        name such as ``/kubepods.slice/...`` (see :func:`cgshim.kernel.mounts.resolve`).

        ``recursive=True`` adds the counts of every descendant cgroup (a pod as the sum of
        its containers); by default only the cgroup's own tasks count, as in the kernel.
        Raises CgroupNotFound, NotACgroup, PermissionDenied (a CgshimError each).
        """
        for _ in range(2):
            target = self._targets.get(path)  # the hit path of _target, inline
            if target is None:
                target = self._target(path)
            else:
                target.used = True
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
        if self._closed:
            raise CgshimError("this Reader is closed")
        target = _Target(_resolve(path, self.hierarchy))
        try:
            with target.lock:
                return self._read(target, recursive)
        finally:
            target.close()

    def _read(self, target, recursive):
        """One reading of target, whose lock the caller holds."""
        target.clocks = None
        counts, backend, reason = self._counts(target)
        if recursive and counts is not None:
            counts, reason = self._add_descendants(target, counts, backend, reason)
        if counts is not None:
            counts = (counts.nr_running, counts.nr_sleeping, counts.nr_uninterruptible,
                      counts.nr_stopped, counts.nr_io_wait)
        return self._reading(target, counts, backend, reason, recursive)

    # -- the node sweep -------------------------------------------------------------------
    def sweep(self, roots=None, *, recursive=False):
        """Read every cgroup at or below each root in one pass per backend: a
        :class:`cgshim.Sweep` mapping each cgroup's absolute directory to its CpuLoad.

        ``roots``: cgroup names (``/kubepods.slice``) or absolute cgroupfs directories, as
        :meth:`cpu_load` takes them; None means the host's default roots
        (:func:`default_roots`: the v1 ``cpu`` hierarchy on a v1 or hybrid host, cgroup2 on
        a unified one). ``recursive`` as in :meth:`cpu_load`: each reading then counts its
        descendants too. Each reading is the one :meth:`cpu_load` gives for that cgroup.

        Every backend reads all of its cgroups in one native call (netlink: CGROUPSTATS for
        all held directory fds back to back; scan: every thread list in one C scan with the
        held stat fds). What the pass holds between sweeps: per cgroup its directory or
        thread-list fd and cpu.pressure fd, resolved once when it first appears and closed
        in the pass that finds it gone. A cgroup that fails (removed mid-pass:
        CgroupNotFound) is in ``Sweep.errors``, never an exception; a root that does not
        exist too. Raises only for the Reader itself (closed) or a bad ``roots`` argument.
        """
        if isinstance(roots, (str, bytes)):
            raise TypeError("roots must be a sequence of cgroup paths or names, not one string")
        started = time.monotonic()
        errors, warnings_ = {}, []
        with self._sweep_lock:
            if self._closed:
                raise CgshimError("this Reader is closed")
            if roots is None:
                roots = default_roots(self.hierarchy)
            found, root_dirs = self._trees.discover(roots, errors, self._discover, warnings_)
            # Cgroups gone since the last pass: release their fds now.
            swept = self._swept
            for path in [p for p in swept if p not in found]:
                gone = swept.pop(path)
                gone.close()
                self._forget_clocks(gone)
            for path, resolved in found.items():
                if path not in swept:
                    swept[path] = _Target(resolved)
            scan = self._backends.get("scan")
            if scan is not None:
                scan.listed = 0
            results = self._sweep_counts([swept[p] for p in found])
            scanned = scan is not None and scan.listed > 0
            # Gone since the walk (or re-created under the same name, which left our fds on
            # the old directory): release, and read a fresh resolution of what still exists.
            stale = [p for p, r in results.items() if isinstance(r, CgroupNotFound)]
            fresh = []
            for path in stale:
                gone = swept.pop(path)
                gone.close()
                self._forget_clocks(gone)
                if os.path.isdir(path):
                    swept[path] = _Target(found[path])
                    fresh.append(swept[path])
            if fresh:
                results.update(self._sweep_counts(fresh))
            for path in stale:
                if isinstance(results[path], CgroupNotFound) and path in swept:
                    gone = swept.pop(path)
                    gone.close()
                    self._forget_clocks(gone)
            if recursive:
                results = _subtree_sums(found, results)
            readings = {}
            for path, result in results.items():
                if isinstance(result, CgshimError):
                    errors[path] = result
                    continue
                try:
                    readings[path] = self._reading(swept[path], *result, recursive)
                except CgshimError as exc:
                    errors[path] = exc
                    if isinstance(exc, CgroupNotFound):
                        gone = swept.pop(path)
                        gone.close()
                        self._forget_clocks(gone)
            scan = self._backends.get("scan")
            if scan is not None and scan.scanner.native and scan.listed and scanned:
                # room for what else may be opened: the cpu_load cache (2 per cgroup) and
                # the rest of the process
                warning = scan.fit_cache(scan.listed, 2 * self._max_cgroups + 256)
                if warning:
                    warnings_.append(warning)
        return Sweep(readings, timestamp=started, duration=time.monotonic() - started,
                     errors=errors, roots=root_dirs, warnings=warnings_)

    def _discover(self, roots, errors, before_listing=None):
        """{absolute directory: Resolved} of every cgroup at or below each root, parents
        before children, and {root as given: its directory}. A root that cannot be
        resolved or walked goes into ``errors`` under its name."""
        found, root_dirs = {}, {}
        for root in roots:
            try:
                resolved = _resolve(root, self.hierarchy)
                below = list(cgroupfs.walk(resolved.path, before_listing=before_listing))
            except CgshimError as exc:
                errors[root] = exc
                continue
            root_dirs[root] = resolved.path
            if resolved.path not in found:
                found[resolved.path] = resolved
            base = resolved.path.rstrip("/") + "/"
            name = resolved.name.rstrip("/") + "/"
            for path in below:
                if path not in found:
                    known = self._swept.get(path)
                    found[path] = known.resolved if known is not None else Resolved(
                        path=path, name=name + path[len(base):], version=resolved.version,
                        mount=resolved.mount)
        return found, root_dirs

    def _sweep_counts(self, targets):
        """{path: (counts 5-tuple or None, backend, reason) or CgshimError}: each version's
        chain of backends, each backend reading all the cgroups still open in one call."""
        for target in targets:
            target.clocks = None  # set by a backend that reads the threads' clocks
        results = {}
        for version in (1, 2):
            todo = [t for t in targets if t.resolved.version == version]
            reasons = {}
            passed = {}
            for backend in self._chains[version]:
                if not todo:
                    break
                answers = backend.counts_many(todo)
                left = []
                for target, answer in zip(todo, answers):
                    path = target.resolved.path
                    if isinstance(answer, _PassOver):
                        reason = reasons.get(path)
                        reasons[path] = answer.why if reason is None else f"{reason}; {answer.why}"
                        passed[path] = answer
                        left.append(target)
                    elif isinstance(answer, CgshimError):
                        results[path] = answer
                    else:
                        results[path] = (answer, backend, reasons.get(path))
                todo = left
            for target in todo:  # no backend left
                path = target.resolved.path
                last = passed.get(path)
                if last is None:
                    results[path] = Unsupported(
                        f"{path}: none of this Reader's backends ({', '.join(self.backends)}) "
                        f"reads cgroup v{version} cgroups")
                else:
                    results[path] = last.error or PermissionDenied(f"{path}: {reasons[path]}")
        return {t.resolved.path: results[t.resolved.path] for t in targets}

    def _reading(self, target, counts, backend, reason, recursive=False):
        """The CpuLoad of target from its counts (a tuple in CpuLoad's order, or None when
        the backend chain ended at psi): the one place a reading is built, for cpu_load and
        sweep alike."""
        clocks = None if recursive else target.clocks
        if not self._use_pressure or (target.psi_fd is None and target.psi_checked is not None
                                      and time.monotonic() - target.psi_checked
                                      < self.PRESSURE_RECHECK):
            pressure = None  # no cpu.pressure looked for lately (a v1 cgroup without twin)
        else:
            pressure = self._pressure(target)
        resolved = target.resolved
        if counts is None:
            if pressure is None:
                # Nothing readable: an error, not an empty reading.
                if target.psi_denied:
                    reason = f"{reason}; {target.psi_denied}"
                raise PermissionDenied(f"{resolved.path}: nothing readable: "
                                       f"{reason or 'no cpu.pressure for this cgroup'}")
            return CpuLoad(resolved.path, resolved.version, backend.name, None, None, None,
                           None, None, pressure, time.monotonic(), reason, backend.implementation)
        return CpuLoad(resolved.path, resolved.version, backend.name, *counts, pressure,
                       time.monotonic(), reason, backend.implementation, *_seconds(clocks))

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
        caller knows the cgroup is gone. The next read resolves it afresh. The cgroup's
        runnable counters are dropped too if its directory is gone (or re-created: a new
        cgroup), never while it is there (they stay monotonic for the Reader's life)."""
        with self._lock:
            target = self._targets.pop(path, None)
        if target is not None:
            target.close()
            self._forget_clocks(target)

    # -- exact load -------------------------------------------------------------------------
    def _account(self, target, clocks, ticks):
        """Add one read's thread clocks to target's runnable counters (cgshim.runnable):
        ``target.clocks`` gets the counters (run_ns, wait_ns), or stays None if the
        directory cannot be identified (removed meanwhile)."""
        key = target.clock_key
        if key is None:
            try:
                st = os.stat(target.resolved.path)
            except OSError:
                return
            key = target.clock_key = (st.st_dev, st.st_ino)
        target.clocks = self._runnable.account(key, clocks, ticks)

    def _account_sums(self, target, key, run_sum, wait_sum):
        """As :meth:`_account` for a backend that gives only the sums of a cgroup's threads'
        clocks (the bpf pass): see RunnableTracker.account_sums for what that loses."""
        target.clock_key = key
        target.clocks = self._runnable.account_sums(key, run_sum, wait_sum)

    def _forget_clocks(self, target):
        key = target.clock_key
        if key is None or self._runnable is None:
            return
        try:
            st = os.stat(target.resolved.path)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != key:
            self._runnable.forget(key)

    # -- the backend chain ----------------------------------------------------------------
    def _counts(self, target):
        """Return (TaskCounts or None, backend, reason): the first backend that answers."""
        reason = passed = None
        for backend in self._chains[target.resolved.version]:
            try:
                return backend.counts(target), backend, reason
            except _PassOver as exc:
                reason = exc.why if reason is None else f"{reason}; {exc.why}"
                passed = exc
        if passed is None:
            raise Unsupported(f"{target.resolved.path}: none of this Reader's backends "
                              f"({', '.join(self.backends)}) reads cgroup "
                              f"v{target.resolved.version} cgroups")
        error = passed.error
        if error is None:
            error = PermissionDenied(f"{target.resolved.path}: {reason}")
        raise error from passed

    def _add_descendants(self, target, counts, backend, reason):
        if target.resolved.version == 2 and cgroupfs.nr_descendants(target.resolved.path) == 0:
            return counts, reason
        for child in cgroupfs.walk(target.resolved.path):
            # Locks are taken top-down (a cgroup before its descendants): no cycle.
            child_target = self._target(child)
            with child_target.lock:
                gone = child_target.closed
                if not gone:
                    try:
                        part, child_backend, child_reason = self._counts(child_target)
                    except CgroupNotFound:
                        gone = True
            if gone:
                self.forget(child)
                continue  # removed while we walked
            if part is None:
                raise PermissionDenied(f"{child}: {child_reason}")
            if child_backend is not backend and reason is None:
                reason = f"{child}: {child_reason}"
            counts = counts.plus(part)
        return counts, reason

    def _pressure(self, target):
        for _ in range(2):  # a held fd of a removed cgroup's file: reopen by path, once
            if target.psi_fd is None and not self._open_pressure(target):
                return None
            try:
                data = os.pread(target.psi_fd, 4096, 0)
            except OSError as exc:
                fd, target.psi_fd, target.psi_checked = target.psi_fd, None, None
                os.close(fd)
                error = translate(exc, target.psi_path, cgroup=os.path.dirname(target.psi_path))
                if isinstance(error, CgroupNotFound):
                    continue
                if isinstance(error, Unsupported):
                    return None  # PSI switched off (EOPNOTSUPP)
                raise error from exc
            last = target.psi_last
            if last is not None and last[0] == data:
                return last[1]  # unchanged (an idle cgroup's file often is): same Pressure
            pressure = psi.decode_pressure(data, target.psi_path)
            target.psi_last = (data, pressure)
            return pressure
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
        except OSError as exc:
            error = translate(exc, file, cgroup=v2_dir, optional=True)
            if isinstance(error, Unsupported):
                return False  # no cpu.pressure in this live cgroup (PSI hidden or absent)
            if isinstance(error, CgroupNotFound):
                if resolved.version == 1:
                    return False  # only the v1 cgroup's v2 twin is going
                raise error from exc
            if not isinstance(error, PermissionDenied):
                raise error from exc
            target.psi_denied = f"{file}: {exc.strerror}"
            return False
        target.psi_path = file
        target.psi_denied = None
        return True


class _Trees:
    """The cgroup trees of recent sweeps, kept while the kernel reports no change.

    Walking a node's cgroup directories costs more than reading them (a directory listing
    per cgroup against one CGROUPSTATS answer), and cgroups come and go far less often
    than agents sweep. Every directory walked gets an inotify watch for entries created,
    deleted or moved (mkdir/rmdir on cgroupfs notify the parent: fs/namei.c vfs_mkdir ->
    fsnotify_mkdir, vfs_rmdir -> fsnotify_rmdir), added before its children are listed,
    so no child created after a listing goes unseen. A pass with no event pending (one
    non-blocking read) reuses the last walk of the same roots; any event, or a root whose
    directory is not the one walked, walks again. cAdvisor discovers containers the same
    way. Without inotify (no such syscall, too many watches: ENOSPC, no fd) every pass
    walks, and Sweep.warnings says why once.
    """

    MASK = None  # set below from inotify_simple.flags when it imports
    KEEP = 8  # root sets remembered

    def __init__(self):
        self._inotify = None
        self.down = None  # why trees are not kept (then every pass walks)
        self._trees = {}  # tuple(roots) -> (found, root_dirs, {root dir: (st_dev, st_ino)})
        self.generation = 0  # raised by every walk and every change seen
        self._roots_seen = None  # {root dir: (st_dev, st_ino)} of the tree discover last gave

    def close(self):
        ino, self._inotify = self._inotify, None
        self._trees.clear()
        if ino is not None:
            ino.close()
        self.down = self.down or "closed"

    def _watcher(self):
        if self._inotify is None and self.down is None:
            try:
                from inotify_simple import INotify, flags
            except ImportError as exc:
                self.down = f"inotify_simple does not import ({exc})"
                return None
            try:
                self._inotify = INotify(nonblocking=True)
            except OSError as exc:
                self.down = f"inotify_init1: {exc.strerror}"
                return None
            _Trees.MASK = (flags.CREATE | flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO
                           | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR)
        return self._inotify

    def _watch(self, path):
        ino = self._inotify
        if ino is None:
            return
        try:
            ino.add_watch(path, _Trees.MASK)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENOTDIR):
                return  # gone meanwhile: its parent's watch has (or will have) said so
            self.down = (f"inotify_add_watch on {path}: {exc.strerror} (errno "
                         f"{errno.errorcode.get(exc.errno, '?')}; ENOSPC: raise "
                         f"fs.inotify.max_user_watches)")
            self._inotify = None
            self._trees.clear()
            ino.close()

    def discover(self, roots, errors, walk, warnings_):
        """(found, root_dirs) as ``walk(roots, errors, before_listing)`` gives them, from the
        last walk of the same roots when nothing changed since."""
        key = tuple(roots)
        ino = self._watcher()
        if ino is not None:
            self.changed()
            kept = self._trees.get(key)
            if kept is not None and _same_dirs(kept[2]):
                self._roots_seen = kept[2]
                return kept[0], kept[1]
        self.generation += 1
        self._roots_seen = None
        found, root_dirs = walk(roots, errors, self._watch if ino is not None else None)
        if self._inotify is not None and not errors:
            if len(self._trees) >= self.KEEP:
                self._trees.pop(next(iter(self._trees)))
            self._roots_seen = _dir_ids(root_dirs.values())
            self._trees[key] = (found, root_dirs, self._roots_seen)
        if self.down is not None and self.down != "closed":
            warnings_.append(f"the cgroup tree is walked on every sweep: {self.down}")
        return found, root_dirs

    def quiet(self):
        """True if nothing has changed since the walk :meth:`discover` last gave: no
        inotify event, and each root still the directory walked (a root's own removal
        raises no event on the watches, which are on it and below). Else False, and the
        walk generation moves on."""
        if self.changed():
            return False
        ids = self._roots_seen
        if ids is None or not _same_dirs(ids):
            self._trees.clear()
            self.generation += 1
            return False
        return True

    def changed(self):
        """True if a cgroup may have been created, removed or moved below the watched
        directories since the last look (one non-blocking read of the inotify queue;
        always True without inotify). A change drops every kept tree."""
        ino = self._inotify
        if ino is None:
            return True
        try:
            changed = bool(ino.read(timeout=0))
        except OSError:
            changed = True
        if changed:
            self._trees.clear()  # any change: every kept tree is walked anew
            self.generation += 1
        return changed


def _dir_ids(paths):
    out = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        out[path] = (st.st_dev, st.st_ino)
    return out


def _same_dirs(ids):
    """True if each root directory is still the one walked (a root itself removed or
    re-created is not seen by the watches, which are on it and below)."""
    return _dir_ids(ids) == ids


def _subtree_sums(found, results):
    """Each cgroup's result with its descendants' counts added, as
    :meth:`Reader._add_descendants` adds them: a descendant that is gone is skipped, one
    without counts (or with an error) makes its ancestors' readings fail; a reading without
    counts of its own stays as it is. ``found`` is in walk order (parents first)."""
    totals = dict(results)
    for path in reversed(list(found)):  # every cgroup after all of its descendants
        parent = os.path.dirname(path)
        if parent not in totals or parent == path:
            continue
        up, part = totals[parent], totals[path]
        if isinstance(up, CgshimError) or up[0] is None or isinstance(part, CgroupNotFound):
            continue
        if isinstance(part, CgshimError):
            totals[parent] = part
            continue
        counts, backend, reason = part
        if counts is None:
            totals[parent] = PermissionDenied(f"{path}: {reason}")
            continue
        if backend is not up[1] and up[2] is None:
            up = (up[0], up[1], f"{path}: {reason}")
        totals[parent] = (tuple(None if a is None or b is None else a + b
                                for a, b in zip(up[0], counts)), up[1], up[2])
    return totals


def default_roots(hier=None):
    """The cgroup roots a node-wide reader watches when given none: the cgroup2 mount on a
    unified host, else the v1 ``cpu`` hierarchy (where CGROUPSTATS answers), else cgroup2."""
    if hier is None:
        hier = _load_hierarchy()
    if hier.mode == "unified":
        return [hier.v2.mount_point]
    cpu = hier.v1_mount("cpu")
    if cpu is not None:
        return [cpu.mount_point]
    return [hier.v2.mount_point] if hier.v2 is not None else []


def _seconds(clocks):
    """(runnable_seconds, runqueue_seconds) of counters (run_ns, wait_ns), or (None, None)."""
    if clocks is None:
        return None, None
    run, wait = clocks
    return (run + wait) / 1e9, wait / 1e9


def _schedstat_missing(proc_root):
    """Why this /proc offers no per-thread schedstat clocks, or None if it does. The file
    exists only with CONFIG_SCHED_INFO (fs/proc/base.c tid_base_stuff); pid 1 is in every
    pid namespace's /proc."""
    path = os.path.join(proc_root, "1", "task", "1", "schedstat")
    try:
        os.stat(path)
    except FileNotFoundError:
        return (f"{path} does not exist: the kernel keeps no per-thread schedstat clocks "
                f"(CONFIG_SCHED_INFO off), so runnable_seconds stay None")
    except OSError:
        pass  # there, but not ours to stat (hidepid): the reads will tell
    return None


def _open_dir(path):
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise translate(exc, path, cgroup=path) from exc


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
    reader = _default
    if reader is None:
        reader = default_reader()
    return reader.cpu_load(path, recursive=recursive)
