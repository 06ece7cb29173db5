"""Real cgroups holding real threads in known states, for cgshim's tests and benchmarks.

A :class:`Testbed` creates cgroups with unique names under a prefix (``cgshim-test-`` by
default) in the v1 ``cpu`` hierarchy and/or the cgroup2 hierarchy, starts worker processes
whose threads sit in chosen states, moves them into those cgroups, and on ``close()``
kills exactly the processes it started (by pid) and removes exactly the cgroups it made,
deepest first. It never writes to a cgroup it did not create. Needs root.

Thread kinds a worker can hold (kernel >= 6.1 task states in brackets):

- ``busy``: the main thread spins (R).
- ``pipe``: blocked in read() on a pipe (TASK_INTERRUPTIBLE, counted by cgroupstats).
- ``poll``: blocked in poll() (TASK_INTERRUPTIBLE, counted by cgroupstats).
- ``futex``: blocked in a futex wait (TASK_INTERRUPTIBLE|TASK_FREEZABLE: /proc shows S,
  cgroupstats counts it nowhere).
- ``nanosleep``: blocked in clock_nanosleep (TASK_INTERRUPTIBLE|TASK_FREEZABLE, as futex).

- ``vfork``: clone(CLONE_VM|CLONE_VFORK) of a child that sleeps: the thread waits in D
  (wait_for_vfork_done(), TASK_UNINTERRUPTIBLE|TASK_KILLABLE; cgroupstats counts it
  nowhere) until the child exits. The child is a process of its own ("vfork-child", S),
  moved into the worker's cgroups with it and killed with it.
- ``zombie``: the thread forks a child that exits at once and is never reaped ("zombie",
  Z; cgroup_exit() took it out of every cgroup before it became a zombie), then sleeps in
  a pipe read (S).

A worker that is not busy keeps its main thread in a pipe read (S, counted).
``Worker.stop()`` sends SIGSTOP: every thread goes to T (a vfork waiter stays in D: its
wait is killable, not stoppable). ``Worker.ptrace_stop(tid)`` seizes one thread with ptrace
and interrupts it: that thread goes to t, the others run on.

:meth:`Testbed.periodic` starts a :class:`PeriodicWorker` instead: one thread busy by wall
clock for a fraction of every period, which records its own runnable intervals (the designed
workloads of the exact-load tests).
"""
import ctypes
import errno
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid

SLEEPER_KINDS = ("pipe", "poll", "futex", "nanosleep")
THREAD_KINDS = SLEEPER_KINDS + ("vfork", "zombie")

_WORKER = r"""
import json, os, select, sys, threading, time
spec = json.loads(sys.argv[1])
threading.stack_size(64 * 1024)
r, w = os.pipe()
started = []
extra = []
lock = threading.Lock()
def vfork_sleeper():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    stack = ctypes.create_string_buffer(256 * 1024)
    top = (ctypes.addressof(stack) + len(stack) - 64) & ~15
    libc.clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    # the child runs libc's sleep(arg) on its own stack, never Python code
    libc.clone(ctypes.cast(libc.sleep, ctypes.c_void_p), top, 0x100 | 0x4000 | 17,
               ctypes.c_void_p(10**6))
    os.read(r, 1)
def run(kind):
    tid = threading.get_native_id()
    if kind == "zombie":
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        with lock:
            extra.append(["zombie", pid])
        kind = "pipe"
    with lock:
        started.append([kind, tid])
    if kind == "vfork":
        vfork_sleeper()
    elif kind == "pipe":
        os.read(r, 1)
    elif kind == "poll":
        p = select.poll(); p.register(r, select.POLLIN); p.poll()
    elif kind == "futex":
        threading.Event().wait()
    elif kind == "nanosleep":
        time.sleep(10**7)
for kind, n in spec["threads"].items():
    for _ in range(n):
        threading.Thread(target=run, args=(kind,), daemon=True).start()
want = sum(spec["threads"].values())
while True:
    with lock:
        if len(started) == want:
            break
    time.sleep(0.001)
for kind, tid in started:
    if kind == "vfork":
        while True:
            with open(f"/proc/self/task/{tid}/children") as f:
                kids = f.read().split()
            if kids:
                extra.append(["vfork-child", int(kids[0])])
                break
            time.sleep(0.001)
main = "busy" if spec["busy"] else "pipe"
sys.stdout.write(json.dumps({"main": [main, threading.get_native_id()], "threads": started,
                             "extra": extra}) + "\n")
sys.stdout.flush()
if spec["busy"]:
    while True:
        pass
else:
    os.read(0, 1)
"""

