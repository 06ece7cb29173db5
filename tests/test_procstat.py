"""procstat: the stat-line parser, thread-list handling of both backends, and the C
scanner's fd cache, on this test process's own threads (no root, no cgroups needed)."""
import contextlib
import os
import random
import re
import resource
import threading
import time

import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from cgshim import _native
from tests.support.require import REQUIRE
from cgshim.errors import CgroupNotFound, CgshimError, ParseError
from cgshim.kernel.threadstat import STATE_FIELDS, ScanCounts, Scanner, effective_max_fds, parse_stat_state

NATIVE = _native.procscan
# Under CGSHIM_REQUIRE_KERNEL=1 (CI) a missing build fails these tests instead of skipping.
needs_native = pytest.mark.skipif(
    NATIVE is None and not REQUIRE, reason=f"C scanner not built ({_native.load_errors.get('procscan')}); "
                           "python cgshim/_native/build.py procscan")
BACKENDS = [pytest.param(True, marks=needs_native, id="native"), pytest.param(False, id="python")]
# Settings for hypothesis tests that take a module fixture (the threads are shared).
SHARED = settings(max_examples=60, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])


def _pid_max():
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read())


PID_MAX = _pid_max()  # tids at or above this cannot exist


def _stat_line(pid, comm, state, rest):
    return b"%d (%s) %s %s\n" % (pid, comm, state, b" ".join(b"%d" % n for n in rest))


comms = st.binary(max_size=64).filter(lambda b: b"\0" not in b)
states = st.sampled_from([bytes([c]) for c in b"RSDTtZXIPWKx"])
rests = st.lists(st.integers(-(2**63), 2**64 - 1), min_size=0, max_size=50)


# -- parse_stat_state ------------------------------------------------------------------

@given(pid=st.integers(1, 2**22), comm=comms, state=states, rest=rests)
@example(pid=1, comm=b"a) R (b", state=b"S", rest=[1])
@example(pid=1, comm=b"x\n) T\n(", state=b"D", rest=[])
@example(pid=1, comm=b")))", state=b"Z", rest=[0])
def test_state_after_the_last_paren(pid, comm, state, rest):
    line = _stat_line(pid, comm, state, rest)
    assert parse_stat_state(line) == state.decode()
    # Any prefix that reaches the state letter gives the same answer (the scanner
    # reads only the first 512 bytes).
    cut = line.rindex(b")") + 3
    assert parse_stat_state(line[:cut]) == state.decode()
    if NATIVE is not None:
        assert NATIVE.lib.cg_stat_state(line, len(line)) == state[0]


@given(pid=st.integers(1, 2**22), comm=comms, blanks=st.sampled_from([b"", b" ", b"  \t"]))
def test_truncated_before_the_state(pid, comm, blanks):
    line = b"%d (%s)%s" % (pid, comm, blanks)
    with pytest.raises(ParseError):
        parse_stat_state(line)


@given(st.binary(max_size=200).filter(lambda b: b")" not in b))
def test_no_closing_paren(data):
    with pytest.raises(ParseError, match="no '\\)'"):
        parse_stat_state(data)


@pytest.mark.parametrize("data", [b"1 (x) 5 0", b"1 (x) \n", b"1 (x) -", b"1 (x) \xc3\xa9"])
def test_garbage_after_the_paren(data):
    with pytest.raises(ParseError, match="no state letter"):
        parse_stat_state(data)


@needs_native
@given(st.binary(max_size=120))
@example(b") R")
@example(b")\tx")
@example(b"))\n")
def test_c_and_python_parsers_agree(data):
    got = NATIVE.lib.cg_stat_state(data, len(data))
    try:
        want = ord(parse_stat_state(data))
    except ParseError:
        want = -22  # -EINVAL
    assert got == want


def test_state_fields_is_the_exact_match_mapping():
    assert STATE_FIELDS == {"R": "nr_running", "S": "nr_sleeping",
                            "D": "nr_uninterruptible", "T": "nr_stopped"}
    assert set(STATE_FIELDS.values()) <= {a.name for a in ScanCounts.__attrs_attrs__}


