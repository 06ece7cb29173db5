"""A private containerd (Debian's 1.6, with runc) driven over CRI the way kubelet drives it.

:class:`Containerd` runs ``containerd`` with its own config, root, state directory, sockets
and runc root in a temporary directory, never the machine's default paths:

- A holder process starts in a new mount and pid namespace (``unshare --mount --pid --fork
  --mount-proc``) and bind-mounts a private directory over ``/run``: containerd 1.6 puts shim
  sockets under ``/run/containerd/s`` whatever the config says, and they must not land in the
  host's /run. The holder, pid 1 of that namespace, reaps orphans.
- containerd is started inside those namespaces with ``nsenter`` and can be stopped and
  started again while shims and containers keep running (as on a node whose runtime restarts).
- :meth:`Containerd.close` removes every pod it made over CRI, stops containerd, then kills the
  holder by pid: the kernel then kills everything left in that pid namespace (shims, runc,
  containers), also after a failed test. The cgroups it made through kubelet-style
  cgroup parents are removed afterwards (see :class:`KubeCgroups`).

The CRI plugin is on with the cgroupfs driver (``SystemdCgroup = false``: no systemd here),
``restrict_oom_score_adj`` (this VM's bounding set lacks CAP_SYS_RESOURCE, so runc could not
set the sandbox's oom_score_adj), empty CNI directories (pods use the host network, so no CNI
plugin is needed) and a locally built sandbox image. Images are OCI image-layout tars made
here from Debian's busybox-static binary, imported with ``ctr -n k8s.io images import``; each
has its own config (identical configs would share one image id).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid

from cgshim import cri

BUSYBOX = "/bin/busybox"
BINARIES = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "unshare", "nsenter")
SUPPORT = os.path.dirname(os.path.abspath(__file__))

# pid 1 of the private namespaces: mount the private /run, say so, then reap orphans until
# killed (SIGKILL from outside is the only signal that reaches it).
_HOLDER = r"""
import os, signal, subprocess, sys
subprocess.run(["mount", "--bind", sys.argv[1], "/run"], check=True)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
sys.stdout.write("ready\n"); sys.stdout.flush()
while True:
    signal.sigtimedwait({signal.SIGCHLD}, 5)
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
"""


def missing_binaries():
    return [b for b in BINARIES if shutil.which(b) is None] + (
        [BUSYBOX] if not os.access(BUSYBOX, os.X_OK) else [])


def kubelet_messages():
    """Message classes of the write side (tests/support/kubelet_cri.proto) plus cri.proto's."""
    return cri.messages("kubelet_cri.proto", (cri._PROTO_DIR, SUPPORT))


# ------------------------------------------------------------------------------- images


