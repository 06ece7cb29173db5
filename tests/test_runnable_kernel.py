"""Exact load on the real kernel (root): designed workloads with a known answer, counters that
stay monotonic through thread exits, creation and migration, and a reused tid.

The workloads: k processes in one cgroup, each busy by wall clock for a fraction d_i of every
period (spin until a deadline, then sleep to the next period): runnable (on a CPU or waiting
for one) for d_i of the time, so the exact runnable average is Σ d_i. On a shared machine
contention makes a spinner notice its deadline late and stay runnable past its design, so
each worker also measures its own runnable intervals (from the period's start to the moment
it saw its deadline pass) and the assertion compares the kernel's figure with that measured
demand; the designed Σ d_i is printed beside it.
"""
import math
import os
import threading
import time

import pytest

import cgshim
from cgshim.kernel.schedstat import read_thread
from cgshim.kernel.threadstat import Scanner
from cgshim.load import LoadTracker
from tests.support.testbed import sleep_until

WINDOW = 10.0  # seconds of each designed-workload measurement
TOLERANCE = 0.03


class _CgroupClocks:
    """Reads cgroups' cumulative runnable/runqueue seconds through one Reader (the scan
    backend, C scanner when built): (timestamp, runnable_seconds, runqueue_seconds)."""

    def __init__(self, reader):
        self.reader = reader

    def read(self, cgroup):
        load = self.reader.cpu_load(cgroup)
        assert load.source == "scan", load
        return load.timestamp, load.runnable_seconds, load.runqueue_seconds


@pytest.fixture
def clocks():
    # the scan by name: these tests are about per-thread accounting (exits, migration, reused
    # tids); the bpf pass gives per-cgroup sums (docs/bpf.md, tests/test_bpf.py)
    with cgshim.Reader(backends=("scan", "psi")) as reader:
        yield _CgroupClocks(reader)


def _nr_cpus():
    return len(os.sched_getaffinity(0))


def _designed_run(testbed, clocks, workers, note, quiet=None):
    """Start ``workers`` [(duty, period, phase)] in one cgroup on one schedule, measure a
    WINDOW and return (exact average, runqueue average, measured demand, designed demand).

    ``quiet``: a phase of the (common) period at which every worker is meant to sleep; the
    window's two reads are taken there. A thread waiting for a CPU at a read has its wait so
    far credited only when it next runs (sched_info_arrive), which would shift up to one wait
    per thread across the window's edges; at a quiet phase there is none to shift.
    cAdvisor's view is printed beside: one nr_running sample a second, smoothed."""
    cg = testbed.cgroup(2)
    period = workers[0][1]
    procs = [testbed.periodic(d, p, cgroup=cg, phase=ph, seconds=WINDOW + 3.0) for d, p, ph in workers]
    start = time.monotonic() + 0.2
    for w in procs:
        w.go(start)
    first = start + 1.0  # every schedule under way
    if quiet is not None:
        first = start + (math.ceil((first - start) / period) + quiet) * period
    last = first + round(WINDOW / period) * period
    sleep_until(first)
    t0, run0, wait0 = clocks.read(cg)
    samples = []
    with Scanner() as scanner:
        for i in range(int(WINDOW)):  # a phase of 0.3 s past each read instant, every second
            sleep_until(first + i + 0.3)
            samples.append(scanner.scan_file(os.path.join(cg, "cgroup.threads")).nr_running)
    sleep_until(last)
    t1, run1, wait1 = clocks.read(cg)
    measured = sum(w.runnable_seconds(t0, t1) for w in procs) / (t1 - t0)
    exact = (run1 - run0) / (t1 - t0)
    runqueue = (wait1 - wait0) / (t1 - t0)
    designed = sum(d for d, _, _ in workers)
    ewma = LoadTracker(1.0)
    for s in samples:
        ewma.update(s)
    print(f"\n{note}: exact {exact:.3f} (runqueue {runqueue:.3f}), measured demand "
          f"{measured:.3f}, designed {designed:.3f}; cAdvisor 1 s samples {samples} -> "
          f"EWMA {ewma.load_average:.3f}")
    return exact, runqueue, measured, designed


