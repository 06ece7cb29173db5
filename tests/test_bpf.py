"""The bpf backend on the real kernel (issue 11): cgshim's iterators pinned on a private
bpffs (a fresh bpffs instance mounted on a temp dir: never /sys/fs/bpf), read as root and
as nobody, against the /proc scan of the same cgroups in pinned states. Needs root, the
_bpf extension (libbpf) and the compiled program (clang); a skip is a failure under
CGSHIM_REQUIRE_KERNEL=1.
"""
import collections
import errno
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from cgshim import _native
from cgshim.errors import BpfError, PassFormatMismatch
from cgshim.kernel import bpf
from cgshim.kernel.mounts import hierarchy
from tests.support.require import require_kernel, require_root
from tests.test_faults import REPO, TESTS, run_child

pytestmark = pytest.mark.kernel


def need_bpf():
    require_root()
    require_kernel(_native.bpf is not None,
                   f"the _bpf extension is not built: {bpf.native_missing()} (install libbpf-dev)")
    require_kernel(bpf.object_path() is not None,
                   "the BPF object was not built (install clang, then pip install -e .)")


def v2_root():
    v2 = hierarchy().v2
    require_kernel(v2 is not None, "needs a cgroup2 mount")
    return v2.mount_point


@pytest.fixture(scope="module")
def bpffs():
    """A private bpffs instance on a temp dir (mode 0755, so that nobody can reach pins)."""
    need_bpf()
    d = tempfile.mkdtemp(prefix="cgshim-test-bpf-")
    os.chmod(d, 0o755)
    bpf.mount_bpffs(d)
    try:
        yield d
    finally:
        subprocess.run(["umount", d], check=False)
        os.rmdir(d)


@pytest.fixture(scope="module")
def pins(bpffs):
    pin_dir = os.path.join(bpffs, "pins")
    paths = bpf.pin(pin_dir, cgroup_root=v2_root())
    yield pin_dir
    assert sorted(bpf.unpin(pin_dir)) == sorted(paths)


def ino(path):
    return os.stat(path).st_ino


def proc_letters(cgroup):
    """What /proc shows for each thread in cgroup.threads, by letter: the scan's truth."""
    with open(os.path.join(cgroup, "cgroup.threads")) as f:
        tids = set(f.read().split())
    letters = collections.Counter()
    for tid in tids:
        try:
            with open(f"/proc/{tid}/task/{tid}/stat", "rb") as f:
                data = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        letters[chr(data[data.rindex(b")") + 2])] += 1
    return letters


def pass_letters(p, cgroup):
    c = p.get(ino(cgroup))
    if c is None:
        return collections.Counter()
    return collections.Counter({letter: n for letter, n in zip(bpf.STATES, c.nr) if n})


def expected(*workers):
    return collections.Counter(s for w in workers for s in w.expected_states().values() if s != "Z")


# -- files --------------------------------------------------------------------------------

def test_pins_are_0444_with_the_format_in_the_name(pins):
    names = sorted(os.listdir(pins))
    assert names == sorted(bpf.PIN_NAMES.values())
    assert all(n.endswith(f"-v{bpf.FORMAT}") for n in names)
    for n in names:
        assert oct(os.stat(os.path.join(pins, n)).st_mode & 0o7777) == "0o444"
    assert bpf.bpffs_at(pins) == os.path.dirname(pins)
    assert bpf.bpffs_at("/proc") is None


# -- parity with the scan ---------------------------------------------------------------

