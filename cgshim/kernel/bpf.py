"""cgshim's BPF iterators (cgshim/_native/bpf/cgshim.bpf.c): every cgroup2 cgroup's own
threads by /proc state letter, and the sums of their CPU and run-queue clocks, in one pass.

- :func:`parse_pass` -- pure parser: the bytes of one pass -> :class:`Pass` (per-cgroup
  :class:`CgroupTasks`), bounds-checked, typed errors (:class:`~cgshim.errors.MalformedPass`,
  :class:`~cgshim.errors.PassFormatMismatch`). The C parser (bpf.c, used when the ``_bpf``
  extension is built) gives the same answer for every input (tests/test_bpf_fuzz.py).
- :class:`Source` -- where passes come from: links pinned on bpffs by ``python -m cgshim bpf
  pin`` (read with open()+read(): any uid, no capabilities), or links this process loads
  itself with libbpf (needs CAP_BPF and CAP_PERFMON).
- :func:`pin` / :func:`unpin` -- what the CLI's ``bpf pin`` / ``bpf unpin`` do.

The mechanism, chosen by measurement (BENCHMARKS.md, "bpf"): the per-cgroup iterator
(``iter/cgroup`` walking each cgroup's tasks with the ``bpf_iter_css_task`` kfuncs, >= 6.7)
read 200 cgroups x 50 threads in ~1.1 ms here, the per-thread ``iter/task`` pass with the
same records added up in C ~8 ms. The per-cgroup pass holds cgroup_mutex during its one
read() and cannot continue in a second one (kernel/bpf/cgroup_iter.c
cgroup_iter_seq_start: EOPNOTSUPP), so it carries at most ~500 non-empty cgroups (32 KiB,
bpf_seq_read()); a bigger node (e.g. 20,000 cgroups with threads) is read whole by the
per-thread pass, which resumes across reads and holds no lock. The per-thread pass sees only
the tasks of the reader's pid namespace (kernel/bpf/task_iter.c), so it is used only in the
initial pid namespace; elsewhere it is refused with that reason, never a partial count.

Counts are of a cgroup's **own** threads (as ``cgroup.threads``: css_task_iter with flags 0,
kernel/cgroup/cgroup.c; no descendants, no exiting tasks), by the letter /proc would show
(``__task_state_index()``, include/linux/sched.h; fs/proc/array.c ``task_state_array``).
A cgroup with no threads of its own sends no record: it reads as all zeros. Zombies (Z)
and dead tasks (X) have left their cgroup (cgroup_exit() in do_exit(), before exit_notify())
and so are counted nowhere, as by the scan of ``cgroup.threads``.
"""
import errno
import fcntl
import os
import struct
import threading
import typing

import attrs

from cgshim import _native
from cgshim.errors import BpfError, MalformedPass, PassFormatMismatch
from cgshim.model import TaskCounts

# bpf/records.h
MAGIC = 0x50424D4948534743  # "CGSHIMBP" as a little-endian u64
FORMAT = 1
REC_HEAD, REC_CGROUP, REC_TASK, REC_END = 1, 2, 3, 4
MECH_CGROUP, MECH_TASK = 1, 2
MECHANISMS = {MECH_CGROUP: "cgroup", MECH_TASK: "task"}
#: the /proc state letters by state index (fs/proc/array.c task_state_array)
STATES = "RSDTtXZPI"

_HEAD = struct.Struct("=HHHHQQ")
_CGROUP = struct.Struct("=HH9IQQQ")
_TASK = struct.Struct("=HHB3xQQQ")
_END = struct.Struct("=HH4xQ")
_KS = struct.Struct("=HH")
# struct cg_bpf_cgroup of bpf.h: id, sum_exec_runtime, run_delay, nr[9], threads
_TABLE = struct.Struct("=QQQ9II")
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