def test_own_stat_file_parses():
    tid = threading.get_native_id()
    with open(f"/proc/{tid}/task/{tid}/stat", "rb") as f:
        assert parse_stat_state(f.read()) == "R"  # the thread reading it is running


# -- scans of this process's own threads ----------------------------------------------

def _state(tid):
    with open(f"/proc/{tid}/task/{tid}/stat", "rb") as f:
        return parse_stat_state(f.read())


@contextlib.contextmanager
def sleepers(n):
    """n threads of this process blocked in a futex wait (S); yields their tids."""
    stop = threading.Event()
    tids, lock = [], threading.Lock()

    def run():
        with lock:
            tids.append(threading.get_native_id())
        stop.wait()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while len(tids) < n or any(_state(t) != "S" for t in tids):
            assert time.monotonic() < deadline, "sleeper threads did not settle in S"
            time.sleep(0.002)
        yield list(tids)
    finally:
        stop.set()
        for t in threads:
            t.join()
        # join() returns before the kernel task is gone: wait until it is.
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/self/task/{t}") for t in tids):
            assert time.monotonic() < deadline, "sleeper threads did not exit"
            time.sleep(0.001)


@pytest.fixture(scope="module")
def own_threads():
    with sleepers(6) as tids:
        yield tids


def _list(tids, trailing=True):
    text = b"\n".join(b"%d" % t for t in tids)
    return text + b"\n" if trailing and tids else text


@pytest.mark.parametrize("native", BACKENDS)
@SHARED
@given(data=st.data())
def test_scan_bytes_of_own_threads(own_threads, native, data):
    main = threading.get_native_id()  # the thread that scans: R
    pool = own_threads + [main]
    picked = data.draw(st.lists(st.sampled_from(pool), max_size=20), label="tids")
    gone = data.draw(st.lists(st.integers(PID_MAX, 2**31 - 1), max_size=4, unique=True),
                     label="nonexistent")
    zeros = data.draw(st.integers(0, 3), label="zeros")
    dups = data.draw(st.lists(st.sampled_from(picked), max_size=5) if picked else st.just([]))
    tids = picked + gone + [0] * zeros + dups
    random.Random(data.draw(st.integers(0, 1000))).shuffle(tids)
    with Scanner(max_fds=8, native=native) as scanner:
        got = scanner.scan_bytes(_list(tids, data.draw(st.booleans())))
    distinct = set(picked)
    assert got == ScanCounts(
        nr_running=int(main in distinct), nr_sleeping=len(distinct - {main}),
        nr_listed=len(distinct) + len(gone), nr_vanished=len(gone), nr_hidden=zeros)


lists = st.lists(st.sampled_from([b"0", b"1", b"17", b"", b" 1", b"+1", b"-1", b"1 ", b"x",
                                  b"2147483647", b"2147483648", b"007", b"\r", b"\xd9\xa1"]),
                 max_size=8).map(lambda parts: b"\n".join(parts))


@needs_native
@given(data=lists, tail=st.sampled_from([b"", b"\n", b"\n\n"]))
@example(data=b"", tail=b"\n")
@example(data=b"", tail=b"")
def test_backends_accept_and_reject_the_same_lists(data, tail):
    data += tail
    outcomes = []
    for native in (True, False):
        with Scanner(native=native) as scanner:
            try:
                got = scanner.scan_bytes(data)
                outcomes.append(("ok", got.nr_listed, got.nr_hidden))
            except ParseError as exc:
                assert "line" in str(exc)
                outcomes.append(("ParseError",))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("native", BACKENDS)
@pytest.mark.parametrize("data", [b"\n", b"1\n\n2\n", b"1\nabc\n", b" 12\n", b"-3\n",
                                  b"12 \n", b"1\n2\n\n", b"99999999999\n", b"\x00\n"])
def test_garbage_lists(native, data):
    with Scanner(native=native) as scanner:
        with pytest.raises(ParseError, match="line"):
            scanner.scan_bytes(data)


