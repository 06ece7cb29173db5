"""The benchmark cases: real cgroups and threads from tests.support.testbed, each case timed in one
interleaved group with its floor (benchmarks/floor.c) and its peer.

Every case checks, before it is timed, that cgshim answers from the backend the case is
about (netlink on v1, scan on v2) with the counts the test bed put there, so a silent
fallback can never be measured as the fast path.
"""
import dataclasses
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager

from cgshim.kernel import netlink
from cgshim.kernel import reference
from cgshim.reader import Reader, default_reader, get_cpu_load

# The scan and netlink cases measure those backends: the bpf pass, first in the default v2
# chain where it loads, has its own case (bpf_case.py).
NO_BPF = ("netlink", "scan", "psi")
from tests.support.testbed import Testbed

from .measure import paired_ratio, run_group, summary, timed, wall

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "cgshim-test-bench-"
MS = 1_000_000


@dataclasses.dataclass
class Row:
    section: str
    name: str
    size: str
    kind: str                  # "case", "floor", "peer" or "info"
    median_ns: float
    q1_ns: float
    q3_ns: float
    threads: int = 0           # > 0: show the cost per thread
    floor: str = ""            # the floor row this case is divided by
    x_floor: float = None      # case / floor (paired by round)
    peer: str = ""
    peer_slower: float = None  # peer / case (paired by round)

    @property
    def per_thread_ns(self):
        return self.median_ns / self.threads if self.threads else None


class Results:
    def __init__(self):
        self.rows = []
        self.groups = {}   # section -> name -> per-call ns per round
        self.notes = []
        self.resources = {}
        self.errors = []   # (case, message)

    def row(self, section, name):
        for r in self.rows:
            if r.section == section and r.name == name:
                return r
        return None

    def ratio(self, section, top, bottom):
        g = self.groups.get(section)
        if not g or top not in g or bottom not in g:
            return None
        return paired_ratio(g[top], g[bottom])


@dataclasses.dataclass
class Plan:
    quick: bool
    rounds: int
    target_ns: int
    sizes: tuple
    sweep: tuple   # (cgroups, threads per cgroup)
    calls: int     # for the fd count
    scrapes: int
    big: tuple = ()  # (cgroups, threads per cgroup) of the large-node sweep; () skips it

    @classmethod
    def make(cls, quick):
        if quick:
            return cls(True, 5, 3 * MS, (10, 1000), (20, 50), 10_000, 3)
        return cls(False, 15, 10 * MS, (10, 100, 1000, 5000), (200, 50), 100_000, 5, (200, 150))


class Context:
    def __init__(self, plan, floors, results, log):
        self.plan, self.floors, self.results, self.log = plan, floors, results, log
        self.procfd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._fds = []

    def open(self, path, flags=os.O_RDONLY):
        fd = os.open(path, flags | os.O_CLOEXEC)
        self._fds.append(fd)
        return fd

    def close_fds(self):
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def close(self):
        self.close_fds()
        os.close(self.procfd)

    def group(self, section, size, loops, spec, threads=0):
        """Time ``loops`` interleaved and add one row per ``spec`` entry:
        (name, kind, floor name or "", peer name or "")."""
        per_call = run_group(loops, self.plan.rounds, self.plan.target_ns)
        self.results.groups[section] = per_call
        for name, kind, floor, peer in spec:
            med, q1, q3 = summary(per_call[name])
            row = Row(section, name, size, kind, med, q1, q3, threads=threads)
            if floor:
                row.floor, row.x_floor = floor, paired_ratio(per_call[name], per_call[floor])
            if peer:
                row.peer, row.peer_slower = peer, paired_ratio(per_call[peer], per_call[name])
            self.results.rows.append(row)
        return per_call


@contextmanager
def testbed():
    """A Testbed that is closed also on Ctrl-C, with further Ctrl-C held off while closing."""
    bed = Testbed(PREFIX)
    try:
        yield bed
    finally:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            bed.close()
        finally:
            signal.signal(signal.SIGINT, old)


class CaseError(RuntimeError):
    """cgshim did not answer as the case requires (wrong backend or counts)."""