#: where ``python -m cgshim bpf pin`` pins by default, and where a Reader looks
DEFAULT_PIN_DIR = "/sys/fs/bpf/cgshim"
#: file names of the pinned links, with the record format in the name (bpffs refuses names
#: with a dot: kernel/bpf/inode.c bpf_lookup)
PIN_NAMES = {MECH_CGROUP: f"cgroups-v{FORMAT}", MECH_TASK: f"tasks-v{FORMAT}"}
#: a pass bigger than this is refused (bpf.c PASS_MAX): 30,000 threads take ~1 MiB
PASS_MAX = 256 << 20
#: /proc/self/ns/pid of the initial pid namespace (PROC_PID_INIT_INO, include/linux/proc_ns.h)
_INIT_PID_NS = "pid:[4026531836]"


class CgroupTasks(typing.NamedTuple):
    """One cgroup's own threads in a pass."""

    id: int                 #: inode number of the cgroup2 directory (kernfs node id)
    sum_exec_runtime: int   #: ns on a CPU, summed over the threads (se.sum_exec_runtime)
    run_delay: int          #: ns runnable but waiting, summed (sched_info.run_delay)
    nr: tuple               #: thread counts by state index, in the order of :data:`STATES`

    @property
    def threads(self) -> int:
        return sum(self.nr)

    def count(self, letter: str) -> int:
        """Threads in the state /proc shows as ``letter`` (one of :data:`STATES`)."""
        return self.nr[STATES.index(letter)]


@attrs.frozen
class BpfCounts(TaskCounts):
    """A cgroup's counts from a pass: R, S, D, T as every backend's four counts
    (``nr_io_wait`` None: in_iowait is not what /proc shows), the other letters apart, and
    the sums of the threads' clocks (ns; the exact-load figures are built from them)."""

    nr_traced: int = 0       #: t
    nr_dead: int = 0         #: X
    nr_zombie: int = 0       #: Z
    nr_parked: int = 0       #: P
    nr_idle: int = 0         #: I
    sum_exec_runtime: int = 0
    run_delay: int = 0


_EMPTY = BpfCounts(0, 0, 0, 0, None)
_ZEROS = (0, 0, 0, 0, None, 0, 0)


class Pass:
    """One pass: every cgroup with threads of its own, by cgroup id. A mapping id ->
    :class:`CgroupTasks`; ids of cgroups without threads are absent (they have none)."""

    __slots__ = ("format", "mechanism", "objects", "bytes", "memory", "root", "_raw")

    def __init__(self, mechanism, objects, nbytes, raw, memory=0, root=0):
        self.format = FORMAT
        self.mechanism = MECHANISMS[mechanism]  #: "cgroup" or "task"
        #: the iterator's seq_num at its end: objects visited (cgroups or tasks) minus one
        self.objects = objects
        self.bytes = nbytes      #: size of the pass as read
        self.memory = memory     #: bytes the C reader holds for passes (0: pure Python)
        #: id of the cgroup the per-cgroup walk started at (it and all below); 0 for the
        #: per-thread pass (every task of the reader's pid namespace), and for a per-cgroup
        #: pass whose start cgroup was removed (Source.read_pass refuses that one)
        self.root = root
        self._raw = raw          # id -> (id, runtime, delay, n0..n8, threads)

    def __len__(self):
        return len(self._raw)

    def __contains__(self, cgroup_id):
        return cgroup_id in self._raw

    def __iter__(self):
        return iter(self._raw)

    def get(self, cgroup_id, default=None):
        r = self._raw.get(cgroup_id)
        return default if r is None else CgroupTasks(r[0], r[1], r[2], tuple(r[3:12]))

    def __getitem__(self, cgroup_id):
        r = self._raw[cgroup_id]
        return CgroupTasks(r[0], r[1], r[2], tuple(r[3:12]))

    def counts(self, cgroup_id) -> tuple:
        """(R, S, D, T, None, sum_exec_runtime, run_delay) of the cgroup, as
        :meth:`task_counts` gives them, without building the object (the node sweep)."""
        r = self._raw.get(cgroup_id)
        if r is None:
            return _ZEROS
        return (r[3], r[4], r[5], r[6], None, r[1], r[2])

    def task_counts(self, cgroup_id) -> BpfCounts:
        """The cgroup's :class:`BpfCounts`; all zeros for a cgroup the pass has no record
        of (one without threads of its own: only those send none)."""
        r = self._raw.get(cgroup_id)
        if r is None:
            return _EMPTY
        return BpfCounts(r[3], r[4], r[5], r[6], None, r[7], r[8], r[9], r[10], r[11], r[1], r[2])

    def raw(self, cgroup_id):
        """(id, runtime, run_delay, nR, nS, nD, nT, nt, nX, nZ, nP, nI, threads) or None:
        the tuple the parsers build, without making a CgroupTasks."""
        return self._raw.get(cgroup_id)

    def __eq__(self, other):
        return (isinstance(other, Pass) and self.mechanism == other.mechanism
                and self.objects == other.objects and self.root == other.root
                and list(self._raw.items()) == list(other._raw.items()))

    def __repr__(self):
        return (f"<Pass {self.mechanism} cgroups={len(self._raw)} objects={self.objects} "
                f"bytes={self.bytes}>")


