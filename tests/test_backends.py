"""The Reader's backend chain, from fixture trees (no root needed), and the one errno map.

A :class:`tests.support.fakehost.FakeHost` is a directory holding a mountinfo, cgroup
directories, thread lists and /proc/<tid>/task/<tid>/stat files; the Reader reads it as it
reads a host. What only the kernel can show (netlink's answer for a real v1 cgroup, ENODEV of
a dying cgroup) stays in the root tests (test_reader, test_races, test_faults).
"""
import errno
import json
import os
import subprocess
import sys

import pytest

import cgshim
from cgshim import _native
from cgshim.errors import (
    CgroupNotFound, KernelError, NetlinkError, NotACgroup, ParseError, PermissionDenied,
    Unsupported, translate,
)
from cgshim.model import TaskCounts
from tests.support.fakehost import FakeHost

COUNTS = ("nr_running", "nr_sleeping", "nr_uninterruptible", "nr_stopped", "nr_io_wait")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCAN_IMPL = "native" if _native.procscan is not None else "python"


def counts(load):
    return tuple(getattr(load, k) for k in COUNTS)


@pytest.fixture
def host(tmp_path):
    h = FakeHost(tmp_path)
    # A thread in every state the scan counts, and two it counts apart (idle, zombie).
    for tid, state in ((101, "R"), (102, "S"), (103, "S"), (104, "D"), (105, "T"), (106, "I"),
                       (107, "Z")):
        h.thread(tid, state)
    h.thread(108, "S", comm="a) R (b")  # a comm that looks like a state
    return h


def reader(host, **kw):
    return cgshim.Reader(mountinfo=host.mountinfo, proc_root=host.proc, **kw)


# -- which backend ---------------------------------------------------------------------------

def test_v2_is_read_by_scan(host):
    """bpf comes first on v2, but it reads this kernel's cgroups: a fixture tree is none of
    them, so the chain goes on to the scan and the reading says why."""
    cg = host.cgroup(2, "pod", [101, 102, 103, 104, 105, 106, 107, 108, 102])
    with reader(host) as r:
        load = r.cpu_load(cg)
        assert r.implementations["scan"] == SCAN_IMPL
    assert (load.source, load.implementation, load.cgroup_version) == ("scan", SCAN_IMPL, 2)
    assert load.reason.startswith("bpf unavailable") and "not a cgroup2 mount" in load.reason
    assert counts(load) == (1, 3, 1, 1, None)  # 108 is S whatever its comm says; 102 once
    assert load.counts == TaskCounts(1, 3, 1, 1, None)
    assert load.pressure.some.avg10 == 1.5 and load.pressure.some.total_usec == 12345


def test_cgroup_name_resolves_into_the_fixture(host):
    host.cgroup(2, "only-v2", [101])
    with reader(host) as r:
        load = r.cpu_load("/only-v2")
    assert load.path == os.path.join(host.v2, "only-v2") and load.nr_running == 1


def test_v1_default_chain_passes_netlink_over_with_its_reason(host):
    """A fixture directory is no cgroup v1 directory: CGROUPSTATS answers EINVAL (the
    kernel's cgroupstats_build() checks the superblock), so the chain goes on to the scan
    and the reading says why."""
    cg = host.cgroup(1, "app", [101, 102, 104])
    with reader(host) as r:
        load = r.cpu_load(cg)
    assert (load.source, load.implementation, load.cgroup_version) == ("scan", SCAN_IMPL, 1)
    assert counts(load) == (1, 1, 1, 0, None)
    assert load.reason.startswith("netlink")
    assert "EINVAL" in load.reason or "unavailable" in load.reason


def test_v1_twin_gives_pressure(host):
    cg = host.cgroup(1, "app", [101])
    host.cgroup(2, "app", [101], pressure="some avg10=9.00 avg60=0.00 avg300=0.00 total=7\n")
    with reader(host, backends=("scan",)) as r:
        load = r.cpu_load(cg)
    assert load.pressure.some.avg10 == 9.0 and load.pressure.full is None