def _tar_bytes(members):
    """An uncompressed tar of (name, kind, data/target, mode) with fixed times and owners."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.mode = 0, 0, 0, mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "link":
                info.type = tarfile.SYMTYPE
                info.linkname = data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(blobs, data):
    digest = hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return f"sha256:{digest}", len(data)


def build_image(path, name, *, entrypoint, label):
    """Write an OCI image-layout tar at ``path``: one layer with busybox as /bin/busybox and
    /bin/sh, a config with ``entrypoint`` and the label ``cgshim.test=<label>`` (so each image
    has its own config and id), and the index annotation naming it ``name``."""
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    layer = _tar_bytes([("bin", "dir", None, 0o755), ("bin/busybox", "file", busybox, 0o755),
                        ("bin/sh", "link", "busybox", 0o777), ("tmp", "dir", None, 0o1777),
                        ("proc", "dir", None, 0o555), ("sys", "dir", None, 0o555),
                        ("dev", "dir", None, 0o755), ("etc", "dir", None, 0o755)])
    blobs = {}
    layer_digest, layer_size = _blob(blobs, layer)
    config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine,
                                                                   os.uname().machine),
        "os": "linux",
        "config": {"Entrypoint": list(entrypoint), "Env": ["PATH=/bin"],
                   "Labels": {"cgshim.test": label}},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_size = _blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": manifest_size, "annotations": {"io.containerd.image.name": name,
                                               "org.opencontainers.image.ref.name": name}}]}
    members = [("oci-layout", "file", b'{"imageLayoutVersion":"1.0.0"}', 0o644),
               ("index.json", "file", json.dumps(index).encode(), 0o644),
               ("blobs", "dir", None, 0o755), ("blobs/sha256", "dir", None, 0o755)]
    members += [(f"blobs/sha256/{d}", "file", data, 0o644) for d, data in blobs.items()]
    with open(path, "wb") as f:
        f.write(_tar_bytes(members))
    return config_digest


# ----------------------------------------------------------------------------- containerd


class Containerd:
    """A private containerd in ``base`` (a fresh directory); see the module docstring.

    ``sandbox_image``: the pause image's name, set in the CRI config (built and imported by
    :meth:`start`). ``socket`` is the CRI endpoint path; ``endpoint`` its ``unix://`` form.
    """

    def __init__(self, base, *, sandbox_image="cgshim.test/pause:1", timeout=30.0):
        self.base = base
        self.sandbox_image = sandbox_image
        self.timeout = timeout
        self.socket = os.path.join(base, "containerd.sock")
        self.endpoint = "unix://" + self.socket
        self.config = os.path.join(base, "config.toml")
        self.log_path = os.path.join(base, "containerd.log")
        self._holder = None
        self._daemon = None
        self._log = None
        self._pods = []  # sandbox ids made by run_pod
        self._msgs = None
        self._channel = None

    # -- lifecycle ---------------------------------------------------------------------------
    def _write_config(self):
        d = self.base
        for sub in ("root", "state", "run", "runc", "opt", "cni-conf", "cni-bin", "logs", "fifo"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        config = f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.sandbox_image}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
        SystemdCgroup = false
"""
        with open(self.config, "w") as f:
            f.write(config)

    def start(self):
        """Start the namespaces (first time), containerd, wait until CRI answers, and (first
        time) import the images. RuntimeError with the log's tail if it does not come up."""
        if self._holder is None:
            self._write_config()
            self._log = open(self.log_path, "ab")
            self._holder = subprocess.Popen(
                ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--propagation",
                 "private", sys.executable, "-c", _HOLDER, os.path.join(self.base, "run")],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log)
            line = self._holder.stdout.readline()
            if line.strip() != b"ready":
                raise RuntimeError(f"namespace holder did not start: {self._tail()}")
            first = True
        else:
            first = False
        self.start_daemon()
        if first:
            self._import_images()
        return self

    def _ns_pid(self):
        """Host pid of the holder inside the namespaces (unshare's forked child)."""
        with open(f"/proc/{self._holder.pid}/task/{self._holder.pid}/children") as f:
            kids = f.read().split()
        if not kids:
            raise RuntimeError(f"namespace holder exited: {self._tail()}")
        return int(kids[0])

    def start_daemon(self):
        if self._daemon is not None and self._daemon.poll() is None:
            return
        ns = self._ns_pid()
        self._daemon = subprocess.Popen(
            ["nsenter", f"--target={ns}", "--mount", "--pid", "--", "containerd",
             "--config", self.config],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + self.timeout
        client = cri.RuntimeClient(self.endpoint, timeout=2.0)
        try:
            while True:
                try:
                    client.version()
                    return
                except Exception as exc:  # noqa: BLE001 -- polled until the deadline
                    last = exc
                if self._daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"containerd did not answer CRI ({last}): {self._tail()}")
                time.sleep(0.05)
        finally:
            client.close()

    def _daemon_pid(self):
        """Host pid of containerd (nsenter forks it into the pid namespace)."""
        try:
            with open(f"/proc/{self._daemon.pid}/task/{self._daemon.pid}/children") as f:
                kids = f.read().split()
        except FileNotFoundError:
            return None
        return int(kids[0]) if kids else None

    def stop_daemon(self, timeout=20.0):
        """SIGTERM containerd and wait for it; shims and containers keep running."""
        if self._daemon is None or self._daemon.poll() is not None:
            return
        self._close_channel()
        pid = self._daemon_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self._daemon.wait(timeout)
        except subprocess.TimeoutExpired:
            pid = self._daemon_pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            self._daemon.wait(10)
        # The socket file stays behind; a client must see "nothing listens", as on a node.

    def close(self):
        """Remove the pods made here, stop containerd, kill the namespaces' processes."""
        try:
            if self._daemon is not None and self._daemon.poll() is None:
                for sandbox in reversed(self._pods):
                    try:
                        self.remove_pod(sandbox)
                    except Exception:  # noqa: BLE001 -- the namespace kill below ends it anyway
                        pass
            self.stop_daemon()
        finally:
            self._close_channel()
            if self._holder is not None:
                try:
                    ns = self._ns_pid()
                except (RuntimeError, FileNotFoundError):
                    ns = None  # already gone
                if ns is not None:
                    try:
                        os.kill(ns, signal.SIGKILL)  # pid 1 of the namespace: all in it die
                    except ProcessLookupError:
                        pass
                try:
                    self._holder.wait(10)  # unshare exits with its child
                except subprocess.TimeoutExpired:
                    self._holder.kill()
                    self._holder.wait(10)
                self._holder.stdout.close()
                self._holder = None
            if self._daemon is not None:
                try:
                    self._daemon.wait(10)  # nsenter: exits once containerd is gone
                except subprocess.TimeoutExpired:
                    pass
                self._daemon = None
            if self._log is not None:
                self._log.close()
                self._log = None

    def _tail(self, n=3000):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace")
        except OSError:
            return "(no log)"

    def ctr(self, *args):
        return subprocess.run(
            ["ctr", "--address", self.socket, "-n", "k8s.io", *args],
            check=True, capture_output=True, text=True, timeout=120).stdout

    def _import_images(self):
        self.images, self.image_ids = {}, {}
        specs = [(self.sandbox_image, ["/bin/sh", "-c", "mkfifo /dev/cgshim-p && exec cat /dev/cgshim-p"],
                  "pause"),
                 ("cgshim.test/busybox:1", ["/bin/busybox"], "busybox")]
        for name, entrypoint, label in specs:
            path = os.path.join(self.base, f"{label}.tar")
            image_id = build_image(path, name, entrypoint=entrypoint, label=label)
            self.ctr("images", "import", path)
            self.images[label], self.image_ids[label] = name, image_id

    # -- CRI, as kubelet calls it ------------------------------------------------------------
    def _close_channel(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _call(self, method, request, response, timeout=60.0):
        import grpc

        if self._msgs is None:
            self._msgs = kubelet_messages()
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.endpoint)
        m = self._msgs
        fn = self._channel.unary_unary(
            f"/runtime.v1.RuntimeService/{method}",
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=m[response].FromString)
        return fn(request, timeout=timeout)

    def sandbox_config(self, *, name, namespace, uid, cgroup_parent):
        m = kubelet_messages()
        return m["PodSandboxConfig"](
            metadata=m["PodSandboxMetadata"](name=name, namespace=namespace, uid=uid, attempt=0),
            log_directory=os.path.join(self.base, "logs", uid),
            labels={cri.POD_NAME: name, cri.POD_NAMESPACE: namespace, cri.POD_UID: uid},
            linux=m["LinuxPodSandboxConfig"](
                cgroup_parent=cgroup_parent,
                security_context=m["LinuxSandboxSecurityContext"](
                    namespace_options=m["NamespaceOption"](network=2))))  # NODE: host network

    def run_pod(self, config):
        m = kubelet_messages()
        os.makedirs(config.log_directory, exist_ok=True)
        resp = self._call("RunPodSandbox", m["RunPodSandboxRequest"](config=config),
                          "RunPodSandboxResponse")
        self._pods.append(resp.pod_sandbox_id)
        return resp.pod_sandbox_id

    def run_container(self, sandbox_id, sandbox_config, *, name, args):
        """CreateContainer + StartContainer of the busybox image running ``args`` (busybox
        applets), with kubelet's labels. Returns the container id."""
        m = kubelet_messages()
        md = sandbox_config.metadata
        config = m["ContainerConfig"](
            metadata=m["ContainerMetadata"](name=name, attempt=0),
            # as kubelet does: the image id it resolved, and the name the pod spec gave
            image=m["ImageSpec"](image=self.image_ids["busybox"],
                                 user_specified_image=self.images["busybox"]),
            args=list(args),
            labels={cri.POD_NAME: md.name, cri.POD_NAMESPACE: md.namespace, cri.POD_UID: md.uid,
                    cri.CONTAINER_NAME: name},
            log_path=f"{name}.log",
            linux=m["LinuxContainerConfig"](security_context=m["LinuxContainerSecurityContext"](
                namespace_options=m["NamespaceOption"](network=2))))
        cid = self._call("CreateContainer", m["CreateContainerRequest"](
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config),
            "CreateContainerResponse").container_id
        self._call("StartContainer", m["StartContainerRequest"](container_id=cid),
                   "StartContainerResponse")
        return cid

    def remove_pod(self, sandbox_id):
        m = kubelet_messages()
        self._call("StopPodSandbox", m["StopPodSandboxRequest"](pod_sandbox_id=sandbox_id),
                   "StopPodSandboxResponse")
        self._call("RemovePodSandbox", m["RemovePodSandboxRequest"](pod_sandbox_id=sandbox_id),
                   "RemovePodSandboxResponse")
        if sandbox_id in self._pods:
            self._pods.remove(sandbox_id)