def parse_pass(data) -> Pass:
    """Parse the bytes of one whole pass (HEAD, records, END; bpf/records.h).

    Raises PassFormatMismatch when the pass is not of this cgshim's format (another magic
    or format number: a pin made by another version), MalformedPass for anything else that
    is not what the program writes (see bpf.h for the full list). Per-thread records are
    added up per cgroup; the sums wrap at 2**64 as the kernel's u64 clocks would.
    """
    data = memoryview(data).cast("B")
    n = len(data)
    if n < _HEAD.size:
        raise MalformedPass(f"a pass of {n} bytes is shorter than its {_HEAD.size}-byte HEAD")
    kind, size, fmt, mech, magic, root = _HEAD.unpack_from(data, 0)
    if kind != REC_HEAD:
        raise PassFormatMismatch(f"not a cgshim pass (first record kind {kind}, not HEAD)")
    if size != _HEAD.size:
        raise MalformedPass(f"HEAD of size {size}")
    if magic != MAGIC:
        raise PassFormatMismatch(f"not a cgshim pass (magic {magic:#x})")
    if fmt != FORMAT:
        raise PassFormatMismatch(f"pass of record format {fmt}; this cgshim reads format {FORMAT}:"
                                 f" re-pin with `python -m cgshim bpf pin`")
    if mech not in MECHANISMS:
        raise MalformedPass(f"unknown mechanism {mech}")
    raw = {}
    objects = None
    off = _HEAD.size
    while off < n:
        if objects is not None:
            raise MalformedPass(f"{n - off} bytes after END")
        if n - off < 4:
            raise MalformedPass(f"truncated record at offset {off}")
        kind, size = _KS.unpack_from(data, off)
        if size > n - off:
            raise MalformedPass(f"record of {size} bytes at offset {off} overruns the pass")
        if kind == REC_END:
            if size != _END.size:
                raise MalformedPass(f"END of size {size}")
            objects = _END.unpack_from(data, off)[2]
        elif kind == REC_CGROUP and mech == MECH_CGROUP:
            if size != _CGROUP.size:
                raise MalformedPass(f"CGROUP record of size {size}")
            r = _CGROUP.unpack_from(data, off)
            cid = r[11]
            nr = r[2:11]
            threads = sum(nr)
            if cid == 0:
                raise MalformedPass("cgroup id 0")
            if cid in raw:
                raise MalformedPass(f"cgroup {cid} twice in a per-cgroup pass")
            if threads == 0 or threads > _U32:
                raise MalformedPass(f"cgroup {cid} with {threads} threads")
            raw[cid] = (cid, r[12], r[13], *nr, threads)
        elif kind == REC_TASK and mech == MECH_TASK:
            if size != _TASK.size:
                raise MalformedPass(f"TASK record of size {size}")
            _, _, state, cid, runtime, delay = _TASK.unpack_from(data, off)
            if cid == 0 or state >= len(STATES):
                raise MalformedPass(f"TASK record with cgroup id {cid}, state {state}")
            old = raw.get(cid)
            if old is None:
                nr = [0] * 9
                nr[state] = 1
                raw[cid] = (cid, runtime, delay, *nr, 1)
            else:
                if old[12] == _U32:
                    raise MalformedPass(f"cgroup {cid} with more than 2**32 threads")
                nr = list(old[3:12])
                nr[state] += 1
                raw[cid] = (cid, (old[1] + runtime) & _U64, (old[2] + delay) & _U64, *nr, old[12] + 1)
        else:
            raise MalformedPass(f"unexpected record kind {kind} in a {MECHANISMS[mech]} pass")
        off += size
    if objects is None:
        raise MalformedPass("no END record: the pass is truncated")
    return Pass(mech, objects, n, raw, root=root)