def test_every_state_as_the_scan_sees_it(testbed, pins):
    """R (spinner), S (pipe, poll, futex, nanosleep), D (vfork parent), T (SIGSTOP), t (ptrace
    stop), Z (unreaped child: in no cgroup), nested cgroups counting their own threads."""
    a = testbed.cgroup(2)
    a_child = testbed.cgroup(2, parent=a)
    b, c = testbed.cgroup(2), testbed.cgroup(2)
    wa = testbed.spawn(busy=True, pipe=1, poll=1, futex=2, nanosleep=1, cgroups=[a])
    wk = testbed.spawn(pipe=3, cgroups=[a_child])
    wb = testbed.spawn(vfork=2, zombie=1, futex=2, cgroups=[b])
    wb.ptrace_stop(next(t for t, k in wb.roles.items() if k == "futex"))
    wc = testbed.spawn(pipe=2, nanosleep=1, cgroups=[c])
    wc.stop()
    zombie = next(t for t, k in wb.roles.items() if k == "zombie")
    with bpf.Source.pinned(pins) as src:
        p = src.read_pass()
    assert p.mechanism == "cgroup"
    for cg, workers in ((a, [wa]), (a_child, [wk]), (b, [wb]), (c, [wc])):
        assert pass_letters(p, cg) == proc_letters(cg) == expected(*workers), cg
    assert pass_letters(p, b)["D"] == 2 and pass_letters(p, b)["t"] == 1
    assert pass_letters(p, c)["T"] == 4 and pass_letters(p, a)["R"] == 1
    # the zombie is Z in /proc, but in no cgroup's thread list: counted nowhere
    with open(f"/proc/{zombie}/stat", "rb") as f:
        assert f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    assert all(c.count("Z") == 0 for c in (p[i] for i in p))
    # nested: the parent holds only its own threads
    assert p[ino(a)].threads == len(wa.roles) and p[ino(a_child)].threads == len(wk.roles)


def test_the_per_thread_pass_agrees(testbed, pins):
    """The fallback mechanism (iter/task) on the same cgroups: same counts."""
    a, b = testbed.cgroup(2), testbed.cgroup(2)
    wa = testbed.spawn(busy=True, pipe=2, vfork=1, cgroups=[a])
    wb = testbed.spawn(futex=3, cgroups=[b])
    wb.stop()
    for _ in range(2):
        fd = os.open(os.path.join(pins, bpf.PIN_NAMES[bpf.MECH_TASK]), os.O_RDONLY)
        try:
            p = bpf._NativePass(_native.bpf).read(fd, "task pass")
        finally:
            os.close(fd)
        assert p.mechanism == "task"
        assert pass_letters(p, a) == proc_letters(a) == expected(wa)
        assert pass_letters(p, b) == proc_letters(b) == expected(wb)