def test_backends_scan_reads_v1_by_scan_without_a_reason(host):
    cg = host.cgroup(1, "app", [101, 102])
    with reader(host, backends=("scan",)) as r:
        load = r.cpu_load(cg)
        assert r.backends == ("scan",)
        assert r.netlink_unavailable == "netlink is not among this Reader's backends"
    assert (load.source, load.reason, load.nr_running, load.nr_sleeping) == ("scan", None, 1, 1)


def test_netlink_alone_raises_what_netlink_said(host):
    cg1 = host.cgroup(1, "app", [101])
    cg2 = host.cgroup(2, "app2", [101])
    with reader(host, backends=("netlink",)) as r:
        with pytest.raises(NetlinkError) as exc:
            r.cpu_load(cg1)
        assert exc.value.errno in (errno.EINVAL, errno.EPERM, errno.ENOENT, errno.EACCES)
        with pytest.raises(Unsupported, match="reads cgroup v2"):
            r.cpu_load(cg2)


def test_psi_only_reader(host):
    cg = host.cgroup(2, "pod", [101])
    with reader(host, backends=("psi",)) as r:
        load = r.cpu_load(cg)
    assert (load.source, load.implementation, load.reason) == ("psi", "python", None)
    assert counts(load) == (None,) * 5 and load.counts is None and load.pressure is not None


@pytest.mark.parametrize("bad", [(), ("scan", "scan"), ("scan", "bogus"), "scan"])
def test_backends_argument_is_checked(host, bad):
    with pytest.raises((ValueError, TypeError)):
        reader(host, backends=bad)


def test_netlink_false_is_a_deprecated_alias(host):
    cg = host.cgroup(1, "app", [101])
    with pytest.warns(DeprecationWarning):
        r = reader(host, netlink=False)
    with r:
        assert r.backends == ("bpf", "scan", "psi")
        assert r.cpu_load(cg).source == "scan"


# -- which reason: the scan passes over to psi -------------------------------------------------

def test_hidden_tasks_fall_back_to_psi(host):
    cg = host.cgroup(2, "pod", listing="101\n0\n")
    with reader(host) as r:
        load = r.cpu_load(cg)
    assert (load.source, load.implementation) == ("psi", "python")
    assert counts(load) == (None,) * 5 and load.pressure is not None
    assert "1 of the cgroup's tasks have no pid in this pid namespace" in load.reason


def test_invisible_tids_fall_back_to_psi(host):
    cg = host.cgroup(2, "pod", [901, 902])  # no stat files: not in this /proc
    with reader(host) as r:
        load = r.cpu_load(cg)
    assert load.source == "psi"
    assert "none of the 2 listed threads is visible" in load.reason


def test_nothing_readable_is_an_error(host):
    cg = host.cgroup(2, "pod", [901], pressure=None)
    with reader(host) as r:
        with pytest.raises(PermissionDenied, match="nothing readable"):
            r.cpu_load(cg)


def test_without_psi_in_the_chain_the_scan_error_is_raised(host):
    cg = host.cgroup(2, "pod", [901])
    with reader(host, backends=("scan",)) as r:
        with pytest.raises(PermissionDenied, match="visible"):
            r.cpu_load(cg)


def test_recursive_sums_the_descendants(host):
    host.cgroup(2, "pod", [101])
    host.cgroup(2, "pod/c1", [102, 104])
    host.cgroup(2, "pod/c2", [105])
    with reader(host) as r:
        load = r.cpu_load(os.path.join(host.v2, "pod"), recursive=True)
        own = r.cpu_load(os.path.join(host.v2, "pod"))
    assert counts(load) == (1, 1, 1, 1, None) and counts(own) == (1, 0, 0, 0, None)


