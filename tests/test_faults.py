"""Faults the kernel really produces, and what cgshim makes of them (issue 6).

Netlink unavailable: socket() refused by a seccomp filter in a child process (the way a
container runtime's profile or an LSM refuses it; the kernel answers with the errno the
filter names), fd exhaustion by RLIMIT_NOFILE, and the family lookup answering ENOENT
(not producible on 6.18, see test_family_lookup_enoent_*). Kernel files: a threaded
cgroup2 cgroup (cgroup.procs answers EOPNOTSUPP), PSI hidden with cgroup.pressure, comm
names full of ')' and newlines, every truncation of texts the kernel wrote here. Paths:
relative, '..', symlinks, files, non-UTF-8 and over-long names. EACCES needs an
unprivileged reader: see test_privilege.py.
"""
import errno
import json
import os
import platform
import signal
import struct
import subprocess
import sys
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cgshim
from cgshim import _native
from cgshim.kernel import cgroupfs
from cgshim.kernel import mounts as hier_mod
from cgshim.kernel import threadstat as procstat
from cgshim.kernel import psi
from cgshim.errors import (CgroupNotFound, CgshimError, FamilyNotFound, NotACgroup, ParseError,
                           Unsupported)
from cgshim.kernel.mounts import parse_mountinfo
from tests.support.require import require_kernel, require_root
from tests.support.backends import v2_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
COUNTS = ("nr_running", "nr_sleeping", "nr_uninterruptible", "nr_stopped")

# --- child processes ------------------------------------------------------------------

# Seccomp filters (classic BPF, x86_64 only) that make one system call fail with a chosen
# errno and let every other one through. Built with ctypes: no libseccomp binding is
# installed here.
_SECCOMP = r'''
def _install_seccomp(prog):
    import ctypes, struct
    code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in prog))
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Fprog(len(prog), ctypes.addressof(code))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                           ctypes.c_ulong]
    if libc.prctl(38, 1, None, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")

_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06

def _deny_netlink_socket(err):
    _install_seccomp([
        (_LD_W_ABS, 0, 0, 4), (_JEQ_K, 0, 5, 0xC000003E),   # arch == x86_64, else allow
        (_LD_W_ABS, 0, 0, 0), (_JEQ_K, 0, 3, 41),            # nr == __NR_socket
        (_LD_W_ABS, 0, 0, 16), (_JEQ_K, 0, 1, 16),           # args[0] == AF_NETLINK
        (_RET_K, 0, 0, 0x00050000 | err), (_RET_K, 0, 0, 0x7FFF0000)])

def _deny_bpf(err):
    _install_seccomp([
        (_LD_W_ABS, 0, 0, 4), (_JEQ_K, 0, 3, 0xC000003E),   # arch == x86_64, else allow
        (_LD_W_ABS, 0, 0, 0), (_JEQ_K, 0, 1, 321),           # nr == __NR_bpf
        (_RET_K, 0, 0, 0x00050000 | err), (_RET_K, 0, 0, 0x7FFF0000)])
'''

# Drop to nobody after the imports: /root (where this interpreter lives) is mode 0700, so
# an interpreter exec'd as nobody could not even start. setresuid from root to 65534
# clears every capability, as setpriv --reuid would.
_DROP = r'''
def _drop_to_nobody():
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    caps = [l for l in open("/proc/self/status") if l.startswith("CapEff:")]
    assert os.geteuid() == 65534 and caps == ["CapEff:\t0000000000000000\n"], caps
'''

_PRELUDE = (
    "import json, os, sys, errno\n"
    "import cgshim, cgshim.reader, cgshim.kernel.netlink, cgshim.kernel.threadstat, cgshim.kernel.cgroupfs\n"
    + _SECCOMP + _DROP +
    "def load_dict(l):\n"
    "    return {k: getattr(l, k) for k in ('path', 'cgroup_version', 'source', 'nr_running',"
    " 'nr_sleeping', 'nr_uninterruptible', 'nr_stopped', 'nr_io_wait', 'reason')}"
    " | {'pressure': l.pressure is not None}\n"
    "def attempt(f, *a, **kw):\n"
    "    try:\n"
    "        return {'ok': load_dict(f(*a, **kw))}\n"
    "    except Exception as exc:\n"
    "        return {'error': type(exc).__name__, 'module': type(exc).__module__,"
    " 'errno': getattr(exc, 'errno', None), 'message': str(exc)}\n"
)


