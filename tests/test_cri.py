"""cgshim.cri against a real containerd (tests/support/containerd.py) driven as kubelet drives
it, and against sockets that do not answer; the endpoint and proto handling on their own."""
import os
import socket
import threading
import time

import pytest

from cgshim import cri
from cgshim.errors import RuntimeUnavailable
from tests.support.require import require_kernel, require_root

grpc = pytest.importorskip("grpc", reason="needs the k8s extra: pip install 'cgshim[k8s]'")
pytest.importorskip("grpc_tools", reason="needs the k8s extra: pip install 'cgshim[k8s]'")

from tests.support import containerd as ctrd  # noqa: E402

NS = "cgshim-test-cri"


# ------------------------------------------------------------------------ no runtime needed


@pytest.mark.parametrize("given, target", [
    ("unix:///run/containerd/containerd.sock", "unix:///run/containerd/containerd.sock"),
    ("/var/run/crio/crio.sock", "unix:///var/run/crio/crio.sock"),
])
def test_endpoint_forms(given, target):
    assert cri.parse_endpoint(given) == target


@pytest.mark.parametrize("bad", ["", "tcp://127.0.0.1:1234", "unix://relative.sock",
                                 "run/containerd.sock", "npipe:////./pipe/x", None])
def test_endpoint_rejects_what_is_not_a_unix_socket(bad):
    with pytest.raises(ValueError, match="unix:///"):
        cri.parse_endpoint(bad)


def test_read_only_calls_only():
    """The client's proto declares no call that changes anything, and the client refuses a
    name outside its read-only list before anything reaches the socket."""
    with open(os.path.join(cri._PROTO_DIR, "cri.proto")) as f:
        rpcs = [line.split()[1].split("(")[0] for line in f if line.strip().startswith("rpc ")]
    assert sorted(rpcs) == sorted(cri.READ_ONLY_CALLS)
    assert not any(w in r for r in rpcs for w in ("Run", "Create", "Start", "Stop", "Remove",
                                                  "Exec", "Attach", "Update", "Port"))
    client = cri.RuntimeClient("unix:///nonexistent/cgshim-test.sock", timeout=1)
    with pytest.raises(ValueError, match="read-only"):
        client.call("RemovePodSandbox", pod_sandbox_id="x")
    client.close()


def test_messages_carry_the_specification_field_numbers():
    """A few fields whose numbers are easy to get wrong, as k8s.io/cri-api's api.proto has them."""
    m = cri.messages()
    fields = lambda name: {f.name: f.number for f in m[name].DESCRIPTOR.fields}  # noqa: E731
    assert fields("Container") == {"id": 1, "pod_sandbox_id": 2, "metadata": 3, "image": 4,
                                   "image_ref": 5, "state": 6, "created_at": 7, "labels": 8,
                                   "annotations": 9, "image_id": 10}
    assert fields("PodSandboxMetadata") == {"name": 1, "uid": 2, "namespace": 3, "attempt": 4}
    assert fields("ImageSpec")["user_specified_image"] == 18
    assert fields("ContainerStatus")["image"] == 8
    assert fields("ContainerStatus")["labels"] == 12
    assert fields("PodSandboxStatusResponse") == {"info": 2}


def test_absent_runtime_is_a_typed_error(tmp_path):
    client = cri.RuntimeClient(f"unix://{tmp_path}/none.sock", timeout=2)
    with pytest.raises(RuntimeUnavailable, match="UNAVAILABLE"):
        client.version()
    client.close()