def test_one_count_type_and_io_wait_none_where_unseen(host):
    """A scan result is a TaskCounts; io_wait is None wherever /proc is the source, and
    a sum with such a count is None too (a pod of netlink and scan children)."""
    from cgshim.kernel.threadstat import ScanCounts, Scanner

    with Scanner(host.proc) as scanner:
        got = scanner.scan_bytes(b"101\n102\n")
    assert isinstance(got, TaskCounts) and got.nr_io_wait is None
    assert got.task_counts() == TaskCounts(1, 1, 0, 0, None)
    assert got == ScanCounts(nr_running=1, nr_sleeping=1, nr_listed=2)
    assert TaskCounts(1, 2, 3, 4, 5).plus(TaskCounts(1, 1, 1, 1, None)) == TaskCounts(2, 3, 4, 5, None)
    assert TaskCounts(1, 2, 3, 4, 5).plus(TaskCounts(1, 1, 1, 1, 1)) == TaskCounts(2, 3, 4, 5, 6)


# -- which error ------------------------------------------------------------------------------

def test_errors_from_fixtures(host):
    host.cgroup(2, "pod", [101])
    garbage = host.cgroup(2, "garbage", listing="101\nnot-a-tid\n")
    bad_stat = host.cgroup(2, "bad-stat", [333])
    host.write(os.path.join(host.proc, "333", "task", "333", "stat"), "333 no-parenthesis\n")
    bad_psi = host.cgroup(2, "bad-psi", [101], pressure="some avg10=x\n")
    host.write(os.path.join(host.v2, "a-file"), "")
    with reader(host) as r:
        with pytest.raises(CgroupNotFound):
            r.cpu_load(os.path.join(host.v2, "gone"))
        with pytest.raises(NotACgroup):
            r.cpu_load(os.path.join(host.v2, "a-file"))
        with pytest.raises(NotACgroup):
            r.cpu_load("relative/name")
        with pytest.raises(ParseError, match="line 2"):
            r.cpu_load(garbage)
        with pytest.raises(ParseError, match="state letter"):
            r.cpu_load(bad_stat)
        with pytest.raises(ParseError, match="cpu.pressure"):
            r.cpu_load(bad_psi)


def test_pressure_read_error_is_the_table_s_kernel_error(host):
    """An errno on cpu.pressure without a meaning of its own (here EISDIR: the fixture's
    cpu.pressure is a directory) is KernelError, as everywhere, not PermissionDenied."""
    cg = host.cgroup(2, "pod", [101], pressure=None)
    os.mkdir(os.path.join(cg, "cpu.pressure"))
    with reader(host) as r:
        with pytest.raises(KernelError) as exc:
            r.cpu_load(cg)
    assert exc.value.errno == errno.EISDIR and exc.value.path.endswith("cpu.pressure")


def test_removed_cgroup_is_read_afresh(host):
    import shutil

    cg = host.cgroup(2, "pod", [101])
    with reader(host) as r:
        assert r.cpu_load(cg).nr_running == 1
        shutil.rmtree(cg)
        with pytest.raises(CgroupNotFound):
            r.cpu_load(cg)
        host.cgroup(2, "pod", [102, 103])
        assert r.cpu_load(cg).nr_sleeping == 2


# -- cgshim.backends() -----------------------------------------------------------------------

def test_backends_probe_on_the_fixture(host):
    got = cgshim.backends(mountinfo=host.mountinfo, proc_root=host.proc)
    assert list(got) == ["bpf", "netlink", "scan", "psi"]
    assert not got["bpf"].available and "not a cgroup2 mount" in got["bpf"].reason
    assert got["scan"].available and got["scan"].implementation == SCAN_IMPL
    assert got["psi"].available and got["psi"].implementation == "python"
    assert got["netlink"].cgroup_versions == (1,) and got["scan"].cgroup_versions == (1, 2)
    os.unlink(os.path.join(host.proc, "pressure", "cpu"))
    psi = cgshim.backends(mountinfo=host.mountinfo, proc_root=host.proc)["psi"]
    assert not psi.available and psi.implementation is None and "PSI" in psi.reason


def test_backends_probe_without_v1_or_proc(tmp_path, host):
    mi = tmp_path / "v2-only"
    mi.write_text("".join(line for line in open(host.mountinfo) if " cgroup " not in line))
    got = cgshim.backends(mountinfo=str(mi), proc_root=str(tmp_path / "no-proc"))
    assert not got["netlink"].available and "v1" in got["netlink"].reason
    assert not got["scan"].available and "no-proc" in got["scan"].reason


