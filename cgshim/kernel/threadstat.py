"""The per-thread stat file /proc/<pid>/task/<tid>/stat (fs/proc/array.c, do_task_stat).

What this module reads: the state letter of each thread in a cgroup's thread list
(``cgroup.threads`` on v2, ``tasks`` on v1), counted the way cgroupstats_build()
(kernel/cgroup/cgroup-v1.c) counts task states: R, S, D, T by exact letter, anything
else apart. Thread lists are parsed by :func:`cgshim.kernel.cgroupfs.parse_thread_list`
(pure Python) or by the C scanner (cgshim/_native/procscan.c), which agree.

- :func:`parse_stat_state` -- pure parser: the state letter of one stat line.
- :class:`Scanner` -- scans a thread list (a file or bytes) into :class:`ScanCounts`.
  It uses the C scanner when ``cgshim._native.procscan`` is built: that one keeps the
  stat files open between scans, so a repeated scan costs one pread per thread.
  Otherwise a pure-Python path gives the same counts with open/read/close per thread.

The stat file is opened as ``<proc>/<tid>/task/<tid>/stat``: any tid works as the first
component (fs/proc/base.c proc_pid_lookup), and the per-thread file is O(1), where
``/proc/<tid>/stat`` of a non-leader thread sums the whole process (O(threads)).
"""
import errno
import os
import resource
import threading

import attrs

from cgshim import _native
from cgshim.errors import CgshimError, ParseError, Unsupported, translate
from cgshim.kernel import schedstat
from cgshim.model import TaskCounts

# cgroupstats_build() counts by exact task state; by /proc letter that is:
STATE_FIELDS = {"R": "nr_running", "S": "nr_sleeping", "D": "nr_uninterruptible", "T": "nr_stopped"}

# Most stat fds a Scanner keeps open, as a fraction of the soft RLIMIT_NOFILE.
FD_SHARE = 4
# The C scanner refuses more (procscan.h).
_MAX_FDS_LIMIT = 1 << 24
# Longest thread list read (as LIST_MAX in procscan.c): PID_MAX_LIMIT tids take 32 MiB.
_LIST_MAX = 128 << 20
# Enough of a stat line for pid, comm (<= 64 bytes) and state; the rest is numbers.
_STAT_PREFIX = 512

_GONE = (errno.ENOENT, errno.ESRCH)
_DENIED = (errno.EACCES, errno.EPERM)
_BLANK = b" \t"


def parse_stat_state(data: bytes) -> str:
    """The state letter of one /proc/<pid>[/task/<tid>]/stat line (or a prefix of it that
    reaches the state): the first byte after the *last* ')' that is not a space or tab.

    comm (field 2) may contain spaces, parentheses and newlines, so only the last ')'
    ends it. Raises ParseError if there is no ')' or no ASCII letter after it.
    """
    end = data.rfind(b")")
    if end < 0:
        raise ParseError(f"not a /proc stat line (no ')' closing the comm): {data[:80]!r}")
    rest = data[end + 1:].lstrip(_BLANK)
    if not rest or not (65 <= rest[0] <= 90 or 97 <= rest[0] <= 122):
        raise ParseError(f"not a /proc stat line (no state letter after the comm): {data[:80]!r}")
    return chr(rest[0])


@attrs.frozen
class ScanCounts(TaskCounts):
    """The outcome of one scan, as struct cg_scan_counts (cgshim/_native/procscan.h): the
    TaskCounts of the listed threads (``nr_io_wait`` None: in_iowait is not in /proc) and
    what was not counted.

    ``nr_listed`` distinct non-zero tids were in the list; each of them is counted in
    exactly one of nr_running, nr_sleeping, nr_uninterruptible, nr_stopped (R, S, D, T),
    nr_other (any other letter: I, t, Z, X, P, ...), nr_vanished (exited before its state
    was read: ENOENT/ESRCH) or nr_denied (EACCES/EPERM on its stat file).
    ``nr_hidden`` counts "0" lines: tasks without a pid in this pid namespace (older
    kernels print them; since the SEQ_SKIP fix in cgroup_procs_show() they are left out).
    """

    nr_other: int = 0
    nr_listed: int = 0
    nr_vanished: int = 0
    nr_denied: int = 0
    nr_hidden: int = 0

    def task_counts(self) -> TaskCounts:
        """Just the counts, as a plain TaskCounts (nr_io_wait None)."""
        return TaskCounts(self.nr_running, self.nr_sleeping, self.nr_uninterruptible,
                          self.nr_stopped, None)