@pytest.mark.parametrize("native", BACKENDS)
def test_scan_file_of_a_plain_file(own_threads, native, tmp_path):
    path = tmp_path / "tasks"
    path.write_bytes(_list(own_threads * 2))
    with Scanner(native=native) as scanner:
        got = scanner.scan_file(str(path))
        assert got == ScanCounts(nr_sleeping=6, nr_listed=6)
        assert got.task_counts().nr_sleeping == 6
        with pytest.raises(CgroupNotFound, match="gone-cgroup"):
            scanner.scan_file(str(tmp_path / "gone-cgroup" / "cgroup.threads"))
        with pytest.raises(CgshimError, match="EISDIR"):
            scanner.scan_file(str(tmp_path))
        (tmp_path / "bad").write_bytes(b"1\n2\nthree\n")
        with pytest.raises(ParseError, match=r"bad.*line 3"):
            scanner.scan_file(str(tmp_path / "bad"))


@needs_native
def test_large_list_from_a_file(own_threads, tmp_path):
    # Longer than the C reader's first buffer (16 KiB): it must grow and read to EOF.
    gone = list(range(PID_MAX, PID_MAX + 6000))
    path = tmp_path / "tasks"
    path.write_bytes(_list(own_threads + gone))
    with Scanner(max_fds=0, native=True) as scanner:
        got = scanner.scan_file(str(path))
    assert got == ScanCounts(nr_sleeping=6, nr_listed=6006, nr_vanished=6000)


@pytest.mark.parametrize("native", BACKENDS)
def test_endless_file_is_not_a_thread_list(native):
    with Scanner(native=native) as scanner:
        with pytest.raises(ParseError, match="MiB: not a thread list"):
            scanner.scan_file("/dev/zero")


@pytest.mark.parametrize("native", BACKENDS)
def test_closed_scanner(native):
    scanner = Scanner(native=native)
    scanner.close()
    scanner.close()
    assert scanner.closed and scanner.cached_fds == 0
    with pytest.raises(CgshimError, match="closed"):
        scanner.scan_bytes(b"1\n")


def test_python_backend_holds_no_stat_fds(own_threads):
    with Scanner(native=False) as scanner:
        assert not scanner.native
        scanner.scan_bytes(_list(own_threads))
        assert scanner.cached_fds == 0
        assert _stat_fds() == {}


def test_bad_proc_root(tmp_path):
    with pytest.raises(CgshimError, match="no proc filesystem"):
        Scanner(str(tmp_path / "nope"))


@pytest.mark.parametrize("native", BACKENDS)
def test_proc_root_that_is_not_procfs(tmp_path, native):
    # Every tid "vanishes" under a directory that is not procfs: nothing to read.
    with Scanner(str(tmp_path), native=native) as scanner:
        got = scanner.scan_bytes(b"1\n2\n")
    assert got == ScanCounts(nr_listed=2, nr_vanished=2)


def test_max_fds_capped_by_rlimit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert effective_max_fds(0) == 0
    with pytest.raises(ValueError):
        effective_max_fds(-1)
    resource.setrlimit(resource.RLIMIT_NOFILE, (400, hard))
    try:
        assert effective_max_fds(4096) == 100
        assert effective_max_fds(50) == 50
        with Scanner(max_fds=4096) as scanner:
            assert scanner.max_fds == 100
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- the C scanner's fd cache ------------------------------------------------------------

_STAT_LINK = re.compile(r"/proc/(\d+)/task/(\d+)/stat$")