def run_child(code, timeout=60):
    """Run ``code`` (after _PRELUDE) in a fresh interpreter; return the JSON of its last
    stdout line. A hang is killed after ``timeout`` s (TimeoutExpired fails the test)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + code], env=env, cwd="/",
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def need_seccomp():
    require_kernel(platform.machine() == "x86_64", "the seccomp filter here is x86_64 BPF")


def proc_counts(*workers):
    letters = [s for w in workers for s in w.expected_states().values()]
    return dict(nr_running=letters.count("R"), nr_sleeping=letters.count("S"),
                nr_uninterruptible=letters.count("D"), nr_stopped=letters.count("T"))


@pytest.fixture
def v1_cgroup(testbed):
    """A v1 cpu cgroup with one busy worker, two pipe sleepers and a stopped worker: the
    same counts by netlink and by scan (no freezable sleepers)."""
    cg = testbed.cgroup(1)
    workers = [testbed.spawn(busy=True, pipe=2, cgroups=(cg,)), testbed.spawn(poll=1, cgroups=(cg,))]
    workers[1].stop()
    return cg, proc_counts(*workers)


# --- 1. netlink unavailable -------------------------------------------------------------

@pytest.mark.kernel
@pytest.mark.parametrize("err", [errno.EPERM, errno.EACCES, errno.EAFNOSUPPORT])
def test_netlink_socket_refused_falls_back_to_scan(v1_cgroup, err):
    """socket(AF_NETLINK) refused for good: every v1 read is a scan, the reason names the
    errno, and the Reader remembers it (netlink_unavailable) instead of retrying."""
    need_seccomp()
    cg, want = v1_cgroup
    out = run_child(
        f"_deny_netlink_socket({err})\n"
        "r = cgshim.Reader()\n"
        f"first, second = attempt(r.cpu_load, {cg!r}), attempt(r.cpu_load, {cg!r})\n"
        f"third = attempt(cgshim.get_cpu_load, {cg!r})\n"
        "print(json.dumps([first, second, third, r.netlink_unavailable]))\n")
    first, second, third, down = out
    name = errno.errorcode[err]
    for got in (first, second, third):
        assert "ok" in got, got
        load = got["ok"]
        assert (load["source"], load["cgroup_version"], load["nr_io_wait"]) == ("scan", 1, None)
        assert {k: load[k] for k in COUNTS} == want
        assert name in load["reason"] and "netlink" in load["reason"]
    assert name in down
    assert second["ok"]["reason"].startswith("netlink unavailable")


@pytest.mark.kernel
def test_netlink_socket_emfile_is_retried_later(v1_cgroup):
    """A transient socket() failure (EMFILE for AF_NETLINK only) falls back to the scan
    for that read but is not remembered: netlink_unavailable stays None."""
    need_seccomp()
    cg, want = v1_cgroup
    first, down = run_child(
        f"_deny_netlink_socket({errno.EMFILE})\n"
        f"r = cgshim.Reader(); got = attempt(r.cpu_load, {cg!r})\n"
        "print(json.dumps([got, r.netlink_unavailable]))\n")
    assert first["ok"]["source"] == "scan" and "EMFILE" in first["ok"]["reason"]
    assert {k: first["ok"][k] for k in COUNTS} == want
    assert down is None


@pytest.mark.kernel
def test_fd_exhaustion_is_a_typed_error(v1_cgroup, testbed):
    """RLIMIT_NOFILE at the number of fds already open (prlimit's effect): nothing new can
    be opened, so there is no answer; cgshim must say so with a CgshimError, not OSError."""
    cg, _ = v1_cgroup
    v2 = testbed.cgroup(2)
    testbed.spawn(pipe=1, cgroups=(v2,))
    got = run_child(
        "import resource\n"
        "r = cgshim.Reader()\n"
        "n = len(os.listdir('/proc/self/fd')) - 1\n"   # the listdir fd itself is closed again
        "resource.setrlimit(resource.RLIMIT_NOFILE, (n, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        f"print(json.dumps([attempt(r.cpu_load, {cg!r}), attempt(r.cpu_load, {v2!r})]))\n")
    for g in got:
        assert g.get("module") == "cgshim.errors", g
        assert "EMFILE" in g["message"] or "file descriptors" in g["message"], g


@pytest.mark.kernel
def test_family_lookup_enoent_is_what_the_kernel_sends(testbed):
    """The kernel's answer to a GETFAMILY for a family it does not have, parsed by the C
    core's own family parser: ENOENT. (On 6.18 TASKSTATS is visible in every network
    namespace, so this is the closest real source of that answer. The name fits
    GENL_NAMSIZ: a longer one answers EINVAL from the attribute policy.)"""
    require_root()
    from tests.test_netlink import (CTRL_ATTR_FAMILY_NAME, CTRL_CMD_GETFAMILY, GENL_ID_CTRL,
                              need_native, raw_exchange)

    need_native()
    replies, ack = raw_exchange(GENL_ID_CTRL, CTRL_CMD_GETFAMILY,
                                [(CTRL_ATTR_FAMILY_NAME, b"CGSHIM_NOFAM\0")])
    assert replies == [] and struct.unpack_from("=i", ack, 16)[0] == -errno.ENOENT
    mod = _native.netlink
    out = mod.ffi.new("uint16_t *")
    assert mod.lib.cg_nl_parse_family(ack, len(ack), out) == errno.ENOENT


class _FamilyGone:
    """The cffi lib of cgshim._native._netlink, except that cg_nl_family_id answers
    ENOENT as the C function does when the kernel has no TASKSTATS family."""

    def __init__(self, lib):
        self._lib = lib

    def cg_nl_family_id(self, fd, seq, out):
        return errno.ENOENT

    def __getattr__(self, name):
        return getattr(self._lib, name)


@pytest.mark.kernel
@pytest.mark.parametrize("recursive", [False, True])
def test_family_lookup_enoent_falls_back_to_scan(v1_cgroup, monkeypatch, recursive):
    """SEAM: the family lookup ENOENT cannot be produced on this kernel, so the lowest
    honest seam is the C function's return value: a real TaskstatsSocket (real socket,
    real requests) whose cg_nl_family_id returns ENOENT. The Reader must answer by scan,
    say why, and never call the (existing) cgroup 'removed'."""
    from tests.test_netlink import need_native

    need_native()
    cg, want = v1_cgroup

    def open_socket(timeout=1.0):
        sock = cgshim.kernel.netlink.TaskstatsSocket(timeout)
        sock._c = _FamilyGone(sock._c)
        return sock

    monkeypatch.setattr(cgshim.reader.netlink, "open_socket", open_socket)
    with cgshim.Reader() as reader:
        with pytest.raises(FamilyNotFound):
            open_socket().family_id
        for _ in range(2):
            load = reader.cpu_load(cg, recursive=recursive)
            assert (load.source, load.cgroup_version) == ("scan", 1)
            assert {k: getattr(load, k) for k in COUNTS} == want
            assert "TASKSTATS" in load.reason
        assert "TASKSTATS" in reader.netlink_unavailable


# --- 2. kernel files ---------------------------------------------------------------------

@pytest.mark.kernel
def test_threaded_cgroup(testbed):
    """A threaded cgroup2 subtree: cgroup.procs answers EOPNOTSUPP (Unsupported), the
    reader counts each cgroup's own threads from cgroup.threads."""
    parent = testbed.cgroup(2)
    child = testbed.cgroup(2, parent=parent)
    with open(os.path.join(child, "cgroup.type"), "w") as f:
        f.write("threaded")
    w = testbed.spawn(busy=True, pipe=2, poll=1, cgroups=(parent,))
    moved = [t for t, k in w.roles.items() if k in ("busy", "pipe")]  # R + 2 S
    for tid in moved:
        with open(os.path.join(child, "cgroup.threads"), "w") as f:
            f.write(str(tid))
    assert sorted(cgroupfs.read_thread_list(child)) == sorted(moved)
    with pytest.raises(Unsupported):
        cgroupfs.read_thread_list(child, "cgroup.procs")
    with procstat.Scanner() as sc, pytest.raises(Unsupported):
        sc.scan_file(os.path.join(child, "cgroup.procs"))
    with cgshim.Reader() as reader:
        c, p = reader.cpu_load(child), reader.cpu_load(parent)
        both = reader.cpu_load(parent, recursive=True)
    assert (c.source, c.nr_running, c.nr_sleeping, c.nr_stopped) == (v2_source(), 1, 2, 0)
    assert (p.source, p.nr_running, p.nr_sleeping, p.nr_stopped) == (v2_source(), 0, 1, 0)
    assert (both.nr_running, both.nr_sleeping) == (1, 3)


