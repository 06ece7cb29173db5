"""The exporter as a subprocess on a loopback port, scraped over real HTTP, reading real
testbed cgroups with threads in known states (cgshim/exporter.py)."""
import errno
import http.client
import math
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid

import pytest
from hypothesis import given, strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cgshim import k8s
from cgshim.app import exporter as exporter_mod
from tests.support import testbed as _testbed
from tests.support.unified_ns import v2_mountinfo_at
from cgshim.reader import Reader
from tests.support.backends import v2_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERVAL = 0.2
PRESSURE = [f"container_pressure_{r}_{k}_seconds_total"
            for r in ("cpu", "memory", "io") for k in ("waiting", "stalled")]
NOBODY = 65534

# Runs the exporter as an unprivileged user: everything is imported as root (the interpreter
# lives where nobody may not read), then uid/gid drop to nobody, which clears every
# capability -- what the DaemonSet promises works (runAsNonRoot, capabilities: drop ALL).
_AS_NOBODY = f"""
import os, sys
import encodings.idna  # socket's name lookups load it lazily
import cgshim.app.exporter, cgshim.reader, cgshim.kernel.netlink, cgshim.kernel.threadstat
import prometheus_client, prometheus_client.core  # the exporter imports it when it starts
os.setgroups([])
os.setgid({NOBODY})
os.setuid({NOBODY})
sys.exit(cgshim.app.exporter.main(sys.argv[1:]))
"""


