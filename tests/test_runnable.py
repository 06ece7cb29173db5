"""Exact load arithmetic: the runnable-time tracker against a model kernel (hypothesis), the
kernel's load-average fixed point, and RunnableAverage. No root needed; the real-kernel proof
is in test_runnable_kernel.py."""
import math

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cgshim.runnable import (
    EXP_1, EXP_5, EXP_15, FIXED_1, LOAD_FREQ, RunnableAverage, RunnableTracker, calc_load,
    calc_load_n,
)

# -- the kernel's arithmetic -----------------------------------------------------------------


def test_constants_are_the_kernels_decay_over_five_seconds():
    # include/linux/sched/loadavg.h: EXP_n = FIXED_1 / exp(5 s / n min), 11-bit fixed point
    for exp, minutes in ((EXP_1, 1), (EXP_5, 5), (EXP_15, 15)):
        assert exp == round(FIXED_1 / math.exp(LOAD_FREQ / (60 * minutes)))
    assert FIXED_1 == 2048


def test_calc_load_rounds_up_while_rising_and_down_while_falling():
    assert calc_load(0, EXP_1, FIXED_1) == (FIXED_1 * (FIXED_1 - EXP_1) + FIXED_1 - 1) // FIXED_1
    assert calc_load(FIXED_1, EXP_1, 0) == FIXED_1 * EXP_1 // FIXED_1
    # a constant active is reached, not approached forever (the rounding up while rising)
    load = 0
    for _ in range(2000):
        load = calc_load(load, EXP_1, 3 * FIXED_1)
    assert load == 3 * FIXED_1


@given(st.integers(0, 64 * FIXED_1), st.integers(0, 64 * FIXED_1), st.integers(1, 400))
def test_calc_load_n_is_close_to_n_single_steps(load, active, n):
    """calc_load_n (NO_HZ catch-up) = n steps of calc_load up to the fixed point's rounding:
    each single step rounds up by < 1 while rising, and exp**n carries the rounding of up to
    2*log2(n) fixed-point multiplications."""
    for exp in (EXP_1, EXP_5, EXP_15):
        step = load
        for _ in range(n):
            step = calc_load(step, exp, active)
        slack = n + 2 + abs(load - active) * (2 * n.bit_length() + 1) // FIXED_1
        assert abs(calc_load_n(load, exp, active, n) - step) <= slack
        assert calc_load_n(load, exp, active, 1) == calc_load(load, exp, active)


# -- RunnableAverage -------------------------------------------------------------------------


def _feed(avg, rate, seconds, every, t0=100.0, wait_rate=0.0, blocked=0):
    t, run = t0, 0.0
    avg.update(t, 0.0, 0.0, blocked)
    steps = round(seconds / every)
    for _ in range(steps):
        t += every
        run += rate * every
        avg.update(t, run, wait_rate * run / rate if rate else 0.0, blocked)
    return t


def test_runnable_average_is_delta_over_time():
    avg = RunnableAverage()
    avg.update(10.0, 5.0, 1.0)
    assert avg.runnable is None and avg.load1 == 0.0
    avg.update(12.0, 8.0, 2.0, nr_uninterruptible=3)
    assert avg.runnable == pytest.approx(1.5) and avg.runqueue == pytest.approx(0.5)
    assert avg.running == pytest.approx(1.0) and avg.interval == pytest.approx(2.0)


def test_load_averages_follow_the_kernel_steps_for_any_reading_interval():
    """A constant 2.5 runnable + 1 D, read every 1 s, 5 s or 2.5 s: the same 5 s steps as the
    kernel would take with active = 3.5."""
    want = [0, 0, 0]
    for _ in range(24):  # 120 s
        want = [calc_load(w, e, round(3.5 * FIXED_1)) for w, e in zip(want, (EXP_1, EXP_5, EXP_15))]
    for every in (1.0, 5.0, 2.5):
        avg = RunnableAverage()
        _feed(avg, 2.5, 120.0, every, blocked=1)
        assert avg.avenrun == tuple(want), every
    assert want[0] / FIXED_1 == pytest.approx(3.5 * (1 - math.exp(-2)), abs=0.01)


def test_sparse_readings_apply_several_steps_at_once():
    """Readings 60 s apart (kubelet-like spacing stretched): 12 steps per reading with the
    same active, as calc_load_n does; close to 5 s readings of the same constant (dense
    single steps round up by < 1/2048 each while rising: up to 12 per minute)."""
    dense, sparse = RunnableAverage(), RunnableAverage()
    _feed(dense, 1.0, 600.0, 5.0)
    _feed(sparse, 1.0, 600.0, 60.0)
    for a, b in zip(dense.avenrun, sparse.avenrun):
        assert abs(a - b) <= 48
    assert sparse.load1 == pytest.approx(1.0, abs=0.01)


