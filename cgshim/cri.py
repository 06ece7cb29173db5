"""Kubernetes identity of cgroups, read from the container runtime over CRI (runtime.v1).

The cgroup path says a pod's uid and a container's id (:mod:`cgshim.k8s`), never the pod's
name or namespace, the container's name or its image. The runtime knows them: it is what
kubelet itself asks, over the Container Runtime Interface that containerd and CRI-O serve on
a unix socket. This module speaks that API with grpcio, with the messages of
``cgshim/proto/cri.proto`` (a read-only subset of the CRI specification, compiled when first
needed, see :func:`messages`).

Only read-only calls exist here: ``Version``, ``ListPodSandbox``, ``ListContainers``,
``ContainerStatus`` and ``PodSandboxStatus``. The socket grants control of every container on
the node, but nothing in cgshim can create, stop, exec into or remove one through this client.

The labels kubelet writes (pkg/kubelet/server/server.go ``containerPrometheusLabelsFunc`` over
cAdvisor's ``ContainerInfo``, which google/cadvisor container/containerd/handler.go builds for
containerd), and where :class:`IdentityCache` finds the same values:

- ``id``: the cgroup name (the exporter's, from the path).
- ``name``: cAdvisor's ``Aliases[0]``, containerd's container id, for a container and for the
  sandbox (pause) container; "" for a pod cgroup. Here: the container or sandbox id.
- ``image``: ``Spec.Image``, the image name containerd keeps for the container (it resolves
  the image id kubelet sends to the name); "" for a pod cgroup. Here: ContainerStatus'
  ``image.image`` (the same name); for a sandbox, containerd's verbose PodSandboxStatus
  ``info`` (key ``image``), as CRI has no field for it.
- ``pod``, ``namespace``: the container's labels ``io.kubernetes.pod.name`` /
  ``io.kubernetes.pod.namespace`` (kubelet sets them on sandboxes and containers alike); for
  a pod cgroup kubelet's own pod (``GetPodByCgroupfs``). Here: the same labels; for a pod
  cgroup the sandbox's metadata, found by the pod uid in the path.
- ``container``: the label ``io.kubernetes.container.name``; "" for the sandbox and the pod
  cgroup. Here: the same label.

A cgroup the runtime does not know (no runtime endpoint, the runtime down, a container not yet
listed) gets "" for all but ``id``, which is what kubelet shows for a cgroup cAdvisor has no
runtime handler for.

:class:`IdentityCache` keeps the answers, keyed by container (and sandbox) id and by pod uid.
Lookups never call the runtime: a miss only wakes the cache's own thread, which refreshes
(at most once per ``min_refresh`` seconds) and also resyncs every ``resync`` seconds. Every
call has a deadline (``timeout``), so a hung runtime delays nothing but that thread.
"""
from __future__ import annotations

import functools
import json
import os
import threading
import time

import attrs

from cgshim.errors import CgshimError, RuntimeUnavailable, Unsupported

__all__ = ["Identity", "RuntimeClient", "IdentityCache", "CacheStatus", "messages",
           "parse_endpoint", "POD_NAME", "POD_NAMESPACE", "POD_UID", "CONTAINER_NAME"]

# kubelet's labels on every sandbox and container it creates (k8s.io/kubelet pkg/types/labels.go).
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"

_PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "proto")
_SERVICE = "/runtime.v1.RuntimeService/"
# The calls this module makes, with their request and response messages. Read-only, all of them.
READ_ONLY_CALLS = {
    "Version": ("VersionRequest", "VersionResponse"),
    "ListPodSandbox": ("ListPodSandboxRequest", "ListPodSandboxResponse"),
    "ListContainers": ("ListContainersRequest", "ListContainersResponse"),
    "ContainerStatus": ("ContainerStatusRequest", "ContainerStatusResponse"),
    "PodSandboxStatus": ("PodSandboxStatusRequest", "PodSandboxStatusResponse"),
}
_K8S_EXTRA = "pip install 'cgshim[k8s]'"
_MISS_TRIES = 6  # refreshes for an id that is asked for and not listed (1+2+...+32 s)