def _set_pressure(cg, on):
    with open(os.path.join(cg, "cgroup.pressure"), "w") as f:
        f.write("1" if on else "0")


@pytest.mark.kernel
def test_pressure_hidden_and_shown_again(testbed):
    """cgroup.pressure=0 on our cgroup (kernel >= 6.1): pressure None, counts intact, no
    exception, also through a held cpu.pressure fd and for the v1 twin; shown again, the
    Reader finds the file once its recheck interval has passed."""
    v1 = testbed.cgroup(1)
    v2 = testbed.cgroup(2, name=os.path.basename(v1))
    require_kernel(os.path.exists(os.path.join(v2, "cgroup.pressure")),
                   "cgroup.pressure (kernel >= 6.1) is needed to hide PSI")
    w = testbed.spawn(busy=True, pipe=1, cgroups=(v1, v2))
    with cgshim.Reader() as reader:
        reader.PRESSURE_RECHECK = 0.0
        for cg in (v1, v2):
            assert reader.cpu_load(cg).pressure is not None  # fds now held
        _set_pressure(v2, False)
        for cg in (v1, v2):
            for _ in range(2):
                load = reader.cpu_load(cg)
                assert load.pressure is None
                assert (load.nr_running, load.nr_sleeping) == (1, 1)
        with cgshim.Reader() as fresh:
            assert fresh.cpu_load(v2).pressure is None
        _set_pressure(v2, True)
        for cg in (v1, v2):
            assert isinstance(reader.cpu_load(cg).pressure, psi.Pressure)
    assert w.proc.poll() is None