_PERIODIC = r"""
import ctypes, json, os, sys, time
duty, period, phase, seconds = (float(a) for a in sys.argv[1:5])
# Timer slack 1 ns (prctl PR_SET_TIMERSLACK = 29): wake when the period begins, not up to
# 50 us later, so the measured runnable intervals start where the kernel's do.
ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)
sys.stdout.write(json.dumps({"tid": os.getpid()}) + "\n")
sys.stdout.flush()
# "go" with the schedule's start on CLOCK_MONOTONIC (one clock for every process), sent
# once the process is in its cgroup
now = time.monotonic
t0 = float(sys.stdin.readline()) + phase * period
stop = t0 + seconds
intervals = []
n = 0
prev_end = now()
if t0 > prev_end:
    time.sleep(t0 - prev_end)
while True:
    start = t0 + n * period
    if start >= stop:
        break
    deadline = start + duty * period
    while now() < deadline:
        pass
    end = now()
    # Runnable from the period's start (the timer's expiry wakes it; a late wake is time
    # waiting for a CPU) or from the previous end if it overran into this period.
    intervals.append((max(start, prev_end), end))
    prev_end = end
    n += 1
    nxt = t0 + n * period
    if nxt > end:
        time.sleep(nxt - end)
sys.stdout.write(json.dumps({"intervals": intervals}) + "\n")
sys.stdout.flush()
"""

# The /proc state letter each kind settles in (field 3 of /proc/<pid>/task/<tid>/stat).
_EXPECTED = {"busy": "R", "pipe": "S", "poll": "S", "futex": "S", "nanosleep": "S",
             "vfork": "D", "vfork-child": "S", "zombie": "Z"}
# Kinds a SIGSTOP of the worker leaves as they are: a killable D wait, other processes.
_NOT_STOPPED = ("vfork", "vfork-child", "zombie")
PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 17, 0x4206, 0x4207
_WALL = 0x40000000

_counter = itertools.count()


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    return libc


def sleep_until(t):
    """Sleep until time.monotonic() reaches ``t`` (a signal that wakes the sleep early
    sleeps again)."""
    while True:
        left = t - time.monotonic()
        if left <= 0:
            return
        time.sleep(left)


class TestbedError(RuntimeError):
    """The test bed could not be set up (not root, no such hierarchy, ...)."""


def _read_state(tid):
    try:
        with open(f"/proc/{tid}/task/{tid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return chr(data[data.rindex(b")") + 2])