class Exporter:
    """A running ``python -m cgshim.app.exporter`` subprocess on 127.0.0.1 and a free port."""

    def __init__(self, roots, *, as_nobody=False):
        argv = ["--listen", "127.0.0.1:0", "--interval", str(INTERVAL)]
        for root in roots:
            argv += ["--root", root]
        if as_nobody:
            cmd = [sys.executable, "-c", _AS_NOBODY, *argv]
        else:
            cmd = [sys.executable, "-m", "cgshim.app.exporter", *argv]
        env = dict(os.environ, PYTHONPATH=REPO, PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.pid = self.proc.pid
        self.port = None
        try:
            self.port = self._read_port(timeout=30)
        except BaseException:
            self.close()
            raise

    def _read_port(self, timeout):
        buf = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stderr, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise AssertionError(f"exporter did not start within {timeout} s: {buf!r}")
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                if not chunk:
                    raise AssertionError(f"exporter exited ({self.proc.wait(5)}): {buf!r}")
                buf += chunk
        line = buf.split(b"\n")[0].decode()
        assert "serving http://127.0.0.1:" in line, line
        return int(line.split("http://127.0.0.1:")[1].split("/")[0])

    def close(self):
        """SIGTERM, bounded wait, SIGKILL if it did not stop; return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc.stderr.close()
        return self.proc.returncode

    def request(self, path, method="GET"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def scrape(self):
        """One scrape of /metrics (must answer 200): {sample name: [(labels, value)]}."""
        status, body = self.request("/metrics")
        assert status == 200, (status, body[:300])
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                out.setdefault(s.name, []).append((s.labels, s.value))
        return out

    def wait_for(self, predicate, what, timeout=20.0):
        """Scrape every interval until ``predicate(samples)`` is truthy; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            samples = self.scrape()
            result = predicate(samples)
            if result:
                return samples
            if time.monotonic() > deadline:
                raise AssertionError(f"not seen within {timeout} s: {what}")
            time.sleep(INTERVAL / 2)

    def fds(self):
        """Targets of the exporter's open fds."""
        out = []
        for name in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                out.append(os.readlink(f"/proc/{self.pid}/fd/{name}"))
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
        return out


@pytest.fixture
def start_exporter():
    started = []

    def start(roots, **kw):
        exp = Exporter(roots, **kw)
        started.append(exp)
        return exp

    yield start
    for exp in started:
        exp.close()


def cg_id(path, mount):
    return "/" + os.path.relpath(path, mount)


def series(samples, name, cgroup_id, **labels):
    """Values of ``name`` for that id (and labels), as {state or '': value}."""
    return [v for lab, v in samples.get(name, []) if lab.get("id") == cgroup_id
            and all(lab.get(k) == x for k, x in labels.items())]


def states(samples, cgroup_id):
    return {lab["state"]: v for lab, v in samples.get("container_tasks_state", [])
            if lab["id"] == cgroup_id}


def has_full_line(path):
    with open(path) as f:
        return any(line.startswith("full ") for line in f)


def milli_loads(interval, running, n):
    """cAdvisor's figures for a cgroup whose first sample had 0 running and every later one
    ``running``: the set of int32(avg*1000) after 1..n such samples (load.py's formula)."""
    decay = math.exp(-interval / 10.0)
    avg, out = 0.0, set()
    for _ in range(n):
        avg = avg * decay + running * (1.0 - decay)
        out.add(math.trunc(avg * 1000.0))
    return out


def _check_known_cgroups(exp, bed, a, b, c1, c2, *, busy=True, v2_backend=None):
    v1, v2 = bed.root(1), bed.root(2)
    ida, idb, idc = cg_id(a, v2), cg_id(b, v1), cg_id(c1, v1)
    s = exp.wait_for(lambda s: all(states(s, i) for i in (ida, idb, idc)),
                     "container_tasks_state of the three test cgroups")

    # v2 cgroup A: counted by the /proc scan: every S thread, and no iowaiting (unknowable).
    assert states(s, ida) == {"sleeping": 3, "running": 0, "stopped": 0, "uninterruptible": 0}
    # v1 cgroup B: the kernel's CGROUPSTATS counts (pipe sleeps count), iowaiting included.
    assert states(s, idb) == {"sleeping": 2, "running": 0, "stopped": 2, "uninterruptible": 0,
                              "iowaiting": 0}
    assert states(s, idc) == {"sleeping": 2, "running": 0, "stopped": 0, "uninterruptible": 0,
                              "iowaiting": 0}
    for i in (ida, idb, idc):
        assert series(s, "container_cpu_load_average_10s", i) == [0]
        assert series(s, "container_cpu_load_d_average_10s", i) == [0]
        # Not pod cgroups: the k8s labels are there, empty.
        (lab, _), = [x for x in s["container_cpu_load_average_10s"] if x[0]["id"] == i]
        assert (lab["pod_uid"], lab["container_id"], lab["qos"]) == ("", "", "")
    assert series(s, "cgshim_load_source", ida, source=v2_backend or v2_source()) == [1]
    assert series(s, "cgshim_load_source", idb, source="netlink") == [1]
    assert series(s, "cgshim_load_source", idc, source="netlink") == [1]
    assert series(s, "cgshim_load_source", ida, source=v2_backend or v2_source(), implementation="native") == [1]
    assert series(s, "cgshim_load_source", idb, implementation="native") == [1]
    assert len([x for x in s["cgshim_load_source"] if x[0]["id"] in (ida, idb, idc)]) == 3

    # PSI: present for the cgroup2 cgroup and for the v1 cgroup with a twin (C2), with a
    # stalled series exactly where the file has a "full" line; nothing for B (no twin).
    for name in PRESSURE:
        assert series(s, name, idb) == [], name
    for cgroup_id, v2_dir in ((ida, a), (idc, c2)):
        for res in ("cpu", "memory", "io"):
            waiting = series(s, f"container_pressure_{res}_waiting_seconds_total", cgroup_id)
            stalled = series(s, f"container_pressure_{res}_stalled_seconds_total", cgroup_id)
            assert len(waiting) == 1 and waiting[0] >= 0, (res, waiting)
            full = has_full_line(os.path.join(v2_dir, f"{res}.pressure"))
            assert len(stalled) == (1 if full else 0), (res, stalled)
            if full:
                assert 0 <= stalled[0] <= waiting[0]

    if not busy:
        return
    # One busy thread into A and into B: running goes to 1 and the load average climbs from
    # 0 towards 1000 by cAdvisor's recurrence, one step per sample.
    bed.spawn(busy=True, cgroups=[a])
    bed.spawn(busy=True, cgroups=[b])
    seen = {ida: [], idb: []}

    def climbed(s):
        for i in seen:
            assert states(s, i)["running"] in (0, 1)
            seen[i] += series(s, "container_cpu_load_average_10s", i)
        return all(v and v[-1] >= 150 for v in seen.values())

    exp.wait_for(climbed, "load average of A and B >= 150 milli-load", timeout=30)
    allowed = milli_loads(INTERVAL, 1, 2000) | {0}
    for i, values in seen.items():
        assert values == sorted(values), (i, values)  # never falls while the thread spins
        assert set(values) <= allowed, (i, sorted(set(values) - allowed))
        assert values[-1] < 1000
    s = exp.scrape()
    assert states(s, ida)["running"] == 1 and states(s, idb)["running"] == 1
    assert series(s, "container_cpu_load_d_average_10s", ida) == [0]


def _known_cgroups(bed):
    """A (v2), B (v1, no twin) and C (v1 C1 with a cgroup2 twin C2 of the same name)."""
    a = bed.cgroup(2)
    b = bed.cgroup(1)
    twin = f"{bed.prefix}twin-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    c1, c2 = bed.cgroup(1, name=twin), bed.cgroup(2, name=twin)
    bed.spawn(pipe=2, cgroups=[a])            # A: 3 threads in S (main + 2 pipe readers)
    bed.spawn(pipe=1, cgroups=[b])            # B: 2 in S ...
    bed.spawn(pipe=1, cgroups=[b]).stop()     # ... and 2 in T
    bed.spawn(pipe=1, cgroups=[c1, c2])       # C: 2 in S, in both hierarchies
    return a, b, c1, c2


@pytest.mark.kernel
def test_scrape_shows_known_threads_load_and_pressure(testbed, start_exporter):
    a, b, c1, c2 = _known_cgroups(testbed)
    exp = start_exporter([a, b, c1])
    _check_known_cgroups(exp, testbed, a, b, c1, c2)
    assert exp.close() == 0  # SIGTERM: clean stop, exit status 0


@pytest.mark.kernel
def test_runs_unprivileged(testbed, start_exporter):
    """As uid nobody without any capability (the DaemonSet's securityContext) the exporter
    reads the same figures: v1 counts over netlink, v2 counts from /proc, PSI."""
    a, b, c1, c2 = _known_cgroups(testbed)
    exp = start_exporter([a, b, c1], as_nobody=True)
    exp.wait_for(lambda s: "cgshim_cgroups" in s, "a first scrape")
    with open(f"/proc/{exp.pid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    assert status["Uid"].split()[:2] == [str(NOBODY)] * 2
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    # no pin and no CAP_BPF: v2 from /proc (the bpf-pin patch of the DaemonSet changes that)
    _check_known_cgroups(exp, testbed, a, b, c1, c2, busy=False, v2_backend="scan")


@pytest.mark.kernel
def test_churn_keeps_answering_and_drops_removed_cgroups(testbed, start_exporter):
    p2, p1 = testbed.cgroup(2), testbed.cgroup(1)
    exp = start_exporter([p2, p1])
    v1, v2 = testbed.root(1), testbed.root(2)
    exp.wait_for(lambda s: states(s, cg_id(p2, v2)) and states(s, cg_id(p1, v1)), "the parents")
    time.sleep(3 * INTERVAL)
    baseline = exp.fds()
    workers = 0
    removed = []
    for round_ in range(6):
        with _testbed.Testbed(v1_root=p1, v2_root=p2) as inner:
            c2, c1 = inner.cgroup(2), inner.cgroup(1)
            g2 = inner.cgroup(2, parent=c2)
            if round_ % 2 == 0:
                inner.spawn(pipe=1, cgroups=[c1, g2])
                workers += 1
            ids = [cg_id(c2, v2), cg_id(g2, v2), cg_id(c1, v1)]
            want = 2 if round_ % 2 == 0 else 0
            # a tick between the cgroups' creation and the worker's move shows them empty:
            # wait for the reading after the move
            s = exp.wait_for(lambda s: all(states(s, i) for i in ids)
                             and states(s, ids[1])["sleeping"] == want
                             and states(s, ids[2])["sleeping"] == want, f"round {round_}: {ids}")
            removed += [c2, g2, c1]
        # Removed (with the worker killed): every series of those ids goes within a few ticks.
        exp.wait_for(lambda s: not any(lab.get("id") in ids for v in s.values() for lab, _ in v),
                     f"round {round_}: series of {ids} gone", timeout=10 * INTERVAL + 5)
    s = exp.scrape()
    assert states(s, cg_id(p2, v2)) and states(s, cg_id(p1, v1))
    assert s["cgshim_cgroups"] == [({}, 2)]
    # No fd is left on a removed cgroup; the rest is bounded: at most the stat files of the
    # workers' two threads that the scanner may still cache, plus HTTP connections closing.
    time.sleep(3 * INTERVAL)
    after = exp.fds()
    names = [os.path.basename(p) for p in removed]
    assert not [t for t in after if any(n in t for n in names)], after
    assert len(after) <= len(baseline) + 2 * workers + 4, (baseline, after)


@pytest.mark.kernel
def test_concurrent_scrapes_while_cgroups_churn(testbed, start_exporter):
    """Four clients scrape in a loop while cgroups with workers come and go: every scrape
    answers 200 with a parsable body, removed cgroups' series disappear, fds stay bounded."""
    import threading

    p2 = testbed.cgroup(2)
    exp = start_exporter([p2])
    v2 = testbed.root(2)
    exp.wait_for(lambda s: states(s, cg_id(p2, v2)), "the parent")
    time.sleep(3 * INTERVAL)
    baseline = exp.fds()
    stop = threading.Event()
    results = {"ok": 0, "bad": []}
    lock = threading.Lock()

    def client():
        deadline = time.monotonic() + 60  # bounded even if the main thread dies
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                exp.scrape()
                with lock:
                    results["ok"] += 1
            except Exception as exc:  # noqa: BLE001 -- reported below
                with lock:
                    results["bad"].append(repr(exc))

    clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for t in clients:
        t.start()
    removed = []
    try:
        for round_ in range(5):
            with _testbed.Testbed(v2_root=p2) as inner:
                kids = [inner.cgroup(2) for _ in range(3)]
                inner.spawn(pipe=1, cgroups=[kids[0]])
                ids = [cg_id(k, v2) for k in kids]
                # a tick between the cgroups' creation and the worker's move shows them
                # empty: wait for the reading after the move
                s = exp.wait_for(lambda s: all(states(s, i) for i in ids)
                                 and states(s, ids[0])["sleeping"] == 2, f"round {round_}")
                removed += kids
            exp.wait_for(lambda s: not any(lab.get("id") in ids for v in s.values() for lab, _ in v),
                         f"round {round_}: series gone", timeout=10 * INTERVAL + 5)
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=15)
    assert not any(t.is_alive() for t in clients)
    assert results["bad"] == [] and results["ok"] >= 20, results
    time.sleep(3 * INTERVAL)
    after = exp.fds()
    names = [os.path.basename(p) for p in removed]
    assert not [t for t in after if any(n in t for n in names)], after
    assert len(after) <= len(baseline) + 2 * 5 + 4, (baseline, after)


@pytest.mark.kernel
def test_no_request_reaches_the_filesystem(testbed, start_exporter):
    a = testbed.cgroup(2)
    testbed.spawn(pipe=1, cgroups=[a])
    exp = start_exporter([a])
    ida = cg_id(a, testbed.root(2))
    exp.wait_for(lambda s: states(s, ida), "the test cgroup")
    with open("/etc/passwd", "rb") as f:
        passwd_line = f.readline().strip()
    assert passwd_line
    for path in ("/../../etc/passwd", "/metrics/../../../etc/passwd", "//etc/passwd",
                 "/etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/favicon.ico", "/metrics/x"):
        status, body = exp.request(path)
        assert status == 404, (path, status)
        assert passwd_line not in body
    for path in ("/metrics?root=/etc", "/metrics?path=/etc/passwd&name[]=process_open_fds",
                 "/metrics?name[]=container_tasks_state"):
        status, body = exp.request(path)
        assert status == 200, (path, status)
        assert passwd_line not in body
        # query strings are ignored: the full output, for the configured cgroup only
        ids = {s.labels.get("id") for fam in text_string_to_metric_families(body.decode())
               for s in fam.samples} - {None}
        assert ids == {ida}, (path, ids)
        assert b"container_cpu_load_average_10s{" in body
    assert exp.request("/healthz") == (200, b"ok\n")
    assert exp.request("/metrics", method="POST")[0] == 405


# --- pure parts -----------------------------------------------------------------------------


@given(st.sampled_from(["127.0.0.1", "0.0.0.0", "localhost", "[::1]", "[::]", "node-a.example"]),
       st.integers(0, 65535))
def test_parse_listen(host, port):
    want = host[1:-1] if host.startswith("[") else host
    assert exporter_mod.parse_listen(f"{host}:{port}") == (want, port)


@pytest.mark.parametrize("bad", ["", "9560", ":9560", "127.0.0.1", "127.0.0.1:", "h:65536",
                                 "h:-1", "h:95 60", "h:0x10"])
def test_parse_listen_rejects(bad):
    with pytest.raises(ValueError, match="HOST:PORT"):
        exporter_mod.parse_listen(bad)


_component = st.text(st.characters(whitelist_categories=("Ll", "Nd"), whitelist_characters="-_."),
                     min_size=1, max_size=12).filter(lambda c: c not in (".", ".."))


@given(st.integers(0, 5), st.lists(_component, max_size=5))
def test_cadvisor_id_strips_namespace_ascent(ups, parts):
    """A name under a mount seen from a cgroup namespace ("/../../x") is the host's "/x"."""
    name = "/" + "/".join([".."] * ups + parts)
    assert exporter_mod._cadvisor_id(name) == "/" + "/".join(parts)


# --- labels of pod and container cgroups, in process ------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize("root", ["/", "/../.."])
def test_k8s_labels_of_pod_and_container_cgroups(testbed, tmp_path, root):
    top = testbed.cgroup(2)
    uid, cid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "ab" * 32
    name = k8s.container_cgroup(uid, "burstable", cid, driver="systemd")
    assert name.startswith("/")  # kubelet's and cAdvisor's form
    parent = top
    for part in name.strip("/").split("/"):
        parent = testbed.cgroup(2, parent=parent, name=part)
    testbed.spawn(pipe=1, cgroups=[parent])
    reader = Reader(mountinfo=v2_mountinfo_at(tmp_path / "mountinfo", top, root))
    exp = exporter_mod.Exporter([top], 1.0, reader=reader)
    try:
        exp.sample_once()
        text = generate_latest(exp.registry).decode()
    finally:
        exp.stop()
        reader.close()
    labels = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "container_cpu_load_average_10s":
            labels = {s.labels["id"]: s.labels for s in fam.samples}
    pod_id = name.rsplit("/", 1)[0]
    # Without a runtime endpoint kubelet's five names are there, empty (path-only labels).
    kube = {"container": "", "image": "", "name": "", "namespace": "", "pod": ""}
    assert labels[name] == {"id": name, "pod_uid": uid, "container_id": cid,
                            "qos": "burstable", **kube}
    assert labels[pod_id] == {"id": pod_id, "pod_uid": uid, "container_id": "", "qos": "burstable",
                              **kube}
    assert labels["/kubepods.slice"] == {"id": "/kubepods.slice", "pod_uid": "",
                                         "container_id": "", "qos": "", **kube}
    assert "/" in labels and len(labels) == 5  # the root and its four levels
    assert 'container_tasks_state{container="",container_id="%s",id="%s",image="",name="",' \
           'namespace="",pod="",pod_uid="%s",qos="burstable",state="sleeping"} 2.0' \
           % (cid, name, uid) in text


@pytest.mark.kernel
def test_exact_load_series(testbed, start_exporter):
    """A v2 cgroup with one always-busy thread: cgshim_container_cpu_runnable_seconds_total
    grows by about the time between two scrapes' samples (it is runnable all the time),
    runqueue_seconds_total never more than that, load1/5/15 are served, all with the label
    set of container_cpu_load_average_10s; a v1 cgroup read by netlink has none of them."""
    v2 = testbed.cgroup(2)
    w = testbed.spawn(busy=True, cgroups=(v2,))
    v1 = testbed.cgroup(1)
    testbed.spawn(pipe=1, cgroups=(v1,))
    exp = start_exporter([v2, v1])
    i2, i1 = cg_id(v2, testbed.root(2)), cg_id(v1, testbed.root(1))
    name = "cgshim_container_cpu_runnable_seconds_total"
    first = exp.wait_for(lambda s: series(s, name, i2), "the exact-load series")
    t_first = time.monotonic()
    # load1 starts at 0, as the kernel's at boot, and takes its first 5 s step (LOAD_FREQ)
    second = exp.wait_for(lambda s: (series(s, "cgshim_container_load1", i2) or [0])[0] > 0,
                          "load1 above 0 after its first step", timeout=30)
    elapsed = time.monotonic() - t_first
    gained = series(second, name, i2)[0] - series(first, name, i2)[0]
    # one thread runnable all the time; the samples lag the scrapes by up to an interval
    assert 0.8 * elapsed - 2 * INTERVAL <= gained <= elapsed + 2 * INTERVAL, (gained, elapsed)
    waited = (series(second, "cgshim_container_cpu_runqueue_seconds_total", i2)[0]
              - series(first, "cgshim_container_cpu_runqueue_seconds_total", i2)[0])
    assert 0 <= waited <= gained
    labels = {tuple(sorted(lab.items())) for lab, _ in second["container_cpu_load_average_10s"]
              if lab["id"] == i2}
    for family in (name, "cgshim_container_cpu_runqueue_seconds_total", "cgshim_container_load1",
                   "cgshim_container_load5", "cgshim_container_load15"):
        got = {tuple(sorted(lab.items())) for lab, _ in second[family] if lab["id"] == i2}
        assert got == labels, family
        assert not series(second, family, i1), family  # netlink: no thread clocks
    assert 0 < series(second, "cgshim_container_load1", i2)[0] <= 2
    assert w.tids