def test_a_periodic_load_is_seen_exactly_where_samples_alias():
    """Busy 50% of every second, read every second: the exact average is 0.5 at each
    reading; a sample at the same phase every second sees 0 or 1 forever (cAdvisor)."""
    avg = RunnableAverage()
    t, run = 0.0, 0.0
    avg.update(t, run, 0.0)
    for _ in range(60):
        t += 1.0
        run += 0.5
        avg.update(t, run, 0.0)
        assert avg.runnable == pytest.approx(0.5)
    assert avg.load1 == pytest.approx(0.5 * (1 - math.exp(-1)), abs=0.01)


def test_counter_going_down_restarts_the_average_not_the_history():
    avg = RunnableAverage()
    _feed(avg, 2.0, 30.0, 1.0)
    loads = avg.avenrun
    avg.update(200.0, 0.5, 0.0)
    assert avg.runnable is None and avg.avenrun == loads
    avg.update(201.0, 1.5, 0.25)
    assert avg.runnable == pytest.approx(1.0)


@pytest.mark.parametrize("args", [(5.0, 1.0, 0.0), (4.0, 1.0, 0.0), (6.0, -1.0, 0.0),
                                  (6.0, float("nan"), 0.0), (6.0, 1.0, float("inf"))])
def test_bad_readings_are_value_errors_and_change_nothing(args):
    avg = RunnableAverage()
    avg.update(5.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        avg.update(*args)
    avg.update(6.0, 1.0, 0.0)
    assert avg.runnable == pytest.approx(1.0)


# -- the tracker against a model kernel ------------------------------------------------------


class _Thread:
    def __init__(self, tid, start, cgroup):
        self.tid, self.start, self.cgroup = tid, start, cgroup
        self.run = self.wait = 0
        self.alive = True


class _Kernel:
    """Threads with growing clocks, cgroups, exits, migrations and tid reuse."""

    def __init__(self, ncgroups, ntids):
        self.cgroups = list(range(ncgroups))
        self.tids = list(range(100, 100 + ntids))  # a small pid space: reuse is frequent
        self.threads = {}  # tid -> live _Thread
        self.ticks = 1000
        self.all = []

    def free_tids(self):
        return [t for t in self.tids if t not in self.threads]

    def create(self, tid, cgroup):
        th = _Thread(tid, self.ticks, cgroup)
        self.threads[tid] = th
        self.all.append(th)
        return th

    def exit(self, tid):
        self.threads.pop(tid).alive = False

    def clocks(self, cgroup):
        return [(th.tid, th.start, th.run, th.wait)
                for th in self.threads.values() if th.cgroup == cgroup]


class TrackerModel(RuleBasedStateMachine):
    """Any interleaving of kernel events and reads of any subset of cgroups: counters never
    go down, and together never exceed what the threads really ran and waited (a reused
    tid mistaken for the old thread, or a thread counted twice, would break one of these
    in some sequence)."""

    def __init__(self):
        super().__init__()
        self.kernel = _Kernel(3, 6)
        self.tracker = RunnableTracker()
        self.seen = {}  # cgroup -> last (run, wait)

    @rule(data=st.data())
    @precondition(lambda self: self.kernel.free_tids())
    def create(self, data):
        k = self.kernel
        # a tid is reused only on a later tick than the previous thread's start (see the
        # tracker's limits: same tid and same start tick cannot be told apart)
        tid = data.draw(st.sampled_from(k.free_tids()))
        if any(th.tid == tid and th.start == k.ticks for th in k.all):
            k.ticks += 1
        k.create(tid, data.draw(st.sampled_from(k.cgroups)))

    @rule(data=st.data(), ticks=st.integers(0, 3))
    def time_passes(self, data, ticks):
        k = self.kernel
        k.ticks += ticks
        for th in k.threads.values():
            th.run += data.draw(st.integers(0, 10**7))
            th.wait += data.draw(st.integers(0, 10**7))

    @rule(data=st.data())
    @precondition(lambda self: self.kernel.threads)
    def exit(self, data):
        self.kernel.exit(data.draw(st.sampled_from(sorted(self.kernel.threads))))

    @rule(data=st.data())
    @precondition(lambda self: self.kernel.threads)
    def migrate(self, data):
        th = self.kernel.threads[data.draw(st.sampled_from(sorted(self.kernel.threads)))]
        th.cgroup = data.draw(st.sampled_from(self.kernel.cgroups))

    @rule(cgroup=st.integers(0, 2))
    def read(self, cgroup):
        got = self.tracker.account(cgroup, self.kernel.clocks(cgroup), self.kernel.ticks)
        before = self.seen.get(cgroup, (0, 0))
        assert got[0] >= before[0] and got[1] >= before[1]
        self.seen[cgroup] = got

    @invariant()
    def never_more_than_the_threads_had(self):
        run = sum(r for r, _ in self.seen.values())
        wait = sum(w for _, w in self.seen.values())
        assert run <= sum(th.run for th in self.kernel.all)
        assert wait <= sum(th.wait for th in self.kernel.all)

    @invariant()
    def memory_is_bounded_by_live_and_recently_gone_threads(self):
        assert self.tracker.tracked_threads <= len(self.kernel.all)


TestTrackerModel = TrackerModel.TestCase
TestTrackerModel.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


@st.composite
def _rounds(draw):
    """Rounds of events, each followed by a read of every cgroup (a sweep, as the exporter
    and top read): events are creations, exits, migrations, tid reuse and clock growth."""
    return draw(st.lists(st.lists(st.tuples(st.sampled_from(["create", "exit", "move", "run"]),
                                            st.integers(0, 5), st.integers(0, 2),
                                            st.integers(0, 10**6), st.integers(0, 10**6)),
                                  max_size=12), min_size=1, max_size=12))


@settings(max_examples=150, deadline=None)
@given(_rounds())
def test_sweeps_count_exactly_what_the_documented_rules_say(rounds):
    """When every cgroup is read each round, the increase of a cgroup's counters is exactly:
    for each thread in it now, its clock increase since the previous round if it lived then,
    or its whole clocks if it started since then (a reused tid included); nothing at the
    first round."""
    kernel = _Kernel(3, 6)
    tracker = RunnableTracker()
    totals = {c: (0, 0) for c in kernel.cgroups}
    prev_clocks = None  # tid -> (start, run, wait) of the previous round
    for number, events in enumerate(rounds):
        kernel.ticks += 1
        for kind, i, cgroup, a, b in events:
            tid = kernel.tids[i]
            th = kernel.threads.get(tid)
            if kind == "create" and th is None:
                if not any(o.tid == tid and o.start == kernel.ticks for o in kernel.all):
                    kernel.create(tid, cgroup)
            elif kind == "exit" and th is not None:
                kernel.exit(tid)
            elif kind == "move" and th is not None:
                th.cgroup = cgroup
            elif kind == "run" and th is not None:
                th.run += a
                th.wait += b
        for cgroup in kernel.cgroups:
            want_run = want_wait = 0
            if number > 0:
                for th in kernel.threads.values():
                    if th.cgroup != cgroup:
                        continue
                    old = prev_clocks.get(th.tid)
                    if old is not None and old[0] == th.start:
                        want_run += th.run - old[1]
                        want_wait += th.wait - old[2]
                    else:
                        want_run += th.run
                        want_wait += th.wait
            got = tracker.account(cgroup, kernel.clocks(cgroup), kernel.ticks)
            assert (got[0] - totals[cgroup][0], got[1] - totals[cgroup][1]) == (want_run, want_wait)
            totals[cgroup] = got
        prev_clocks = {th.tid: (th.start, th.run, th.wait) for th in kernel.threads.values()}
        # exited threads are dropped within two rounds
        assert tracker.tracked_threads <= len(kernel.threads) + len(kernel.all)


def test_forget_drops_the_cgroup_and_its_threads():
    tracker = RunnableTracker()
    tracker.account("a", [(1, 5, 10, 1), (2, 5, 10, 1)], 5)
    tracker.account("b", [(3, 5, 10, 1)], 5)
    assert tracker.tracked_threads == 3 and tracker.tracked_cgroups == 2
    tracker.forget("a")
    assert tracker.tracked_threads == 1 and tracker.totals("a") is None
    assert tracker.totals("b") == (0, 0)


def test_a_repeated_tid_in_one_list_counts_once():
    tracker = RunnableTracker()
    tracker.account("a", [(1, 5, 10, 1)], 5)
    assert tracker.account("a", [(1, 5, 30, 4), (1, 5, 30, 4)], 6) == (20, 3)


def test_sums_add_increases_only_and_switching_methods_never_counts_twice():
    """account_sums (the bpf pass's per-cgroup sums): increases are added, a drop (a thread
    left) adds nothing; switching between per-thread reads and sums re-bases instead of
    counting an interval twice."""
    tracker = RunnableTracker()
    assert tracker.account_sums("a", 100, 10) == (0, 0)
    assert tracker.account_sums("a", 150, 30) == (50, 20)
    assert tracker.account_sums("a", 40, 5) == (50, 20)  # a thread with 120/30 exited
    assert tracker.account_sums("a", 70, 6) == (80, 21)
    # per-thread reads now: the first only sets the threads' references
    assert tracker.account("a", [(1, 5, 50, 3), (2, 5, 20, 3)], 10) == (80, 21)
    assert tracker.account("a", [(1, 5, 60, 4), (2, 5, 20, 3)], 11) == (90, 22)
    # and back to sums: re-based again
    assert tracker.account_sums("a", 500, 50) == (90, 22)
    assert tracker.account_sums("a", 510, 51) == (100, 23)