def _need(module):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise Unsupported(f"talking to the container runtime needs {module.split('.')[0]} "
                          f"({exc}); install the extra: {_K8S_EXTRA}") from None


@functools.lru_cache(maxsize=None)
def messages(proto="cri.proto", include=(_PROTO_DIR,)):
    """Message classes of ``proto`` (found in the ``include`` directories), by short name.

    Compiled at first use with grpcio-tools' protoc into a descriptor set (in memory: a
    memfd), loaded into a private descriptor pool: no generated module is written anywhere
    or imported, and the global pool is untouched. Unsupported when
    grpcio-tools or protobuf is missing.
    """
    protoc = _need("grpc_tools.protoc")
    descriptor_pb2 = _need("google.protobuf.descriptor_pb2")
    descriptor_pool = _need("google.protobuf.descriptor_pool")
    message_factory = _need("google.protobuf.message_factory")
    import importlib.resources

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    # The descriptor set goes to a memfd, not a file: the exporter's pod has a read-only
    # root filesystem and no writable /tmp.
    fd = os.memfd_create("cgshim-cri-proto", os.MFD_CLOEXEC)
    try:
        args = ["protoc", f"-I{well_known}", *(f"-I{d}" for d in include),
                f"--descriptor_set_out=/proc/self/fd/{fd}", "--include_imports", proto]
        if protoc.main(args) != 0:
            raise CgshimError(f"protoc could not compile {proto} from {', '.join(include)} "
                              "(see the messages above)")
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    pool = descriptor_pool.DescriptorPool()
    for file_proto in fds.file:
        pool.Add(file_proto)
    classes = {}
    for file_proto in fds.file:
        package = file_proto.package
        for msg in file_proto.message_type:
            full = f"{package}.{msg.name}" if package else msg.name
            classes[msg.name] = message_factory.GetMessageClass(pool.FindMessageTypeByName(full))
    return classes


def parse_endpoint(endpoint):
    """``unix:///path/to/sock`` (crictl's form) or an absolute path -> the gRPC target.
    ValueError for anything else (CRI over TCP is not offered by containerd or CRI-O)."""
    if not isinstance(endpoint, str) or not endpoint:
        raise ValueError("runtime endpoint must be unix:///path/to/socket")
    path = endpoint[len("unix://"):] if endpoint.startswith("unix://") else endpoint
    if "://" in path or not path.startswith("/"):
        raise ValueError(f"runtime endpoint {endpoint!r} is not unix:///absolute/path/to/socket "
                         "(e.g. unix:///run/containerd/containerd.sock, "
                         "unix:///var/run/crio/crio.sock)")
    return "unix://" + path