def _expect(load, source, **counts):
    if load.source != source:
        raise CaseError(f"{load.path}: read by {load.source!r}, the case needs {source!r} "
                        f"(reason: {load.reason})")
    wrong = {k: (getattr(load, k), v) for k, v in counts.items() if getattr(load, k) != v}
    if wrong:
        raise CaseError(f"{load.path}: counts (got, want) {wrong}")


def _sleepers(total):
    """Thread kinds for a worker of ``total`` threads (its main thread sleeps in a pipe read):
    a mix of the sleeps the test bed offers, spread evenly."""
    kinds = ("pipe", "futex", "poll", "nanosleep")
    extra = total - 1
    return {k: extra // 4 + (1 if i < extra % 4 else 0) for i, k in enumerate(kinds)}


def _spawn_threads(bed, total, cgroups, per_worker=1000):
    """Workers with ``total`` threads in all, at most ``per_worker`` each."""
    workers, left = [], total
    while left:
        n = min(left, per_worker)
        workers.append(bed.spawn(cgroups=cgroups, **_sleepers(n)))
        left -= n
    return workers


def naive_scan(cgroup):
    """What a script would do: list cgroup.threads, read /proc/<tid>/stat for each."""
    with open(os.path.join(cgroup, "cgroup.threads")) as f:
        tids = f.read().split()
    counts = {}
    for tid in tids:
        try:
            with open(f"/proc/{tid}/stat", "rb") as f:
                data = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        state = data[data.rindex(b")") + 2:][:1]
        counts[state] = counts.get(state, 0) + 1
    return counts


def _tids(cgroup):
    with open(os.path.join(cgroup, "cgroup.threads")) as f:
        return sorted({int(t) for t in f.read().split()})


def _stat_fds(ctx, tids):
    return [ctx.open(f"/proc/{t}/task/{t}/stat") for t in tids]


# -- case 1: v1 netlink on a small cgroup, and the family lookup ---------------------------

TWIN = "Reader.cpu_load, v1 with v2 twin (+psi)"

def case_v1(ctx):
    f = ctx.floors
    with testbed() as bed:
        cg = bed.cgroup(1)
        bed.spawn(cgroups=[cg], pipe=3, poll=2, futex=2)   # 8 tasks
        if os.path.isdir(os.path.join(bed.root(2), os.path.basename(cg))):
            raise CaseError(f"{cg} has a cgroup2 twin; the v1 case needs a v1-only cgroup")
        # the same kind of cgroup with a cgroup2 twin of the same name: cpu.pressure is read
        twin = bed.cgroup(1)
        bed.cgroup(2, name=os.path.basename(twin))
        bed.spawn(cgroups=[twin, os.path.join(bed.root(2), os.path.basename(twin))],
                  pipe=3, poll=2, futex=2)
        dirfd = ctx.open(cg, os.O_RDONLY | os.O_DIRECTORY)
        with Reader() as reader, Reader(pressure=False) as reader_np, \
                netlink.TaskstatsSocket() as sock, reference.TaskstatsSocket() as ref:
            # pipe and poll sleepers are counted; futex ones are not (kernel >= 6.1)
            _expect(get_cpu_load(cg), "netlink", nr_running=0, nr_stopped=0)
            _expect(reader.cpu_load(cg), "netlink", nr_running=0, nr_stopped=0)
            _expect(reader_np.cpu_load(cg), "netlink", nr_running=0, nr_stopped=0)
            if reader.cpu_load(cg).pressure is not None:
                raise CaseError(f"{cg}: a v1-only cgroup should have no pressure reading")
            if reader.cpu_load(twin).pressure is None:
                raise CaseError(f"{twin}: no pressure read from its cgroup2 twin")
            if sock.cgroupstats(dirfd) != ref.cgroupstats(dirfd):
                raise CaseError("native and pyroute2 CGROUPSTATS answers differ")
            sec = "1. v1 cpu_load, netlink"
            ctx.group(sec, "8", {
                "get_cpu_load(path)": timed(get_cpu_load, cg),
                "Reader.cpu_load(path)": timed(reader.cpu_load, cg),
                "Reader(pressure=False).cpu_load": timed(reader_np.cpu_load, cg),
                TWIN: timed(reader.cpu_load, twin),
                "TaskstatsSocket.cgroupstats(fd)": timed(sock.cgroupstats, dirfd),
                "floor: CGROUPSTATS, held dir fd": f.cgroupstats([dirfd]),
                "floor: CGROUPSTATS, open+close dir": f.cgroupstats_open(cg),
                "peer: reference (pyroute2) cgroupstats(fd)": timed(ref.cgroupstats, dirfd),
            }, [
                ("get_cpu_load(path)", "case", "floor: CGROUPSTATS, held dir fd",
                 "peer: reference (pyroute2) cgroupstats(fd)"),
                ("Reader.cpu_load(path)", "case", "floor: CGROUPSTATS, held dir fd",
                 "peer: reference (pyroute2) cgroupstats(fd)"),
                ("Reader(pressure=False).cpu_load", "case", "floor: CGROUPSTATS, held dir fd",
                 "peer: reference (pyroute2) cgroupstats(fd)"),
                (TWIN, "case", "", ""),  # no floor or peer reads cpu.pressure too
                ("TaskstatsSocket.cgroupstats(fd)", "case", "floor: CGROUPSTATS, held dir fd",
                 "peer: reference (pyroute2) cgroupstats(fd)"),
                ("floor: CGROUPSTATS, held dir fd", "floor", "", ""),
                ("floor: CGROUPSTATS, open+close dir", "floor", "", ""),
                ("peer: reference (pyroute2) cgroupstats(fd)", "peer", "", ""),
            ])
        ctx.close_fds()
    default_reader().close()  # it held the removed cgroup's fd

    def cgshim_family():
        with netlink.TaskstatsSocket() as s:
            return s.family_id

    def pyroute2_family():
        from pyroute2 import TaskStats
        ts = TaskStats()
        try:
            ts.bind()
        finally:
            ts.close()

    sec = "1b. new socket + family lookup"
    ctx.group(sec, "1", {
        "TaskstatsSocket() + family_id + close": timed(cgshim_family),
        "floor: socket+bind+lookup+close": f.family_fresh(),
        "floor: lookup on a held socket": f.family_lookup(),
        "peer: pyroute2 TaskStats()+bind()+close()": timed(pyroute2_family),
    }, [
        ("TaskstatsSocket() + family_id + close", "case", "floor: socket+bind+lookup+close",
         "peer: pyroute2 TaskStats()+bind()+close()"),
        ("floor: socket+bind+lookup+close", "floor", "", ""),
        ("floor: lookup on a held socket", "floor", "", ""),
        ("peer: pyroute2 TaskStats()+bind()+close()", "peer", "", ""),
    ])


# -- case 2: taskstats(pid) --------------------------------------------------------------

def case_taskstats(ctx):
    from pyroute2 import TaskStats

    with testbed() as bed:
        pid = bed.spawn(pipe=1).pid
        stats = netlink.taskstats(pid)
        if stats.ac_pid != pid:
            raise CaseError(f"taskstats({pid}) answered for pid {stats.ac_pid}")
        ts = TaskStats()
        try:
            ts.bind()
            reply = ts.get_pid_stat(pid)
            got = reply[0].get_attr("TASKSTATS_TYPE_AGGR_PID").get_attr("TASKSTATS_TYPE_PID")
            if got != pid:
                raise CaseError(f"pyroute2 get_pid_stat({pid}) answered for {got}")
            ctx.group("2. taskstats(pid)", "1", {
                "taskstats(pid)": timed(netlink.taskstats, pid),
                "floor: TASKSTATS": ctx.floors.taskstats(pid),
                "peer: pyroute2 TaskStats.get_pid_stat": timed(ts.get_pid_stat, pid),
            }, [
                ("taskstats(pid)", "case", "floor: TASKSTATS",
                 "peer: pyroute2 TaskStats.get_pid_stat"),
                ("floor: TASKSTATS", "floor", "", ""),
                ("peer: pyroute2 TaskStats.get_pid_stat", "peer", "", ""),
            ])
        finally:
            ts.close()


# -- case 3: v2 scan by thread count, with v1 netlink on the same threads ----------------

SCAN = "Reader.cpu_load v2 (scan)"
NETLINK = "Reader.cpu_load v1 (netlink)"
F_SCAN = "floor: scan (list+pread+psi)"
F_PREAD = "floor: pread held fds"
F_ORC = "floor: open+read+close"
F_CGS = "floor: CGROUPSTATS held fd"
NAIVE = "peer: naive Python /proc/<tid>/stat"


def case_scan(ctx):
    f = ctx.floors
    for size in ctx.plan.sizes:
        with testbed() as bed:
            v1, v2 = bed.cgroup(1), bed.cgroup(2)
            _spawn_threads(bed, size, [v1, v2])
            tids = _tids(v2)
            if len(tids) != size:
                raise CaseError(f"{v2}: {len(tids)} threads listed, {size} started")
            fds = _stat_fds(ctx, tids)
            psi_fd = ctx.open(os.path.join(v2, "cpu.pressure"))
            dirfd = ctx.open(v1, os.O_RDONLY | os.O_DIRECTORY)
            # runnable=False: the bare scan against its floors, as the sweep rows; what exact
            # load adds (a schedstat pread per thread) is the sweep + exact load row.
            with Reader(backends=NO_BPF, runnable=False) as reader:
                _expect(reader.cpu_load(v2), "scan", nr_running=0, nr_sleeping=size,
                        nr_uninterruptible=0, nr_stopped=0)
                _expect(reader.cpu_load(v1), "netlink", nr_running=0, nr_stopped=0)
                if sum(naive_scan(v2).values()) != size:
                    raise CaseError(f"{v2}: the naive scan did not see {size} threads")
                ctx.group(f"3. scan at {size} threads", str(size), {
                    SCAN: timed(reader.cpu_load, v2),
                    NETLINK: timed(reader.cpu_load, v1),
                    F_SCAN: f.scan([(os.path.join(v2, "cgroup.threads"), psi_fd, fds)]),
                    F_PREAD: f.pread(fds),
                    F_ORC: f.orc(ctx.procfd, tids),
                    F_CGS: f.cgroupstats([dirfd]),
                    NAIVE: timed(naive_scan, v2),
                }, [
                    (SCAN, "case", F_SCAN, NAIVE),
                    (NETLINK, "case", F_CGS, ""),
                    (F_SCAN, "floor", "", ""),
                    (F_PREAD, "floor", "", ""),
                    (F_ORC, "floor", "", ""),
                    (F_CGS, "floor", "", ""),
                    (NAIVE, "peer", "", ""),
                ], threads=size)
            ctx.close_fds()


# -- case 4 and 5: node sweep, resources ------------------------------------------------

SWEEP_V1 = "Reader.sweep v1 (netlink)"
SWEEP_V2 = "Reader.sweep v2 (scan), own process"
EXACT_V2 = "Reader.sweep v2 (scan) + exact load, own process"
LOOP_V1 = "cpu_load per cgroup v1, one Reader"
LOOP_V2 = "cpu_load per cgroup v2, one Reader"
F_SWEEP_V1 = "floor: CGROUPSTATS x cgroups"
F_SWEEP_V2 = "floor: scan x cgroups"
P_SWEEP_V1 = "peer: reference (pyroute2) x cgroups"
P_SWEEP_V2 = "peer: naive Python x cgroups"


class Served:
    """A loop run in a process of its own by ``python -m benchmarks.child serve`` (see
    there): called with n, it returns the nanoseconds of n runs, as every loop here."""

    def __init__(self, spec):
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.child", "serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=REPO)
        self.info = self._ask({**spec, "wall": wall()})
        if not self.info.get("ready"):
            raise CaseError(f"benchmarks.child serve: {self.info}")

    def _ask(self, msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise CaseError(f"benchmarks.child serve exited ({self.proc.wait()})")
        return json.loads(line)

    def __call__(self, n):
        return self._ask({"n": n})["ns"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def _sweep_bed(bed, ctx, ncg, per):
    top1, top2 = bed.cgroup(1), bed.cgroup(2)
    v1s, v2s = [], []
    t0 = time.monotonic()
    for _ in range(ncg):
        c1, c2 = bed.cgroup(1, parent=top1), bed.cgroup(2, parent=top2)
        bed.spawn(cgroups=[c1, c2], **_sleepers(per))
        v1s.append(c1)
        v2s.append(c2)
    ctx.log(f"  sweep test bed: {ncg} cgroups x {per} threads in {time.monotonic() - t0:.1f} s")
    return top1, top2, v1s, v2s


def _check_served(served, ncg, per, ctx):
    info = served.info
    if info["errors"] or info["sources"] != ["scan"] or info["sleeping"] != ncg * per:
        raise CaseError(f"the sweep process read {info}; the case needs {ncg * per} sleeping "
                        f"threads by scan")
    for w in info["warnings"]:
        ctx.results.notes.append(f"sweep {ncg}x{per}: {w}")
        ctx.log(f"  sweep warning: {w}")


def case_sweep(ctx):
    f = ctx.floors
    ncg, per = ctx.plan.sweep
    size = f"{ncg}x{per}"
    with testbed() as bed:
        top1, top2, v1s, v2s = _sweep_bed(bed, ctx, ncg, per)
        dirfds = [ctx.open(c, os.O_RDONLY | os.O_DIRECTORY) for c in v1s]
        scan_floor = []
        for c in v2s:
            scan_floor.append((os.path.join(c, "cgroup.threads"),
                               ctx.open(os.path.join(c, "cpu.pressure")),
                               _stat_fds(ctx, _tids(c))))
        served = Served({"kind": "sweep", "roots": [top2]})
        exact = None
        try:
            # the same sweep reading each thread's schedstat clocks too (issue 12)
            exact = Served({"kind": "sweep", "roots": [top2], "runnable": True})
            with Reader(backends=NO_BPF, runnable=False) as reader, reference.TaskstatsSocket() as ref:
                _check_served(served, ncg, per, ctx)
                _check_served(exact, ncg, per, ctx)
                if exact.info["runnable"] != ncg + 1:
                    raise CaseError(f"the exact-load sweep gave runnable_seconds for "
                                    f"{exact.info['runnable']} of {ncg + 1} cgroups")
                for c in v2s:
                    _expect(reader.cpu_load(c), "scan", nr_running=0, nr_sleeping=per)
                for c in v1s:
                    _expect(reader.cpu_load(c), "netlink", nr_running=0, nr_stopped=0)
                swept = reader.sweep([top1])
                if swept.errors or len(swept) != ncg + 1 or {r.source for r in swept.values()} != {"netlink"}:
                    raise CaseError(f"Reader.sweep v1: {swept!r} {dict(swept.errors)}")

                def sweep(paths):
                    for p in paths:
                        reader.cpu_load(p)

                def ref_sweep():
                    for fd in dirfds:
                        ref.cgroupstats(fd)

                def naive_sweep():
                    for c in v2s:
                        naive_scan(c)

                ctx.group(f"4. node sweep {size}", size, {
                    SWEEP_V1: timed(reader.sweep, [top1]),
                    SWEEP_V2: served,
                    EXACT_V2: exact,
                    LOOP_V1: timed(sweep, v1s),
                    LOOP_V2: timed(sweep, v2s),
                    F_SWEEP_V1: f.cgroupstats(dirfds),
                    F_SWEEP_V2: f.scan(scan_floor),
                    P_SWEEP_V1: timed(ref_sweep),
                    P_SWEEP_V2: timed(naive_sweep),
                }, [
                    (SWEEP_V1, "case", F_SWEEP_V1, P_SWEEP_V1),
                    (SWEEP_V2, "case", F_SWEEP_V2, P_SWEEP_V2),
                    (EXACT_V2, "case", SWEEP_V2, ""),
                    (LOOP_V1, "case", F_SWEEP_V1, ""),
                    (LOOP_V2, "case", F_SWEEP_V2, ""),
                    (F_SWEEP_V1, "floor", "", ""),
                    (F_SWEEP_V2, "floor", "", ""),
                    (P_SWEEP_V1, "peer", "", ""),
                    (P_SWEEP_V2, "peer", "", ""),
                ], threads=ncg * per)
        finally:
            served.close()
            if exact is not None:
                exact.close()
        ctx.close_fds()
        resources(ctx, v1s, v2s, top2)


F_BIG_V2 = "floor: scan x cgroups (two processes)"


def case_big_sweep(ctx):
    """The node sweep at 30,000 threads. Neither the sweep's fd cache nor the scan floor's
    held stat fds fit one process under a hard RLIMIT_NOFILE of 20,000 here, so the floor
    runs in two processes of half the cgroups each (the sum of per-cgroup floors, as
    always), and the sweep in one process of its own, whose Sweep.warnings then says how
    much of the node its cache holds."""
    if not ctx.plan.big:
        return
    f = ctx.floors
    ncg, per = ctx.plan.big
    size = f"{ncg}x{per}"
    with testbed() as bed:
        top1, top2, v1s, v2s = _sweep_bed(bed, ctx, ncg, per)
        dirfds = [ctx.open(c, os.O_RDONLY | os.O_DIRECTORY) for c in v1s]
        half = ncg // 2
        servers = []
        try:
            floors2 = [Served({"kind": "scan_floor", "cgroups": v2s[:half]}),
                       Served({"kind": "scan_floor", "cgroups": v2s[half:]})]
            servers += floors2
            served = Served({"kind": "sweep", "roots": [top2]})
            servers.append(served)
            _check_served(served, ncg, per, ctx)
            if sum(s.info["threads"] for s in floors2) != ncg * per:
                raise CaseError(f"the floor processes hold {[s.info for s in floors2]}")
            with Reader(backends=NO_BPF) as reader:
                swept = reader.sweep([top1])
                if swept.errors or {r.source for r in swept.values()} != {"netlink"}:
                    raise CaseError(f"Reader.sweep v1: {swept!r} {dict(swept.errors)}")
                ctx.group(f"5. node sweep {size}", size, {
                    SWEEP_V1: timed(reader.sweep, [top1]),
                    SWEEP_V2: served,
                    F_SWEEP_V1: f.cgroupstats(dirfds),
                    F_BIG_V2: lambda n: floors2[0](n) + floors2[1](n),
                }, [
                    (SWEEP_V1, "case", F_SWEEP_V1, ""),
                    (SWEEP_V2, "case", F_BIG_V2, ""),
                    (F_SWEEP_V1, "floor", "", ""),
                    (F_BIG_V2, "floor", "", ""),
                ], threads=ncg * per)
        finally:
            for s in servers:
                s.close()
        ctx.close_fds()


def _child(args, payload):
    """Run ``python -m benchmarks.child`` and return its JSON answer."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.child", *args],
                          input=json.dumps(payload), capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    if proc.returncode != 0:
        raise CaseError(f"benchmarks.child {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def resources(ctx, v1s, v2s, v2_top):
    res = ctx.results.resources
    calls = ctx.plan.calls
    ctx.log(f"  resources: child process, sweeps then {calls} calls")
    out = _child(["sweep"], {"paths": v1s + v2s, "calls": calls, "sweeps": 3})
    res["sweep"] = out
    res["exporter"] = exporter(ctx, v2_top)


def _status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def exporter(ctx, root):
    if importlib.util.find_spec("cgshim.app.exporter") is None:
        note = "cgshim.app.exporter does not exist in this tree: exporter RSS not measured"
        ctx.results.notes.append(note)
        ctx.log("  " + note)
        return {"skipped": note}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "cgshim.app.exporter", "--listen", f"127.0.0.1:{port}",
           "--interval", "0.5", "--root", root]
    errors = tempfile.TemporaryFile()  # a file, not a pipe: a chatty exporter never blocks
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=errors)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 15
        scraped, size = 0, 0
        while scraped < ctx.plan.scrapes:
            if proc.poll() is not None:
                errors.seek(0)
                raise CaseError(f"exporter exited with {proc.returncode}: "
                                f"{errors.read().decode(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    size = len(r.read())
                scraped += 1
                time.sleep(0.6)
            except OSError:
                if time.monotonic() > deadline:
                    raise CaseError(f"exporter did not answer on {url} within 15 s") from None
                time.sleep(0.1)
        return {"cmd": " ".join(cmd), "scrapes": scraped, "metrics_bytes": size,
                "vmhwm_kb": _status_kb(proc.pid, "VmHWM"), "vmrss_kb": _status_kb(proc.pid, "VmRSS")}
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        errors.close()


CASES = [("v1 netlink", case_v1), ("taskstats", case_taskstats), ("v2 scan", case_scan),
         ("sweep + resources", case_sweep), ("sweep at 30k threads", case_big_sweep)]


def case_bpf(ctx):
    from .bpf_case import case_bpf as run

    run(ctx)


CASES.append(("bpf", case_bpf))