# -- the C reader ------------------------------------------------------------------------

def native_missing():
    """Why the ``_bpf`` extension (libbpf loader, C reader) is not there, or None."""
    if getattr(_native, "bpf", None) is not None:
        return None
    exc = _native.load_errors.get("bpf")
    if isinstance(exc, ModuleNotFoundError) and exc.name == "cgshim._native._bpf":
        return "cgshim was built without libbpf (no _bpf extension; install libbpf-dev and rebuild)"
    return f"the _bpf extension does not load: {exc}" if exc else "cgshim was built without libbpf"


def object_path():
    """The compiled BPF program shipped with this package, or None when it was not built.
    A file this process may not read is still returned (the load then says so)."""
    path = os.path.join(os.path.dirname(os.path.abspath(_native.__file__)), "bpf", "cgshim.bpf.o")
    try:
        os.stat(path)
    except PermissionError:
        return path
    except OSError:
        return None
    return path


# include/uapi/linux/capability.h
_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39


def missing_load_capabilities(status="/proc/self/status"):
    """Why this process cannot load the program, from its effective capabilities, or None.

    Loading a tracing iterator needs bpf_capable() and perfmon_capable()
    (kernel/bpf/syscall.c bpf_prog_load; include/linux/capability.h): CAP_BPF and
    CAP_PERFMON, each also granted by CAP_SYS_ADMIN. Checked before the object is read, so
    the answer names the capabilities whatever else would fail."""
    try:
        with open(status) as f:
            eff = next((int(l.split()[1], 16) for l in f if l.startswith("CapEff:")), None)
    except (OSError, ValueError):
        return None  # unknown: let the kernel answer
    if eff is None:
        return None

    def has(cap):
        return bool(eff >> cap & 1) or bool(eff >> _CAP_SYS_ADMIN & 1)

    lacking = [name for cap, name in ((_CAP_BPF, "CAP_BPF"), (_CAP_PERFMON, "CAP_PERFMON"))
               if not has(cap)]
    if not lacking:
        return None
    return (f"loading needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); this process lacks "
            f"{' and '.join(lacking)}")


def in_initial_pid_namespace(proc_root="/proc"):
    try:
        return os.readlink(os.path.join(proc_root, "self/ns/pid")) == _INIT_PID_NS
    except OSError:
        return False


def _error(rc, what):
    if rc == errno.EPROTO:
        return PassFormatMismatch(f"{what}: a pass of another record format (re-pin with "
                                  f"`python -m cgshim bpf pin`)")
    if rc == errno.EBADMSG:
        return MalformedPass(f"{what}: malformed pass")
    return BpfError(rc, f"{what}: {os.strerror(rc)}")


class _NativePass:
    """A cg_bpf_pass of bpf.c: the read buffer and per-cgroup table, reused by each read."""

    def __init__(self, mod):
        self.ffi, self.lib = mod.ffi, mod.lib
        out = self.ffi.new("struct cg_bpf_pass **")
        rc = self.lib.cg_bpf_pass_new(out)
        if rc:
            raise BpfError(rc, "cannot allocate a pass")
        self.p = out[0]
        self.res = self.ffi.new("struct cg_bpf_result *")

    def read(self, fd, what):
        rc = self.lib.cg_bpf_pass_read(self.p, fd, self.res)
        if rc:
            raise _error(rc, what)
        return self._result()

    def parse(self, data):
        buf = self.ffi.from_buffer(data)
        rc = self.lib.cg_bpf_pass_parse(self.p, buf, len(data), self.res)
        if rc:
            raise _error(rc, "pass")
        return self._result()

    def _result(self):
        res = self.res
        table = self.ffi.buffer(res.cgroups, res.nr_cgroups * _TABLE.size)
        raw = {r[0]: r for r in _TABLE.iter_unpack(table)}
        return Pass(res.mechanism, res.objects, res.bytes, raw, res.memory, res.root)

    def close(self):
        if self.p is not None:
            self.lib.cg_bpf_pass_free(self.p)
            self.p = None