_NASTY_COMMS = [b") R (", b"x)\n) T 1 2", b" ", b"((((", b"))))))))))))))", b"a) Z (b) D",
                b"\n\n\n", b")"]

_RENAMER = r"""
import ctypes, json, os, sys, threading
names = [bytes.fromhex(h) for h in json.loads(sys.argv[1])]
libc = ctypes.CDLL(None)
r, w = os.pipe()
tids, lock = [], threading.Lock()
def run(name):
    libc.prctl(15, ctypes.c_char_p(name), 0, 0, 0)   # PR_SET_NAME: this thread's comm
    with lock:
        tids.append([name.hex(), threading.get_native_id()])
    os.read(r, 1)
for n in names:
    threading.Thread(target=run, args=(n,), daemon=True).start()
while True:
    with lock:
        if len(tids) == len(names):
            break
print(json.dumps(tids), flush=True)
os.read(0, 1)
"""


@pytest.mark.kernel
@pytest.mark.parametrize("version", [1, 2])
def test_comm_with_parentheses_spaces_and_newlines(testbed, version):
    """Threads whose comm holds ')', spaces and newlines (set with PR_SET_NAME): the /proc
    scan still reads each one's real state (S), and agrees with netlink on v1."""
    cg = testbed.cgroup(version)
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _RENAMER,
                             json.dumps([n.hex() for n in _NASTY_COMMS])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        named = [(bytes.fromhex(h), tid) for h, tid in json.loads(proc.stdout.readline())]
        assert sorted(n for n, _ in named) == sorted(_NASTY_COMMS)
        tids = [tid for _, tid in named]
        testbed.move(types.SimpleNamespace(pid=proc.pid), cg)
        for name, tid in named:
            with open(f"/proc/{proc.pid}/task/{tid}/comm", "rb") as f:
                assert f.read() == name + b"\n"
            with open(f"/proc/{proc.pid}/task/{tid}/stat", "rb") as f:
                line = f.read()
            assert procstat.parse_stat_state(line) in "RS"
        nthreads = len(tids) + 1
        with procstat.Scanner() as sc:
            counts = sc.scan_file(os.path.join(cg, cgroupfs_list(version)))
        assert counts.nr_listed == nthreads and counts.nr_other == 0
        with cgshim.Reader(pressure=False) as reader:
            load = reader.cpu_load(cg)
        assert load.nr_running + load.nr_sleeping == nthreads
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def cgroupfs_list(version):
    return "tasks" if version == 1 else "cgroup.threads"


