"""get_cpu_load / Reader on the real kernel: the backend chain, v1-v2 parity, the
documented meaning of the counts on each backend, recursion and removal."""
import json
import os

import pytest

import cgshim
from cgshim.errors import CgroupNotFound, CgshimError, NotACgroup
from tests.support.backends import v2_source, without_c_core

pytestmark = pytest.mark.kernel


def expected_proc_classes(*workers):
    """Counts by /proc state letter, from what the test bed put where."""
    letters = [s for w in workers for s in w.expected_states().values()]
    return {
        "nr_running": letters.count("R"),
        "nr_sleeping": letters.count("S"),
        "nr_uninterruptible": letters.count("D"),
        "nr_stopped": letters.count("T"),
    }


def counts(load):
    return {k: getattr(load, k) for k in ("nr_running", "nr_sleeping", "nr_uninterruptible", "nr_stopped")}


@pytest.fixture
def reader():
    with cgshim.Reader() as r:
        yield r


@pytest.fixture
def twin(testbed):
    """The same tasks in a v1 cpu cgroup and a cgroup2 cgroup at once:
    two busy workers, one with counted and uncounted sleepers, one SIGSTOPped."""
    v1, v2 = testbed.cgroup(1), testbed.cgroup(2)
    workers = [
        testbed.spawn(busy=True, cgroups=(v1, v2)),
        testbed.spawn(busy=True, cgroups=(v1, v2)),
        testbed.spawn(pipe=2, poll=1, futex=3, nanosleep=1, cgroups=(v1, v2)),
        testbed.spawn(pipe=1, futex=1, cgroups=(v1, v2)),
    ]
    workers[3].stop()
    return v1, v2, workers


def test_backend_per_hierarchy(reader, twin):
    v1, v2, _ = twin
    a, b = reader.cpu_load(v1), reader.cpu_load(v2)
    assert (a.cgroup_version, a.source, a.path) == (1, "netlink", v1)
    assert (b.cgroup_version, b.source, b.path) == (2, v2_source(), v2)
    assert a.reason is None and b.reason is None


def test_parity_running_and_stopped(reader, twin):
    """The v2 scan's nr_running and nr_stopped equal the kernel's v1 netlink answer."""
    v1, v2, workers = twin
    want = expected_proc_classes(*workers)
    a, b = reader.cpu_load(v1), reader.cpu_load(v2)
    assert a.nr_running == b.nr_running == want["nr_running"] == 2
    assert a.nr_stopped == b.nr_stopped == want["nr_stopped"] == len(workers[3].tids)


def test_sleeper_semantics_per_backend(reader, twin):
    """The documented difference (cgshim.CpuLoad): netlink counts only sleeps in plain
    TASK_INTERRUPTIBLE (pipe read, poll), the scan counts every thread /proc shows as S."""
    v1, v2, workers = twin
    running = [w for w in workers if not w.stopped]
    plain = sum(w.count("pipe") + w.count("poll") for w in running)
    freezable = sum(w.count("futex") + w.count("nanosleep") for w in running)
    assert freezable > 0 and plain > 0
    a, b = reader.cpu_load(v1), reader.cpu_load(v2)
    assert a.nr_sleeping == plain
    assert b.nr_sleeping == plain + freezable == expected_proc_classes(*workers)["nr_sleeping"]
    assert a.nr_io_wait == 0
    assert b.nr_io_wait is None  # in_iowait is not visible in /proc


def test_v1_without_netlink_counts_by_scan(twin):
    """backends=("scan",) reads v1 by scan: a choice, not a fallback, so no reason."""
    v1, v2, workers = twin
    with cgshim.Reader(backends=("scan",)) as r:
        a, b = r.cpu_load(v1), r.cpu_load(v2)
        assert r.netlink_unavailable == "netlink is not among this Reader's backends"
    assert (a.source, a.cgroup_version, a.reason, a.nr_io_wait) == ("scan", 1, None, None)
    assert a.implementation == b.implementation == "native"
    assert counts(a) == counts(b) == expected_proc_classes(*workers)