class Worker:
    """One started process; ``roles`` maps each tid to its kind."""

    def __init__(self, proc, roles):
        self.proc = proc
        self.pid = proc.pid
        self.roles = roles
        self.stopped = False
        self.traced = set()   # tids seized by ptrace_stop()
        self.extra_pids = []  # processes of its own the worker started (vfork children)

    @property
    def tids(self):
        return list(self.roles)

    def expected_states(self):
        """tid -> the /proc state letter this worker's threads should be in."""
        want = {tid: _EXPECTED[kind] for tid, kind in self.roles.items()}
        if self.stopped:
            want = {tid: s if self.roles[tid] in _NOT_STOPPED else "T" for tid, s in want.items()}
        for tid in self.traced:
            want[tid] = "t"
        return want

    def count(self, kind):
        return sum(1 for k in self.roles.values() if k == kind)

    def wait_settled(self, timeout=10.0):
        """Wait until every thread shows its expected state; raise TestbedError if not."""
        want = self.expected_states()
        deadline = time.monotonic() + timeout
        while True:
            seen = {tid: _read_state(tid) for tid in want}
            if seen == want:
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"worker {self.pid} did not settle: want {want}, saw {seen}")
            time.sleep(0.005)

    def stop(self):
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True
        self.wait_settled()

    def cont(self):
        os.kill(self.pid, signal.SIGCONT)
        self.stopped = False
        self.wait_settled()

    def ptrace_stop(self, tid):
        """Seize thread ``tid`` with ptrace and interrupt it: it waits in a ptrace stop
        (/proc: t) while the worker's other threads go on. The calling thread is the tracer
        and must be the one that later kills the worker (ptrace is per tracer thread)."""
        if self.roles.get(tid) in _NOT_STOPPED:
            raise TestbedError(f"{tid} is not a thread of worker {self.pid}")
        libc = _libc()
        if libc.ptrace(PTRACE_SEIZE, tid, None, None) != 0:
            raise TestbedError(f"PTRACE_SEIZE {tid}: {os.strerror(ctypes.get_errno())}")
        self.traced.add(tid)
        if libc.ptrace(PTRACE_INTERRUPT, tid, None, None) != 0:
            raise TestbedError(f"PTRACE_INTERRUPT {tid}: {os.strerror(ctypes.get_errno())}")
        os.waitpid(tid, _WALL)
        self.wait_settled()

    def kill(self):
        libc = _libc() if self.traced else None
        for tid in sorted(self.traced):
            libc.ptrace(PTRACE_DETACH, tid, None, None)  # else the leader could not be reaped
        self.traced.clear()
        for pid in self.extra_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


