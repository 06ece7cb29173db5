"""cgshim as an unprivileged user (issue 6): uid/gid 65534 (nobody), no capabilities.

Each check runs in a child interpreter that imports cgshim as root and then drops to
nobody (test_faults._DROP): this interpreter lives under /root, mode 0700, so one started
as nobody (setpriv --reuid=65534 ...) could not even exec. The repo itself is world-
readable and the native .so files load before the drop. cgroup directories, cgroup.threads,
tasks, cpu.pressure and /proc/<tid>/task/<tid>/stat are world-readable by default; the
denials below are made on our own test-bed files (chmod) or on a private procfs mount
with hidepid.
"""
import errno
import json
import os
import subprocess
import sys
import tempfile

import pytest

from tests.test_faults import _DROP, REPO, TESTS, _PRELUDE, proc_counts, run_child

pytestmark = pytest.mark.kernel
COUNTS = ("nr_running", "nr_sleeping", "nr_uninterruptible", "nr_stopped")


def _package_files():
    top = os.path.join(REPO, "cgshim")
    dirs, files = [top], []
    for d, subdirs, fs in os.walk(top):
        subdirs[:] = [x for x in subdirs if x != "__pycache__"]
        dirs += [os.path.join(d, x) for x in subdirs]
        files += [os.path.join(d, f) for f in fs if f.endswith((".py", ".so", ".c", ".h", ".proto"))]
    return dirs, files