def _check(exact, measured):
    assert exact == pytest.approx(measured, rel=TOLERANCE), (
        f"exact runnable average {exact:.3f} is not within {TOLERANCE:.0%} of the demand the "
        f"workers measured ({measured:.3f})")


def test_three_at_half_of_one_second(testbed, clocks):
    exact, _, measured, designed = _designed_run(
        testbed, clocks, [(0.5, 1.0, 0.0)] * 3, "3 x 50% of 1 s, in phase", quiet=0.8)
    _check(exact, measured)
    assert measured >= designed * 0.99  # a worker can overrun its design, never underrun it


def test_four_always_spinning_on_two_cores_shows_the_wait(testbed, clocks):
    ncpu = _nr_cpus()
    exact, runqueue, measured, designed = _designed_run(
        testbed, clocks, [(1.0, 1.0, 0.0)] * 4, f"4 x 100% on {ncpu} cores")
    _check(exact, measured)
    assert measured == pytest.approx(4.0, rel=0.01)  # always spinning: runnable by design
    # At most ncpu of them run at any instant, so the rest of the runnable time is waiting.
    assert runqueue >= (exact - ncpu) * (1 - TOLERANCE)
    assert runqueue <= exact


def test_five_at_thirty_percent_of_130_ms(testbed, clocks):
    exact, _, measured, designed = _designed_run(
        testbed, clocks, [(0.3, 0.13, 0.0)] * 5, "5 x 30% of 130 ms, in phase", quiet=0.85)
    _check(exact, measured)
    assert measured >= designed * 0.99


def test_counters_stay_monotonic_through_exits_creation_and_migration(testbed, clocks):
    """Two cgroups read back to back for ~3 s while a spinner migrates between them every
    ~50 ms and short-lived spinning processes are created in A and exit. Each counter never
    goes down; together they hold the migrating spinner's whole time (it is always
    runnable, and a move loses nothing), and never more than every thread could have had."""
    a, b = testbed.cgroup(2), testbed.cgroup(2)
    mover = testbed.spawn(busy=True, cgroups=(a,))
    readings = {a: [clocks.read(a)], b: [clocks.read(b)]}
    stop = threading.Event()
    max_threads = [1]

    def churn():
        where = a
        while not stop.is_set():
            where = b if where == a else a
            testbed.move(mover, where)
            short = testbed.spawn(busy=True, cgroups=(a,), settle=False)
            max_threads[0] = max(max_threads[0], 2)
            time.sleep(0.05)
            short.kill()
            testbed.workers.remove(short)

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            for cg in (a, b):
                readings[cg].append(clocks.read(cg))
            time.sleep(0.01)
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive()
    for cg in (a, b):
        seq = readings[cg]
        for before, after in zip(seq, seq[1:]):
            assert after[1] >= before[1] and after[2] >= before[2], (cg, before, after)
    t_first = min(readings[a][0][0], readings[b][0][0])
    t_last = max(readings[a][-1][0], readings[b][-1][0])
    gained = readings[a][-1][1] + readings[b][-1][1] - readings[a][0][1] - readings[b][0][1]
    elapsed = t_last - t_first
    # the mover alone: ~elapsed, less the wait still in progress at the end (a few ms)
    assert gained >= elapsed * 0.95, (gained, elapsed)
    assert gained <= elapsed * (max_threads[0] + 0.05), (gained, elapsed)


def _set_last_pid(pid):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid))


