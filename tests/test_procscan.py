"""The thread-state scan on real cgroups (v2 cgroup.threads, v1 tasks) holding workers in
known states, from tests.support.testbed. Needs root; marked ``kernel``."""
import collections
import errno
import os
import random
import re
import threading
import time

import pytest

from cgshim import _native
from tests.support.require import REQUIRE
from cgshim.errors import CgroupNotFound, CgshimError
from cgshim.kernel.threadstat import STATE_FIELDS, ScanCounts, Scanner

pytestmark = pytest.mark.kernel

NATIVE = _native.procscan
# Under CGSHIM_REQUIRE_KERNEL=1 (CI) a missing build fails these tests instead of skipping.
needs_native = pytest.mark.skipif(
    NATIVE is None and not REQUIRE, reason=f"C scanner not built ({_native.load_errors.get('procscan')}); "
                           "python cgshim/_native/build.py procscan")
BACKENDS = [pytest.param(True, marks=needs_native, id="native"), pytest.param(False, id="python")]
LIST_FILE = {1: "tasks", 2: "cgroup.threads"}


def expected(*workers):
    """ScanCounts the workers' settled /proc states add up to."""
    states = {}
    for w in workers:
        states.update(w.expected_states())
    counts = collections.Counter(STATE_FIELDS.get(s, "nr_other") for s in states.values())
    return ScanCounts(nr_listed=len(states), **counts)


def list_of(cgroup, version):
    return os.path.join(cgroup, LIST_FILE[version])


def pinned_scenario(testbed, *cgroups):
    """A busy worker, one with every kind of sleeper and a SIGSTOPped one, in ``cgroups``."""
    busy = testbed.spawn(busy=True, cgroups=cgroups)
    sleepy = testbed.spawn(pipe=2, poll=2, futex=2, nanosleep=2, cgroups=cgroups)
    stopped = testbed.spawn(pipe=1, futex=1, cgroups=cgroups)
    stopped.stop()
    return busy, sleepy, stopped


_STAT_LINK = re.compile(r"/proc/\d+/task/(\d+)/stat$")