# -- the C core made unloadable: the readings and the probe say so ----------------------------

_CHILD = r"""
import json, sys
sys.modules["cgshim._native._netlink"] = None   # as if the extensions were not built
sys.modules["cgshim._native._procscan"] = None
import cgshim
from cgshim.app import cli
mountinfo, proc, cg = sys.argv[1:4]
with cgshim.Reader(mountinfo=mountinfo, proc_root=proc) as r:
    load = r.cpu_load(cg)
probe = cli.probe()
import io
text = io.StringIO()
cli.print_probe(probe, text)
print(json.dumps({"load": [load.source, load.implementation, load.nr_running, load.nr_sleeping],
                  "backends": probe["backends"], "text": text.getvalue()}))
"""


def test_reading_and_probe_say_when_the_c_core_is_unavailable(host):
    cg = host.cgroup(2, "pod", [101, 102, 103])
    out = subprocess.run([sys.executable, "-c", _CHILD, host.mountinfo, host.proc, cg],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["load"] == ["scan", "python", 1, 2]
    by_name = {b["name"]: b for b in got["backends"]}
    assert by_name["scan"]["implementation"] == "python"
    assert "C core does not load" in by_name["scan"]["reason"]
    netlink = by_name["netlink"]
    assert netlink["implementation"] in ("pyroute2", None)
    assert "C core does not load" in netlink["reason"] or not netlink["available"]
    assert "scan     available, python" in got["text"]
    assert "pure Python scans instead" in got["text"]


# -- the one errno map ------------------------------------------------------------------------

@pytest.mark.parametrize("number, kind", [
    (errno.ENOENT, CgroupNotFound), (errno.ENODEV, CgroupNotFound),
    (errno.EACCES, PermissionDenied), (errno.EPERM, PermissionDenied),
    (errno.ENOTDIR, NotACgroup), (errno.ELOOP, NotACgroup),
    (errno.EOPNOTSUPP, Unsupported), (errno.EIO, KernelError), (errno.EMFILE, KernelError),
    (errno.EINVAL, KernelError),
])
def test_translate_table(number, kind, tmp_path):
    err = translate(OSError(number, os.strerror(number)), "/cg/cpu.pressure", cgroup="/cg")
    assert type(err) is kind and err.errno == number and err.path == "/cg/cpu.pressure"
    assert errno.errorcode[number] in str(err) and "/cg/cpu.pressure" in str(err)
    assert type(translate(number, "/cg/x", cgroup="/cg")) is kind  # an errno number alike


def test_translate_enoent_depends_on_what_is_missing(tmp_path):
    live = str(tmp_path)
    enoent = OSError(errno.ENOENT, "No such file or directory")
    assert type(translate(enoent, "/proc/self/mountinfo")) is Unsupported  # not a cgroup
    assert type(translate(enoent, f"{live}/cgroup.stat", cgroup=live, optional=True)) is Unsupported
    gone = os.path.join(live, "gone")
    assert type(translate(enoent, f"{gone}/cgroup.stat", cgroup=gone, optional=True)) is CgroupNotFound
    assert type(translate(enoent, f"{live}/cgroup.threads", cgroup=live)) is CgroupNotFound
    assert "hint here" in str(translate(errno.EIO, "/x", hint="hint here"))


def test_eio_on_a_pressure_file_means_the_same_everywhere(tmp_path):
    """psi.read_pressure and the Reader both answer EIO-like errnos with KernelError."""
    from cgshim.kernel import psi

    d = tmp_path / "cpu.pressure"
    d.mkdir()
    with pytest.raises(KernelError):
        psi.read_pressure(str(d), cgroup=str(tmp_path))


@pytest.mark.parametrize("chain", [None, ("psi",)])
def test_a_closed_reader_reads_nothing(host, chain):
    cg = host.cgroup(2, "pod", [101])
    r = reader(host, backends=chain)
    r.cpu_load(cg)
    r.close()
    r.close()  # idempotent
    for path in (cg, host.cgroup(2, "other", [102])):
        with pytest.raises(cgshim.CgshimError, match="closed"):
            r.cpu_load(path)