# struct cg_scan_counts' fields: ScanCounts' own, without nr_io_wait (never seen by a scan).
_FIELDS = [a.name for a in attrs.fields(ScanCounts) if a.name != "nr_io_wait"]


@attrs.frozen
class ThreadRecord:
    """One thread as a scan saw it (struct cg_scan_thread): ``state`` the /proc letter's
    code (``chr(state)``), 0 if it exited before it was read, -1 if its stat file was
    refused; ``starttime`` stat field 22 (clock ticks after boot): with ``tid`` it names
    the thread across pid reuse."""

    tid: int
    state: int
    starttime: int


def effective_max_fds(max_fds: int) -> int:
    """``max_fds`` capped to a quarter (1/FD_SHARE) of the soft RLIMIT_NOFILE, so that a
    scanner's cache never takes the fds the rest of the process needs (1024 -> 256)."""
    if max_fds < 0:
        raise ValueError(f"max_fds must be >= 0, not {max_fds}")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        max_fds = min(max_fds, soft // FD_SHARE)
    return min(max_fds, _MAX_FDS_LIMIT)


def _first_bad_line(data: bytes):
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the final newline
    for number, line in enumerate(lines, 1):
        if not (line.isdigit() and int(line) <= 0x7FFFFFFF):
            return number, line[:40]
    return None


# The scanner's own verdicts on what it read (cgshim/_native/procscan.c returns them as
# errno values); every other errno is the kernel's and goes through cgshim.errors.translate.
_HINTS = {
    errno.EACCES: "reading a cgroup's thread list needs read access to that file",
    errno.EPERM: "reading a cgroup's thread list needs read access to that file",
    errno.EOPNOTSUPP: "cgroup.procs of a threaded cgroup cannot be read, use cgroup.threads",
    errno.EMFILE: "lower max_fds or raise RLIMIT_NOFILE",
}


def _list_error(err, path, data=None):
    """A CgshimError for errno ``err`` met while reading or scanning the list ``path``."""
    where = path if path is not None else "thread list"
    if err == errno.EINVAL:
        bad = _first_bad_line(data) if data is not None else None
        detail = f": line {bad[0]} is {bad[1]!r}" if bad else ""
        return ParseError(f"{where}: not a thread list (one decimal tid per line){detail}")
    if err == errno.EFBIG:
        return ParseError(f"{where}: goes on past {_LIST_MAX >> 20} MiB: not a thread list")
    if err == errno.EBADMSG:
        return ParseError(f"{where}: a thread's stat file has no state letter after its comm "
                          f"(is the proc root really procfs?)")
    return translate(err, where, cgroup=None if path is None else os.path.dirname(path),
                     hint=_HINTS.get(err))


class Scanner:
    """Counts the states of the threads in a thread list, reading /proc under ``proc_root``.

    ``max_fds`` bounds the stat files held open between scans; it is capped by
    :func:`effective_max_fds` (a quarter of the soft RLIMIT_NOFILE). ``native``: None
    uses the C scanner when it is built, True requires it (Unsupported if not built),
    False uses the pure-Python path (no fds kept). Thread-safe: one lock serialises
    scans. Close it (or use ``with``) to release the held fds.
    """

    def __init__(self, proc_root: str = "/proc", max_fds: int = 4096, *, native=None):
        self.proc_root = proc_root
        self.max_fds = effective_max_fds(max_fds)
        self._lock = threading.Lock()
        self._sc = None
        self._dirfd = None
        self._records = None  # struct cg_scan_thread[] kept by scan_many_clocks
        self._records_cap = 4096
        mod = _native.procscan
        if native and mod is None:
            raise Unsupported(f"the C scanner is not built: {_native.load_errors.get('procscan')}; "
                              f"run: python cgshim/_native/build.py procscan")
        try:
            dirfd = os.open(proc_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise translate(exc, proc_root, hint="cannot open the proc root: no proc filesystem "
                                                 "directory there, or not readable") from exc
        if mod is None or native is False:
            self._dirfd = dirfd
            return
        self._mod = mod
        try:
            out = mod.ffi.new("struct cg_scanner **")
            err = mod.lib.cg_scanner_new(dirfd, self.max_fds, out)
        finally:
            os.close(dirfd)  # the scanner holds its own dup
        if err:
            raise translate(err, proc_root, hint="cannot create a scanner on it")
        self._sc = mod.ffi.gc(out[0], mod.lib.cg_scanner_free)

    @property
    def native(self) -> bool:
        """True if this scanner runs the C code (and caches fds)."""
        return self._sc is not None

    @property
    def closed(self) -> bool:
        return self._sc is None and self._dirfd is None

    @property
    def cached_fds(self) -> int:
        """Stat fds held open right now (always 0 for the pure-Python path)."""
        with self._lock:
            if self._sc is None:
                return 0
            return self._mod.lib.cg_scanner_cached_fds(self._sc)

    def drop_cache(self) -> None:
        """Close every held stat fd (the next scan reopens what it needs)."""
        with self._lock:
            if self._sc is not None:
                self._mod.lib.cg_scanner_drop_cache(self._sc)

    def close(self) -> None:
        """Close all cached fds and the proc root fd. Idempotent."""
        with self._lock:
            if self._sc is not None:
                sc, self._sc = self._sc, None
                self._mod.ffi.release(sc)  # runs cg_scanner_free now
            if self._dirfd is not None:
                fd, self._dirfd = self._dirfd, None
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        kind = "closed" if self.closed else ("native" if self.native else "python")
        return f"<Scanner {self.proc_root} {kind} max_fds={self.max_fds}>"

    def _check_open(self):
        if self.closed:
            raise CgshimError("this Scanner is closed")

    # -- scanning -----------------------------------------------------------------------

    def scan_file(self, list_path: str) -> ScanCounts:
        """Scan the thread list in ``list_path`` (``<cgroup>/cgroup.threads`` or ``tasks``).

        Raises CgroupNotFound if the cgroup does not exist or is removed meanwhile,
        PermissionDenied, Unsupported for cgroup.procs of a threaded cgroup (EOPNOTSUPP),
        ParseError if the file is not a thread list.
        """
        try:
            fd = os.open(list_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _list_error(exc.errno, list_path) from exc
        try:
            with self._lock:
                self._check_open()
                if self._sc is not None:
                    out = self._mod.ffi.new("struct cg_scan_counts *")
                    err = self._mod.lib.cg_scanner_scan_fd(self._sc, fd, out)
                    if err:
                        data = _read_quietly(fd) if err == errno.EINVAL else None
                        raise _list_error(err, list_path, data)
                    return _from_c(out)
                try:
                    data = _read_all(fd)
                except OSError as exc:
                    raise _list_error(exc.errno, list_path) from exc
                return self._scan_python(data, list_path)
        finally:
            os.close(fd)

    def scan_file_clocks(self, list_path: str):
        """:meth:`scan_file` plus each listed thread's clocks (exact load): ``(ScanCounts,
        clocks)``, ``clocks`` a list of ``(tid, starttime, run_ns, wait_ns)`` from stat field
        22 and /proc/<pid>/task/<tid>/schedstat (:mod:`cgshim.kernel.schedstat`) of the
        threads whose clocks could be read (not those that exited meanwhile). The C scanner
        reads schedstat through a second held fd; the pure-Python path opens both files.
        Same errors as scan_file."""
        try:
            fd = os.open(list_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _list_error(exc.errno, list_path) from exc
        try:
            if self.native:
                counts, errs, clocks = self.scan_many_clocks([fd])
                if errs[0]:
                    data = _read_quietly(fd) if errs[0] == errno.EINVAL else None
                    raise _list_error(errs[0], list_path, data)
                return _from_c(counts[0]), clocks[0]
            with self._lock:
                self._check_open()
                try:
                    data = _read_all(fd)
                except OSError as exc:
                    raise _list_error(exc.errno, list_path) from exc
                counts = self._scan_python(data, list_path)
                from cgshim.kernel.cgroupfs import parse_thread_list

                tids = [t for t in dict.fromkeys(parse_thread_list(data)) if t]
                clocks = [(c.tid, c.starttime, c.run_ns, c.wait_ns)
                          for c in schedstat.read_threads(tids, self.proc_root)
                          if c.run_ns or c.wait_ns]
                return counts, clocks
        finally:
            os.close(fd)

    def scan_many_clocks(self, list_fds):
        """:meth:`scan_many_raw` with CG_SCAN_RECORDS | CG_SCAN_SCHEDSTAT: ``(counts, errs,
        clocks)``, ``clocks[i]`` the ``(tid, starttime, run_ns, wait_ns)`` of list i's threads
        whose clocks were read (a record of a thread that exited, or whose files were
        refused, has state <= 0 or both clocks 0 and is left out). The record buffer is
        kept between calls. Needs the C scanner."""
        list_fds = [int(fd) for fd in list_fds]
        n = len(list_fds)
        with self._lock:
            self._check_open()
            if self._sc is None:
                raise Unsupported("scan_many_clocks needs the C scanner (cgshim._native.procscan)")
            ffi, lib = self._mod.ffi, self._mod.lib
            counts = ffi.new("struct cg_scan_counts[]", n)
            errs = ffi.new("int32_t[]", n)
            if not n:
                return counts, errs, []
            ends = ffi.new("uint64_t[]", n)
            total = ffi.new("uint64_t *")
            fds = ffi.new("int32_t[]", list_fds)
            flags = lib.CG_SCAN_RECORDS | lib.CG_SCAN_SCHEDSTAT
            while True:
                if self._records is None:
                    self._records = ffi.new("struct cg_scan_thread[]", self._records_cap)
                err = lib.cg_scanner_scan_many(self._sc, fds, n, flags, counts, errs,
                                               self._records, self._records_cap, ends, total)
                if err != errno.ENOSPC:
                    break
                # the lists are longer than the buffer: room for them and some growth
                self._records_cap = total[0] + total[0] // 4 + 1024
                self._records = None
            if err:
                raise _list_error(err, f"{n} thread lists")
            used = ends[n - 1]
            # Columns straight from the records' bytes (struct cg_scan_thread: i32 tid,
            # i32 state, u64 starttime, u64 run_ns, u64 delay_ns; 32 bytes, checked below).
            raw = memoryview(ffi.buffer(self._records, used * _RECORD_SIZE))
            words, halves = raw.cast("Q"), raw.cast("i")
            tids, states = halves[0::8].tolist(), halves[1::8].tolist()
            starts, runs, waits = words[1::4].tolist(), words[2::4].tolist(), words[3::4].tolist()
            clocks, begin = [], 0
            for i in range(n):
                end = ends[i]
                clocks.append([(tids[k], starts[k], runs[k], waits[k]) for k in range(begin, end)
                               if states[k] > 0 and (runs[k] or waits[k])])
                begin = end
            return counts, errs, clocks

    def scan_bytes(self, data: bytes) -> ScanCounts:
        """Scan a thread list given as bytes (ParseError if it is not one)."""
        data = bytes(data)
        with self._lock:
            self._check_open()
            if self._sc is None:
                return self._scan_python(data, None)
            out = self._mod.ffi.new("struct cg_scan_counts *")
            err = self._mod.lib.cg_scanner_scan_buf(self._sc, data, len(data), out)
            if err:
                raise _list_error(err, None, data)
            return _from_c(out)

    def scan_many_raw(self, list_fds):
        """Scan the thread lists open at ``list_fds`` in one native call (a node sweep):
        ``(counts, errs)`` cffi arrays in order, ``errs[i]`` 0 or the errno that failed
        list i alone (turn it into a typed error with :func:`list_error`). Needs the C
        scanner (Unsupported otherwise): the pure-Python path has no batch."""
        n = len(list_fds)
        with self._lock:
            self._check_open()
            if self._sc is None:
                raise Unsupported("scan_many needs the C scanner (cgshim._native.procscan)")
            ffi, lib = self._mod.ffi, self._mod.lib
            counts = ffi.new("struct cg_scan_counts[]", n)
            errs = ffi.new("int32_t[]", n)
            if n:
                fds = ffi.new("int32_t[]", list_fds)
                err = lib.cg_scanner_scan_many(self._sc, fds, n, 0, counts, errs, ffi.NULL, 0,
                                               ffi.NULL, ffi.NULL)
                if err:
                    raise _list_error(err, f"{n} thread lists")
            return counts, errs

    def scan_many(self, list_fds):
        """:meth:`scan_many_raw` as a list of ScanCounts or the CgshimError of that list."""
        list_fds = [int(fd) for fd in list_fds]
        counts, errs = self.scan_many_raw(list_fds)
        return [_list_error(e, f"thread list fd {fd}") if e else _from_c(c)
                for fd, c, e in zip(list_fds, counts, errs)]

    def threads_many(self, list_fds):
        """Per-thread records of the lists open at ``list_fds``: a list, in order, of either
        the CgshimError of that list or ``(ScanCounts, [ThreadRecord, ...])`` (one record
        per distinct listed tid; see struct cg_scan_thread in procscan.h)."""
        list_fds = [int(fd) for fd in list_fds]
        n = len(list_fds)
        with self._lock:
            self._check_open()
            if self._sc is None:
                raise Unsupported("threads_many needs the C scanner (cgshim._native.procscan)")
            ffi, lib = self._mod.ffi, self._mod.lib
            counts = ffi.new("struct cg_scan_counts[]", n)
            errs = ffi.new("int32_t[]", n)
            ends = ffi.new("uint64_t[]", max(n, 1))
            total = ffi.new("uint64_t *")
            fds = ffi.new("int32_t[]", list_fds or [0])
            cap = 1024
            while True:
                threads = ffi.new("struct cg_scan_thread[]", cap)
                err = lib.cg_scanner_scan_many(self._sc, fds, n, lib.CG_SCAN_RECORDS, counts,
                                               errs, threads, cap, ends, total)
                if err != errno.ENOSPC:
                    break
                cap = total[0] + 1024  # the lists grew meanwhile: room for them and more
            if err:
                raise _list_error(err, f"{n} thread lists")
        out, begin = [], 0
        for i in range(n):
            end = ends[i]
            if errs[i]:
                out.append(_list_error(errs[i], f"thread list fd {list_fds[i]}"))
                begin = end
                continue
            out.append((_from_c(counts[i]),
                        [ThreadRecord(t.tid, t.state, t.starttime) for t in threads[begin:end]]))
            begin = end
        return out

    @property
    def opens(self) -> int:
        """Stat files this scanner has opened since it was made (0 for the Python path,
        which does not count): flat across scans once the cache holds every thread."""
        with self._lock:
            if self._sc is None:
                return 0
            return self._mod.lib.cg_scanner_opens(self._sc)

    def set_max_fds(self, max_fds: int) -> int:
        """Change how many stat fds the cache may hold; returns the value now in force.
        Unlike the constructor's, this bound is not capped to a share of RLIMIT_NOFILE:
        the caller budgets (the Reader's sweep sizes it to the node within the limit)."""
        if max_fds < 0:
            raise ValueError(f"max_fds must be >= 0, not {max_fds}")
        max_fds = min(int(max_fds), _MAX_FDS_LIMIT)
        with self._lock:
            self.max_fds = max_fds
            if self._sc is not None:
                self._mod.lib.cg_scanner_set_max_fds(self._sc, max_fds)
        return max_fds

    def _scan_python(self, data, path):
        from cgshim.kernel.cgroupfs import parse_thread_list

        try:
            tids = parse_thread_list(data)
        except ParseError as exc:
            if path is None:
                raise
            raise ParseError(f"{path}: {exc}") from None
        if tids and max(tids) > 0x7FFFFFFF:  # as the C scanner: no pid_t is that large
            raise _list_error(errno.EINVAL, path, data)
        counts = dict.fromkeys(_FIELDS, 0)
        counts["nr_hidden"] = sum(1 for t in tids if t == 0)
        distinct = list(dict.fromkeys(t for t in tids if t != 0))
        counts["nr_listed"] = len(distinct)
        for tid in distinct:
            name = f"{tid}/task/{tid}/stat"
            try:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=self._dirfd)
            except OSError as exc:
                counts[_gone_field(exc, path)] += 1
                continue
            try:
                line = os.pread(fd, _STAT_PREFIX, 0)
            except OSError as exc:
                counts[_gone_field(exc, path)] += 1
                continue
            finally:
                os.close(fd)
            try:
                state = parse_stat_state(line)
            except ParseError:
                raise _list_error(errno.EBADMSG, path) from None
            counts[STATE_FIELDS.get(state, "nr_other")] += 1
        return ScanCounts(**counts)


def _gone_field(exc, path):
    if exc.errno in _GONE:
        return "nr_vanished"
    if exc.errno in _DENIED:
        return "nr_denied"
    raise _list_error(exc.errno, path) from exc


def _read_all(fd):
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)
        if offset > _LIST_MAX:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))


def _read_quietly(fd):
    try:
        return _read_all(fd)
    except OSError:
        return None


def _from_c(out):
    return ScanCounts(**{name: getattr(out, name) for name in _FIELDS})


#: The typed error for an errno a scan returned for one list (scan_many_raw's errs).
list_error = _list_error


def _record_size():
    """sizeof(struct cg_scan_thread) if its layout is the one scan_many_clocks reads."""
    mod = _native.procscan
    if mod is None:
        return None
    ffi = mod.ffi
    layout = [ffi.offsetof("struct cg_scan_thread", f)
              for f in ("tid", "state", "starttime", "run_ns", "delay_ns")]
    if layout != [0, 4, 8, 16, 24] or ffi.sizeof("struct cg_scan_thread") != 32:
        raise ImportError(f"struct cg_scan_thread has an unexpected layout {layout}")
    return 32


_RECORD_SIZE = _record_size()