def test_package_and_native_modules_readable_by_nobody(tmp_path):
    """What cgshim controls for a user without privileges: its own files (sources and the
    built extensions) are readable, its directories enterable, by anyone; and a copy of the
    package in a world-readable directory imports, native modules included, after the drop
    to nobody. (Where the tree was cloned is not cgshim's: a clone under a 0700 directory,
    such as mktemp -d makes, is unreadable to nobody whatever cgshim does.)"""
    dirs, files = _package_files()
    assert len(files) > 10 and any(f.endswith(".so") for f in files)
    closed = [d for d in dirs if os.stat(d).st_mode & 0o005 != 0o005]
    unreadable = [f for f in files if not os.stat(f).st_mode & 0o004]
    assert closed == [] and unreadable == [], (closed, unreadable)

    # The copy lives in its own world-readable directory under /tmp (1777); copy2 keeps the
    # modes checked above.
    import shutil

    top = tempfile.mkdtemp(prefix="cgshim-test-house-edges-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        shutil.copytree(os.path.join(REPO, "cgshim"), os.path.join(top, "cgshim"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        # This interpreter, its standard library and cgshim's dependencies may live where
        # nobody cannot read (a 0700 home, a clone's virtualenv): what cgshim's import and a
        # reading need of them is listed by a first child as root and imported by the second
        # before it drops to nobody; cgshim itself is then imported from the copy as nobody.
        reading = ("own = [l for l in open('/proc/self/cgroup') if l.startswith('0::')][0][3:]\n"
                   "load = cgshim.get_cpu_load(own.strip() or '/')\n")
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONPATH", None)

        def child(code):
            proc = subprocess.run([sys.executable, "-c", code], cwd="/", env=env,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            return json.loads(proc.stdout.splitlines()[-1])

        needed = child(f"import json, sys\nsys.path.insert(0, {top!r})\nimport cgshim\n" + reading +
                       "print(json.dumps(sorted(m for m in sys.modules if m.partition('.')[0] "
                       "not in ('cgshim', '__main__'))))\n")
        where, netlink_built, procscan_built, source = child(
            f"import importlib, json, os, sys\nfor m in {needed!r}:\n"
            "    importlib.import_module(m)\n" + _DROP + "_drop_to_nobody()\n"
            f"sys.path.insert(0, {top!r})\n"
            "import cgshim, cgshim._native\n" + reading +
            "print(json.dumps([cgshim.__file__, cgshim._native.netlink is not None,"
            " cgshim._native.procscan is not None, load.source]))\n")
    finally:
        shutil.rmtree(top)
    assert where == os.path.join(top, "cgshim", "__init__.py")
    assert netlink_built and procscan_built and source in ("scan", "netlink")


def test_nobody_reads_what_nobody_may_read(testbed):
    """v1: CGROUPSTATS needs no capability, so netlink answers; v2: the scan; taskstats of
    a pid needs CAP_NET_ADMIN: NetlinkError EPERM, and the Reader keeps using netlink."""
    v1 = testbed.cgroup(1)
    v2 = testbed.cgroup(2, name=os.path.basename(v1))
    w = testbed.spawn(busy=True, pipe=2, cgroups=(v1, v2))
    s = testbed.spawn(poll=1, cgroups=(v1, v2))
    s.stop()
    want = proc_counts(w, s)
    a, b, ts, down = run_child(
        "_drop_to_nobody()\n"
        "r = cgshim.Reader()\n"
        f"a, b = attempt(r.cpu_load, {v1!r}), attempt(cgshim.get_cpu_load, {v2!r})\n"
        "try:\n"
        f"    cgshim.taskstats({w.pid}); ts = None\n"
        "except Exception as exc:\n"
        "    ts = [type(exc).__name__, exc.errno, str(exc)]\n"
        "print(json.dumps([a, b, ts, r.netlink_unavailable]))\n")
    assert a["ok"]["source"] == "netlink" and b["ok"]["source"] == "scan"
    for got in (a["ok"], b["ok"]):
        assert {k: got[k] for k in COUNTS} == want and got["pressure"]
    # v2: no pin and no CAP_BPF+CAP_PERFMON: the bpf backend passes over to the scan, and says so
    assert a["ok"]["reason"] is None
    assert b["ok"]["reason"].startswith("bpf unavailable") and "cannot load" in b["ok"]["reason"]
    assert ts[0] == "NetlinkError" and ts[1] == errno.EPERM and "CAP_NET_ADMIN" in ts[2]
    assert down is None


def _chmod0(*paths):
    for p in paths:
        os.chmod(p, 0)


@pytest.mark.parametrize("version", [1, 2])
def test_unreadable_thread_list_falls_back_to_psi(testbed, version):
    """EACCES on the thread list (chmod 000 on our cgroup's file, read as nobody): the
    documented psi fallback, counts None, pressure present, reason says why. On v1 the
    Reader is told not to use netlink, which would not need the list."""
    v1 = testbed.cgroup(1)
    v2 = testbed.cgroup(2, name=os.path.basename(v1))
    testbed.spawn(busy=True, pipe=1, cgroups=(v1, v2))
    cg = v1 if version == 1 else v2
    _chmod0(os.path.join(cg, "tasks" if version == 1 else "cgroup.threads"))
    got = run_child(
        "_drop_to_nobody()\n"
        f"print(json.dumps(attempt(cgshim.Reader(backends=('scan', 'psi')).cpu_load, {cg!r})))\n")
    load = got["ok"]
    assert load["source"] == "psi" and load["pressure"]
    assert all(load[k] is None for k in COUNTS + ("nr_io_wait",))
    assert "permission" in load["reason"].lower() or "EACCES" in load["reason"]


def test_nothing_readable_is_an_error_not_an_empty_reading(testbed):
    """Neither the thread list nor cpu.pressure readable: a CpuLoad with source "psi" must
    carry pressure (model.py: "only pressure is filled"), so the answer has to be
    PermissionDenied rather than a reading that holds nothing."""
    v2 = testbed.cgroup(2)
    testbed.spawn(pipe=1, cgroups=(v2,))
    _chmod0(os.path.join(v2, "cgroup.threads"), os.path.join(v2, "cpu.pressure"))
    got = run_child("_drop_to_nobody()\n"
                    f"print(json.dumps(attempt(cgshim.get_cpu_load, {v2!r})))\n")
    if "ok" in got:
        assert got["ok"]["source"] != "psi" or got["ok"]["pressure"], got
    else:
        assert got["error"] == "PermissionDenied", got


def _run_with_private_proc(code, hidepid):
    """Run the child in a private mount namespace where a procfs with ``hidepid`` is
    mounted on a fresh directory; the child finds it in PROC_ROOT."""
    mnt = tempfile.mkdtemp(prefix="cgshim-proc-")
    os.chmod(mnt, 0o755)
    try:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PROC_ROOT=mnt,
                   PYTHONPATH=os.pathsep.join([REPO, TESTS]))
        script = f'mount -t proc -o hidepid={hidepid} proc "$1" && exec "$0" -c "$2"'
        proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                               sys.executable, mnt, _PRELUDE + code],
                              env=env, cwd="/", capture_output=True, text=True, timeout=60)
    finally:
        os.rmdir(mnt)
    assert proc.returncode == 0, proc.stderr
    import json

    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("hidepid,why", [("noaccess", ("permission", "not readable")),
                                         ("invisible", ("visible",))])
def test_proc_hidden_from_nobody(testbed, hidepid, why):
    """/proc mounted with hidepid (as hardened hosts do): nobody cannot read other users'
    thread stat files (noaccess: EACCES) or see them at all (invisible). get_cpu_load then
    gives the psi fallback with pressure and a reason, for v2 and for v1 without netlink."""
    v1 = testbed.cgroup(1)
    v2 = testbed.cgroup(2, name=os.path.basename(v1))
    testbed.spawn(busy=True, pipe=2, cgroups=(v1, v2))
    code = (
        "_drop_to_nobody()\n"
        "r = cgshim.Reader(backends=('scan', 'psi'), proc_root=os.environ['PROC_ROOT'])\n"
        f"print(json.dumps([attempt(r.cpu_load, {v2!r}), attempt(r.cpu_load, {v1!r})]))\n")
    for got in _run_with_private_proc(code, hidepid):
        load = got["ok"]
        assert load["source"] == "psi" and load["pressure"], load
        assert all(load[k] is None for k in COUNTS)
        assert any(w in load["reason"] for w in why), load["reason"]