def _real_texts(cg, worker):
    """Texts the kernel wrote here, to be cut at every offset."""
    files = {
        "cpu.pressure": os.path.join(cg, "cpu.pressure"),
        "cpu.stat": os.path.join(cg, "cpu.stat"),
        "cgroup.stat": os.path.join(cg, "cgroup.stat"),
        "cgroup.threads": os.path.join(cg, "cgroup.threads"),
        "mountinfo": "/proc/self/mountinfo",
        "stat": f"/proc/{worker.pid}/task/{worker.pid}/stat",
    }
    out = {}
    for name, path in files.items():
        with open(path, "rb") as f:
            out[name] = f.read()
    return out


_PARSERS = {
    "cpu.pressure": lambda b: psi.parse_pressure(b.decode("ascii")),
    "cpu.stat": lambda b: cgroupfs.parse_cpu_stat(b.decode("ascii")),
    "cgroup.stat": lambda b: cgroupfs.parse_cgroup_stat(b.decode("ascii")),
    "cgroup.threads": cgroupfs.parse_thread_list,
    "mountinfo": lambda b: parse_mountinfo(os.fsdecode(b)),
    "stat": procstat.parse_stat_state,
}


@pytest.mark.kernel
def test_real_texts_truncated_at_every_offset(testbed):
    """Every prefix of every kernel text captured here either parses or raises ParseError;
    a prefix cut inside the last line never yields a value that is not in the full text."""
    cg = testbed.cgroup(2)
    w = testbed.spawn(busy=True, pipe=3, cgroups=(cg,))
    texts = _real_texts(cg, w)
    with procstat.Scanner() as sc:
        for name, data in texts.items():
            parse = _PARSERS[name]
            full = parse(data)
            for cut in range(len(data)):
                try:
                    part = parse(data[:cut])
                except ParseError:
                    continue
                if name == "cgroup.threads":
                    assert all(t in full or str(t) in data.decode() for t in part)
                    try:
                        sc.scan_bytes(data[:cut])
                    except ParseError:
                        pytest.fail(f"C scanner refused a prefix the parser accepts: {data[:cut]!r}")
                elif name in ("cpu.stat", "cgroup.stat"):
                    keys = list(part)
                    assert set(keys) <= set(full)  # a cut key has no value: ParseError
                    assert all(part[k] == full[k] for k in keys[:-1])
                elif name == "stat":
                    assert part == full  # the state comes before any cut that parses


_FUZZ = settings(max_examples=int(os.environ.get("CGSHIM_FUZZ_EXAMPLES", "200")), deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(comm=st.binary(min_size=0, max_size=15).filter(lambda b: b"\0" not in b),
       state=st.sampled_from("RSDTtZXIP"), tail=st.binary(max_size=200))
def test_stat_line_any_comm(comm, state, tail):
    """The state letter is found after the *last* ')' whatever the comm holds, in Python
    and in the C parser."""
    tail_clean = tail.replace(b")", b"")
    line = b"1234 (" + comm + b") " + state.encode() + b" " + tail_clean
    assert procstat.parse_stat_state(line) == state
    if _native.procscan is not None:
        assert _native.procscan.lib.cg_stat_state(line, len(line)) == ord(state)


# --- 3. paths ------------------------------------------------------------------------------

@pytest.fixture
def paths(testbed, tmp_path):
    v1, v2 = testbed.cgroup(1), testbed.cgroup(2)
    (tmp_path / "to_cgroup").symlink_to(v2)
    (tmp_path / "to_etc").symlink_to("/etc")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "file").write_text("x")
    return types.SimpleNamespace(v1=v1, v2=v2, tmp=str(tmp_path))


def _bad_paths(p):
    long_name = "x" * 256
    return [
        "", ".", "relative", "cpu/" + os.path.basename(p.v1), "./" + p.v2,
        p.v2 + "/../../../../etc", p.v1 + "/../../..", p.v2 + "/cgroup.procs",
        p.v2 + "/cgroup.procs/x", p.v1 + "/tasks", p.v1 + "/cpu.shares/",
        p.tmp + "/to_cgroup", p.tmp + "/to_etc", p.tmp + "/loop", p.tmp + "/file", "/etc/passwd",
        "/proc/self", "/sys/fs/cgroup/unified/../../../" + p.tmp.lstrip("/") + "/to_etc",
        p.v2 + "/" + long_name, "/" + long_name, p.v1 + "/a" * 2100, "/" + "a/" * 2100,
        p.v2 + "\0", "/\udcff\udcfe-cgshim-not-there", b"/\xff\xfe", p.v2.encode() + b"/\xff",
        "/a/../b", "/sys/fs/cgroup/unified/\udcff",
    ]