# ------------------------------------------------------------------------- kubelet cgroups


_REGISTRY = "/tmp/cgshim-test-kubepods.json"  # guarded by an flock on REGISTRY + ".lock"


class _Registry:
    """Which kubelet levels (kubepods, QoS) cgshim tests created, and which test processes use
    them, shared by concurrent test runs through an flock'd file. The last user out removes
    the levels tests created (if empty); a level that existed before any test is never listed."""

    def __enter__(self):
        import fcntl

        self._fd = os.open(_REGISTRY + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            with open(_REGISTRY) as f:
                self.data = json.load(f)
        except (OSError, ValueError):
            self.data = {"created": [], "users": []}
        # users that died without cleaning up no longer count
        self.data["users"] = [p for p in self.data["users"] if _alive(p)]
        return self

    def __exit__(self, *exc):
        import fcntl

        try:
            if exc[0] is None:
                tmp = _REGISTRY + f".{os.getpid()}"
                with open(tmp, "w") as f:
                    json.dump(self.data, f)
                os.replace(tmp, _REGISTRY)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class KubeCgroups:
    """The kubelet-side cgroups of a test's pods: ``/kubepods[/<qos>]/pod<uid>`` in every
    hierarchy runc writes to (each v1 hierarchy and cgroup2).

    kubelet creates and removes the kubepods, QoS and pod levels; runc only creates missing
    parents and the runtime's teardown leaves them. :meth:`note`, called before a pod starts,
    records the pod level as this test's (its uid is unique) and registers the kubepods and
    QoS levels that do not exist yet as made by cgshim tests (:class:`_Registry`, shared with
    concurrent runs). :meth:`cleanup` removes this test's pod levels (and any container cgroup
    a failed test left in them); the last test process using the registry then removes the
    registered levels, only if empty (rmdir refuses otherwise). A level that existed before
    any cgshim test is never removed.
    """

    def __init__(self):
        self.roots = self._roots()
        self._pods = []  # (root, relative name) of this test's pod levels
        self._user = False

    @staticmethod
    def _roots():
        roots = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                fstype, mount_point = fields[sep + 1], fields[4]
                if fstype in ("cgroup", "cgroup2") and fields[3] == "/":
                    roots.append(mount_point)
        return roots

    def note(self, cgroup_parent):
        """Record the levels of ``cgroup_parent`` (``/kubepods/.../pod<uid>``) before a pod
        is run with it. The pod level must not exist (unique uid)."""
        parts = cgroup_parent.strip("/").split("/")
        pod = "/".join(parts)
        if any(os.path.isdir(os.path.join(r, pod)) for r in self.roots):
            raise RuntimeError(f"pod cgroup {pod} exists already: uids must be unique")
        with _Registry() as reg:
            if os.getpid() not in reg.data["users"]:
                reg.data["users"].append(os.getpid())
            self._user = True
            for i in range(1, len(parts)):
                rel = "/".join(parts[:i])
                for root in self.roots:
                    if (not os.path.isdir(os.path.join(root, rel))
                            and [root, rel] not in reg.data["created"]):
                        reg.data["created"].append([root, rel])
        self._pods += [(root, pod) for root in self.roots]

    def remove_pod(self, cgroup_parent, timeout=20.0):
        """rmdir the pod level in every hierarchy, as kubelet does once the pod is gone.
        Returns the directories that would not go."""
        rel = cgroup_parent.strip("/")
        left = []
        for root, pod in self._pods:
            path = os.path.join(root, pod)
            if pod == rel and os.path.isdir(path) and not _rmdir_when_empty(path, timeout):
                left.append(path)
        return left

    def cleanup(self, timeout=20.0):
        """Remove this test's pod levels, then (last user) the registered kubelet levels."""
        left = []
        for root, rel in self._pods:
            path = os.path.join(root, rel)
            if not os.path.isdir(path):
                continue
            # leftovers of a failed test: the containers' cgroups inside our pod
            for child in sorted(os.listdir(path)):
                sub = os.path.join(path, child)
                if os.path.isdir(sub):
                    _rmdir_when_empty(sub, timeout)
            if not _rmdir_when_empty(path, timeout):
                left.append(path)
        self._pods = []
        if not self._user:
            return left
        with _Registry() as reg:
            reg.data["users"] = [p for p in reg.data["users"] if p != os.getpid()]
            self._user = False
            if reg.data["users"]:
                return left
            keep = []
            for root, rel in sorted(reg.data["created"], key=lambda x: -x[1].count("/")):
                try:
                    os.rmdir(os.path.join(root, rel))
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                        raise
                    keep.append([root, rel])  # something else lives there now: leave it
            reg.data["created"] = keep
        return left


def _rmdir_when_empty(path, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                return False
        time.sleep(0.05)


def new_uid():
    return str(uuid.uuid4())


def remove_base(base):
    """Remove a base directory after :meth:`Containerd.close` (its mounts died with the
    namespace)."""
    shutil.rmtree(base, ignore_errors=True)


def make_base():
    """A fresh 0700 directory for one containerd."""
    return tempfile.mkdtemp(prefix="cgshim-test-cri-")