def stat_fds():
    """tids of the per-thread stat files this process holds open."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            m = _STAT_LINK.match(os.readlink(f"/proc/self/fd/{name}"))
        except FileNotFoundError:
            continue
        if m:
            out.append(int(m.group(1)))
    return out


def fd_count():
    return len(os.listdir("/proc/self/fd")) - 1  # less the listing's own fd


@pytest.mark.parametrize("native", BACKENDS)
@pytest.mark.parametrize("version", [2, 1])
def test_counts_match_the_pinned_states(testbed, native, version):
    cg = testbed.cgroup(version)
    workers = pinned_scenario(testbed, cg)
    want = expected(*workers)
    assert want.nr_running == 1 and want.nr_sleeping == 9 and want.nr_stopped == 3
    with Scanner(native=native) as scanner:
        for _ in range(3):  # cold, then warm (native: from cached fds)
            assert scanner.scan_file(list_of(cg, version)) == want
        assert scanner.cached_fds == (want.nr_listed if native else 0)


@needs_native
def test_v1_and_v2_and_both_backends_agree(testbed):
    v1, v2 = testbed.cgroup(1), testbed.cgroup(2)
    workers = pinned_scenario(testbed, v1, v2)
    want = expected(*workers)
    with Scanner(native=True) as native, Scanner(native=False) as python:
        got = {(kind, v): s.scan_file(list_of(cg, v))
               for kind, s in (("native", native), ("python", python))
               for v, cg in ((1, v1), (2, v2))}
    assert set(got.values()) == {want}, got


@needs_native
def test_dead_cached_fds_are_detected(testbed):
    cg = testbed.cgroup(2)
    keep = testbed.spawn(pipe=3, cgroups=[cg])
    doomed = testbed.spawn(futex=3, cgroups=[cg])
    path = list_of(cg, 2)
    with Scanner(max_fds=8, native=True) as scanner:
        assert scanner.scan_file(path) == expected(keep, doomed)
        assert scanner.cached_fds == 8 and sorted(stat_fds()) == sorted(keep.tids + doomed.tids)

        # The dead threads are no longer listed: counts drop. Their fds stay cached
        # (bounded by max_fds) until the table needs the room.
        doomed.kill()
        assert scanner.scan_file(path) == expected(keep)
        assert scanner.cached_fds == 8

        # New threads in a full table push out the least recently listed: the dead ones.
        fresh = testbed.spawn(nanosleep=3, cgroups=[cg])
        assert scanner.scan_file(path) == expected(keep, fresh)
        assert scanner.cached_fds == 8
        assert sorted(stat_fds()) == sorted(keep.tids + fresh.tids)

        # A listed tid whose cached fd belongs to a dead task: pread says ESRCH, the fd
        # is closed and the path tried again (which finds nothing: vanished).
        with open(path, "rb") as f:
            old_list = f.read()
        fresh.kill()
        got = scanner.scan_bytes(old_list)
        assert got == ScanCounts(nr_sleeping=4, nr_listed=8, nr_vanished=4)
        assert scanner.cached_fds == 4 and sorted(stat_fds()) == sorted(keep.tids)


def _churn(testbed, cg, stop, errors):
    """Start workers in cg and kill them at once, until told to stop."""
    try:
        while not stop.is_set():
            w = testbed.spawn(futex=12, pipe=4, cgroups=[cg], settle=False)
            time.sleep(random.random() * 0.01)
            w.kill()
    except Exception as exc:  # reported by the test
        errors.append(exc)


@pytest.mark.parametrize("native", BACKENDS)
def test_scans_survive_a_storm_of_exits(testbed, native):
    cg = testbed.cgroup(2)
    steady = testbed.spawn(pipe=2, futex=2, cgroups=[cg])
    baseline = fd_count()
    stop, errors = threading.Event(), []
    churners = [threading.Thread(target=_churn, args=(testbed, cg, stop, errors)) for _ in range(2)]
    seen_more = 0
    with Scanner(max_fds=8, native=native) as scanner:
        for t in churners:
            t.start()
        try:
            deadline = time.monotonic() + 1.0
            scans = 0
            while time.monotonic() < deadline or scans < 20:
                got = scanner.scan_file(list_of(cg, 2))
                scans += 1
                parts = (got.nr_running, got.nr_sleeping, got.nr_uninterruptible, got.nr_stopped,
                         got.nr_other, got.nr_vanished, got.nr_denied)
                assert sum(parts) == got.nr_listed and all(p >= 0 for p in parts)
                assert got.nr_listed >= 5 and got.nr_sleeping >= 5  # the steady worker
                assert got.nr_denied == 0 and got.nr_hidden == 0
                seen_more += got.nr_listed > 5
                assert scanner.cached_fds <= 8 and len(stat_fds()) <= 8
        finally:
            stop.set()
            for t in churners:
                t.join()
        assert errors == []
        assert seen_more > 0, "the storm never showed up in a scan"
        assert scanner.scan_file(list_of(cg, 2)) == expected(steady)
    assert stat_fds() == []
    # Worker pipes of the churn are closed; only the steady worker's remain.
    assert fd_count() == baseline


@needs_native
def test_fd_use_bounded_and_released(testbed):
    cg = testbed.cgroup(2)
    workers = [testbed.spawn(futex=20, cgroups=[cg]) for _ in range(3)]
    baseline = fd_count()
    scanner = Scanner(max_fds=16, native=True)
    try:
        for _ in range(3):
            assert scanner.scan_file(list_of(cg, 2)) == expected(*workers)
            assert scanner.cached_fds == 16
            assert baseline < fd_count() <= baseline + 16 + 1  # + the proc root dup
    finally:
        scanner.close()
    assert fd_count() == baseline
    assert stat_fds() == []


@pytest.mark.parametrize("native", BACKENDS)
def test_removed_cgroup(testbed, native):
    cg = testbed.cgroup(2)
    with Scanner(native=native) as scanner:
        assert scanner.scan_file(list_of(cg, 2)) == ScanCounts()
        os.rmdir(cg)  # made by this test bed and empty
        with pytest.raises(CgroupNotFound, match="cgroup.threads"):
            scanner.scan_file(list_of(cg, 2))


@needs_native
@pytest.mark.parametrize("version", [2, 1])
def test_list_read_after_removal_answers_enodev(testbed, version):
    """The fact behind mapping ENODEV to CgroupNotFound: an open list of a removed cgroup."""
    cg = testbed.cgroup(version)
    fd = os.open(list_of(cg, version), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.rmdir(cg)
        with Scanner(native=True) as scanner:
            out = NATIVE.ffi.new("struct cg_scan_counts *")
            assert NATIVE.lib.cg_scanner_scan_fd(scanner._sc, fd, out) == errno.ENODEV
    finally:
        os.close(fd)


def test_five_thousand_threads(testbed):
    cg = testbed.cgroup(2)
    big = testbed.spawn(futex=5000, cgroups=[cg], settle=False)
    big.wait_settled(timeout=60)
    want = expected(big)
    assert want.nr_listed == 5001
    for native in ([True] if NATIVE is not None or REQUIRE else []) + [False]:
        with Scanner(native=native) as scanner:
            assert scanner.scan_file(list_of(cg, 2)) == want
            assert scanner.scan_file(list_of(cg, 2)) == want
            assert scanner.cached_fds == (min(5001, scanner.max_fds) if native else 0)


@needs_native
def test_measure_warm_scan_cost(testbed):
    """Prints the per-thread cost at 1000 threads (no assertion on speed)."""
    cg = testbed.cgroup(2)
    w = testbed.spawn(futex=999, cgroups=[cg])
    path = list_of(cg, 2)
    with open(path, "rb") as f:
        data = f.read()
    reps = 20

    def per_thread(fn):
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps / 1000 * 1e6

    with Scanner(native=True) as warm, Scanner(max_fds=0, native=True) as cold, \
            Scanner(native=False) as python:
        assert warm.scan_bytes(data) == expected(w)
        us_warm = per_thread(lambda: warm.scan_bytes(data))
        us_warm_file = per_thread(lambda: warm.scan_file(path))
        us_cold = per_thread(lambda: cold.scan_bytes(data))
        us_python = per_thread(lambda: python.scan_bytes(data))
    fds = [os.open(f"/proc/{t}/task/{t}/stat", os.O_RDONLY | os.O_CLOEXEC) for t in w.tids]
    try:
        def floor():
            for fd in fds:
                os.pread(fd, 512, 0)
        us_floor = per_thread(floor)
    finally:
        for fd in fds:
            os.close(fd)
    print(f"\nper thread at 1000 threads: warm scan_bytes {us_warm:.2f} us, warm scan_file "
          f"{us_warm_file:.2f} us, uncached (max_fds=0) {us_cold:.2f} us, python fallback "
          f"{us_python:.2f} us; floor (os.pread loop on held fds) {us_floor:.2f} us")


# --- many lists in one call (cg_scanner_scan_many) ---------------------------------------

def _open_lists(paths):
    return [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in paths]


@needs_native
def test_scan_many_equals_scan_file(testbed):
    """Each list's counts in one batch equal a one-list scan of it, on v1 and v2 lists,
    and the held list fds read fresh contents at every call (pread from 0)."""
    v2 = [testbed.cgroup(2) for _ in range(6)]
    v1 = [testbed.cgroup(1) for _ in range(2)]
    busy, sleepy, stopped = pinned_scenario(testbed, v2[0], v1[0])
    testbed.spawn(pipe=3, futex=2, cgroups=[v2[3], v1[1]])
    lists = [list_of(c, 2) for c in v2] + [list_of(c, 1) for c in v1]
    fds = _open_lists(lists)
    try:
        with Scanner(native=True) as sc:
            many = sc.scan_many(fds)
            one = [sc.scan_file(p) for p in lists]
            assert many == one
            assert many[0] == expected(busy, sleepy, stopped) == many[6]
            assert many[3].nr_sleeping == 6 and many[3].nr_listed == 6
            assert many[1] == ScanCounts()
            late = testbed.spawn(pipe=1, cgroups=[v2[1]])
            again = sc.scan_many(fds)
            assert again[1] == expected(late)
    finally:
        for fd in fds:
            os.close(fd)


@needs_native
def test_scan_many_errors_stay_with_their_list(testbed, tmp_path):
    cgs = [testbed.cgroup(2) for _ in range(3)]
    w = testbed.spawn(pipe=2, cgroups=[cgs[0]])
    junk = tmp_path / "junk"
    junk.write_bytes(b"12\nnot a tid\n")
    fds = _open_lists([list_of(c, 2) for c in cgs]) + [os.open(junk, os.O_RDONLY)]
    try:
        os.rmdir(cgs[1])  # its held list fd now answers ENODEV
        with Scanner(native=True) as sc:
            got = sc.scan_many(fds + [-1])
        assert got[0] == expected(w) and got[2] == ScanCounts()
        assert isinstance(got[1], CgroupNotFound)
        assert type(got[3]).__name__ == "ParseError"
        assert isinstance(got[4], CgshimError) and "EBADF" in str(got[4])
    finally:
        for fd in fds:
            os.close(fd)


@needs_native
def test_threads_many_records(testbed):
    """Per-thread records: every listed tid once, its /proc state and its starttime
    (stat field 22), the same as /proc says."""
    cgs = [testbed.cgroup(2) for _ in range(2)]
    a = testbed.spawn(busy=True, cgroups=[cgs[0]])
    b = testbed.spawn(pipe=2, nanosleep=1, cgroups=[cgs[1]])
    b.stop()
    fds = _open_lists([list_of(c, 2) for c in cgs])
    try:
        with Scanner(native=True) as sc:
            got = sc.threads_many(fds)
    finally:
        for fd in fds:
            os.close(fd)
    for (counts, records), w in zip(got, (a, b)):
        assert counts == expected(w)
        assert sorted(r.tid for r in records) == sorted(w.tids)
        for r in records:
            with open(f"/proc/{r.tid}/task/{r.tid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            assert int(fields[19]) == r.starttime > 0  # field 22: the 20th after the comm
            assert chr(r.state) == w.expected_states()[r.tid]


@needs_native
def test_cache_holds_the_node_one_open_per_thread(testbed):
    """A cache that holds every thread opens each stat file once: sweeps after the first
    open nothing (counted by the scanner), across 60 lists in one batch."""
    cgs = [testbed.cgroup(2) for _ in range(60)]
    for i in range(0, 60, 3):
        testbed.spawn(pipe=4, cgroups=[cgs[i]])
    fds = _open_lists([list_of(c, 2) for c in cgs])
    try:
        with Scanner(native=True, max_fds=1000) as sc:
            sc.scan_many(fds)
            first = sc.opens
            assert first == 20 * 5
            for _ in range(20):
                sc.scan_many(fds)
            assert sc.opens == first
            assert sc.cached_fds == 100
            # a cache too small for the node reopens on every sweep
            sc.set_max_fds(50)
            before = sc.opens
            sc.scan_many(fds)
            sc.scan_many(fds)
            assert sc.opens - before >= 100
            assert sc.cached_fds <= 50
    finally:
        for fd in fds:
            os.close(fd)


def test_stat_starttime_parser():
    if NATIVE is None:
        pytest.skip("C scanner not built")
    lib, ffi = NATIVE.lib, NATIVE.ffi
    out = ffi.new("uint64_t *")
    line = (b"123 (a) b)c) S 1 123 123 0 -1 4194560 10 0 0 0 5 6 0 0 20 0 3 0 98765 "
            b"1000 200 18446744073709551615\n")
    assert lib.cg_stat_starttime(line, len(line), out) == 0 and out[0] == 98765
    neg = b"7 (x) R 1 2 3 -5 -1 0 0 0 0 0 0 0 -3 -4 -100 -20 1 0 42 0"
    assert lib.cg_stat_starttime(neg, len(neg), out) == 0 and out[0] == 42
    for bad in (b"", b"no paren", line[:line.index(b"98765") + 3], b"1 (a) S 1 2\n",
                line.replace(b" 98765", b" x8765")):
        assert lib.cg_stat_starttime(bad, len(bad), out) == errno.EINVAL, bad
    with open(f"/proc/self/task/{threading.get_native_id()}/stat", "rb") as f:
        real = f.read()
    assert lib.cg_stat_starttime(real, len(real), out) == 0
    assert out[0] == int(real.rsplit(b")", 1)[1].split()[19])


# -- exact load: the schedstat clocks beside each record (CG_SCAN_SCHEDSTAT) --------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from cgshim.kernel.schedstat import parse_schedstat  # noqa: E402

FUZZ = int(os.environ.get("CGSHIM_FUZZ_EXAMPLES", "300"))


def _c_clocks(data):
    lib, ffi = NATIVE.lib, NATIVE.ffi
    run, delay = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    err = lib.cg_schedstat_clocks(data, len(data), run, delay)
    return err, run[0], delay[0]


@needs_native
@settings(max_examples=FUZZ, deadline=None)
@given(st.one_of(st.binary(max_size=80),
                 st.builds(lambda a, b, c, cut: (b"%d %d %d\n" % (a, b, c))[:cut],
                           st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                           st.integers(0, 2**64 - 1), st.integers(0, 70))))
def test_schedstat_clocks_parser_agrees_with_python(data):
    """The C parser of a schedstat line (any bytes, any prefix of a real line) either
    refuses it or gives the first two numbers, each complete (followed by a space), and
    agrees with the Python parser on every whole line."""
    err, run, delay = _c_clocks(data)
    m = re.match(rb"(\d+) (\d+) ", data)
    if m and int(m.group(1)) < 2**64 and int(m.group(2)) < 2**64:
        assert (err, run, delay) == (0, int(m.group(1)), int(m.group(2)))
    else:
        assert err == errno.EINVAL
    try:
        whole = parse_schedstat(data)
    except CgshimError:
        return
    assert (err, run, delay) == (0, whole.run_ns, whole.wait_ns)


@needs_native
def test_schedstat_flag_needs_records():
    lib, ffi = NATIVE.lib, NATIVE.ffi
    with Scanner(native=True) as sc:
        counts = ffi.new("struct cg_scan_counts[]", 1)
        errs = ffi.new("int32_t[]", 1)
        fds = ffi.new("int32_t[]", [0])
        assert lib.cg_scanner_scan_many(sc._sc, fds, 1, lib.CG_SCAN_SCHEDSTAT, counts, errs,
                                        ffi.NULL, 0, ffi.NULL, ffi.NULL) == errno.EINVAL


def _schedstat(tid):
    with open(f"/proc/{tid}/task/{tid}/schedstat", "rb") as f:
        s = parse_schedstat(f.read())
    return s.run_ns, s.wait_ns


@pytest.mark.parametrize("native", BACKENDS)
def test_scan_clocks_are_the_threads_schedstat(testbed, native):
    """Each listed thread's (tid, starttime, run, run_delay) from a scan lies between
    direct reads of its schedstat before and after, for both implementations; with the C
    scanner the second scan holds two fds per thread (stat, schedstat) and no more than
    max_fds in all."""
    cg = testbed.cgroup(2)
    w = testbed.spawn(busy=True, pipe=2, futex=1, cgroups=[cg])
    with Scanner(native=native, max_fds=64) as sc:
        for _ in range(3):
            before = {tid: _schedstat(tid) for tid in w.tids}
            counts, clocks = sc.scan_file_clocks(list_of(cg, 2))
            after = {tid: _schedstat(tid) for tid in w.tids}
            assert counts == expected(w)
            assert sorted(c[0] for c in clocks) == sorted(w.tids)
            for tid, start, run, wait in clocks:
                with open(f"/proc/{tid}/task/{tid}/stat", "rb") as f:
                    assert start == int(f.read().rsplit(b")", 1)[1].split()[19])
                assert before[tid][0] <= run <= after[tid][0]
                assert before[tid][1] <= wait <= after[tid][1]
        if native:
            assert sc.cached_fds == 2 * len(w.tids)
            sc.set_max_fds(5)  # room for two threads' pairs and one stat file
            for _ in range(3):
                sc.scan_file_clocks(list_of(cg, 2))
                assert sc.cached_fds <= 5
