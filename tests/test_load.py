"""LoadTracker against cAdvisor's formula computed by hand here, and the Sampler on real cgroups.

cAdvisor (manager/container.go): decay = exp(-interval/10); the first sample initialises;
then avg = avg*decay + sample*(1-decay); exported as int32(avg*1000) (truncation).
"""
import math
import os
import threading
import time

import attrs
import pytest
from hypothesis import given, settings, strategies as st

from cgshim.errors import CgroupNotFound, CgshimError, PermissionDenied
from cgshim.load import LoadTracker, Sample, Sampler, milli_load
from tests.support.require import require_kernel

# exp(-1/10) and exp(-10/10), written out: the decay of a 1 s and a 10 s housekeeping interval.
DECAY_1S = 0.9048374180359595
DECAY_10S = 0.36787944117144233


def by_hand(samples, decay):
    """cAdvisor's recurrence, step by step: the averages after each sample."""
    out = []
    avg = None
    for s in samples:
        avg = float(s) if avg is None else avg * decay + s * (1.0 - decay)
        out.append(avg)
    return out


# --- LoadTracker ----------------------------------------------------------------------------

def test_decay_constants():
    assert LoadTracker(1).decay == DECAY_1S
    assert LoadTracker(10).decay == DECAY_10S
    assert LoadTracker(2.5).decay == math.exp(-0.25)
    assert LoadTracker(1).interval_seconds == 1.0


def test_nothing_before_first_sample():
    t = LoadTracker(10)
    assert (t.load_average, t.load_d_average, t.milli_load, t.milli_load_d, t.samples) == (
        None, None, None, None, 0)


def test_first_sample_initialises():
    t = LoadTracker(10)
    t.update(5, 2)
    assert t.load_average == 5.0
    assert t.load_d_average == 2.0
    assert (t.milli_load, t.milli_load_d, t.samples) == (5000, 2000, 1)
    t.update(0)  # nr_uninterruptible defaults to 0
    assert t.load_average == 5.0 * DECAY_10S
    assert t.load_d_average == 2.0 * DECAY_10S


@pytest.mark.parametrize("interval, decay", [(1, DECAY_1S), (10, DECAY_10S)])
def test_constant_three_stays_three(interval, decay):
    t = LoadTracker(interval)
    for _ in range(100):
        t.update(3)
        assert t.load_average == 3.0
        assert t.milli_load == 3000


@pytest.mark.parametrize("interval, decay", [(1, DECAY_1S), (10, DECAY_10S)])
def test_step_up_from_zero(interval, decay):
    samples = [0] + [3] * 60
    want = by_hand(samples, decay)
    t = LoadTracker(interval)
    for s, w in zip(samples, want):
        t.update(s)
        assert t.load_average == w
        assert t.milli_load == math.trunc(w * 1000)
    # The closed form of the same step: 3 * (1 - decay**n) after n samples of 3.
    assert t.load_average == pytest.approx(3 * (1 - decay**60), rel=1e-12)


def test_step_values_at_ten_seconds():
    # 0, then 3, 3, 3 with decay e^-1: 3(1-e^-1) = 1.896..., 3(1-e^-2) = 2.5939..., 3(1-e^-3) = 2.850...
    t = LoadTracker(10)
    got = []
    for s in (0, 3, 3, 3):
        t.update(s)
        got.append(t.milli_load)
    assert got == [0, 1896, 2593, 2850]


def test_step_down_to_zero_decays_without_going_negative():
    t = LoadTracker(1)
    t.update(3, 3)
    millis = []
    for _ in range(400):
        t.update(0, 0)
        millis.append(t.milli_load)
        assert t.load_average >= 0.0 and t.milli_load >= 0 and t.milli_load_d >= 0
    assert millis == sorted(millis, reverse=True)
    assert millis[0] == math.trunc(3 * DECAY_1S * 1000) == 2714
    assert millis[-1] == 0 and t.milli_load_d == 0
    assert t.load_average > 0.0  # still positive: truncation, not a clamp, makes it 0