@pytest.mark.kernel
def test_bad_paths_give_not_a_cgroup_or_not_found(paths):
    """Each refused path raises NotACgroup or CgroupNotFound (and never leaks an fd)."""
    before = len(os.listdir("/proc/self/fd"))
    with cgshim.Reader() as reader:
        for bad in _bad_paths(paths):
            for recursive in (False, True):
                with pytest.raises((NotACgroup, CgroupNotFound)):
                    reader.cpu_load(bad, recursive=recursive)
    assert len(os.listdir("/proc/self/fd")) == before


_COMPONENTS = ["..", ".", "", "cgroup.procs", "tasks", "x" * 256, "\udcff", "sub", "to_cgroup",
               "to_etc", "loop", "file", "unified", "cpu", "tmp", "\n", " "]


@pytest.mark.kernel
def test_composed_paths_never_raise_another_type(paths):
    """Paths built from hostile components: a CpuLoad, NotACgroup or CgroupNotFound only."""
    require_root()
    bases = ["/", paths.v1, paths.v2, paths.tmp, "/sys/fs/cgroup", ""]
    seen = set()
    with cgshim.Reader() as reader:
        @_FUZZ
        @given(st.sampled_from(bases), st.lists(st.sampled_from(_COMPONENTS), max_size=8),
               st.booleans())
        def check(base, parts, as_bytes):
            path = "/".join([base] + parts)
            arg = os.fsencode(path) if as_bytes else path
            try:
                load = reader.cpu_load(arg)
            except (NotACgroup, CgroupNotFound) as exc:
                seen.add(type(exc))
                return
            seen.add(cgshim.CpuLoad)
            assert load.source in ("netlink", "scan", "bpf")
            assert load.path.startswith("/sys/fs/cgroup/")  # a cgroup directory, nowhere else
        check()
    assert NotACgroup in seen


@pytest.mark.kernel
@pytest.mark.parametrize("version", [1, 2])
def test_non_utf8_and_longest_names_are_real_cgroups(testbed, version):
    """A cgroup whose name is not UTF-8, and one with a 255-byte name, are read like any
    other (as str with surrogates and as bytes)."""
    parent = testbed.cgroup(version)
    odd = testbed.cgroup(version, parent=parent, name="\udcff\udcfe ) R (\udc80")
    longest = testbed.cgroup(version, parent=parent, name="L" * 255)
    w = testbed.spawn(busy=True, pipe=2, cgroups=(odd,))
    w2 = testbed.spawn(pipe=1, cgroups=(longest,))
    with cgshim.Reader() as reader:
        for arg in (odd, os.fsencode(odd)):
            load = reader.cpu_load(arg)
            assert {k: getattr(load, k) for k in COUNTS} == proc_counts(w)
            assert load.path == odd
        assert reader.cpu_load(longest).nr_sleeping == 2
        assert reader.cpu_load(parent, recursive=True).nr_sleeping == 4
        name = "/" + os.path.basename(parent) + "/" + os.path.basename(odd)
        assert reader.cpu_load(name).path == odd
    assert w2.proc.poll() is None


@pytest.mark.kernel
def test_probe_reports_why_netlink_is_unavailable():
    """`python -m cgshim` (the probe) under the same seccomp refusal: it still answers,
    names the errno on its TASKSTATS line and reads by scan."""
    require_root()
    need_seccomp()
    code = (_SECCOMP + "_deny_netlink_socket(1)\n"
            "import runpy, sys\nsys.argv = ['cgshim']\n"
            "runpy.run_module('cgshim', run_name='__main__')\n")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd="/", capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    family = [line for line in proc.stdout.splitlines() if line.startswith("TASKSTATS family")]
    assert family and "EPERM" in family[0], proc.stdout
    assert "backend scan" in proc.stdout and "backend netlink" not in proc.stdout
    assert "\n  netlink  unavailable " in proc.stdout and "EPERM" in proc.stdout