def test_a_reused_tid_is_a_new_thread(testbed, clocks):
    """A spinning process is read, killed, and its pid given to a new (sleeping) process in
    the same cgroup with ns_last_pid: the next read adds exactly the new process's own
    clocks (it started since the last read), nothing of the old one's, and never makes the
    counter go down."""
    cg = testbed.cgroup(2)
    for _attempt in range(30):
        old = testbed.spawn(busy=True, cgroups=(cg,))
        clocks.read(cg)
        time.sleep(0.2)  # the old one gathers clocks the new one will not have
        _, before, _ = clocks.read(cg)
        old_clock = read_thread(old.pid)
        pid = old.pid
        old.kill()
        testbed.workers.remove(old)
        _set_last_pid(pid - 1)
        new = testbed.spawn(cgroups=(cg,))  # main thread in a pipe read: S, clocks still
        if new.pid != pid:  # another fork on the machine took the pid first: again
            new.kill()
            testbed.workers.remove(new)
            continue
        _, after, _ = clocks.read(cg)
        new_clock = read_thread(new.pid)
        assert new_clock.starttime != old_clock.starttime
        right = (new_clock.run_ns + new_clock.wait_ns) / 1e9
        # Mistaking the new thread for the old would add max(0, new - old) per clock.
        confused = (max(0, new_clock.run_ns - old_clock.run_ns)
                    + max(0, new_clock.wait_ns - old_clock.wait_ns)) / 1e9
        assert abs(right - confused) > 5e-3  # else this run cannot tell them apart
        assert after - before == pytest.approx(right, abs=2e-3)
        return
    pytest.fail("could not get the same pid back in 30 attempts")


def test_sweep_and_cpu_load_share_the_counters_and_other_sources_have_none(testbed):
    """One Reader's sweep and cpu_load advance the same counters (a spinner's runnable time
    grows by the time between any two readings, whichever read it); netlink (v1), psi and
    recursive readings carry None."""
    cg = testbed.cgroup(2)
    w = testbed.spawn(busy=True, cgroups=(cg,))
    with cgshim.Reader() as reader:
        seq = []
        for i in range(6):
            load = reader.sweep([cg])[cg] if i % 2 else reader.cpu_load(cg)
            seq.append((load.timestamp, load.runnable_seconds))
            time.sleep(0.1)
        for (t0, r0), (t1, r1) in zip(seq, seq[1:]):
            # always runnable: + the time between the reads, less a wait in progress / tick
            assert (t1 - t0) - 0.05 <= r1 - r0 <= (t1 - t0) + 0.05
        assert reader.cpu_load(cg, recursive=True).runnable_seconds is None
        assert reader.sweep([cg], recursive=True)[cg].runnable_seconds is None
    v1 = testbed.cgroup(1)
    testbed.move(w, v1)
    with cgshim.Reader() as reader:
        load = reader.cpu_load(v1)
        if load.source == "netlink":
            assert load.runnable_seconds is None and load.runqueue_seconds is None
    with cgshim.Reader(backends=("psi",)) as reader:
        load = reader.cpu_load(cg)
        assert load.source == "psi" and load.runnable_seconds is None


def test_an_exited_threads_last_interval_is_what_is_lost(testbed, clocks):
    """Measured, as documented: a thread that exits between two readings takes the clocks it
    gathered since the previous reading with it; nothing else is lost and nothing goes down."""
    cg = testbed.cgroup(2)
    w = testbed.spawn(busy=True, cgroups=(cg,))
    clocks.read(cg)
    time.sleep(0.2)
    _, r1, _ = clocks.read(cg)
    at_r1 = read_thread(w.pid)
    time.sleep(0.2)
    last = read_thread(w.pid)  # just before it dies
    w.kill()
    testbed.workers.remove(w)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{w.pid}") and time.monotonic() < deadline:
        time.sleep(0.005)
    _, r2, _ = clocks.read(cg)
    lost = (last.run_ns + last.wait_ns - at_r1.run_ns - at_r1.wait_ns) / 1e9
    print(f"\nexited thread: counter +{r2 - r1:.4f} s after its exit, its last interval "
          f"{lost:.3f} s lost")
    assert r2 == r1
    assert lost >= 0.15  # ~0.2 s of a spinner's runnable time went with it