def test_d_average_follows_nr_uninterruptible_only():
    t = LoadTracker(10)
    seq = [(4, 0), (0, 2), (1, 7), (9, 1)]
    for r, d in seq:
        t.update(r, d)
    assert t.load_average == by_hand([r for r, _ in seq], DECAY_10S)[-1]
    assert t.load_d_average == by_hand([d for _, d in seq], DECAY_10S)[-1]


@pytest.mark.parametrize("avg, milli", [
    (2.9995, 2999),          # 2999.5 is truncated, not rounded to 3000
    (2.9999999, 2999),
    (3.0, 3000),
    (0.0, 0),
    (0.0009, 0),
    (0.001, 1),
    (1e-300, 0),
    (1.0005, 1000),
    (2147483.647, 2147483647),
    (3e6, 2**31 - 1),         # past int32: clamped, never wrapped negative
    (None, None),
])
def test_milli_load_truncates_like_go_int32(avg, milli):
    assert milli_load(avg) == milli


@pytest.mark.parametrize("bad", [0, -1, -0.5, float("nan"), float("inf"), float("-inf")])
def test_bad_interval_is_value_error(bad):
    with pytest.raises(ValueError, match="interval_seconds"):
        LoadTracker(bad)


@pytest.mark.parametrize("bad", [None, "1", True, [1]])
def test_non_numeric_interval_is_type_error(bad):
    with pytest.raises(TypeError, match="interval_seconds"):
        LoadTracker(bad)


@pytest.mark.parametrize("running, blocked, exc", [
    (None, 0, TypeError),
    (1, None, TypeError),
    (1.5, 0, TypeError),
    (True, 0, TypeError),
    ("3", 0, TypeError),
    (-1, 0, ValueError),
    (0, -2, ValueError),
])
def test_bad_samples_raise_and_change_nothing(running, blocked, exc):
    t = LoadTracker(10)
    t.update(2, 1)
    with pytest.raises(exc, match="nr_"):
        t.update(running, blocked)
    assert (t.load_average, t.load_d_average, t.samples) == (2.0, 1.0, 1)


@settings(max_examples=300, deadline=None)
@given(
    samples=st.lists(st.integers(0, 100_000), min_size=1, max_size=60),
    interval=st.floats(0.01, 600, allow_nan=False, allow_infinity=False),
)
def test_average_stays_within_the_samples(samples, interval):
    t = LoadTracker(interval)
    lo = hi = samples[0]
    for s in samples:
        t.update(s, s)
        lo, hi = min(lo, s), max(hi, s)
        # a convex combination of the samples, up to float rounding
        assert lo * (1 - 1e-12) <= t.load_average <= hi * (1 + 1e-12)
        assert t.load_d_average == t.load_average
        assert 0 <= t.milli_load <= math.trunc(hi * 1000 * (1 + 1e-12))
    assert t.load_average == by_hand(samples, math.exp(-interval / 10))[-1]


# --- Sampler with a scripted reader: error paths the kernel cannot be made to produce ------

@attrs.frozen
class FakeLoad:
    path: str
    nr_running: "int | None"
    nr_uninterruptible: "int | None"
    source: str = "scan"


class ScriptedReader:
    """Answers cpu_load from a dict path -> list of results (FakeLoad or an exception)."""

    def __init__(self, script):
        self.script = {p: list(v) for p, v in script.items()}
        self.calls = []

    def cpu_load(self, path, *, recursive=False):
        self.calls.append((path, recursive))
        answer = self.script[path].pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Sampler(ScriptedReader({}), ["/a"], 0)
    with pytest.raises(TypeError):
        Sampler(ScriptedReader({}), "/a", 1)