def test_idle_kernel_threads_in_the_root_cgroup(pins):
    root = v2_root()
    with bpf.Source.pinned(pins) as src:
        p = src.read_pass()
    scan = proc_letters(root)
    require_kernel(scan["I"] > 0, "no idle kernel thread visible in the root cgroup")
    got = p[ino(root)].count("I")
    assert got > 0 and abs(got - scan["I"]) <= max(2, scan["I"] // 10)  # kworkers come and go


def schedstat_sums(cgroup):
    with open(os.path.join(cgroup, "cgroup.threads")) as f:
        tids = set(f.read().split())
    run = wait = 0
    for tid in tids:
        with open(f"/proc/{tid}/task/{tid}/schedstat") as f:
            r, w, _ = f.read().split()
        run, wait = run + int(r), wait + int(w)
    return run, wait


def test_runtime_and_run_delay_sums_match_schedstat(testbed, pins):
    """se.sum_exec_runtime and sched_info.run_delay summed by the pass lie between the
    schedstat sums read just before and just after it (both clocks only grow)."""
    cg = testbed.cgroup(2)
    testbed.spawn(busy=True, pipe=2, cgroups=[cg])
    testbed.spawn(busy=True, cgroups=[cg])
    time.sleep(0.2)
    with bpf.Source.pinned(pins) as src:
        for _ in range(5):
            run0, wait0 = schedstat_sums(cg)
            c = src.read_pass()[ino(cg)]
            run1, wait1 = schedstat_sums(cg)
            assert run0 <= c.sum_exec_runtime <= run1
            assert wait0 <= c.run_delay <= wait1
            assert c.sum_exec_runtime > 0


# -- size, churn, concurrency -------------------------------------------------------------

def test_two_thousand_cgroups_in_one_pass(testbed, pins):
    top = testbed.cgroup(2)
    cgs = [testbed.cgroup(2, parent=top) for _ in range(2000)]
    busy = [cgs[0], cgs[999], cgs[1999]]
    workers = [testbed.spawn(pipe=2, cgroups=[cg]) for cg in busy]
    with bpf.Source.pinned(pins) as src:
        p = src.read_pass()
    assert p.mechanism == "cgroup" and p.objects >= 2001
    for cg, w in zip(busy, workers):
        assert pass_letters(p, cg) == expected(w)
    assert all(ino(cg) not in p for cg in cgs if cg not in busy)  # empty: no record, zeros


def _raw_pass(src, mech):
    fd = src._open(mech)
    try:
        return bpf._read_all(fd, "pass")
    finally:
        os.close(fd)


def test_a_walk_of_one_cgroup(testbed):
    """A per-cgroup walk that visits ONE cgroup (here a leaf as its start; on a fresh node the
    cgroup2 root before any child exists): bpf_seq_read() raises seq_num only for a further
    object, so the end call sees seq_num 0 too, and the pass must still hold one HEAD (CI
    found it written twice: "malformed pass"). Both parsers read the same pass."""
    need_bpf()
    leaf = testbed.cgroup(2)
    w = testbed.spawn(pipe=2, futex=1, cgroups=[leaf])
    with bpf.Source.loaded(leaf) as src:
        p = src.read_pass()
        data = _raw_pass(src, bpf.MECH_CGROUP)
    assert p.mechanism == "cgroup" and p.root == ino(leaf) and p.objects == 0
    assert list(p) == [ino(leaf)]
    assert pass_letters(p, leaf) == expected(w)
    head = bpf._HEAD.unpack_from(data, 0)
    assert head[0] == bpf.REC_HEAD and head[5] == ino(leaf)
    assert len(data) == bpf._HEAD.size + bpf._CGROUP.size + bpf._END.size
    assert bpf.parse_pass(data).raw(ino(leaf)) == p.raw(ino(leaf))


def test_a_walk_of_one_empty_cgroup(testbed):
    """The start cgroup alone and without threads: HEAD and END, no record."""
    need_bpf()
    leaf = testbed.cgroup(2)
    with bpf.Source.loaded(leaf) as src:
        p = src.read_pass()
    assert (p.mechanism, p.root, len(p), p.bytes) == (
        "cgroup", ino(leaf), 0, bpf._HEAD.size + bpf._END.size)


def test_a_walk_whose_start_cgroup_was_removed(testbed):
    """The link holds the start cgroup; removed, it is dead and cgroup_iter shows it without
    running the program: the pass has no object. The reader says so (ENOENT) rather than
    read every cgroup as empty."""
    need_bpf()
    gone = testbed.cgroup(2)
    with bpf.Source.loaded(gone) as src:
        os.rmdir(gone)
        data = _raw_pass(src, bpf.MECH_CGROUP)
        with pytest.raises(BpfError) as exc:
            src.read_pass()
    assert exc.value.errno == errno.ENOENT and "was removed" in str(exc.value)
    p = bpf.parse_pass(data)
    assert (p.root, len(p), p.bytes) == (0, 0, bpf._HEAD.size + bpf._END.size)


def threaded_cgroups(testbed, n):
    """n threaded cgroups holding one thread each of a single worker: many non-empty
    cgroups without many processes (cgroup.type "threaded", tids written to cgroup.threads)."""
    top = testbed.cgroup(2)
    w = testbed.spawn(pipe=n - 1, cgroups=[top])
    kids = [testbed.cgroup(2, parent=top) for _ in range(n)]
    for cg in kids:
        with open(os.path.join(cg, "cgroup.type"), "w") as f:
            f.write("threaded")
    for cg, tid in zip(kids, w.tids):
        with open(os.path.join(cg, "cgroup.threads"), "w") as f:
            f.write(str(tid))
    return top, kids, w


def test_more_non_empty_cgroups_than_one_read_holds(testbed, pins):
    """600 non-empty cgroups do not fit the per-cgroup pass's one read (EOPNOTSUPP): the
    Source reads the per-thread pass instead, and every cgroup is there."""
    top, kids, w = threaded_cgroups(testbed, 600)
    fd = os.open(os.path.join(pins, bpf.PIN_NAMES[bpf.MECH_CGROUP]), os.O_RDONLY)
    try:
        with pytest.raises(BpfError) as exc:
            bpf._NativePass(_native.bpf).read(fd, "cgroup pass")
        assert exc.value.errno == errno.EOPNOTSUPP
    finally:
        os.close(fd)
    with bpf.Source.pinned(pins) as src:
        p = src.read_pass()
        assert p.mechanism == "task"
        for cg in kids:
            assert p[ino(cg)].nr == (0, 1, 0, 0, 0, 0, 0, 0, 0)
        assert ino(top) not in p
        assert src.read_pass().mechanism == "task"  # for a while, without trying again


def test_cgroups_created_and_removed_during_passes(testbed, pins):
    stable = testbed.cgroup(2)
    w = testbed.spawn(pipe=3, nanosleep=1, cgroups=[stable])
    want = expected(w)
    top = testbed.cgroup(2)
    hop = [testbed.cgroup(2, parent=top) for _ in range(2)]
    mover = testbed.spawn(pipe=1, cgroups=[hop[0]])
    stop = threading.Event()
    errors = []

    def churn():
        i = 0
        try:
            while not stop.is_set():
                d = os.path.join(top, f"churn{i % 7}")
                try:
                    os.mkdir(d)
                except FileExistsError:
                    pass
                testbed.move(mover, hop[i % 2])
                os.rmdir(d)
                i += 1
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    t = threading.Thread(target=churn)
    t.start()
    try:
        with bpf.Source.pinned(pins) as src:
            for _ in range(200):
                p = src.read_pass()
                assert pass_letters(p, stable) == want
                moved = [p.get(ino(h)) for h in hop]
                assert sum(c.threads for c in moved if c) in (2, 4)  # in one of the two (or
                # both: the kernel's own migration double-visit, see CpuLoad's netlink note)
    finally:
        stop.set()
        t.join()
    assert not errors


_READER_CHILD = r"""
import collections, json, os, sys
from cgshim.kernel import bpf
pin_dir, cg, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ino = os.stat(cg).st_ino
seen = collections.Counter()
with bpf.Source.pinned(pin_dir) as src:
    for _ in range(n):
        c = src.read_pass().get(ino)
        seen[repr(c.nr if c else None)] += 1
print(json.dumps(seen))
"""


def test_two_processes_reading_at_once(testbed, pins):
    cg = testbed.cgroup(2)
    w = testbed.spawn(pipe=2, futex=2, cgroups=[cg])
    w.stop()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    procs = [subprocess.Popen([sys.executable, "-c", _READER_CHILD, pins, cg, "300"], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    with bpf.Source.pinned(pins) as src:
        mine = [src.read_pass()[ino(cg)].nr for _ in range(100)]
    outs = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    want = repr((0, 0, 0, 5, 0, 0, 0, 0, 0))
    assert all(out == {want: 300} for out in outs), outs
    assert all(repr(nr) == want for nr in mine)


# -- privileges, seccomp, format ------------------------------------------------------------

def test_nobody_without_capabilities_reads_the_pin(testbed, pins):
    cg = testbed.cgroup(2)
    w = testbed.spawn(busy=True, pipe=2, cgroups=[cg])
    got = run_child(
        "from cgshim.kernel import bpf\n"
        "_drop_to_nobody()\n"
        f"with bpf.Source.pinned({pins!r}) as src:\n"
        "    p = src.read_pass()\n"
        f"print(json.dumps([p.mechanism, p.get(os.stat({cg!r}).st_ino).nr]))\n")
    assert got[0] == "cgroup"
    assert collections.Counter({l: n for l, n in zip(bpf.STATES, got[1]) if n}) == expected(w)


def test_nobody_cannot_load(pins):
    got = run_child(
        "from cgshim.kernel import bpf\n"
        "_drop_to_nobody()\n"
        "try:\n"
        f"    bpf.Source.loaded({v2_root()!r}); out = None\n"
        "except bpf.BpfError as exc:\n"
        "    out = [exc.errno, str(exc)]\n"
        "print(json.dumps(out))\n")
    assert got[0] in (errno.EPERM, errno.EACCES) and "CAP_BPF" in got[1]


def test_seccomp_refusing_bpf_stops_loading_not_pin_reading(testbed, pins):
    require_kernel(os.uname().machine == "x86_64", "the seccomp filter here is x86_64's")
    cg = testbed.cgroup(2)
    testbed.spawn(pipe=2, cgroups=[cg])
    got = run_child(
        "from cgshim.kernel import bpf\n"
        "_deny_bpf(errno.EPERM)\n"
        "try:\n"
        f"    bpf.Source.loaded({v2_root()!r}); out = None\n"
        "except bpf.BpfError as exc:\n"
        "    out = [exc.errno, str(exc)]\n"
        f"with bpf.Source.pinned({pins!r}) as src:\n"
        f"    n = src.read_pass().get(os.stat({cg!r}).st_ino).threads\n"
        "print(json.dumps([out, n]))\n")
    (err, msg), n = got
    assert err == errno.EPERM and "seccomp" in msg
    assert n == 3


def test_a_pin_of_another_format_is_refused(bpffs):
    """An object built with another CGSHIM_FORMAT, pinned under this version's name (as a
    stale pin would be): its passes are refused; pinned under its own name: the Source
    says to re-pin."""
    from cgshim._native import build

    with tempfile.TemporaryDirectory(prefix="cgshim-test-bpf-obj-") as tmp:
        why = build.compile_bpf_object(tmp, name="old.bpf.o", defines=["-DCGSHIM_FORMAT=0"])
        assert why is None, why
        obj = os.path.join(tmp, "old.bpf.o")
        stale = os.path.join(bpffs, "stale")
        bpf.pin(stale, cgroup_root=v2_root(), obj_path=obj)
        try:
            with bpf.Source.pinned(stale) as src:
                with pytest.raises(PassFormatMismatch, match="re-pin"):
                    src.read_pass()
            for mech, name in bpf.PIN_NAMES.items():
                os.rename(os.path.join(stale, name), os.path.join(stale, name.replace(f"-v{bpf.FORMAT}", "-v0")))
            with pytest.raises(PassFormatMismatch, match="re-pin"):
                bpf.Source.pinned(stale)
        finally:
            bpf.unpin(stale)
        assert not os.path.exists(stale)


def test_no_pin_there(bpffs):
    with pytest.raises(BpfError) as exc:
        bpf.Source.pinned(os.path.join(bpffs, "nothing-here"))
    assert exc.value.errno == errno.ENOENT


# -- CLI -------------------------------------------------------------------------------

def cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "cgshim", *args], env=env, cwd="/",
                          capture_output=True, text=True, timeout=120)


def test_cli_pin_and_unpin(bpffs):
    d = os.path.join(bpffs, "cli")
    proc = cli("bpf", "pin", "--dir", d, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert sorted(out["pinned"]) == sorted(os.path.join(d, n) for n in bpf.PIN_NAMES.values())
    with bpf.Source.pinned(d) as src:
        assert src.read_pass().get(1).threads > 0
    proc = cli("bpf", "unpin", "--dir", d)
    assert proc.returncode == 0 and proc.stdout.count("removed") == 2
    assert not os.path.exists(d)
    proc = cli("bpf", "unpin", "--dir", d)
    assert proc.returncode == 0 and "nothing pinned" in proc.stdout


def test_cli_pin_off_bpffs_says_so():
    with tempfile.TemporaryDirectory(prefix="cgshim-test-bpf-") as d:
        proc = cli("bpf", "pin", "--dir", os.path.join(d, "x"), "--no-mount")
        assert proc.returncode == 1
        assert "not on a bpffs" in proc.stderr and not os.path.exists(os.path.join(d, "x"))


# -- through the Reader ------------------------------------------------------------------

COUNTS = ("nr_running", "nr_sleeping", "nr_uninterruptible", "nr_stopped", "nr_io_wait")


def reading(load):
    return {k: getattr(load, k) for k in COUNTS}


def test_reader_reads_the_pin_first_and_agrees_with_the_scan(testbed, pins):
    import cgshim

    cg = testbed.cgroup(2)
    w = testbed.spawn(busy=True, pipe=1, futex=1, vfork=1, cgroups=[cg])
    s = testbed.spawn(pipe=2, cgroups=[cg])
    s.stop()
    with cgshim.Reader(bpf_pin_dir=pins) as r, cgshim.Reader(backends=("scan",)) as scan:
        a, b = r.cpu_load(cg), scan.cpu_load(cg)
        assert r.backends[0] == "bpf"
    assert (a.source, a.implementation, a.reason) == ("bpf", "native", None)
    assert reading(a) == reading(b) == {"nr_running": 1, "nr_sleeping": 3, "nr_uninterruptible": 1,
                                        "nr_stopped": 3, "nr_io_wait": None}
    empty = testbed.cgroup(2, parent=cg)
    with cgshim.Reader(bpf_pin_dir=pins) as r:
        e = r.cpu_load(empty)
        assert (e.source, e.nr_running, e.nr_sleeping) == ("bpf", 0, 0)
        os.rmdir(empty)
        with pytest.raises(cgshim.CgroupNotFound):
            r.cpu_load(empty)


def test_one_cgroup_through_a_link_to_it_alone(testbed, bpffs):
    """A Reader that loaded the program itself reads one cgroup through a link of the
    per-cgroup iterator to that cgroup alone (one link fd held per cgroup, released with
    it), not a whole pass: same counts as the scan; removed, CgroupNotFound; re-created,
    the new cgroup; recursive, its descendants added."""
    import cgshim
    from tests.test_sweep import open_fds

    nothing = os.path.join(bpffs, "nothing-pinned")
    cg = testbed.cgroup(2)
    kid = testbed.cgroup(2, parent=cg)
    w = testbed.spawn(busy=True, pipe=1, futex=1, vfork=1, cgroups=[cg])
    s = testbed.spawn(pipe=2, cgroups=[cg])
    s.stop()
    testbed.spawn(pipe=3, cgroups=[kid])
    with cgshim.Reader(bpf_pin_dir=nothing) as r, cgshim.Reader(backends=("scan",)) as scan:
        r._backends["bpf"]._get_source()  # loads the program (its own two links)
        r._backends["bpf"].read_pass = None  # a whole pass would fail: the link is used
        before = set(open_fds())
        a, b = r.cpu_load(cg), scan.cpu_load(cg)
        assert (a.source, a.implementation, a.reason) == ("bpf", "native", None)
        assert reading(a) == reading(b) == {"nr_running": 1, "nr_sleeping": 3,
                                            "nr_uninterruptible": 1, "nr_stopped": 3,
                                            "nr_io_wait": None}
        assert r._targets[cg].bpf_fd is not None
        links = [t for fd, t in open_fds().items() if fd not in before and "bpf_link" in t]
        assert len(links) == 1, links
        rec = r.cpu_load(cg, recursive=True)
        assert reading(rec) == reading(scan.cpu_load(cg, recursive=True))
        assert rec.nr_sleeping == 7
        r.forget(cg)
        r.forget(kid)
        assert not [t for fd, t in open_fds().items() if fd not in before and "bpf_link" in t]

        gone = testbed.cgroup(2)
        g = testbed.spawn(pipe=2, cgroups=[gone])
        assert r.cpu_load(gone).nr_sleeping == 3
        g.kill()
        os.rmdir(gone)
        with pytest.raises(cgshim.CgroupNotFound):
            r.cpu_load(gone)
        os.mkdir(gone)
        testbed.spawn(pipe=4, cgroups=[gone])
        again = r.cpu_load(gone)
        assert (again.source, again.nr_sleeping) == ("bpf", 5)
    assert w.pid  # the workers lived through the reads


def test_one_cgroup_link_with_stdin_closed(testbed):
    """A process started with stdin closed gets fd 0 from open(); a cgroup_fd of 0 means the
    root cgroup to cgroup_iter, so the reader must never attach with it."""
    need_bpf()
    cg = testbed.cgroup(2)
    testbed.spawn(pipe=2, cgroups=[cg])
    got = run_child(
        "os.close(0)\n"
        "r = cgshim.Reader(bpf_pin_dir='/nonexistent-cgshim-pins')\n"
        f"l = r.cpu_load({cg!r})\n"
        f"print(json.dumps(load_dict(l) | {{'fd': r._targets[{cg!r}].bpf_fd}}))\n")
    assert (got["source"], got["nr_sleeping"], got["nr_running"]) == ("bpf", 3, 0)
    assert got["fd"] not in (None, 0)


def test_reader_forced_off_bpf(testbed, pins):
    import cgshim

    cg = testbed.cgroup(2)
    testbed.spawn(pipe=2, cgroups=[cg])
    with cgshim.Reader(backends=("scan", "psi"), bpf_pin_dir=pins) as r:
        load = r.cpu_load(cg)
    assert (load.source, load.reason, load.nr_sleeping) == ("scan", None, 3)
    assert "bpf" not in r.implementations


def test_reader_as_nobody_reads_the_pin(testbed, pins):
    """Pin as root (the module fixture), read as uid 65534 with an empty capability set:
    source "bpf", the same counts as root's scan."""
    import cgshim

    cg = testbed.cgroup(2)
    testbed.spawn(busy=True, pipe=2, nanosleep=1, cgroups=[cg])
    with cgshim.Reader(backends=("scan",)) as scan:
        want = reading(scan.cpu_load(cg))
    got = run_child(
        "_drop_to_nobody()\n"
        f"r = cgshim.Reader(bpf_pin_dir={pins!r})\n"
        f"print(json.dumps(attempt(r.cpu_load, {cg!r})))\n")
    load = got["ok"]
    assert (load["source"], load["reason"]) == ("bpf", None)
    assert {k: load[k] for k in COUNTS} == want


def test_reader_as_nobody_without_pin_falls_back_with_the_reason(testbed, bpffs):
    cg = testbed.cgroup(2)
    testbed.spawn(pipe=1, cgroups=[cg])
    got = run_child(
        "_drop_to_nobody()\n"
        f"r = cgshim.Reader(bpf_pin_dir={os.path.join(bpffs, 'none')!r})\n"
        f"print(json.dumps(attempt(r.cpu_load, {cg!r})))\n")
    load = got["ok"]
    assert (load["source"], load["nr_sleeping"]) == ("scan", 2)
    assert "nothing pinned" in load["reason"] and "CAP_BPF" in load["reason"]


def test_reader_with_bpf_refused_by_seccomp_falls_back_with_the_reason(testbed, bpffs):
    require_kernel(os.uname().machine == "x86_64", "the seccomp filter here is x86_64's")
    cg = testbed.cgroup(2)
    testbed.spawn(pipe=1, cgroups=[cg])
    got = run_child(
        "_deny_bpf(errno.EPERM)\n"
        f"r = cgshim.Reader(bpf_pin_dir={os.path.join(bpffs, 'none')!r})\n"
        f"print(json.dumps(attempt(r.cpu_load, {cg!r})))\n")
    load = got["ok"]
    assert (load["source"], load["nr_sleeping"]) == ("scan", 2)
    assert load["reason"].startswith("bpf unavailable") and "EPERM" in load["reason"]
    assert "seccomp" in load["reason"]


def test_reader_as_nobody_with_a_stale_pin_says_re_pin(testbed, bpffs):
    cg = testbed.cgroup(2)
    testbed.spawn(pipe=1, cgroups=[cg])
    stale = os.path.join(bpffs, "stale-reader")
    os.makedirs(stale, mode=0o755)
    try:
        paths = bpf.pin(stale, cgroup_root=v2_root())
        for p in paths:
            os.rename(p, p.replace(f"-v{bpf.FORMAT}", "-v0"))
        got = run_child(
            "_drop_to_nobody()\n"
            f"r = cgshim.Reader(bpf_pin_dir={stale!r})\n"
            f"print(json.dumps(attempt(r.cpu_load, {cg!r})))\n")
    finally:
        bpf.unpin(stale)
    load = got["ok"]
    assert load["source"] == "scan" and "re-pin" in load["reason"]


def test_sweep_reads_one_pass_for_every_cgroup(testbed, pins):
    import cgshim

    top = testbed.cgroup(2)
    kids = [testbed.cgroup(2, parent=top) for _ in range(5)]
    testbed.spawn(busy=True, pipe=1, cgroups=[kids[0]])
    testbed.spawn(vfork=1, cgroups=[kids[1]]).stop()
    with cgshim.Reader(bpf_pin_dir=pins) as r, cgshim.Reader(backends=("scan",)) as scan:
        backend = r._backends["bpf"]
        backend.read_pass()  # opens the pinned Source
        calls = []
        real = backend._source.read_pass
        backend._source.read_pass = lambda: calls.append(1) or real()
        swept = r.sweep([top])
        assert len(calls) == 1 and not swept.errors
        assert set(swept) == {top, *kids}
        for path, load in swept.items():
            assert load.source == "bpf"
            assert reading(load) == reading(scan.cpu_load(path)), path
        assert swept[kids[0]].nr_running == 1 and swept[kids[1]].nr_uninterruptible == 1


def test_quiet_sweeps_see_a_cgroup_re_created_between_them(testbed, pins):
    """A sweep with no inotify event since its walk reuses the directory ids stat()ed in
    that walk; a cgroup removed and re-created under the same name between two sweeps
    (a new inode, other threads) is read as the new cgroup, not the old one's zeros."""
    import cgshim

    top = testbed.cgroup(2)
    kid = testbed.cgroup(2, parent=top)
    old = testbed.spawn(pipe=2, cgroups=[kid])
    with cgshim.Reader(bpf_pin_dir=pins) as r:
        for _ in range(3):
            swept = r.sweep([top])
            assert (swept[kid].source, swept[kid].nr_sleeping) == ("bpf", 3)
        assert r._swept[kid].walk_id is not None  # the ids of this walk are in use
        before = ino(kid)
        old.kill()
        os.rmdir(kid)
        os.mkdir(kid)
        new = testbed.spawn(pipe=4, cgroups=[kid])
        assert ino(kid) != before
        swept = r.sweep([top])
        assert not swept.errors
        assert (swept[kid].source, swept[kid].nr_sleeping) == ("bpf", 5)
        assert reading(swept[kid]) == reading(r.cpu_load(kid))
        new.kill()
        assert r.sweep([top])[kid].nr_sleeping == 0


def test_a_swept_root_re_created_after_the_walk_is_not_read_by_its_old_id(testbed, pins):
    """A root's own removal raises no event on the watches (they are on it and below): a
    root re-created between the walk and the pass (here: the counts read without a new
    discover) is stat()ed again, not read by the id of the directory walked."""
    import cgshim

    leaf = testbed.cgroup(2)
    old = testbed.spawn(pipe=2, cgroups=[leaf])
    with cgshim.Reader(bpf_pin_dir=pins) as r:
        for _ in range(3):
            assert r.sweep([leaf])[leaf].nr_sleeping == 3
        target = r._swept[leaf]
        assert target.walk_id is not None
        old.kill()
        os.rmdir(leaf)
        os.mkdir(leaf)
        testbed.spawn(pipe=4, cgroups=[leaf])
        (counts, backend, _), = r._sweep_counts([target]).values()
        assert backend.name == "bpf" and counts[:2] == (0, 5)


def test_exact_load_from_the_pass_sums(testbed, pins):
    """A spinner alone in its cgroup: runnable_seconds from the bpf pass's sums grow by the
    wall time between two readings (it is always running or waiting), as from the scan."""
    import cgshim

    cg = testbed.cgroup(2)
    testbed.spawn(busy=True, cgroups=[cg])
    with cgshim.Reader(bpf_pin_dir=pins) as r:
        a = r.cpu_load(cg)
        time.sleep(0.5)
        b = r.cpu_load(cg)
    assert a.source == b.source == "bpf"
    assert a.runnable_seconds == 0 and b.runqueue_seconds >= 0
    rate = (b.runnable_seconds - a.runnable_seconds) / (b.timestamp - a.timestamp)
    assert 0.8 <= rate <= 1.2, rate  # a wait in progress is credited late (docs/exact-load.md)


def test_exact_load_bpf_and_scan_agree(testbed, pins):
    """Issue 12: the same cgroup read alternately by the bpf pass's sums and by the scan's
    per-thread clocks (stable threads): the cumulative counters grow by the same amounts,
    within the skew of reading one after the other."""
    import cgshim

    cg = testbed.cgroup(2)
    testbed.spawn(busy=True, pipe=2, cgroups=[cg])
    testbed.spawn(busy=True, cgroups=[cg])
    with cgshim.Reader(bpf_pin_dir=pins) as b, cgshim.Reader(backends=("scan",)) as s:
        first = (b.cpu_load(cg), s.cpu_load(cg))
        time.sleep(1.0)
        last = (b.cpu_load(cg), s.cpu_load(cg))
    assert [r.source for r in first + last] == ["bpf", "scan"] * 2
    # two threads runnable all the time: each second of skew between the two reads moves
    # up to 2 s of runnable time; plus a wait in progress credited late (tens of ms each)
    skew = abs((last[1].timestamp - last[0].timestamp) - (first[1].timestamp - first[0].timestamp))
    for field in ("runnable_seconds", "runqueue_seconds"):
        d_bpf = getattr(last[0], field) - getattr(first[0], field)
        d_scan = getattr(last[1], field) - getattr(first[1], field)
        assert abs(d_bpf - d_scan) <= 2 * skew + 0.1, (field, d_bpf, d_scan, skew)
    assert last[0].runnable_seconds - first[0].runnable_seconds >= 1.0
