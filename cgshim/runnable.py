"""Exact load: a cgroup's runnable time from the kernel's cumulative per-thread clocks.

cAdvisor's ``container_cpu_load_average_10s`` smooths one *sample* of nr_running per
housekeeping interval, so a periodic workload aliases against the sampling (a thread busy
50% of every second can read 0 or 1 forever). The kernel keeps, per thread, two clocks that
only grow (:mod:`cgshim.kernel.schedstat`): time on a CPU (``se.sum_exec_runtime``) and time
runnable but waiting on a runqueue (``sched_info.run_delay``). Their sum is the time the
thread spent in TASK_RUNNING, so over an interval Δt

    Σ over a cgroup's threads Δ(run + run_delay) / Δt

is the exact time-averaged number of runnable threads of the cgroup (what ``R`` in
/proc/loadavg estimates, without sampling), and Σ Δrun_delay / Δt the average number queued
waiting for a CPU.

- :class:`RunnableTracker` (kept by a :class:`cgshim.Reader`) turns per-thread clocks into
  per-cgroup counters that never go down: ``CpuLoad.runnable_seconds`` (Σ run + run_delay)
  and ``CpuLoad.runqueue_seconds`` (Σ run_delay).
- :class:`RunnableAverage` turns two readings of those counters into averages, and keeps
  cgroup-local ``load1``/``load5``/``load15`` with the kernel's fixed-point decay
  (include/linux/sched/loadavg.h and kernel/sched/loadavg.c), fed with the exact runnable
  average plus the D (uninterruptible) count: /proc/loadavg's meaning (R + D), R exact.

What the counters do not hold (measured in tests/test_runnable_kernel.py):

- the part of an exited thread's last interval (from the cgroup's previous read to its
  exit): the thread's clocks go with it (cgroup2 ``cpu.stat usage_usec`` keeps the running
  part of dead threads, but for the whole subtree);
- a wait in progress: run_delay is credited by sched_info_arrive() when the thread next gets
  a CPU; it shows at the first read after that;
- for a running thread, up to one scheduler tick of sum_exec_runtime (update_curr() runs at
  ticks and switches, not at the read);
- the time before the Reader's first read of a cgroup (the counters start at 0 then), and
  the clocks of a thread that moved in from a cgroup this Reader never read (its history
  elsewhere is not this cgroup's).

A thread that moves between cgroups is credited, for the interval since it was last read, to
the cgroup it is in at the read. A tid reused by a new thread is told apart by the thread's
start time (stat field 22), so the old thread's clocks are never subtracted from or added to
the new one's.
"""
import threading

__all__ = ["EXP_1", "EXP_5", "EXP_15", "FIXED_1", "FSHIFT", "LOAD_FREQ", "RunnableAverage",
           "RunnableTracker", "calc_load", "calc_load_n"]

# -- the kernel's load-average arithmetic (include/linux/sched/loadavg.h, kernel/sched/loadavg.c)
FSHIFT = 11  # bits of fixed-point precision
FIXED_1 = 1 << FSHIFT  # 1.0 in fixed point
EXP_1 = 1884  # FIXED_1 / exp(5 s / 1 min)
EXP_5 = 2014  # FIXED_1 / exp(5 s / 5 min)
EXP_15 = 2037  # FIXED_1 / exp(5 s / 15 min)
#: seconds between two load-average updates: the kernel's LOAD_FREQ is 5*HZ+1 ticks; one
#: tick (1-4 ms) is left out here, as in every reading of /proc/loadavg's meaning.
LOAD_FREQ = 5.0


def calc_load(load: int, exp: int, active: int) -> int:
    """The kernel's calc_load(): one decay step in fixed point, rounding up while rising."""
    newload = load * exp + active * (FIXED_1 - exp)
    if active >= load:
        newload += FIXED_1 - 1
    return newload // FIXED_1


def _fixed_power_int(x: int, frac_bits: int, n: int) -> int:
    """kernel/sched/loadavg.c fixed_power_int(): x**n in fixed point, rounded at each step."""
    result = 1 << frac_bits
    while n:
        if n & 1:
            result = (result * x + (1 << (frac_bits - 1))) >> frac_bits
        n >>= 1
        if n:
            x = (x * x + (1 << (frac_bits - 1))) >> frac_bits
    return result