def test_sampler_tracks_counts_errors_and_drops():
    errors = []
    reader = ScriptedReader({
        "/a": [FakeLoad("/a", 2, 0), FakeLoad("/a", 4, 1), FakeLoad("/a", None, None)],
        "/b": [PermissionDenied("no"), FakeLoad("/b", 1, 0), CgroupNotFound("gone")],
    })
    s = Sampler(reader, ["/a", "/b", "/a"], 10, recursive=True,
                on_error=lambda path, exc: errors.append((path, type(exc))))
    assert s.paths() == ("/a", "/b")

    s.sample_once()
    snap = s.snapshot()
    assert set(snap) == {"/a"}  # /b has no reading yet
    assert snap["/a"] == Sample(path="/a", cpu_load=FakeLoad("/a", 2, 0), load_average=2.0,
                                load_d_average=0.0, milli_load=2000, milli_load_d=0,
                                samples=1, errors=0)
    assert s.error_counts() == {"/a": 0, "/b": 1}
    assert errors == [("/b", PermissionDenied)]

    s.sample_once()
    snap = s.snapshot()
    want = by_hand([2, 4], DECAY_10S)[-1]
    assert snap["/a"].load_average == want
    assert snap["/a"].load_d_average == by_hand([0, 1], DECAY_10S)[-1]
    assert snap["/b"].load_average == 1.0 and snap["/b"].errors == 1

    s.sample_once()  # /a: psi-only reading; /b: removed
    snap = s.snapshot()
    assert set(snap) == {"/a"}
    assert snap["/a"].cpu_load.nr_running is None  # the new reading is visible ...
    assert snap["/a"].load_average == want and snap["/a"].samples == 2  # ... the average is not moved
    assert s.paths() == ("/a",)  # a fixed set forgets a removed cgroup for good
    assert "/b" not in s.error_counts()
    assert reader.calls == [("/a", True), ("/b", True)] * 3


def test_sampler_follows_a_callable_path_set():
    current = [["/a", "/b"]]
    reader = ScriptedReader({"/a": [FakeLoad("/a", 1, 0)] * 5, "/b": [FakeLoad("/b", 3, 0)] * 5})
    s = Sampler(reader, lambda: current[0], 1)
    s.sample_once()
    s.sample_once()
    assert {p: x.samples for p, x in s.snapshot().items()} == {"/a": 2, "/b": 2}
    current[0] = ["/a"]
    s.sample_once()
    assert set(s.snapshot()) == {"/a"} and s.paths() == ("/a",)
    current[0] = ["/a", "/b"]  # back again: a fresh tracker
    s.sample_once()
    assert {p: x.samples for p, x in s.snapshot().items()} == {"/a": 4, "/b": 1}


def test_sampler_keeps_old_paths_when_the_callable_fails():
    errors = []
    answers = [["/a"], CgshimError("listing failed")]

    def paths():
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    reader = ScriptedReader({"/a": [FakeLoad("/a", 1, 0)] * 2})
    s = Sampler(reader, paths, 1, on_error=lambda p, e: errors.append((p, str(e))))
    s.sample_once()
    s.sample_once()
    assert s.snapshot()["/a"].samples == 2
    assert errors == [(None, "listing failed")]


def test_sampler_does_not_swallow_bugs():
    reader = ScriptedReader({"/a": [ZeroDivisionError("bug")] * 2})
    s = Sampler(reader, ["/a"], 1)
    with pytest.raises(ZeroDivisionError):
        s.sample_once()
    s.start()
    assert wait_for(lambda: not s.running)
    with pytest.raises(ZeroDivisionError):
        s.stop()


def stop_returns(sampler, limit=30.0):
    """Call sampler.stop() on a helper thread; True if it returned within ``limit`` seconds.
    The sampler's interval is an hour, so a stop() that slept through it would hang here."""
    done = threading.Event()

    def run():
        sampler.stop()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(limit)


def wait_for(cond, limit=15.0):
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_stop_interrupts_the_wait():
    reader = ScriptedReader({"/a": [FakeLoad("/a", 1, 0)] * 3})
    s = Sampler(reader, ["/a"], 3600)
    s.start()
    assert wait_for(lambda: "/a" in s.snapshot())
    with pytest.raises(RuntimeError):
        s.start()
    assert stop_returns(s)
    assert not s.running
    assert s.snapshot()["/a"].samples == 1


# --- Sampler on real cgroups ------------------------------------------------------------------

def _reader_class():
    try:
        from cgshim import Reader
    except ImportError:
        try:
            from cgshim.reader import Reader
        except ImportError as exc:
            require_kernel(False, f"cgshim.Reader is not importable yet: {exc}")
    return Reader