def test_without_the_c_core_readings_say_pyroute2_and_python(twin):
    """The C core made unloadable in a child: v1 is still read by netlink, through pyroute2,
    v2 by the pure-Python scan, and each reading says which, with the same counts."""
    import subprocess
    import sys

    v1, v2, workers = twin
    code = (without_c_core() +
            "import cgshim\n"
            "with cgshim.Reader() as r:\n"
            "    out = [[l.source, l.implementation, l.reason, l.nr_running, l.nr_sleeping,\n"
            "            l.nr_uninterruptible, l.nr_stopped] for l in map(r.cpu_load, sys.argv[1:])]\n"
            "print(json.dumps(out))\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code, v1, v2], cwd=repo, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    a, b = json.loads(proc.stdout)
    with cgshim.Reader() as r:
        want_a, want_b = counts(r.cpu_load(v1)), counts(r.cpu_load(v2))
    assert a[:3] == ["netlink", "pyroute2", None] and b[:2] == ["scan", "python"]
    assert b[2].startswith("bpf unavailable") and "without libbpf" in b[2]  # no _bpf either
    assert dict(zip(want_a, a[3:])) == want_a and dict(zip(want_b, b[3:])) == want_b


def test_deprecated_netlink_false_still_leaves_netlink_out(twin):
    v1, _, workers = twin
    with pytest.warns(DeprecationWarning, match="backends="):
        r = cgshim.Reader(netlink=False)
    with r:
        assert r.backends == ("bpf", "scan", "psi")
        a = r.cpu_load(v1)
    assert (a.source, a.reason) == ("scan", None)
    assert counts(a) == expected_proc_classes(*workers)


def test_cgroup_relative_name_resolves_to_v1_cpu_on_hybrid(reader, testbed):
    v1 = testbed.cgroup(1)
    w = testbed.spawn(busy=True, cgroups=(v1,))
    load = reader.cpu_load("/" + os.path.basename(v1))
    assert load.path == v1 and load.source == "netlink"
    assert load.nr_running == expected_proc_classes(w)["nr_running"] == 1


def test_name_only_in_v2_resolves_to_cgroup2(reader, testbed):
    v2 = testbed.cgroup(2)
    testbed.spawn(busy=True, cgroups=(v2,))
    load = reader.cpu_load("/" + os.path.basename(v2))
    assert load.path == v2 and load.source == v2_source() and load.nr_running == 1


def test_pressure_from_v2_and_from_v1_twin(reader, testbed):
    name = testbed.cgroup(2).rsplit("/", 1)[1]
    v1 = testbed.cgroup(1, name=name)
    v2 = os.path.join(testbed.root(2), name)
    load2, load1 = reader.cpu_load(v2), reader.cpu_load(v1)
    for load in (load1, load2):
        assert isinstance(load.pressure, cgshim.Pressure)
        assert load.pressure.full is not None  # kernel >= 5.13
        assert 0 <= load.pressure.some.avg10 <= 100
    v1_only = testbed.cgroup(1)
    assert reader.cpu_load(v1_only).pressure is None  # no twin: None, not zeros


def test_recursive_sums_a_three_level_tree(reader, testbed):
    for version in (1, 2):
        top = testbed.cgroup(version)
        mid = testbed.cgroup(version, parent=top)
        leaf = testbed.cgroup(version, parent=mid)
        side = testbed.cgroup(version, parent=top)
        placed = {
            top: testbed.spawn(busy=True, cgroups=(top,)),
            mid: testbed.spawn(pipe=2, cgroups=(mid,)),
            leaf: testbed.spawn(busy=True, pipe=1, cgroups=(leaf,)),
        }
        placed[leaf].stop()
        own = reader.cpu_load(top)
        assert counts(own)["nr_running"] == 1 and own.nr_stopped == 0
        total = reader.cpu_load(top, recursive=True)
        assert total.nr_running == 1
        assert total.nr_stopped == len(placed[leaf].tids)
        assert total.nr_sleeping == 3  # mid's pipe sleepers + its main thread
        assert reader.cpu_load(side, recursive=True).nr_running == 0
        assert counts(reader.cpu_load(mid, recursive=True)) == {
            "nr_running": 0, "nr_sleeping": 3, "nr_uninterruptible": 0,
            "nr_stopped": len(placed[leaf].tids)}


def test_removed_cgroup_raises_cgroup_not_found(reader, testbed):
    for version in (1, 2):
        path = testbed.cgroup(version)
        reader.cpu_load(path)  # cached with held fds
        os.rmdir(path)
        with pytest.raises(CgroupNotFound):
            reader.cpu_load(path)
        os.mkdir(path)  # re-created under the same name: read afresh
        w = testbed.spawn(busy=True, cgroups=(path,))
        assert reader.cpu_load(path).nr_running == expected_proc_classes(w)["nr_running"]


def test_escapes_and_non_cgroups(reader, testbed, tmp_path):
    v2 = testbed.cgroup(2)
    for bad in (v2 + "/../../../../etc", v2 + "/cgroup.procs", "relative/name", "/a/../b"):
        with pytest.raises(NotACgroup):
            reader.cpu_load(bad)
    with pytest.raises(CgroupNotFound):
        reader.cpu_load("/cgshim-test-no-such-cgroup")
    with pytest.raises(CgshimError):
        reader.cpu_load("/\udcff-not-utf8")


def test_get_cpu_load_module_default(testbed):
    v2 = testbed.cgroup(2)
    testbed.spawn(busy=True, cgroups=(v2,))
    load = cgshim.get_cpu_load(v2)
    assert load.nr_running == 1 and load.source == v2_source()


def test_pure_v2_host_simulated(testbed):
    """A unified host: cgroup2 mounted over /sys/fs/cgroup in a private mount namespace."""
    from tests.support.unified_ns import run_unified

    v2 = testbed.cgroup(2)
    w = testbed.spawn(busy=True, pipe=2, cgroups=(v2,))
    name = "/" + os.path.basename(v2)
    code = (
        "import json, cgshim\n"
        f"l = cgshim.get_cpu_load({name!r})\n"
        "print(json.dumps([cgshim.hierarchy().mode, l.path, l.source, l.cgroup_version,"
        " l.nr_running, l.nr_sleeping, l.pressure is not None]))\n"
    )
    proc = run_unified(code)
    assert proc.returncode == 0, proc.stderr
    mode, path, source, version, running, sleeping, has_psi = json.loads(proc.stdout)
    want = expected_proc_classes(w)
    assert (mode, path, source, version) == ("unified", "/sys/fs/cgroup" + name, v2_source(), 2)
    assert (running, sleeping, has_psi) == (want["nr_running"], want["nr_sleeping"], True)