def _stat_fds():
    """fd -> tid of every open per-thread stat file of this process."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the listing's own fd
            continue
        m = _STAT_LINK.match(target)
        if m:
            out[int(name)] = int(m.group(2))
    return out


@needs_native
def test_warm_scan_holds_one_fd_per_thread(own_threads):
    with Scanner(max_fds=64, native=True) as scanner:
        for _ in range(3):
            assert scanner.scan_bytes(_list(own_threads)) == ScanCounts(nr_sleeping=6, nr_listed=6)
            assert scanner.cached_fds == 6
            assert sorted(_stat_fds().values()) == sorted(own_threads)
        scanner.drop_cache()
        assert scanner.cached_fds == 0 and _stat_fds() == {}
        assert scanner.scan_bytes(_list(own_threads)).nr_sleeping == 6
    assert _stat_fds() == {}


@needs_native
def test_cache_bounded_and_lru_by_scan():
    with sleepers(12) as tids, Scanner(max_fds=8, native=True) as scanner:
        a, b, c = tids[:4], tids[4:8], tids[8:]
        scanner.scan_bytes(_list(a))
        scanner.scan_bytes(_list(b))
        assert set(_stat_fds().values()) == set(a + b)
        scanner.scan_bytes(_list(a))          # a listed more recently than b
        got = scanner.scan_bytes(_list(c))    # full: the least recently listed (b) go
        assert got == ScanCounts(nr_sleeping=4, nr_listed=4)
        assert set(_stat_fds().values()) == set(a + c)
        # A list larger than the cache: all of it counts, at most max_fds stay open.
        got = scanner.scan_bytes(_list(tids))
        assert got == ScanCounts(nr_sleeping=12, nr_listed=12)
        assert scanner.cached_fds == 8 and len(_stat_fds()) == 8
        assert set(_stat_fds().values()) <= set(tids)


@needs_native
def test_dead_cached_fd_is_detected():
    with Scanner(max_fds=64, native=True) as scanner:
        with sleepers(5) as tids:
            assert scanner.scan_bytes(_list(tids)) == ScanCounts(nr_sleeping=5, nr_listed=5)
            assert scanner.cached_fds == 5
        # The threads have exited; their cached fds now answer ESRCH.
        got = scanner.scan_bytes(_list(tids))
        assert got == ScanCounts(nr_listed=5, nr_vanished=5)
        assert scanner.cached_fds == 0 and _stat_fds() == {}


@needs_native
def test_churn_stays_bounded():
    """Threads that die and are never listed again leave through sweeps."""
    with Scanner(max_fds=16, native=True) as scanner:
        for _ in range(8):
            with sleepers(6) as tids:
                assert scanner.scan_bytes(_list(tids)).nr_sleeping == 6
            assert scanner.cached_fds <= 16
            assert len(_stat_fds()) == scanner.cached_fds
    assert _stat_fds() == {}


@needs_native
def test_no_cache():
    with sleepers(3) as tids, Scanner(max_fds=0, native=True) as scanner:
        assert scanner.scan_bytes(_list(tids)) == ScanCounts(nr_sleeping=3, nr_listed=3)
        assert scanner.cached_fds == 0 and _stat_fds() == {}


@needs_native
def test_scanner_is_thread_safe(own_threads):
    data = _list(own_threads)
    errors, results = [], []
    with Scanner(max_fds=4, native=True) as scanner:
        def worker():
            try:
                for _ in range(200):
                    results.append(scanner.scan_bytes(data))
            except Exception as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(results) == 800 and all(r == ScanCounts(nr_sleeping=6, nr_listed=6) for r in results)


def test_native_required_but_missing(monkeypatch):
    monkeypatch.setattr(_native, "procscan", None)
    with pytest.raises(CgshimError, match="not built"):
        Scanner(native=True)


# -- cg_stat_starttime (field 22, for per-thread records) ---------------------------------

@pytest.mark.skipif(NATIVE is None, reason="C scanner not built")
@given(pid=st.integers(1, 2**22), comm=comms, state=states, rest=rests, data=st.data())
@example(pid=1, comm=b") 1 2 3", state=b"S", rest=list(range(19)), data=None)
def test_starttime_is_field_22_or_einval(pid, comm, state, rest, data):
    line = _stat_line(pid, comm, state, rest)
    out = NATIVE.ffi.new("uint64_t *")
    rc = NATIVE.lib.cg_stat_starttime(line, len(line), out)
    if len(rest) >= 19 and rest[18] >= 0:
        assert rc == 0 and out[0] == rest[18]
    else:
        assert rc == 22
    # a cut line gives the same value or EINVAL, never a shorter number
    if data is not None:
        cut = data.draw(st.integers(0, len(line)))
        rc2 = NATIVE.lib.cg_stat_starttime(line[:cut], cut, out)
        assert rc2 == 22 or (rc == 0 and out[0] == rest[18])