def parse_pass_c(data) -> Pass:
    """:func:`parse_pass` done by bpf.c (same answers; raises BpfError if not built)."""
    mod = getattr(_native, "bpf", None)
    if mod is None:
        raise BpfError(errno.ENOSYS, native_missing())
    p = _NativePass(mod)
    try:
        return p.parse(bytes(data))
    finally:
        p.close()


def _read_all(fd, what):
    chunks, total = [], 0
    while True:
        try:
            chunk = os.read(fd, 64 * 1024)
        except OSError as exc:
            raise BpfError(exc.errno or errno.EIO, f"{what}: {exc.strerror}") from exc
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > PASS_MAX:
            raise BpfError(errno.EFBIG, f"{what}: pass larger than {PASS_MAX} bytes")
        chunks.append(chunk)


class Source:
    """Where a Reader's passes come from: :meth:`pinned` links or :meth:`loaded` ones.

    :meth:`read_pass` reads one fresh pass: the per-cgroup one when there is one; when it
    does not fit one read (EOPNOTSUPP/E2BIG: more non-empty cgroups than ~500) the
    per-thread one, for the next :attr:`TASK_PASSES` passes too before trying the
    per-cgroup one again. Thread-safe (one pass at a time per Source).
    """

    #: passes read per-thread after the per-cgroup pass overflowed, before trying it again
    TASK_PASSES = 64

    def __init__(self, description, open_pass, mechanisms, *, proc_root="/proc", obj=None):
        self.description = description  #: "pinned at DIR" or "loaded by this process"
        self.mechanisms = tuple(m for m in (MECH_CGROUP, MECH_TASK) if m in mechanisms)
        self._open = open_pass
        self._obj = obj
        #: True if this Source can attach the per-cgroup program to one cgroup alone
        #: (:meth:`self_link`): it loaded the program itself. Pinned links cannot.
        self.links = obj is not None and obj.has(MECH_CGROUP)
        self._lock = threading.Lock()
        mod = getattr(_native, "bpf", None)
        self._native = _NativePass(mod) if mod is not None else None
        self._task_passes = 0
        self._task_refused = (None if in_initial_pid_namespace(proc_root) else
                              "the per-thread pass sees only this pid namespace's tasks")
        if not self.mechanisms:
            raise BpfError(errno.ENOENT, f"{description}: no iterator")

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def pinned(cls, pin_dir=DEFAULT_PIN_DIR, *, proc_root="/proc"):
        """The links pinned in ``pin_dir`` by ``python -m cgshim bpf pin``. Raises BpfError
        (ENOENT: none there; EACCES: not readable) or PassFormatMismatch when only pins of
        another record format are there."""
        found = {}
        for mech, name in PIN_NAMES.items():
            path = os.path.join(pin_dir, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise BpfError(exc.errno or errno.EIO, f"{path}: {exc.strerror}") from exc
            os.close(fd)
            found[mech] = path
        if not found:
            try:
                others = sorted(n for n in os.listdir(pin_dir)
                                if _is_pin_name(n))
            except OSError:
                others = []
            if others:
                raise PassFormatMismatch(
                    f"{pin_dir} holds {', '.join(others)}, pinned by another cgshim; this one "
                    f"reads format {FORMAT}: re-pin with `python -m cgshim bpf pin --dir {pin_dir}`")
            raise BpfError(errno.ENOENT, f"no cgshim iterator pinned in {pin_dir}")

        def open_pass(mech):
            return os.open(found[mech], os.O_RDONLY | os.O_CLOEXEC)

        return cls(f"pinned at {pin_dir}", open_pass, found, proc_root=proc_root)

    @classmethod
    def loaded(cls, cgroup_root, *, proc_root="/proc"):
        """Load the program in this process (CAP_BPF and CAP_PERFMON needed) with the
        per-cgroup pass starting at ``cgroup_root`` (a cgroup2 directory). Raises BpfError."""
        obj = Loaded(cgroup_root)
        mechs = [m for m in (MECH_CGROUP, MECH_TASK) if obj.has(m)]
        return cls("loaded by this process", obj.iter_fd, mechs, proc_root=proc_root, obj=obj)

    @classmethod
    def open(cls, pin_dir, cgroup_root, *, proc_root="/proc"):
        """The pins in ``pin_dir`` when they are there and of this format, else links
        loaded by this process. Raises BpfError saying why neither can be had."""
        try:
            return cls.pinned(pin_dir, proc_root=proc_root)
        except PassFormatMismatch as exc:
            pinned_why = str(exc)
        except BpfError as exc:
            if exc.errno != errno.ENOENT:
                raise
            pinned_why = f"nothing pinned in {pin_dir}"
        try:
            return cls.loaded(cgroup_root, proc_root=proc_root)
        except BpfError as exc:
            raise BpfError(exc.errno, f"{pinned_why} (pin with `python -m cgshim bpf pin`), "
                                      f"and this process cannot load its own: {exc}") from exc

    # -- reading -------------------------------------------------------------------------
    def read_pass(self) -> Pass:
        with self._lock:
            if self._open is None:
                raise BpfError(errno.EBADF, "this bpf Source is closed")
            if MECH_CGROUP in self.mechanisms and self._task_passes == 0:
                try:
                    return self._read(MECH_CGROUP)
                except BpfError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.E2BIG) or MECH_TASK not in self.mechanisms:
                        raise
                    overflow = exc
                self._task_passes = self.TASK_PASSES
            elif MECH_TASK not in self.mechanisms:
                raise BpfError(errno.ENOENT, f"{self.description}: no per-thread iterator")
            else:
                overflow = None
            self._task_passes = max(0, self._task_passes - 1)
            if self._task_refused:
                why = f"; {overflow}" if overflow else ""
                raise BpfError(errno.EOPNOTSUPP, f"{self._task_refused}{why}")
            return self._read(MECH_TASK)

    def self_link(self, cgroup_dir):
        """A link of the per-cgroup program attached to ``cgroup_dir`` alone, as an fd the
        caller holds and closes (bpf.c cg_bpf_self_link). Raises OSError when the directory
        cannot be opened, BpfError when the program cannot be attached."""
        obj = self._obj
        if not self.links or obj is None:
            raise BpfError(errno.ENOENT, f"{self.description}: cannot attach to one cgroup")
        return obj.self_link(cgroup_dir)

    def read_link(self, link_fd):
        """One pass of a :meth:`self_link`: its ``root`` is the cgroup's id, or 0 when the
        cgroup was removed (its record, if it has threads, is the only one)."""
        with self._lock:
            if self._open is None:
                raise BpfError(errno.EBADF, "this bpf Source is closed")
            return self._read_fd(self._obj.link_iter_fd(link_fd), "cgroup pass of one cgroup")

    def _read(self, mech):
        what = f"{MECHANISMS[mech]} pass ({self.description})"
        try:
            fd = self._open(mech)
        except OSError as exc:
            raise BpfError(exc.errno or errno.EIO, f"{what}: {exc.strerror}") from exc
        p = self._read_fd(fd, what)
        if mech == MECH_CGROUP and p.root == 0:
            # cgroup_iter shows a removed (dead) cgroup without running the program: the
            # walk's start is gone, and every cgroup would read as empty
            again = (" pin again with `python -m cgshim bpf pin`" if self._obj is None
                     else " load again")
            raise BpfError(errno.ENOENT, f"{what}: the cgroup the walk starts at was removed;"
                                         f"{again}")
        return p

    def _read_fd(self, fd, what):
        """Read and parse the pass of iterator fd ``fd``, and close it."""
        try:
            if self._native is not None:
                return self._native.read(fd, what)
            return parse_pass(_read_all(fd, what))
        finally:
            os.close(fd)

    def close(self):
        with self._lock:
            self._open = None
            if self._native is not None:
                self._native.close()
                self._native = None
            if self._obj is not None:
                self._obj.close()
                self._obj = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _cgroup_dir_fd(path):
    """An fd of cgroup directory ``path`` for a cgroup iterator link, never 0: a cgroup_fd of
    0 means the root cgroup to the kernel (kernel/bpf/cgroup_iter.c bpf_iter_attach_cgroup),
    and 0 is what open() gives a process started with stdin closed."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if fd == 0:
        try:
            fd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 1)
        finally:
            os.close(0)
    return fd


class Loaded:
    """The program loaded and attached in this process by libbpf (bpf.c cg_bpf_load)."""

    def __init__(self, cgroup_root, *, obj_path=None):
        mod = getattr(_native, "bpf", None)
        if mod is None:
            raise BpfError(errno.ENOSYS, native_missing())
        path = obj_path or object_path()
        if path is None:
            raise BpfError(errno.ENOENT, "the BPF object was not built at install time (clang missing or failing: the build log says which)")
        lacking = missing_load_capabilities()
        if lacking:
            raise BpfError(errno.EPERM, lacking)
        if not os.access(path, os.R_OK):
            raise BpfError(errno.EACCES, f"cannot read the BPF object {path}: this user may not "
                           f"read the package's files")
        self.ffi, self.lib = mod.ffi, mod.lib
        try:
            dirfd = _cgroup_dir_fd(cgroup_root)
        except OSError as exc:
            raise BpfError(exc.errno or errno.EIO, f"{cgroup_root}: {exc.strerror}") from exc
        out = self.ffi.new("struct cg_bpf_obj **")
        try:
            rc = self.lib.cg_bpf_load(os.fsencode(path), dirfd, out)
        finally:
            os.close(dirfd)
        if rc:
            msg = self.ffi.string(self.lib.cg_bpf_last_message()).decode("utf-8", "replace")
            hint = (" (loading needs CAP_BPF and CAP_PERFMON, and bpf() not refused by seccomp)"
                    if rc in (errno.EPERM, errno.EACCES) else "")
            raise BpfError(rc, f"loading {path}: {os.strerror(rc)}{hint}" + (f": {msg}" if msg else ""))
        self.obj = out[0]
        self._lock = threading.Lock()

    def has(self, mech):
        with self._lock:
            return self.obj is not None and bool(self.lib.cg_bpf_has(self.obj, mech))

    def iter_fd(self, mech):
        fd = self.ffi.new("int *")
        with self._lock:
            if self.obj is None:
                raise OSError(errno.EBADF, "closed")
            rc = self.lib.cg_bpf_iter_fd(self.obj, mech, fd)
        if rc:
            raise OSError(rc, os.strerror(rc))
        return fd[0]

    def self_link(self, cgroup_dir):
        """See :meth:`Source.self_link`."""
        dirfd = _cgroup_dir_fd(cgroup_dir)
        fd = self.ffi.new("int *")
        try:
            with self._lock:
                if self.obj is None:
                    raise BpfError(errno.EBADF, "the BPF object is closed")
                rc = self.lib.cg_bpf_self_link(self.obj, dirfd, fd)
        finally:
            os.close(dirfd)
        if rc:
            raise BpfError(rc, f"attaching the per-cgroup iterator to {cgroup_dir}: "
                               f"{os.strerror(rc)}")
        return fd[0]

    def link_iter_fd(self, link_fd):
        fd = self.ffi.new("int *")
        rc = self.lib.cg_bpf_link_iter_fd(link_fd, fd)
        if rc:
            raise BpfError(rc, f"a pass of one cgroup: {os.strerror(rc)}")
        return fd[0]

    def pin(self, mech, path):
        with self._lock:
            rc = self.lib.cg_bpf_pin(self.obj, mech, os.fsencode(path))
        if rc:
            raise BpfError(rc, f"pinning at {path}: {os.strerror(rc)}")

    def close(self):
        with self._lock:
            if self.obj is not None:
                self.lib.cg_bpf_free(self.obj)
                self.obj = None


# -- pin / unpin ---------------------------------------------------------------------------

def mount_of(path, mountinfo="/proc/self/mountinfo"):
    """The MountInfo of the mount that holds ``path`` (the deepest mount at or above it in
    /proc/self/mountinfo; the last of those stacked on one mount point), or None."""
    from cgshim.kernel.mounts import parse_mountinfo

    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        mounts = parse_mountinfo(f.read())
    path = os.path.abspath(path)
    best = None
    for m in mounts:
        mp = m.mount_point
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best.mount_point):
                best = m
    return best


def bpffs_at(path, mountinfo="/proc/self/mountinfo"):
    """The mount point of the bpffs that holds ``path``, or None when it is not on one."""
    m = mount_of(path, mountinfo)
    return m.mount_point if m is not None and m.fstype == "bpf" else None


def mount_bpffs(target):
    """Mount a new bpffs instance at ``target`` (mode 0755), with mount(8). Raises BpfError."""
    import subprocess

    try:
        proc = subprocess.run(["mount", "-t", "bpf", "-o", "mode=0755", "bpf", target],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BpfError(errno.EIO, f"mounting bpffs at {target}: {exc}") from exc
    if proc.returncode != 0:
        raise BpfError(errno.EPERM, f"mounting bpffs at {target}: {proc.stderr.strip()}")


def pin(pin_dir=DEFAULT_PIN_DIR, *, cgroup_root, mount=True, obj_path=None):
    """Load the program and pin its links in ``pin_dir`` (mode 0444 each; the directory
    0755), replacing this format's pins there. When no bpffs holds ``pin_dir`` and it is
    below /sys/fs/bpf, bpffs is mounted there first if ``mount`` is true. The per-cgroup
    pass starts at ``cgroup_root`` (the host's cgroup2 mount: every cgroup). Returns the
    pinned paths. Raises BpfError."""
    pin_dir = os.path.abspath(pin_dir)
    if bpffs_at(pin_dir) is None:
        sys_bpf = "/sys/fs/bpf"
        if mount and pin_dir.startswith(sys_bpf + "/") and os.path.isdir(sys_bpf):
            mount_bpffs(sys_bpf)
        else:
            raise BpfError(errno.ENODEV, f"{pin_dir} is not on a bpffs: mount one "
                           f"(mount -t bpf bpf /sys/fs/bpf) or pin with --dir on one")
    try:
        os.makedirs(pin_dir, mode=0o755, exist_ok=True)
        os.chmod(pin_dir, 0o755)
    except OSError as exc:
        raise BpfError(exc.errno or errno.EIO, f"{pin_dir}: {exc.strerror}") from exc
    obj = Loaded(cgroup_root, obj_path=obj_path)
    try:
        paths = []
        for mech, name in PIN_NAMES.items():
            if not obj.has(mech):
                continue
            path = os.path.join(pin_dir, name)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise BpfError(exc.errno or errno.EIO, f"{path}: {exc.strerror}") from exc
            obj.pin(mech, path)
            paths.append(path)
        return paths
    finally:
        obj.close()  # the pins hold the links


def unpin(pin_dir=DEFAULT_PIN_DIR):
    """Remove cgshim's pins (of any format) from ``pin_dir``, and the directory when it is
    left empty. Returns the removed paths; nothing there is not an error."""
    removed = []
    try:
        names = os.listdir(pin_dir)
    except FileNotFoundError:
        return removed
    except OSError as exc:
        raise BpfError(exc.errno or errno.EIO, f"{pin_dir}: {exc.strerror}") from exc
    for name in sorted(names):
        if not _is_pin_name(name):
            continue
        path = os.path.join(pin_dir, name)
        try:
            os.unlink(path)
        except OSError as exc:
            raise BpfError(exc.errno or errno.EIO, f"{path}: {exc.strerror}") from exc
        removed.append(path)
    try:
        os.rmdir(pin_dir)
    except OSError:
        pass  # not empty (someone else's pins), or not ours to remove
    return removed


def _is_pin_name(name):
    """A name cgshim pins under, of any format: cgroups-v<N> or tasks-v<N>."""
    kind, _, version = name.rpartition("-v")
    return kind in ("cgroups", "tasks") and version.isdigit()
