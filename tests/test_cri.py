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