def calc_load_n(load: int, exp: int, active: int, n: int) -> int:
    """The kernel's calc_load_n(): n decay steps with the same ``active`` at once (what NO_HZ
    catch-up does after missed updates)."""
    return calc_load(load, _fixed_power_int(exp, FSHIFT, n), active)


# -- per-thread clocks -> per-cgroup counters ----------------------------------------------


class _CgroupClock:
    __slots__ = ("run_ns", "wait_ns", "read_ticks", "listed", "pending", "sums")

    def __init__(self):
        self.run_ns = 0
        self.wait_ns = 0
        self.sums = None  # (run, wait) sums of the previous account_sums, while it is in use
        self.read_ticks = None  # boot-time clock ticks at the start of the previous read
        self.listed = frozenset()  # tids of the previous read
        self.pending = ()  # tids listed before the previous read but not at it


class RunnableTracker:
    """Per-cgroup cumulative run and run_delay nanoseconds from per-thread clocks.

    Per thread (by tid) it keeps the start time and the last clocks seen; per cgroup (by any
    hashable key the caller chooses: the Reader uses the directory's (st_dev, st_ino), so a
    re-created cgroup is a new one) two counters and the tids of its previous read.

    :meth:`account` takes one read of a cgroup: ``clocks`` are ``(tid, starttime, run_ns,
    wait_ns)`` of the threads in it now, ``now_ticks`` the boot-time clock in stat's
    starttime unit (clock ticks since boot), taken before the threads were listed. For each
    thread:

    - known (same tid and start time): the increase of each clock since it was last seen,
      whichever cgroup it was in then, is added to this cgroup; a clock that went down
      (never, for one task) adds nothing and the higher value stays the reference;
    - new to the tracker and started at or after this cgroup's previous read: it ran only in
      that interval, so all of its clocks are added;
    - otherwise (there at the first read of the cgroup, or moved in from a cgroup never read):
      its clocks become the reference and nothing is added.

    The first read of a cgroup adds nothing: its counters start at 0. Threads gone from a
    cgroup's list are kept for one more read of that cgroup (they may have moved to a
    cgroup read later) and then dropped if no other cgroup's read has claimed them.
    :meth:`forget` drops a removed cgroup and its threads. Thread-safe (one lock).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._threads = {}  # tid -> [starttime, run_ns, wait_ns, owner _CgroupClock]
        self._cgroups = {}  # key -> _CgroupClock

    @property
    def tracked_threads(self) -> int:
        """Threads whose last clocks are kept (memory: about 200 bytes each)."""
        return len(self._threads)

    @property
    def tracked_cgroups(self) -> int:
        return len(self._cgroups)

    def totals(self, key):
        """(run_ns, wait_ns) of a cgroup so far, or None if it was never read."""
        cg = self._cgroups.get(key)
        return None if cg is None else (cg.run_ns, cg.wait_ns)

    def account(self, key, clocks, now_ticks):
        """Add one read of cgroup ``key`` (see the class doc); returns its counters
        ``(run_ns, wait_ns)`` after the read: runnable is their sum, runqueue the second."""
        with self._lock:
            cg = self._cgroups.get(key)
            first = cg is None
            if first:
                cg = self._cgroups[key] = _CgroupClock()
            elif cg.sums is not None:
                # Read by sums until now: the threads' references are stale (that time was
                # counted from the sums), so this read only sets them.
                first = True
                cg.sums = None
            since = cg.read_ticks
            threads = self._threads
            add_run = add_wait = 0
            listed = set()
            for tid, start, run, wait in clocks:
                if tid in listed:
                    continue  # a thread list may repeat a tid
                listed.add(tid)
                entry = threads.get(tid)
                if entry is not None and entry[0] == start:
                    delta = run - entry[1]
                    if delta > 0:
                        add_run += delta
                        entry[1] = run
                    delta = wait - entry[2]
                    if delta > 0:
                        add_wait += delta
                        entry[2] = wait
                    entry[3] = cg
                else:  # never seen, or a new thread under a reused tid
                    threads[tid] = [start, run, wait, cg]
                    if since is not None and start >= since:
                        add_run += run
                        add_wait += wait
            if not first:
                cg.run_ns += add_run
                cg.wait_ns += add_wait
            # Gone since the read before the previous one and claimed by no other read: exited.
            for tid in cg.pending:
                if tid not in listed:
                    entry = threads.get(tid)
                    if entry is not None and entry[3] is cg:
                        del threads[tid]
            pending = []
            for tid in cg.listed:
                if tid not in listed:
                    entry = threads.get(tid)
                    if entry is not None and entry[3] is cg:
                        pending.append(tid)
            cg.pending = pending
            cg.listed = listed
            cg.read_ticks = now_ticks if since is None else max(since, now_ticks)
            return cg.run_ns, cg.wait_ns

    def account_sums(self, key, run_sum, wait_sum):
        """Add one read of cgroup ``key`` that gives only the sums of its threads' clocks
        (the bpf pass): each sum's increase since the previous such read is added, a
        decrease adds nothing (a thread exited or moved out: the other threads' progress in
        that interval is lost with it, and a thread that moved in brings its whole history,
        which the per-thread :meth:`account` would not). The first read of a cgroup, and the
        first after per-thread reads, only sets the reference. Returns the counters."""
        with self._lock:
            cg = self._cgroups.get(key)
            if cg is None:
                cg = self._cgroups[key] = _CgroupClock()
            if cg.sums is not None:
                cg.run_ns += max(0, run_sum - cg.sums[0])
                cg.wait_ns += max(0, wait_sum - cg.sums[1])
            cg.sums = (run_sum, wait_sum)
            return cg.run_ns, cg.wait_ns

    def forget(self, key):
        """Drop a cgroup (removed) with the threads it was the last to see."""
        with self._lock:
            cg = self._cgroups.pop(key, None)
            if cg is None:
                return
            for tid in list(cg.listed) + list(cg.pending):
                entry = self._threads.get(tid)
                if entry is not None and entry[3] is cg:
                    del self._threads[tid]


# -- averages and cgroup-local load averages -----------------------------------------------


class RunnableAverage:
    """Averages of one cgroup's runnable time between readings, and its load1/5/15.

    Feed it successive readings of one cgroup from one Reader with :meth:`update`
    (``timestamp`` in seconds of a monotonic clock, the counters in seconds).

    - ``runnable``: Σ Δ(run + run_delay) / Δt between the last two readings: the exact
      time-averaged number of the cgroup's threads that were runnable (on a CPU or waiting
      for one). ``runqueue``: the part of it waiting; ``running`` = runnable - runqueue.
      None until two readings.
    - ``load1``, ``load5``, ``load15``: the kernel's load average (calc_load() with EXP_1,
      EXP_5, EXP_15 in 11-bit fixed point, one step per LOAD_FREQ = 5 s, starting at 0 as the
      kernel's does at boot), fed for each 5 s period with ``active`` = the exact runnable
      average over that period + the latest D (uninterruptible) count. Readings need not
      fall on 5 s boundaries: runnable time is spread evenly over the time between two
      readings, and several periods in one step are applied as calc_load_n() does.

    How this differs from cAdvisor's ``container_cpu_load_average_10s``
    (:class:`cgshim.load.LoadTracker`): cAdvisor averages one instantaneous sample of
    nr_running per housekeeping interval, ``avg = avg*d + sample*(1-d)`` with d fixed from the
    initial interval, so it sees only the instants it samples (a periodic workload aliases)
    and its "10s" window is ten samples, whatever their spacing. ``runnable`` here counts
    every nanosecond between two readings, whatever their spacing; ``load1/5/15`` decay in
    wall-clock time like /proc/loadavg. Neither counts sleeping (S) threads; cAdvisor's
    ``load_d`` and the D part of ``load1`` are samples (the kernel has no cumulative D clock
    per thread).

    A counter that goes down (a reading of another Reader, or a cgroup re-created) restarts
    the averaging from that reading; the load averages keep their history. Not thread-safe.
    """

    __slots__ = ("_t", "_runnable_s", "_runqueue_s", "runnable", "runqueue", "interval",
                 "_avenrun", "_period_start", "_period_acc")

    def __init__(self):
        self._t = None
        self._runnable_s = None
        self._runqueue_s = None
        self.runnable = None
        self.runqueue = None
        self.interval = None  # seconds between the last two readings
        self._avenrun = [0, 0, 0]  # fixed point, as the kernel's avenrun[]
        self._period_start = None
        self._period_acc = 0.0  # runnable seconds in the current 5 s period so far

    def __repr__(self):
        return (f"RunnableAverage(runnable={self.runnable!r}, runqueue={self.runqueue!r}, "
                f"load1={self.load1:.2f}, load5={self.load5:.2f}, load15={self.load15:.2f})")

    @property
    def timestamp(self):
        """The timestamp of the last reading taken (None before the first)."""
        return self._t

    @property
    def running(self):
        """Average threads on a CPU between the last two readings (None until two)."""
        if self.runnable is None:
            return None
        return self.runnable - self.runqueue

    @property
    def load1(self) -> float:
        return self._avenrun[0] / FIXED_1

    @property
    def load5(self) -> float:
        return self._avenrun[1] / FIXED_1

    @property
    def load15(self) -> float:
        return self._avenrun[2] / FIXED_1

    @property
    def avenrun(self):
        """The three load averages in the kernel's fixed point (FIXED_1 = 1.0)."""
        return tuple(self._avenrun)

    def update(self, timestamp, runnable_seconds, runqueue_seconds, nr_uninterruptible=0):
        """Take one reading. ValueError for a timestamp not after the previous one, a negative
        or non-finite value; see the class doc for a counter that goes down."""
        t = float(timestamp)
        runnable_s = float(runnable_seconds)
        runqueue_s = float(runqueue_seconds)
        blocked = int(nr_uninterruptible or 0)
        for name, value in (("timestamp", t), ("runnable_seconds", runnable_s),
                            ("runqueue_seconds", runqueue_s)):
            if not value == value or value in (float("inf"), float("-inf")):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if runnable_s < 0 or runqueue_s < 0 or blocked < 0:
            raise ValueError("runnable_seconds, runqueue_seconds and nr_uninterruptible must be >= 0")
        if self._t is None:
            self._start(t, runnable_s, runqueue_s)
            return
        dt = t - self._t
        if dt <= 0:
            raise ValueError(f"timestamp {t} is not after the previous reading's {self._t}")
        d_runnable = runnable_s - self._runnable_s
        d_runqueue = runqueue_s - self._runqueue_s
        if d_runnable < 0 or d_runqueue < 0:  # not the same counter any more
            self.runnable = self.runqueue = self.interval = None
            self._start(t, runnable_s, runqueue_s)
            return
        self.runnable = d_runnable / dt
        self.runqueue = d_runqueue / dt
        self.interval = dt
        self._advance(self._t, t, self.runnable, blocked)
        self._t, self._runnable_s, self._runqueue_s = t, runnable_s, runqueue_s

    def _start(self, t, runnable_s, runqueue_s):
        self._t, self._runnable_s, self._runqueue_s = t, runnable_s, runqueue_s
        if self._period_start is None:
            self._period_start = t
        else:  # a restart: the time since the last reading is unknown, leave it out
            self._period_start, self._period_acc = t, 0.0

    def _advance(self, t0, t1, rate, blocked):
        """Spread ``rate`` runnable threads over [t0, t1) into 5 s periods, closing each."""
        end = self._period_start + LOAD_FREQ
        if t1 < end:
            self._period_acc += rate * (t1 - t0)
            return
        # Close the current period.
        self._period_acc += rate * (end - t0)
        self._step(self._period_acc / LOAD_FREQ + blocked, 1)
        # Whole periods inside [end, t1): all with the same active, as calc_load_n().
        n = int((t1 - end) // LOAD_FREQ)
        if n:
            self._step(rate + blocked, n)
        self._period_start = end + n * LOAD_FREQ
        self._period_acc = rate * (t1 - self._period_start)

    def _step(self, active, n):
        active_fp = int(round(active * FIXED_1)) if active > 0 else 0
        for i, exp in enumerate((EXP_1, EXP_5, EXP_15)):
            if n == 1:
                self._avenrun[i] = calc_load(self._avenrun[i], exp, active_fp)
            else:
                self._avenrun[i] = calc_load_n(self._avenrun[i], exp, active_fp, n)