class RuntimeClient:
    """A CRI runtime.v1 client for the read-only calls cgshim needs.

    ``endpoint``: ``unix:///run/containerd/containerd.sock`` or the like; ``timeout``: seconds
    each call may take. Every failure (no socket, refused, deadline exceeded, unimplemented)
    raises :class:`cgshim.errors.RuntimeUnavailable` naming the call and gRPC's status. The
    channel is made again after a failure, so a runtime that comes back is reached at the next
    call rather than after gRPC's reconnect backoff.
    """

    def __init__(self, endpoint, timeout=2.0):
        self.target = parse_endpoint(endpoint)
        self.endpoint = endpoint
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout!r}")
        self.timeout = float(timeout)
        self._grpc = _need("grpc")
        self._msgs = messages()
        self._lock = threading.Lock()
        self._channel = None
        self._calls = {}
        self._closed = False

    def _stub(self, method):
        with self._lock:
            if self._closed:
                raise RuntimeUnavailable(f"CRI {method} at {self.endpoint}: client closed")
            if self._channel is None:
                self._channel = self._grpc.insecure_channel(
                    self.target, options=[("grpc.max_receive_message_length", 64 << 20),
                                          ("grpc.enable_retries", 0)])
                self._calls = {}
            call = self._calls.get(method)
            if call is None:
                _, response = READ_ONLY_CALLS[method]
                call = self._channel.unary_unary(
                    _SERVICE + method, request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=self._msgs[response].FromString)
                self._calls[method] = call
            return call

    def _reset(self):
        with self._lock:
            channel, self._channel, self._calls = self._channel, None, {}
        if channel is not None:
            channel.close()

    def call(self, method, **fields):
        """One read-only call by name (a key of ``READ_ONLY_CALLS``) with request ``fields``."""
        if method not in READ_ONLY_CALLS:
            raise ValueError(f"{method!r} is not one of cgshim's read-only CRI calls "
                             f"({', '.join(READ_ONLY_CALLS)})")
        request = self._msgs[READ_ONLY_CALLS[method][0]](**fields)
        try:
            return self._stub(method)(request, timeout=self.timeout)
        except self._grpc.RpcError as exc:
            self._reset()
            code = exc.code() if hasattr(exc, "code") else None
            name = code.name if code is not None else "ERROR"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise RuntimeUnavailable(
                f"CRI {method} at {self.endpoint}: {name}: {details} (timeout {self.timeout:g} s)"
            ) from None

    def version(self):
        return self.call("Version", version="v1")

    def list_pod_sandboxes(self):
        return list(self.call("ListPodSandbox").items)

    def list_containers(self):
        return list(self.call("ListContainers").containers)

    def container_status(self, container_id):
        return self.call("ContainerStatus", container_id=container_id).status

    def sandbox_info(self, sandbox_id):
        """PodSandboxStatus(verbose) ``info``: runtime-specific JSON strings by key."""
        return dict(self.call("PodSandboxStatus", pod_sandbox_id=sandbox_id, verbose=True).info)

    def close(self):
        """Close the channel; a call in flight fails at once, later calls raise."""
        with self._lock:
            self._closed = True
        self._reset()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@attrs.frozen
class Identity:
    """What kubelet's labels say of one cgroup (see the module docstring); "" where kubelet
    writes "". ``pod_uid`` is the uid the runtime was given (kubelet's pod uid)."""

    namespace: str = ""
    pod: str = ""
    container: str = ""
    name: str = ""
    image: str = ""
    pod_uid: str = ""


@attrs.frozen
class CacheStatus:
    """How the cache stands. ``ok``: the last refresh succeeded; ``error``: why the last one
    failed (None when ok); ``runtime``: "name version" from Version; ``age``: seconds since
    the last successful refresh (None before the first); counts of what is known."""

    endpoint: str
    ok: bool
    error: str | None
    runtime: str | None
    age: float | None
    pods: int
    containers: int
    refreshes: int
    failures: int