class Testbed:
    """Cgroups and worker processes that are removed again on close (also on failure)."""

    def __init__(self, prefix="cgshim-test-", *, v1_root=None, v2_root=None):
        self.prefix = prefix
        self._roots = {1: v1_root, 2: v2_root}
        self._tag = f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._cgroups = []  # creation order
        self.workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def root(self, version):
        """Mount point of the v1 ``cpu`` hierarchy (version=1) or of cgroup2 (version=2)."""
        if self._roots[version] is None:
            from cgshim.kernel.mounts import hierarchy

            h = hierarchy()
            mount = h.v1_mount("cpu") if version == 1 else h.v2
            if mount is None:
                raise TestbedError(f"this host has no cgroup v{version} hierarchy for tests")
            self._roots[version] = mount.mount_point
        return self._roots[version]

    def cgroup(self, version, parent=None, name=None):
        """Create a cgroup (v1 cpu or cgroup2) and return its absolute directory path.

        ``parent`` must be a cgroup this test bed created (or None for a top-level one).
        """
        if parent is None:
            parent = self.root(version)
        elif parent not in self._cgroups:
            raise TestbedError(f"{parent} was not created by this test bed")
        if name is None:
            name = f"{self._tag}-{next(_counter)}" if parent == self.root(version) else f"c{next(_counter)}"
        path = os.path.join(parent, name)
        try:
            os.mkdir(path)
        except PermissionError as exc:
            raise TestbedError(f"cannot create {path}: {exc} (tests with real cgroups need root)") from exc
        self._cgroups.append(path)
        return path

    def spawn(self, *, busy=False, cgroups=(), settle=True, **threads):
        """Start a worker with ``busy`` main thread and N threads per kind (pipe=2, futex=3, ...),
        move it into each of ``cgroups`` and wait until its threads settle in their states."""
        unknown = set(threads) - set(THREAD_KINDS)
        if unknown:
            raise TestbedError(f"unknown thread kinds {sorted(unknown)}; known: {THREAD_KINDS}")
        spec = {"busy": bool(busy), "threads": {k: int(n) for k, n in threads.items() if n}}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WORKER, json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
        )
        worker = Worker(proc, {})
        self.workers.append(worker)
        line = proc.stdout.readline()
        if not line:
            raise TestbedError(f"worker {proc.pid} died before reporting its threads")
        report = json.loads(line)
        worker.roles = {tid: kind for kind, tid in [report["main"]] + report["threads"] + report["extra"]}
        worker.extra_pids = [pid for kind, pid in report["extra"] if kind == "vfork-child"]
        for cg in cgroups:
            self.move(worker, cg)
        if settle:
            worker.wait_settled()
        return worker

    def move(self, worker, cgroup):
        """Move all of a worker's threads into a cgroup this test bed made."""
        if cgroup not in self._cgroups:
            raise TestbedError(f"{cgroup} was not created by this test bed")
        for pid in [worker.pid, *getattr(worker, "extra_pids", ())]:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(pid))

    def periodic(self, duty, period, *, cgroup, phase=0.0, seconds=10.0):
        """Start a :class:`PeriodicWorker` (busy ``duty`` of every ``period`` s, its schedule
        shifted by ``phase`` periods) and move it into ``cgroup``; call ``go()`` to start it."""
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _PERIODIC, repr(duty), repr(period), repr(phase),
             repr(seconds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        line = proc.stdout.readline()
        worker = PeriodicWorker(proc, json.loads(line)["tid"] if line else proc.pid, duty, period)
        self.workers.append(worker)
        if not line:
            raise TestbedError(f"periodic worker {proc.pid} died before starting")
        self.move(worker, cgroup)
        return worker

    def close(self):
        errors = []
        for worker in self.workers:
            try:
                worker.kill()
            except Exception as exc:  # keep cleaning up
                errors.append(exc)
        self.workers.clear()
        for path in reversed(self._cgroups):
            for attempt in range(200):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or attempt == 199:
                        errors.append(exc)
                        break
                    time.sleep(0.01)
        self._cgroups.clear()
        if errors:
            raise TestbedError(f"cleanup left things behind: {errors}")


class PeriodicWorker(Worker):
    """A one-thread process busy by wall clock for ``duty`` of every ``period`` seconds: it
    spins until a deadline, then sleeps to the next period, for ``seconds`` from the start
    :meth:`go` gives it.
    So it is runnable (on a CPU or waiting for one) for ``duty`` of the time by design, more
    when contention makes it notice its deadline late. :meth:`intervals` gives the runnable
    intervals it measured itself (CLOCK_MONOTONIC), from the period's start or the previous
    overrun to the moment it saw its deadline pass, after it has finished."""

    def __init__(self, proc, tid, duty, period):
        super().__init__(proc, {tid: "periodic"})
        self.duty, self.period = duty, period
        self._intervals = None

    def expected_states(self):  # runs a schedule; no fixed state to settle in
        return {}

    def go(self, start_at=None):
        """Start the schedule at ``start_at`` (time.monotonic(); default now): period n of
        this worker begins at start_at + (n + phase) * period."""
        start_at = time.monotonic() if start_at is None else start_at
        self.proc.stdin.write(b"%r\n" % float(start_at))
        self.proc.stdin.flush()

    def intervals(self, timeout=120.0):
        """Wait for the schedule to end; its runnable intervals [(start, end), ...]."""
        if self._intervals is None:
            line = self.proc.stdout.readline()
            if not line:
                raise TestbedError(f"periodic worker {self.pid} ended without its intervals")
            self._intervals = [tuple(i) for i in json.loads(line)["intervals"]]
            self.proc.wait(timeout)
        return self._intervals

    def runnable_seconds(self, t0, t1):
        """Seconds of [t0, t1] it measured itself runnable."""
        return sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in self.intervals())

