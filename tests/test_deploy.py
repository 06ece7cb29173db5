"""deploy/: the DaemonSet validates against Kubernetes' schemas (kubernetes-validate, strict)
and keeps the security promises made in its comments; the Prometheus scrape example is valid
YAML whose relabeling, applied to the DaemonSet's own pod, scrapes the exporter's port."""
import argparse
import copy
import os
import re

import pytest

yaml = pytest.importorskip("yaml")  # a dependency of kubernetes-validate
kv = pytest.importorskip("kubernetes_validate")

from cgshim.app import exporter  # noqa: E402

DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deploy")
# recursiveReadOnly (used for the /sys/fs/cgroup mount) entered the API in 1.30.
PINNED = "1.30.0"


def load(name):
    with open(os.path.join(DEPLOY, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


@pytest.fixture(scope="module")
def daemonset():
    docs = load("daemonset.yaml")
    assert [d["kind"] for d in docs] == ["DaemonSet"]
    return docs[0]


@pytest.fixture(scope="module")
def pod(daemonset):
    return daemonset["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod):
    (c,) = pod["containers"]
    return c


def versions():
    """Every Kubernetes minor users run (1.30-1.35) and the newest one the installed
    kubernetes-validate ships."""
    return sorted({f"1.{minor}.0" for minor in range(30, 36)} | {str(kv.latest_version())},
                  key=lambda v: tuple(map(int, v.split("."))))


@pytest.mark.parametrize("version", versions())
def test_daemonset_validates_strictly(daemonset, version):
    kv.validate(daemonset, version, strict=True)  # raises ValidationError


def test_validation_is_live(daemonset):
    """The validator does reject what is wrong: an unknown field, a port that is a string, and
    recursiveReadOnly before the version that has it."""
    bad = copy.deepcopy(daemonset)
    bad["spec"]["template"]["spec"]["hostPIDD"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, PINNED, strict=True)
    bad = copy.deepcopy(daemonset)
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9560"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, PINNED, strict=True)
    with pytest.raises(kv.ValidationError):
        kv.validate(daemonset, "1.29.0", strict=True)


def test_host_access_is_read_only_and_minimal(pod, container):
    assert pod["hostPID"] is True  # host tids in /proc
    for key in ("hostNetwork", "hostIPC"):
        assert not pod.get(key), key
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("hostPath" in v for v in volumes.values())
    mounts = container["volumeMounts"]
    assert [m["mountPath"] for m in mounts] == ["/sys/fs/cgroup"]
    (mount,) = mounts
    assert mount["readOnly"] is True
    assert mount["recursiveReadOnly"] in ("IfPossible", "Enabled")
    assert volumes[mount["name"]]["hostPath"]["path"] == "/sys/fs/cgroup"
    assert "mountPropagation" not in mount  # recursiveReadOnly requires None


def test_runs_unprivileged_without_capabilities(pod, container):
    sc = container["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["capabilities"].get("add")
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and sc["runAsNonRoot"] is True
    assert psc["runAsUser"] != 0 and psc["runAsGroup"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"


def test_resources_and_image(container):
    res = container["resources"]
    for kind in ("requests", "limits"):
        assert set(res[kind]) == {"cpu", "memory"}, kind
    # The image deploy/build-image.sh tags from this checkout's version (cgshim.__version__).
    from cgshim import __version__

    assert container["image"] == f"localhost/cgshim:{__version__}"
    with open(os.path.join(DEPLOY, "build-image.sh")) as f:
        assert "tag=${tag:-localhost/cgshim:$version}" in f.read()


def test_every_manifest_names_the_built_image():
    """Every container and init container in deploy/*.yaml (opt-in patches too) runs the one
    image deploy/build-image.sh tags, so a push and one edit cover them all."""
    from cgshim import __version__

    images = []
    for name in sorted(os.listdir(DEPLOY)):
        if not name.endswith(".yaml"):
            continue
        for doc in load(name):
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                if "image" in c:
                    images.append((name, c["name"], c["image"]))
    assert images
    assert {img for _, _, img in images} == {f"localhost/cgshim:{__version__}"}, images


def test_command_is_the_exporter_on_the_probed_port(pod, container):
    cmd = container["command"]
    assert cmd[:4] == ["python", "-m", "cgshim", "serve"]
    # The serve options as the exporter itself parses them (shared with python -m cgshim serve).
    args = exporter.add_arguments(argparse.ArgumentParser(exit_on_error=False)).parse_args(cmd[4:])
    host, port = exporter.parse_listen(args.listen)
    assert host == "0.0.0.0"  # scraped on the pod IP; see the manifest's comment
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(ports.values()) == [port]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        probed = ports.get(get["port"], get["port"])  # a port name or a number
        assert probed == port, probe
        assert get["path"] in ("/healthz", "/metrics"), probe


# --- the scrape example -----------------------------------------------------------------------


def _meta_name(name):
    """Prometheus' label-name sanitising of Kubernetes label/annotation keys."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def relabel(labels, configs):
    """Prometheus relabeling (keep, drop, replace; anchored regex, ';' separator, $n refs):
    the target's labels afterwards, or None if dropped."""
    labels = dict(labels)
    for cfg in configs:
        action = cfg.get("action", "replace")
        regex = re.compile(f"^(?:{cfg.get('regex', '(.*)')})$")
        value = cfg.get("separator", ";").join(labels.get(s, "") for s in cfg.get("source_labels", []))
        m = regex.match(value)
        if action == "keep":
            if not m:
                return None
        elif action == "drop":
            if m:
                return None
        elif action == "replace":
            if m:
                template = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", cfg.get("replacement", "$1"))
                result = m.expand(template)
                if result:
                    labels[cfg["target_label"]] = result
                else:
                    labels.pop(cfg["target_label"], None)
        else:
            raise AssertionError(f"unexpected relabel action {action!r}")
    return labels


def discovered(template, ip="10.1.2.3", node="node-a"):
    """The labels Prometheus' kubernetes_sd role=pod gives a container port of that pod."""
    meta = template["metadata"]
    (c,) = template["spec"]["containers"]
    port = c["ports"][0]["containerPort"]
    labels = {"__address__": f"{ip}:{port}", "__metrics_path__": "/metrics",
              "__meta_kubernetes_pod_ip": ip, "__meta_kubernetes_pod_node_name": node,
              "__meta_kubernetes_namespace": "monitoring",
              "__meta_kubernetes_pod_name": "cgshim-exporter-x1"}
    for k, v in meta.get("labels", {}).items():
        labels[f"__meta_kubernetes_pod_label_{_meta_name(k)}"] = v
    for k, v in meta.get("annotations", {}).items():
        labels[f"__meta_kubernetes_pod_annotation_{_meta_name(k)}"] = v
    return labels


def test_scrape_config_targets_the_daemonset(daemonset, container):
    (doc,) = load("prometheus-scrape.yaml")
    (job,) = doc["scrape_configs"]
    assert job["job_name"]
    assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["pod"]
    configs = job["relabel_configs"]
    template = daemonset["spec"]["template"]
    port = container["ports"][0]["containerPort"]

    target = relabel(discovered(template), configs)
    assert target is not None, "the DaemonSet's own pods are not scraped"
    assert target["__address__"] == f"10.1.2.3:{port}"
    assert target["__metrics_path__"] == "/metrics"
    assert target["node"] == "node-a"
    # `pod`/`namespace` would read as the workload's on container_* series: not attached.
    assert "pod" not in target and "namespace" not in target

    other = copy.deepcopy(template)
    other["metadata"]["labels"] = {"app": "something-else"}
    assert relabel(discovered(other), configs) is None
    off = copy.deepcopy(template)
    off["metadata"]["annotations"]["prometheus.io/scrape"] = "false"
    assert relabel(discovered(off), configs) is None


def opt_in_runtime():
    """The DaemonSet's commented opt-in block for --runtime-endpoint, as a dict."""
    with open(os.path.join(DEPLOY, "daemonset.yaml")) as f:
        text = f.read()
    block = text.split("# OPT-IN BEGIN\n", 1)[1].split("# OPT-IN END", 1)[0]
    return yaml.safe_load("\n".join(line[2:] for line in block.splitlines()))


def with_runtime(daemonset):
    """The DaemonSet with the opt-in applied as its comments say."""
    opt = opt_in_runtime()
    ds = copy.deepcopy(daemonset)
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    c["command"] = c["command"] + opt["args"]
    c["volumeMounts"].append(opt["volumeMount"])
    pod["volumes"].append(opt["volume"])
    pod["securityContext"]["supplementalGroups"] = opt["supplementalGroups"]
    return ds


@pytest.mark.parametrize("version", versions())
def test_runtime_opt_in_validates_and_stays_minimal(daemonset, version):
    """The opt-in validates strictly; it mounts the socket file alone (type Socket, never a
    directory), keeps the pod non-root without capabilities, and names an endpoint serve
    accepts at the path where the socket is mounted."""
    ds = with_runtime(daemonset)
    kv.validate(ds, version, strict=True)
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    volume = {v["name"]: v for v in pod["volumes"]}["cri-socket"]
    assert volume["hostPath"]["type"] == "Socket"
    mount = {m["name"]: m for m in c["volumeMounts"]}["cri-socket"]
    assert mount["readOnly"] is True
    args = exporter.add_arguments(argparse.ArgumentParser()).parse_args(c["command"][4:])
    assert args.runtime_endpoint == "unix://" + mount["mountPath"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert not c["securityContext"].get("privileged")


# --- the opt-in bpf patch (deploy/bpf-pin.yaml) -----------------------------------------------


def strategic_merge(base, patch):
    """kustomize's strategic merge for what bpf-pin.yaml uses: maps merge, lists of named
    items (containers, volumes) merge by name, volumeMounts by mountPath, others replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = strategic_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and patch and isinstance(patch[0], dict):
        key = next((k for k in ("name", "mountPath") if k in patch[0]), None)
        if key is not None:
            out = [copy.deepcopy(b) for b in base]
            for item in patch:
                for i, b in enumerate(out):
                    if b.get(key) == item[key]:
                        out[i] = strategic_merge(b, item)
                        break
                else:
                    out.append(copy.deepcopy(item))
            return out
    return copy.deepcopy(patch)


@pytest.fixture(scope="module")
def bpf_daemonset(daemonset):
    (patch,) = load("bpf-pin.yaml")
    assert (patch["kind"], patch["metadata"]["name"]) == (daemonset["kind"], daemonset["metadata"]["name"])
    return strategic_merge(daemonset, patch)


def test_bpf_is_opt_in(pod):
    assert "initContainers" not in pod
    assert [v["name"] for v in pod["volumes"]] == ["cgroup"]


@pytest.mark.parametrize("version", versions())
def test_bpf_patched_daemonset_validates_strictly(bpf_daemonset, version):
    kv.validate(bpf_daemonset, version, strict=True)


def test_bpf_pin_init_container_has_only_bpf_and_perfmon(bpf_daemonset):
    from cgshim.app.cli import build_parser
    from cgshim.kernel.bpf import DEFAULT_PIN_DIR

    spec = bpf_daemonset["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    sc = init["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON"]}
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"]["type"] == "Localhost"
    profile = os.path.join(DEPLOY, "seccomp", os.path.basename(sc["seccompProfile"]["localhostProfile"]))
    import json

    with open(profile) as f:
        prof = json.load(f)
    denied = {n for rule in prof["syscalls"] if rule["action"] != "SCMP_ACT_ALLOW" for n in rule["names"]}
    assert prof["defaultAction"] == "SCMP_ACT_ALLOW"
    assert {"bpf", "perf_event_open"}.isdisjoint(denied)
    assert {"mount", "umount2", "ptrace", "unshare", "setns", "init_module", "kexec_load"} <= denied
    # the command is cgshim's own CLI: pin, never mount (no CAP_SYS_ADMIN)
    cmd = init["command"]
    assert cmd[:3] == ["python", "-m", "cgshim"]
    args = build_parser().parse_args(cmd[3:])
    assert (args.command, args.action, args.mount) == ("bpf", "pin", False)
    mounts = {m["name"]: m for m in init["volumeMounts"]}
    # the node's pin directory, mounted outside /sys: runc cannot make a mount point in sysfs
    assert mounts["bpf-pins"]["mountPath"] == args.dir and not args.dir.startswith("/sys/")
    vol = {v["name"]: v for v in spec["volumes"]}["bpf-pins"]
    assert vol["hostPath"]["path"] == DEFAULT_PIN_DIR
    assert "readOnly" not in mounts["bpf-pins"] and mounts["cgroup"]["readOnly"] is True
    assert init["image"] == spec["containers"][0]["image"]


def test_bpf_exporter_stays_unprivileged_and_reads_pins_read_only(bpf_daemonset):
    from cgshim.kernel.bpf import DEFAULT_PIN_DIR

    spec = bpf_daemonset["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsUser"] == 65534
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert "seccompProfile" not in c["securityContext"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    pins = env["CGSHIM_BPF_PIN_DIR"]  # where the exporter's Readers look for the pins
    assert set(mounts) == {"/sys/fs/cgroup", pins} and not pins.startswith("/sys/")
    assert mounts[pins]["readOnly"] is True
    vol = {v["name"]: v for v in spec["volumes"]}[mounts[pins]["name"]]
    assert vol["hostPath"] == {"path": DEFAULT_PIN_DIR, "type": "DirectoryOrCreate"}
    (init,) = spec["initContainers"]
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]}[mounts[pins]["name"]] == pins