@pytest.fixture
def reader():
    with _reader_class()() as r:
        yield r


def expected_samples_to_converge(decay, target=3.0, within=0.05):
    """Samples of ``target`` after an initial 0 until the average is within ``within`` of it:
    the gap after n samples is target*decay**n, so n = ceil(ln(within)/ln(decay))."""
    return math.ceil(math.log(within) / math.log(decay))


@pytest.mark.kernel
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("interval, decay", [(1, DECAY_1S), (10, DECAY_10S)])
def test_three_busy_workers_converge_to_3000(testbed, reader, version, interval, decay):
    cg = testbed.cgroup(version)
    s = Sampler(reader, [cg], interval)
    s.sample_once()  # empty cgroup: the first sample initialises the average to 0
    first = s.snapshot()[cg]
    assert (first.cpu_load.nr_running, first.milli_load) == (0, 0)
    assert first.cpu_load.cgroup_version == version
    for _ in range(3):
        testbed.spawn(busy=True, cgroups=[cg])

    n = expected_samples_to_converge(decay)
    assert n == {1: 30, 10: 3}[interval]
    want = by_hand([0] + [3] * n, decay)
    for i in range(1, n + 1):
        s.sample_once()
        got = s.snapshot()[cg]
        assert got.cpu_load.nr_running == 3, got.cpu_load
        assert got.load_average == want[i]
        assert got.milli_load == math.trunc(want[i] * 1000)
        # within 5% of 3000 exactly from the n-th sample on, not before
        assert (got.milli_load >= 2850) == (i >= n), (i, got.milli_load)


@pytest.mark.kernel
@pytest.mark.parametrize("version", [1, 2])
def test_removed_cgroup_is_dropped(testbed, reader, version):
    keep = testbed.cgroup(version)
    gone = testbed.cgroup(version)
    testbed.spawn(busy=True, cgroups=[keep])
    errors = []
    s = Sampler(reader, [keep, gone], 10, on_error=lambda p, e: errors.append((p, e)))
    s.sample_once()
    assert set(s.snapshot()) == {keep, gone}
    os.rmdir(gone)  # made by this test bed, empty; the bed's cleanup tolerates it being gone
    # Dropped in the next tick: the Sampler sweeps each path as a root, and the sweep's
    # walk finds this root gone (CgroupNotFound) before a backend reads a held fd of it.
    s.sample_once()
    snap = s.snapshot()
    assert set(snap) == {keep}
    assert snap[keep].samples == 2 and snap[keep].milli_load == 1000
    assert s.paths() == (keep,)
    assert errors == []
    calls_before = snap[keep].samples
    s.sample_once()  # the dropped path is not polled again
    assert set(s.snapshot()) == {keep} and s.snapshot()[keep].samples == calls_before + 1


@pytest.mark.kernel
def test_background_thread_samples_and_stops_promptly(testbed, reader):
    cg1 = testbed.cgroup(1)
    cg2 = testbed.cgroup(2)
    for _ in range(3):
        testbed.spawn(busy=True, cgroups=[cg1, cg2])
    s = Sampler(reader, [cg1, cg2], 3600)
    with s:
        assert s.running
        assert wait_for(lambda: set(s.snapshot()) == {cg1, cg2}), s.error_counts()
        assert stop_returns(s)
    assert not s.running
    snap = s.snapshot()
    for cg in (cg1, cg2):
        assert snap[cg].samples == 1  # one tick at start, the next would be an hour later
        assert snap[cg].milli_load == 3000, snap[cg].cpu_load


@pytest.mark.kernel
def test_background_ticks_repeat(testbed, reader):
    cg = testbed.cgroup(2)
    testbed.spawn(busy=True, cgroups=[cg])
    testbed.spawn(busy=True, cgroups=[cg])
    with Sampler(reader, [cg], 0.02) as s:
        assert wait_for(lambda: cg in s.snapshot() and s.snapshot()[cg].samples >= 5)
    got = s.snapshot()[cg]
    assert got.milli_load == 2000 and got.errors == 0