@pytest.fixture
def silent_socket(tmp_path):
    """A unix socket that accepts connections and never says a word (a hung runtime)."""
    path = str(tmp_path / "hung.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield "unix://" + path
    stop.set()
    t.join()
    for conn in held:
        conn.close()
    srv.close()


def test_hung_runtime_costs_one_timeout(silent_socket):
    client = cri.RuntimeClient(silent_socket, timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(RuntimeUnavailable, match="DEADLINE_EXCEEDED|UNAVAILABLE"):
        client.list_containers()
    assert time.monotonic() - t0 < 30  # bounded (generous: a shared, busy machine)
    client.close()


def test_cache_lookups_never_wait_for_a_hung_runtime(silent_socket):
    """While the cache's thread is stuck in a call, lookups answer None at once and the
    status says why once the call times out."""
    cache = cri.IdentityCache(silent_socket, timeout=2, resync=60, min_refresh=0.1).start()
    try:
        for _ in range(100):
            assert cache.container("a" * 64) is None
            assert cache.pod("0" * 32) is None
        deadline = time.monotonic() + 60
        while cache.status().failures == 0:
            assert time.monotonic() < deadline, "the refresh never timed out"
            time.sleep(0.05)
        status = cache.status()
        assert not status.ok and "DEADLINE_EXCEEDED" in status.error
        assert "path-only labels" in cri.describe_status(status)
    finally:
        cache.stop()


# ---------------------------------------------------------------------- a real containerd


def _require_containerd():
    require_root()
    missing = ctrd.missing_binaries()
    require_kernel(not missing, f"needs Debian's containerd, runc and busybox-static "
                                f"(missing: {', '.join(missing)}; .ci/run installs them)")


@pytest.fixture(scope="module")
def runtime():
    """A private containerd and the kubelet cgroups of the pods made through it; both cleaned
    up after the module, also when a test fails."""
    _require_containerd()
    base = ctrd.make_base()
    daemon = ctrd.Containerd(base)
    cgroups = ctrd.KubeCgroups()
    try:
        daemon.start()
        yield daemon, cgroups
    finally:
        try:
            daemon.close()
        finally:
            left = cgroups.cleanup()
            ctrd.remove_base(base)
        assert not left, f"cgroups left behind: {left}"


# (qos class, cgroup parent template) as kubelet lays pods out with the cgroupfs driver
LAYOUTS = (("burstable", "/kubepods/burstable/pod{uid}"),
           ("besteffort", "/kubepods/besteffort/pod{uid}"),
           ("guaranteed", "/kubepods/pod{uid}"))

SPIN = ["sh", "-c", "while :; do :; done"]
# blocked opening a fifo: TASK_INTERRUPTIBLE, which CGROUPSTATS and /proc both count as sleeping
SLEEP = ["sh", "-c", "mkfifo /dev/cgshim-q && exec cat /dev/cgshim-q"]


def make_pod(daemon, cgroups, qos_template, name, containers):
    """RunPodSandbox + CreateContainer/StartContainer like kubelet; returns a dict."""
    uid = ctrd.new_uid()
    parent = qos_template.format(uid=uid)
    cgroups.note(parent)
    config = daemon.sandbox_config(name=name, namespace=NS, uid=uid, cgroup_parent=parent)
    sandbox = daemon.run_pod(config)
    ids = {cname: daemon.run_container(sandbox, config, name=cname, args=args)
           for cname, args in containers}
    return {"uid": uid, "name": name, "parent": parent, "sandbox": sandbox, "containers": ids}


def test_identity_of_pods_and_containers(runtime):
    daemon, cgroups = runtime
    pods = [make_pod(daemon, cgroups, template, f"ident-{qos}", [("work", SLEEP)])
            for qos, template in LAYOUTS]
    cache = cri.IdentityCache(daemon.endpoint, timeout=5)
    try:
        assert cache.refresh(), cache.status()
        status = cache.status()
        assert status.ok and status.runtime.startswith("containerd ")
        for pod in pods:
            (cid,) = pod["containers"].values()
            assert cache.container(cid) == cri.Identity(
                namespace=NS, pod=pod["name"], container="work", name=cid,
                image=daemon.images["busybox"], pod_uid=pod["uid"])
            # the sandbox (pause) cgroup: kubelet writes no container name for it
            assert cache.container(pod["sandbox"]) == cri.Identity(
                namespace=NS, pod=pod["name"], container="", name=pod["sandbox"],
                image=daemon.images["pause"], pod_uid=pod["uid"])
            assert cache.pod(pod["uid"]) == cri.Identity(namespace=NS, pod=pod["name"],
                                                         pod_uid=pod["uid"])
        gen = cache.generation
        daemon.remove_pod(pods[0]["sandbox"])
        assert cache.refresh()
        assert cache.generation != gen
        assert cache.container(pods[0]["sandbox"]) is None
        assert cache.container(next(iter(pods[0]["containers"].values()))) is None
        assert cache.pod(pods[0]["uid"]) is None
        assert cache.pod(pods[1]["uid"]) is not None
    finally:
        cache.stop()
        for pod in pods[1:]:
            daemon.remove_pod(pod["sandbox"])


# ------------------------------------------------------------- the exporter, as kubelet names


class Served:
    """``python -m cgshim serve --runtime-endpoint ...`` (tests/support/served.py) with a
    scrape parsed into samples and polling on it."""

    INTERVAL = 0.5

    def __init__(self, root, endpoint, resync=1.0):
        from tests.support.served import Served as ServedCli

        self.cli = ServedCli([root], "--runtime-endpoint", endpoint, "--runtime-resync",
                             str(resync), interval=self.INTERVAL)
        try:
            line = next(x for x in self.cli.lines() if "serving " in x)
            assert "read-only CRI calls" in line, line
        except BaseException:
            self.cli.close()
            raise
        self.port = self.cli.port

    def request(self, path):
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def scrape(self):
        """[(name, labels, value)] of one scrape."""
        from prometheus_client.parser import text_string_to_metric_families

        status, body = self.request("/metrics")
        assert status == 200, body[:300]
        return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(body)
                for s in fam.samples]

    def wait_for(self, predicate, what, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            samples = self.scrape()
            if predicate(samples):
                return samples
            assert time.monotonic() < deadline, f"not seen within {timeout} s: {what}"
            time.sleep(self.INTERVAL / 2)

    def close(self):
        return self.cli.close()


def query(samples, metric, **match):
    """A PromQL-style selector: samples of ``metric`` whose labels equal ``match``, where a
    label absent from a series counts as "" (as in PromQL)."""
    return [(labels, value) for name, labels, value in samples if name == metric
            and all(labels.get(k, "") == v for k, v in match.items())]


def _cgroup_root():
    from cgshim.kernel.mounts import hierarchy

    h = hierarchy()
    cpu = h.v1_mount("cpu")
    return cpu.mount_point if cpu is not None else h.v2.mount_point


def test_serve_labels_series_as_kubelet_does(runtime):
    """Pods in kubelet's three QoS layouts, run over CRI as kubelet runs them: every container,
    sandbox and pod cgroup carries kubelet's labels with the right task counts; a kubelet-style
    query by namespace/pod/container selects the right series; a removed pod's series go; with
    containerd stopped the series stay, path-only, and the names come back with it."""
    daemon, cgroups = runtime
    # pod names unique to this run: another run of this test may share the node's /kubepods
    tag = ctrd.new_uid()[:8]
    WEB, BATCH, DB = f"web-{tag}", f"batch-{tag}", f"db-{tag}"  # noqa: N806
    web = make_pod(daemon, cgroups, LAYOUTS[0][1], WEB, [("spin", SPIN), ("side", SLEEP)])
    batch = make_pod(daemon, cgroups, LAYOUTS[1][1], BATCH, [("a", SLEEP), ("b", SLEEP)])
    db = make_pod(daemon, cgroups, LAYOUTS[2][1], DB, [("db", SLEEP)])
    pods = {"burstable": web, "besteffort": batch, "guaranteed": db}
    root = os.path.join(_cgroup_root(), "kubepods")
    served = Served(root, daemon.endpoint)
    try:
        def cid_series(samples, pod, cname):
            cid = pod["containers"][cname]
            return query(samples, "container_tasks_state", id=f"{pod['parent']}/{cid}")

        def all_named(samples):
            for pod in pods.values():
                for cname in pod["containers"]:
                    got = cid_series(samples, pod, cname)
                    if not got or any(lab["container"] != cname for lab, _ in got):
                        return False
                got = query(samples, "container_tasks_state", id=f"{pod['parent']}/{pod['sandbox']}")
                if not got or any(lab["pod"] != pod["name"] for lab, _ in got):
                    return False
                got = query(samples, "container_tasks_state", id=pod["parent"])
                if not got or any(lab["pod"] != pod["name"] for lab, _ in got):
                    return False
            return True

        s = served.wait_for(all_named, "kubelet's labels on every container, sandbox and pod")
        for qos, pod in pods.items():
            uid = pod["uid"]
            for cname, cid in pod["containers"].items():
                for labels, _ in cid_series(s, pod, cname):
                    labels.pop("state")
                    assert labels == {"id": f"{pod['parent']}/{cid}", "container": cname,
                                      "image": daemon.images["busybox"], "name": cid,
                                      "namespace": NS, "pod": pod["name"], "pod_uid": uid,
                                      "container_id": cid, "qos": qos}
            sandbox = query(s, "container_tasks_state", id=f"{pod['parent']}/{pod['sandbox']}")
            for labels, _ in sandbox:
                labels.pop("state")
                assert labels == {"id": f"{pod['parent']}/{pod['sandbox']}", "container": "",
                                  "image": daemon.images["pause"], "name": pod["sandbox"],
                                  "namespace": NS, "pod": pod["name"], "pod_uid": uid,
                                  "container_id": pod["sandbox"], "qos": qos}
            for labels, _ in query(s, "container_tasks_state", id=pod["parent"]):
                labels.pop("state")
                assert labels == {"id": pod["parent"], "container": "", "image": "", "name": "",
                                  "namespace": NS, "pod": pod["name"], "pod_uid": uid,
                                  "container_id": "", "qos": qos}
        # The kubelet levels above the pods are no pod's: id only.
        for labels, _ in query(s, "container_tasks_state", id="/kubepods/burstable"):
            assert (labels["namespace"], labels["pod"], labels["pod_uid"]) == ("", "", "")

        # Task counts by kubelet-style queries: the spinner runs, sleepers and pause sleep,
        # and a pod cgroup has no tasks of its own.
        def state(samples, st, **match):
            got = query(samples, "container_tasks_state", namespace=NS, state=st, **match)
            assert len(got) == 1, (match, st, got)
            return got[0][1]

        s = served.wait_for(lambda s: query(s, "container_cpu_load_average_10s", namespace=NS,
                                            pod=WEB, container="spin")
                            and query(s, "container_cpu_load_average_10s", namespace=NS,
                                      pod=WEB, container="spin")[0][1] > 0,
                            "the spinner's load above 0")
        assert state(s, "running", pod=WEB, container="spin") == 1
        assert state(s, "sleeping", pod=WEB, container="spin") == 0
        for pod, cname in ((WEB, "side"), (BATCH, "a"), (BATCH, "b"), (DB, "db")):
            assert state(s, "sleeping", pod=pod, container=cname) == 1
            assert state(s, "running", pod=pod, container=cname) == 0
        for pod in pods.values():
            assert state(s, "sleeping", pod=pod["name"], container="",
                         name=pod["sandbox"]) == 1  # the pause container
            assert state(s, "running", pod=pod["name"], container="", name="") == 0  # pod level
        # {namespace=NS, container!=""}: exactly the five containers
        named = {(lab["pod"], lab["container"]) for name, lab, _ in s
                 if name == "container_cpu_load_average_10s" and lab.get("namespace") == NS
                 and lab.get("pod") in (WEB, BATCH, DB) and lab.get("container")}
        assert named == {(WEB, "spin"), (WEB, "side"), (BATCH, "a"),
                         (BATCH, "b"), (DB, "db")}
        status, body = served.request("/healthz")
        assert status == 200 and "runtime containerd" in body, body
        assert query(s, "cgshim_runtime_up", endpoint=daemon.endpoint)[0][1] == 1

        # A pod removed as kubelet removes it: sandbox and containers over CRI, then the pod
        # cgroup. Every series of its uid goes.
        daemon.remove_pod(batch["sandbox"])
        assert not cgroups.remove_pod(batch["parent"])
        served.wait_for(lambda s: not [1 for _, lab, _ in s if lab.get("pod_uid") == batch["uid"]],
                        "the removed pod's series gone")

        # containerd stops: sampling goes on, the series stay with what the path says.
        daemon.stop_daemon()
        spin_id = f"{web['parent']}/{web['containers']['spin']}"

        def path_only(samples):
            got = query(samples, "container_tasks_state", id=spin_id, state="running")
            return got and got[0][0]["pod"] == "" and got[0][0]["pod_uid"] == web["uid"]

        s = served.wait_for(path_only, "path-only labels while containerd is down")
        (labels, value), = query(s, "container_tasks_state", id=spin_id, state="running")
        assert value == 1
        assert (labels["container_id"], labels["qos"], labels["namespace"], labels["name"]) == \
            (web["containers"]["spin"], "burstable", "", "")
        assert query(s, "cgshim_runtime_up", endpoint=daemon.endpoint)[0][1] == 0
        status, body = served.request("/healthz")
        assert status == 200 and "not answering" in body and "path-only" in body, body

        # containerd is back: the names come back.
        daemon.start_daemon()
        served.wait_for(lambda s: query(s, "container_tasks_state", id=spin_id, state="running",
                                        namespace=NS, pod=WEB, container="spin"),
                        "kubelet's labels again after containerd restarted")
    finally:
        assert served.close() == 0
        for pod in (web, db):
            daemon.remove_pod(pod["sandbox"])


def test_top_and_probe_name_pods_and_containers(runtime):
    """``top --runtime-endpoint`` shows namespace/pod/container instead of the path of a
    cgroup the runtime knows; the probe says who answers, or why not."""
    import json
    import subprocess
    import sys

    daemon, cgroups = runtime
    tag = ctrd.new_uid()[:8]
    pod = make_pod(daemon, cgroups, LAYOUTS[1][1], f"top-{tag}", [("app", SLEEP)])
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo)

    def cgshim(*args):
        return subprocess.run([sys.executable, "-m", "cgshim", *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=120)

    try:
        root = os.path.join(_cgroup_root(), "kubepods")
        res = cgshim("top", "--once", "--json", "--root", root,
                     "--runtime-endpoint", daemon.endpoint)
        assert res.returncode == 0, res.stderr
        rows = {os.path.relpath(r["path"], _cgroup_root()): r["name"]
                for r in json.loads(res.stdout)["cgroups"]}
        parent = pod["parent"].lstrip("/")
        assert rows[parent] == f"{NS}/top-{tag}"
        assert rows[f"{parent}/{pod['containers']['app']}"] == f"{NS}/top-{tag}/app"
        assert rows[f"{parent}/{pod['sandbox']}"] == f"{NS}/top-{tag} (sandbox)"
        assert rows["kubepods/besteffort"] == "/kubepods/besteffort"  # no pod's: the path

        res = cgshim("probe", "--json", "--runtime-endpoint", daemon.endpoint)
        rt = json.loads(res.stdout)["runtime"]
        assert rt["ok"] and rt["runtime"].startswith("containerd ") and rt["pods"] >= 1, rt
        res = cgshim("probe", "--runtime-endpoint", f"unix://{daemon.base}/absent.sock")
        assert "does not answer" in res.stdout and "path-only labels" in res.stdout, res.stdout
    finally:
        daemon.remove_pod(pod["sandbox"])


def test_exporter_samples_and_serves_while_the_runtime_hangs(silent_socket, testbed):
    """The runtime accepts and never answers, with a 120 s deadline per call: the exporter
    still becomes ready and serves every series, path-only, long before any call could have
    returned; runtime_up says 0 once a call fails; stop() does not wait for the deadline."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from cgshim.app.exporter import Exporter

    require_root()
    cg = testbed.cgroup(2)
    testbed.spawn(pipe=1, cgroups=[cg])
    exp = Exporter([cg], 0.2, runtime_endpoint=silent_socket, runtime_timeout=120,
                   runtime_resync=1)
    t0 = time.monotonic()
    exp.start()
    try:
        deadline = t0 + 60
        while not exp.ready():
            assert time.monotonic() < deadline, "the exporter never became ready"
            time.sleep(0.05)
        text = generate_latest(exp.registry).decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        tasks = [s for s in fams["container_tasks_state"].samples if s.labels["state"] == "sleeping"]
        assert any(s.value == 2 for s in tasks), tasks  # the worker's two sleeping threads
        assert all(s.labels["pod"] == "" and s.labels["namespace"] == "" for s in tasks)
        (up,) = fams["cgshim_runtime_up"].samples
        assert up.value == 0  # nothing answered yet
        assert "not answering" in exp.runtime_status()
        assert time.monotonic() - t0 < 120, "the test outlived the runtime call's deadline"
    finally:
        t1 = time.monotonic()
        exp.stop()
    assert time.monotonic() - t1 < 60  # closing the channel cancelled the hung call


@pytest.mark.parametrize("qos, template", LAYOUTS)
def test_systemd_driver_names_get_the_same_labels(runtime, qos, template):
    """No systemd here, so containerd runs the cgroupfs driver; the systemd driver's names for
    the same pod, container and sandbox (cgshim.k8s, the naming tests' layout) must get the
    same kubelet labels from the same runtime answers."""
    from cgshim import k8s
    from cgshim.app.exporter import _labels

    daemon, cgroups = runtime
    pod = make_pod(daemon, cgroups, template, f"sd-{qos}-{ctrd.new_uid()[:8]}", [("c", SLEEP)])
    cache = cri.IdentityCache(daemon.endpoint, timeout=5)
    try:
        assert cache.refresh(), cache.status()
        uid, (cid,) = pod["uid"], pod["containers"].values()
        for key in (cid, pod["sandbox"], None):
            if key is None:
                fs_name = "/" + k8s.pod_cgroup(uid, qos, driver="cgroupfs")
                sd_name = "/" + k8s.pod_cgroup(uid, qos, driver="systemd")
            else:
                fs_name = "/" + k8s.container_cgroup(uid, qos, key, driver="cgroupfs")
                sd_name = "/" + k8s.container_cgroup(uid, qos, key, driver="systemd")
            fs, sd = _labels(fs_name, cache), _labels(sd_name, cache)
            assert fs[0] == fs_name and sd[0] == sd_name
            assert fs[1:] == sd[1:]  # every label but id
            assert fs[4:6] == (NS, pod["name"])  # namespace, pod
    finally:
        cache.stop()
        daemon.remove_pod(pod["sandbox"])


def test_prometheus_answers_kubelet_style_queries(runtime, tmp_path):
    """Done-when of issue 13: a real Prometheus scraping ``serve --runtime-endpoint`` on a node
    with the fixture's pods answers queries written for kubelet's /metrics/cadvisor, by
    namespace, pod and container, with the right values."""
    import shutil

    from tests.support import prometheus as _prom
    from tests.support.served import Served as ServedCli

    require_kernel(_prom.available() and shutil.which("promtool"),
                   "needs Debian's prometheus package: apt-get install prometheus")
    daemon, cgroups = runtime
    tag = ctrd.new_uid()[:8]
    web = make_pod(daemon, cgroups, LAYOUTS[0][1], f"web-{tag}", [("spin", SPIN), ("side", SLEEP)])
    batch = make_pod(daemon, cgroups, LAYOUTS[2][1], f"batch-{tag}", [("a", SLEEP)])
    served = prom = None
    try:
        served = ServedCli([os.path.join(_cgroup_root(), "kubepods")], "--runtime-endpoint",
                           daemon.endpoint, interval=0.5)
        prom = _prom.Prometheus(tmp_path, [served.address], scrape_interval="1s")
        sel = f'namespace="{NS}",pod="{web["name"]}",container="spin"'
        got = prom.wait_for(lambda: prom.query(f'container_tasks_state{{{sel},state="running"}}'),
                            "the spinner's running count by namespace/pod/container")
        ((labels, value),) = got
        cid = web["containers"]["spin"]
        assert value == 1
        assert labels["id"] == f"{web['parent']}/{cid}" and labels["name"] == cid
        assert labels["image"] == daemon.images["busybox"]
        pods = f'{web["name"]}|{batch["name"]}'
        sleeping = prom.wait_for(lambda: dict(
            (lab["pod"], v) for lab, v in prom.query(
                f'sum by (pod) (container_tasks_state{{namespace="{NS}",pod=~"{pods}",'
                f'container!="",state="sleeping"}})')) or None, "sleeping by pod")
        assert sleeping == {web["name"]: 1, batch["name"]: 1}
        containers = {lab["container"]: v for lab, v in prom.query(
            f'count by (container) (container_cpu_load_average_10s{{namespace="{NS}",'
            f'pod="{web["name"]}",container!=""}})')}
        assert containers == {"spin": 1, "side": 1}
        prom.wait_for(lambda: prom.query(f"container_cpu_load_average_10s{{{sel}}} > 0"),
                      "the spinner's load average above 0")
    finally:
        if prom is not None:
            prom.close()
        if served is not None:
            assert served.close() == 0
        for pod in (web, batch):
            daemon.remove_pod(pod["sandbox"])