class IdentityCache:
    """Pod and container identities from the runtime, kept by a thread of its own.

    :meth:`container` and :meth:`pod` answer from memory and never block on the runtime; a
    miss wakes the thread. The thread refreshes at a miss (at most every ``min_refresh``
    seconds) and every ``resync`` seconds: ListPodSandbox, ListContainers, then
    ContainerStatus for each container and PodSandboxStatus for each sandbox not seen before
    (for their images). Entries the runtime no longer lists are dropped at each successful
    refresh. After one failed refresh the answers are kept (:meth:`status` says why); after a
    second failure in a row they are dropped, so series fall back to path-only labels rather
    than keep names that may no longer hold; refreshes are retried every 5 s until the runtime
    answers again. ``generation`` changes whenever an answer would change, so callers can
    cache labels until it does.

    ``client``: a :class:`RuntimeClient` (by default one for ``endpoint`` with ``timeout``).
    Use as a context manager or :meth:`start` / :meth:`stop`; :meth:`refresh` runs one refresh
    on the calling thread (tests, the probe).
    """

    def __init__(self, endpoint, *, timeout=2.0, resync=60.0, min_refresh=1.0, client=None):
        self.endpoint = endpoint
        self._client = client if client is not None else RuntimeClient(endpoint, timeout)
        self.resync = float(resync)
        self.min_refresh = float(min_refresh)
        self._lock = threading.Lock()
        self._containers = {}  # container or sandbox id -> Identity
        self._pods = {}  # pod uid -> Identity (namespace, pod, pod_uid)
        self._images = {}  # container or sandbox id -> image name (never changes for an id)
        self._generation = 0
        self._error = "not refreshed yet"
        self._ok = False
        self._runtime = None
        self._last_ok = None
        self._last_try = None
        self._refreshes = 0
        self._failures = 0
        self._failed_in_a_row = 0
        self._missed = {}  # id or uid asked for and not known -> refreshes since
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = None

    # -- lookups (any thread; never block on the runtime) -------------------------------------
    @property
    def generation(self):
        with self._lock:
            return self._generation

    def container(self, container_id):
        """Identity of a container or sandbox id, or None (and a refresh is asked for)."""
        return self._lookup(self._containers, container_id)

    def pod(self, pod_uid):
        """Identity of a pod cgroup (namespace, pod, pod_uid), or None (a refresh is asked)."""
        return self._lookup(self._pods, pod_uid)

    def _lookup(self, table, key):
        with self._lock:
            found = table.get(key)
            if found is None and key not in self._missed:
                self._missed[key] = 0
                self._wake.set()
        return found

    def status(self):
        with self._lock:
            age = None if self._last_ok is None else time.monotonic() - self._last_ok
            return CacheStatus(endpoint=self.endpoint, ok=self._ok,
                               error=None if self._ok else self._error, runtime=self._runtime,
                               age=age, pods=len(self._pods), containers=len(self._containers),
                               refreshes=self._refreshes, failures=self._failures)

    # -- refreshing (the cache's thread) -------------------------------------------------------
    def refresh(self):
        """One refresh now, on the calling thread. Returns True on success; on failure the
        previous answers stay and :meth:`status` says why."""
        with self._lock:
            self._last_try = time.monotonic()
        try:
            if self._runtime is None:
                v = self._client.version()
                runtime = f"{v.runtime_name} {v.runtime_version} (CRI {v.runtime_api_version})"
            else:
                runtime = self._runtime
            sandboxes = self._client.list_pod_sandboxes()
            containers = self._client.list_containers()
            images = {}
            for s in sandboxes:
                image = self._images.get(s.id)
                images[s.id] = self._sandbox_image(s.id) if image is None else image
            for c in containers:
                image = self._images.get(c.id)
                images[c.id] = self._image_of(c) if image is None else image
        except RuntimeUnavailable as exc:
            with self._lock:
                self._ok, self._error = False, str(exc)
                self._failures += 1
                self._failed_in_a_row += 1
                self._runtime = None  # ask Version again: it may be another runtime now
                if self._failed_in_a_row >= 2 and (self._containers or self._pods):
                    # The runtime is gone, not just slow once: what it said may no longer
                    # hold (pods removed meanwhile), so name nothing rather than misname.
                    self._containers, self._pods = {}, {}
                    self._generation += 1
            return False
        pods, by_id = {}, {}
        sandbox_of = {}
        for s in sandboxes:
            md = s.metadata
            uid = md.uid or s.labels.get(POD_UID, "")
            pod = Identity(namespace=md.namespace or s.labels.get(POD_NAMESPACE, ""),
                           pod=md.name or s.labels.get(POD_NAME, ""), pod_uid=uid)
            sandbox_of[s.id] = pod
            if uid:
                pods[uid] = pod
            # The sandbox's own (pause) cgroup: kubelet shows its id as name, and the pod
            # labels containerd copies from the sandbox config; no container name.
            by_id[s.id] = Identity(namespace=s.labels.get(POD_NAMESPACE, ""),
                                   pod=s.labels.get(POD_NAME, ""), name=s.id,
                                   image=images[s.id], pod_uid=uid)
        for c in containers:
            pod = sandbox_of.get(c.pod_sandbox_id, Identity())
            by_id[c.id] = Identity(
                namespace=c.labels.get(POD_NAMESPACE, ""), pod=c.labels.get(POD_NAME, ""),
                container=c.labels.get(CONTAINER_NAME, ""), name=c.id, image=images[c.id],
                pod_uid=c.labels.get(POD_UID, pod.pod_uid))
        with self._lock:
            if by_id != self._containers or pods != self._pods:
                self._generation += 1
            # A cgroup can appear before the runtime lists its container or sandbox (runc
            # makes it while RunPodSandbox/StartContainer is still running): look again a few
            # times, backing off; a cgroup no runtime knows is then left alone.
            self._missed = {k: n + 1 for k, n in self._missed.items()
                            if k not in by_id and k not in pods and n + 1 < _MISS_TRIES}
            self._containers, self._pods = by_id, pods
            self._images = {k: v for k, v in images.items() if v}
            self._ok, self._error, self._runtime = True, None, runtime
            self._failed_in_a_row = 0
            self._last_ok = time.monotonic()
            self._refreshes += 1
        return True

    def _image_of(self, container):
        """The image name as ContainerStatus reports it (the runtime resolves the reference
        kubelet gave, often an image id, to the image's name); "" if the container went away
        meanwhile. A RuntimeUnavailable other than NOT_FOUND propagates."""
        try:
            status = self._client.container_status(container.id)
        except RuntimeUnavailable as exc:
            if "NOT_FOUND" in str(exc):
                return ""
            raise
        return status.image.image or container.image.image

    def _sandbox_image(self, sandbox_id):
        """The sandbox (pause) image: CRI has no field for it, containerd's verbose
        PodSandboxStatus info has it (``info["info"]`` JSON, key ``image``); "" elsewhere."""
        try:
            info = self._client.sandbox_info(sandbox_id)
        except RuntimeUnavailable as exc:
            if "NOT_FOUND" in str(exc):
                return ""
            raise
        try:
            image = json.loads(info.get("info", "{}")).get("image", "")
        except (ValueError, AttributeError):
            return ""
        return image if isinstance(image, str) else ""

    def _run(self):
        next_resync = 0.0
        retry_at = None
        while not self._stopping.is_set():
            now = time.monotonic()
            due = now >= next_resync or (retry_at is not None and now >= retry_at)
            if due or self._wake.is_set():
                self._wake.clear()
                try:
                    ok = self.refresh()
                except Exception as exc:  # noqa: BLE001 -- a bug; said by status(), not fatal
                    with self._lock:
                        self._ok, self._failures = False, self._failures + 1
                        self._error = (f"unexpected {type(exc).__name__}: {exc} (a cgshim bug; "
                                       "please report it)")
                    ok = False
                now = time.monotonic()
                next_resync = now + self.resync
                with self._lock:
                    tries = max(self._missed.values(), default=None)
                # ids still missing, or a failed refresh: again after min_refresh, doubling
                retry_at = None
                if tries is not None:
                    retry_at = now + self.min_refresh * (2 ** tries)
                if not ok:
                    retry_at = now + max(self.min_refresh, 5.0)
                # A miss right after a refresh waits min_refresh: lookups must never make us
                # poll the runtime flat out.
                self._stopping.wait(self.min_refresh)
                continue
            until = min(next_resync, retry_at if retry_at is not None else next_resync)
            self._wake.wait(max(0.0, min(until - now, 1.0)))

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cgshim-cri", daemon=True)
            self._thread.start()
        return self

    def stop(self):
        """Stop the thread and close the client; closing cancels a call in flight, so a
        hung runtime does not hold this up."""
        self._stopping.set()
        self._wake.set()
        self._client.close()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def describe_status(status):
    """One line for the probe and /healthz."""
    if status.ok:
        return (f"runtime {status.runtime} at {status.endpoint}: {status.pods} pods, "
                f"{status.containers} containers and sandboxes known, refreshed "
                f"{status.age:.1f} s ago")
    return (f"runtime at {status.endpoint} not answering, series carry path-only labels: "
            f"{status.error}")


def _dumps(status):  # for the probe's JSON
    return json.loads(json.dumps(attrs.asdict(status)))
