"""What a user gets: the wheel and the image that deploy/ builds, checked as shipped.

Not collected by the plain ``python -m pytest`` run (the file name is not test_*.py): building
the image takes a minute or more on this machine, so .ci/ship builds the wheel and the image
first and then runs this file explicitly with

- ``CGSHIM_WHEELHOUSE``: the build stage's output (sdist, the repaired cgshim wheel, the wheels
  of its dependencies), copied out by ``deploy/build-image.sh --wheelhouse``;
- ``CGSHIM_IMAGE``: the runtime image (``localhost/cgshim:VERSION``);
- ``CONTAINERS_CONF``: podman's settings for this kind of host (.ci/containers.conf).

Needs root (real cgroups with known threads, containers). A missing input fails, never skips.
Containers started here are named ``cgshim-test-ship-*`` and removed afterwards, also when a
test fails. Figures (image size, the exporter's RSS) are printed: run with ``-s`` to see them.

BPF: ``test_bpf_pin_then_unprivileged_reader`` runs the pin step as deploy/bpf-pin.yaml's init
container does (flags read from it: CAP_BPF + CAP_PERFMON only, its seccomp profile) on a
private bpffs, then checks that the unprivileged exporter reads with source "bpf". It skips
only while the wheel has no BPF object at all (before the bpf issue landed); a wheel that
misses the bpf unit or object setup.py/pyproject declare fails test_wheel_is_abi3_and_manylinux.
"""
import glob
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import zipfile

import pytest

from tests.support.require import require_root

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYENV_ROOT = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run this file through .ci/ship, which builds what it checks")
    return value


@pytest.fixture(scope="session")
def wheelhouse():
    path = _env("CGSHIM_WHEELHOUSE")
    assert os.path.isdir(path), path
    return path


@pytest.fixture(scope="session")
def wheel(wheelhouse):
    (path,) = glob.glob(os.path.join(wheelhouse, "cgshim-*.whl"))
    return path


@pytest.fixture(scope="session")
def image():
    require_root()
    name = _env("CGSHIM_IMAGE")
    subprocess.run(["podman", "image", "exists", name], check=True)
    return name


def podman(*args, check=True, timeout=120, **kw):
    return subprocess.run(["podman", *args], check=check, timeout=timeout, text=True,
                          capture_output=True, **kw)


@pytest.fixture
def containers():
    """Start containers by name; every one is removed afterwards (by name, ours only)."""
    names = []

    def run(*args, detach=False, timeout=300):
        name = f"cgshim-test-ship-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        names.append(name)
        cmd = ["run", "--name", name] + (["-d"] if detach else []) + list(args)
        proc = podman(*cmd, check=False, timeout=timeout)
        if detach:
            assert proc.returncode == 0, proc.stderr
            return name
        return proc

    yield run
    for name in names:
        podman("rm", "-f", "--time", "2", name, check=False)


def cgroup_mounts():
    """Mount points under /sys/fs/cgroup on this host (one per v1 hierarchy, cgroup2)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith("/sys/fs/cgroup/")]


def cgroup_binds():
    """Host /sys/fs/cgroup read-only, and every hierarchy below it read-only too (per-mount
    binds stand in for recursiveReadOnly; a single bind would leave the v1 mounts writable)."""
    binds = ["-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"]
    for point in cgroup_mounts():
        binds += ["-v", f"{point}:{point}:ro"]
    return binds


def daemonset_flags():
    """podman flags for what deploy/daemonset.yaml asks of the kubelet: host pid namespace,
    host cgroupfs read-only, uid/gid 65534, no capabilities, read-only root, no new
    privileges."""
    return ["--pid=host", "--user", "65534:65534", "--cap-drop=ALL", "--read-only",
            "--security-opt", "no-new-privileges", *cgroup_binds()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the wheel


def _declared_package_data():
    import tomllib

    with open(os.path.join(TOP, "pyproject.toml"), "rb") as f:
        data = tomllib.load(f)
    return data.get("tool", {}).get("setuptools", {}).get("package-data", {})


def _declared_cffi_units():
    with open(os.path.join(TOP, "setup.py")) as f:
        return re.findall(r"cgshim/_native/build\.py:(\w+)", f.read())


def test_wheel_is_abi3_and_manylinux(wheel, wheelhouse):
    name = os.path.basename(wheel)
    m = re.fullmatch(r"cgshim-(?P<ver>[^-]+)-cp310-abi3-(?P<plat>[\w.]+)\.whl", name)
    assert m, f"{name}: want one cp310-abi3 wheel"
    plats = m["plat"].split(".")
    assert all(re.fullmatch(r"manylinux(_2_\d+|2014|2010|1)_x86_64", p) for p in plats), plats
    from cgshim import __version__

    assert m["ver"] == __version__
    assert os.path.exists(os.path.join(wheelhouse, f"cgshim-{__version__}.tar.gz")), "no sdist"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(f"cgshim-{__version__}.dist-info/WHEEL").decode()
    tags = sorted(line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Tag: "))
    assert tags == sorted(f"cp310-abi3-{p}" for p in plats), tags
    # Every cffi unit setup.py declares is in, as a stable-ABI module.
    units = _declared_cffi_units()
    assert units, "setup.py declares no cffi units?"
    for unit in units:
        assert f"cgshim/_native/_{unit}.abi3.so" in names, (unit, names)
    assert not [n for n in names if n.endswith(".so") and ".abi3." not in n
                and not n.startswith("cgshim.libs/")], names
    # Every package-data pattern matches something in the wheel (a built BPF object too).
    import fnmatch

    for package, patterns in _declared_package_data().items():
        prefix = package.replace(".", "/") + "/"
        for pattern in patterns:
            assert any(n.startswith(prefix) and fnmatch.fnmatch(n[len(prefix):], pattern)
                       for n in names), f"package data {package}:{pattern} missing from the wheel"
    # auditwheel agrees: every library outside the manylinux policy is grafted in.
    show = subprocess.run([sys.executable, "-m", "auditwheel", "show", wheel], text=True,
                          capture_output=True, check=True).stdout
    said = " ".join(show.split())
    assert f'is consistent with the following platform tag: "{plats[-1]}"' in said or \
        any(f'"{p}"' in said for p in plats), said
    print(f"\nwheel: {name} ({os.path.getsize(wheel) // 1024} KiB)")


def other_interpreters():
    """CPython >= 3.10 interpreters on this machine besides the image's (Debian 3.11):
    the oldest supported and the newest pyenv has."""
    found = {}
    for path in sorted(glob.glob(os.path.join(PYENV_ROOT, "versions", "3.*", "bin", "python3"))):
        ver = re.search(r"/(3\.(\d+))\.\d+/bin", path)
        if ver and int(ver[2]) >= 10:
            found.setdefault(ver[1], path)
    keep = sorted(found, key=lambda v: int(v.split(".")[1]))
    return [found[v] for v in {keep[0], keep[-1]}] if keep else []


_READ = r"""
import json, os, sys
import cgshim, cgshim._native as native
so = [f for f in os.listdir(os.path.dirname(native.__file__)) if f.endswith(".abi3.so")]
for f in so:
    __import__("cgshim._native." + f.split(".")[0])
load = cgshim.get_cpu_load(sys.argv[1])
print(json.dumps({"file": cgshim.__file__, "version": cgshim.__version__, "so": sorted(so),
                  "load_errors": {k: str(v) for k, v in native.load_errors.items()},
                  "source": load.source, "running": load.nr_running,
                  "sleeping": load.nr_sleeping, "stopped": load.nr_stopped}))
"""


def _known_cgroup(testbed):
    """A cgroup2 cgroup with 1 running, 3 sleeping (main + 2 pipe readers) and, stopped,
    2 more threads: what get_cpu_load must count."""
    cg = testbed.cgroup(2)
    testbed.spawn(busy=True, cgroups=[cg])
    testbed.spawn(pipe=2, cgroups=[cg])
    stopped = testbed.spawn(pipe=1, cgroups=[cg])
    stopped.stop()
    return cg, {"running": 1, "sleeping": 3, "stopped": 2}


def _check_reading(out, cg, want, prefix):
    got = json.loads(out.strip().splitlines()[-1])
    assert got["file"].startswith(prefix), got["file"]  # the installed copy, not the checkout
    assert not got["load_errors"], got["load_errors"]
    assert {"_netlink.abi3.so", "_procscan.abi3.so"} <= set(got["so"]), got["so"]
    # a thread-counting backend: the /proc scan, or bpf where the reader may load it (root)
    assert got["source"] in ("scan", "bpf"), got
    assert {k: got[k] for k in want} == want, (got, want)
    return got


def test_wheel_installs_on_other_pythons(wheel, testbed, tmp_path):
    """The one wheel installs (binaries only: nothing compiled) and works on CPython 3.10 and
    the newest here; the image's Debian 3.11 is checked by test_fresh_venv_in_image."""
    pythons = other_interpreters()
    assert pythons, f"no CPython >= 3.10 under {PYENV_ROOT}/versions to install the wheel on"
    cg, want = _known_cgroup(testbed)
    seen = []
    for python in pythons:
        venv = tmp_path / os.path.basename(os.path.dirname(os.path.dirname(python)))
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        py = str(venv / "bin" / "python")
        subprocess.run([py, "-m", "pip", "install", "-q", "--only-binary=:all:", wheel],
                       check=True, cwd=tmp_path)
        version = subprocess.run([str(venv / "bin" / "cgshim"), "--version"], check=True,
                                 text=True, capture_output=True, cwd=tmp_path).stdout
        from cgshim import __version__

        assert version.strip() == f"cgshim {__version__}"
        probe = subprocess.run([py, "-m", "cgshim", "--json"], text=True, capture_output=True,
                               cwd=tmp_path)
        assert probe.returncode == 0, probe.stderr
        assert json.loads(probe.stdout)["readings"] >= 1
        out = subprocess.run([py, "-I", "-c", _READ, cg], check=True, text=True,
                             capture_output=True, cwd=tmp_path).stdout
        got = _check_reading(out, cg, want, str(venv))
        seen.append((subprocess.run([py, "-c", "import sys; print(sys.version.split()[0])"],
                                    text=True, capture_output=True, check=True).stdout.strip(),
                     got["source"]))
    print(f"\nwheel installed and read {want} on CPython "
          + ", ".join(f"{v} (source {src})" for v, src in seen))
    assert len({v.rsplit(".", 1)[0] for v, _ in seen} | {"3.11"}) >= 2, seen


# ----------------------------------------------------------------------------- the image


def test_image_runs_as_nobody_without_a_compiler(image, containers):
    config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == "65534:65534"
    assert config["Entrypoint"][:3] == ["/opt/cgshim/bin/python", "-m", "cgshim"]
    proc = containers("--rm", "--entrypoint", "/opt/cgshim/bin/python", image, "-c",
                      "import json, shutil, glob; print(json.dumps({c: shutil.which(c) for c in "
                      "('cc', 'gcc', 'clang', 'tcc', 'ld', 'as', 'pip')}))")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == dict.fromkeys(["cc", "gcc", "clang", "tcc", "ld", "as", "pip"])
    proc = containers("--rm", image, "--version")
    from cgshim import __version__

    assert proc.stdout.strip() == f"cgshim {__version__}", proc.stderr
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    print(f"\nimage {image}: {size / 1e6:.0f} MB")


_FRESH = r"""
import subprocess, sys
v = "/tmp/venv"
subprocess.run([sys.executable, "-m", "venv", v], check=True)
subprocess.run([v + "/bin/python", "-m", "pip", "install", "-q", "--no-index", "--only-binary=:all:",
                "--no-cache-dir", "--disable-pip-version-check", "--find-links", "/wheels", "cgshim[exporter]"], check=True)
probe = subprocess.run([v + "/bin/python", "-m", "cgshim"], capture_output=True, text=True)
sys.stderr.write(probe.stdout + probe.stderr)
assert probe.returncode == 0, probe.returncode
subprocess.run([v + "/bin/python", "-I", "-c", sys.argv[1], sys.argv[2]], check=True)
"""


def test_fresh_venv_in_image(image, wheelhouse, containers, testbed):
    """On a system without a C compiler (the runtime image, Debian's python3), the wheel
    installs into a new virtualenv from the wheelhouse alone, the probe runs, and
    get_cpu_load counts a known cgroup right (host pids, cgroupfs read-only)."""
    cg, want = _known_cgroup(testbed)
    proc = containers("--rm", "--entrypoint", "/usr/bin/python3", "--tmpfs", "/tmp:exec",
                      "-v", f"{wheelhouse}:/wheels:ro", *daemonset_flags(),
                      image, "-c", _FRESH, _READ, cg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = _check_reading(proc.stdout, cg, want, "/tmp/venv/")
    print(f"\nfresh venv in the image (no compiler): probe ok, {got}")


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def states(samples, cgroup_id):
    return {lab["state"]: v for lab, v in samples.get("container_tasks_state", [])
            if lab["id"] == cgroup_id}


def wait_for(port, predicate, what, timeout=60.0):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            s = scrape(port)
            if predicate(s):
                return s
            last = s
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s; last: {str(last)[:2000]}")


def daemonset_command():
    """The exporter container's command in deploy/daemonset.yaml, as the kubelet runs it."""
    import yaml

    with open(os.path.join(TOP, "deploy", "daemonset.yaml")) as f:
        (ds,) = [d for d in yaml.safe_load_all(f) if d]
    (c,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "exporter"]
    return c["command"]


def _check_confined(name):
    """The exporter process: uid/gid 65534, no capabilities, no new privileges, read-only root,
    and every cgroup mount it sees read-only. Returns its /proc status."""
    pid = int(podman("inspect", "--format", "{{.State.Pid}}", name).stdout)
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines())
    assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    with open(f"/proc/{pid}/mountinfo") as f:
        mounts = {}
        for line in f:  # the last mount on a point is the one seen
            fields = line.split()
            mounts[fields[4]] = fields[5].split(",")
    assert "ro" in mounts["/"], mounts["/"]
    cg_points = [p for p in mounts if p == "/sys/fs/cgroup" or p.startswith("/sys/fs/cgroup/")]
    assert len(cg_points) == len(cgroup_mounts()) + 1, cg_points
    assert all("ro" in mounts[p] for p in cg_points), {p: mounts[p] for p in cg_points}
    return pid


def _start(containers, image, extra=()):
    port = free_port()
    name = containers(*daemonset_flags(), "-p", f"127.0.0.1:{port}:9560", "--entrypoint", "",
                      image, *daemonset_command(), *extra, detach=True)
    return name, port


def test_exporter_in_image_as_the_daemonset_runs_it(image, containers, testbed):
    """The DaemonSet's command in the image under the DaemonSet's settings, scraped from the
    host through a published port: a known v1 cgroup (this hybrid host's default root) has the
    kernel's CGROUPSTATS counts; the process has no capabilities and sees cgroupfs read-only."""
    v1 = testbed.cgroup(1)
    testbed.spawn(busy=True, cgroups=[v1])        # 1 in R
    testbed.spawn(pipe=1, cgroups=[v1])           # 2 in S
    testbed.spawn(pipe=1, cgroups=[v1]).stop()    # 2 in T
    id1 = "/" + os.path.relpath(v1, testbed.root(1))
    name, port = _start(containers, image)
    s = wait_for(port, lambda s: states(s, id1), "series of the v1 test cgroup")
    assert states(s, id1) == {"running": 1, "sleeping": 2, "stopped": 2, "uninterruptible": 0,
                              "iowaiting": 0}
    src = {lab["id"]: lab["source"] for lab, _ in s["cgshim_load_source"]}
    assert src[id1] == "netlink"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
        assert r.status == 200
    pid = _check_confined(name)
    for _ in range(5):  # RSS after a few scrapes of the whole host tree
        scrape(port)
        time.sleep(1)
    with open(f"/proc/{pid}/status") as f:
        rss = next(line for line in f if line.startswith("VmRSS:")).split()[1]
    n = len(s["cgshim_load_source"])
    print(f"\nexporter in the image: VmRSS {int(rss) / 1024:.1f} MiB serving {n} cgroups")


def test_exporter_in_image_reads_cgroup2_by_scan(image, containers, testbed):
    """Same settings, with the cgroup2 hierarchy as a root too (what a unified host's default
    is): a known cgroup2 cgroup is counted from the host's /proc, unprivileged."""
    v2, want = _known_cgroup(testbed)
    id2 = "/" + os.path.relpath(v2, testbed.root(2))
    name, port = _start(containers, image, ["--root", testbed.root(2)])
    s = wait_for(port, lambda s: states(s, id2), "series of the cgroup2 test cgroup")
    assert states(s, id2) == {**want, "uninterruptible": 0}
    src = {lab["id"]: lab["source"] for lab, _ in s["cgshim_load_source"]}
    assert src[id2] == "scan"
    _check_confined(name)


def _bpf_patch():
    """deploy/bpf-pin.yaml (the bpf issue's opt-in patch)."""
    import yaml

    with open(os.path.join(TOP, "deploy", "bpf-pin.yaml")) as f:
        (patch,) = [d for d in yaml.safe_load_all(f) if d]
    return patch["spec"]["template"]["spec"]


def _init_container():
    (init,) = _bpf_patch()["initContainers"]
    return init


def _exporter_patch():
    (exporter,) = _bpf_patch()["containers"]
    return exporter


@pytest.fixture
def bpffs(tmp_path):
    """A private bpffs instance (each mount of bpf is a new one): pins made in a test stay
    there and go with the unmount."""
    require_root()
    path = tmp_path / "bpffs"
    path.mkdir()
    subprocess.run(["mount", "-t", "bpf", "cgshim-test-ship", str(path)], check=True)
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_bpf_pin_then_unprivileged_reader(image, wheel, containers, testbed, bpffs):
    """The init container of deploy/bpf-pin.yaml, as podman flags read from it (its uid, only
    the capabilities it adds, its seccomp profile, no new privileges, read-only root) pins
    the iterators; the exporter, unchanged (uid 65534, no capabilities), then reads a known
    cgroup2 cgroup with source "bpf"."""
    with zipfile.ZipFile(wheel) as z:
        bpf_objects = [n for n in z.namelist() if n.endswith(".bpf.o")]
    if not bpf_objects:
        pytest.skip("the package ships no BPF object yet (bpf issue not landed)")
    init = _init_container()
    sc = init["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == ["BPF", "PERFMON"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    profile = os.path.join(TOP, "deploy", "seccomp",
                           os.path.basename(sc["seccompProfile"]["localhostProfile"]))
    (pins,) = [m["mountPath"] for m in init["volumeMounts"] if "bpf" in m["mountPath"]]
    exporter_env = {e["name"]: e.get("value") for e in _exporter_patch().get("env", [])}
    assert exporter_env["CGSHIM_BPF_PIN_DIR"] == pins, exporter_env
    # The node's bpffs is mounted at /sys/fs/bpf and the manifest binds its cgshim directory
    # at ``pins``; here a directory of a private bpffs instance stands in for that one.
    # (runc cannot bind a volume at /sys/fs/bpf/<dir>: it would have to mkdir in sysfs.)
    assert not pins.startswith("/sys/"), pins
    node_pins = os.path.join(bpffs, "cgshim")
    os.mkdir(node_pins)
    flags = ["--pid=host", "--user", f"{sc['runAsUser']}:{sc['runAsGroup']}", "--cap-drop=ALL",
             *[f"--cap-add=CAP_{c}" for c in sc["capabilities"]["add"]], "--read-only",
             "--security-opt", "no-new-privileges", "--security-opt", f"seccomp={profile}"]
    flags += cgroup_binds()  # as the manifest mounts them
    proc = containers("--rm", *flags, "-v", f"{node_pins}:{pins}", "--entrypoint", "",
                      image, *init["command"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    made = os.listdir(node_pins)
    assert made, "the pin step left no pins"

    v2, want = _known_cgroup(testbed)
    id2 = "/" + os.path.relpath(v2, testbed.root(2))
    port = free_port()
    name = containers(*daemonset_flags(), "-v", f"{node_pins}:{pins}:ro",
                      "-e", f"CGSHIM_BPF_PIN_DIR={pins}", "-p",
                      f"127.0.0.1:{port}:9560", "--entrypoint", "", image, *daemonset_command(),
                      "--root", testbed.root(2), detach=True)
    s = wait_for(port, lambda s: states(s, id2) and states(s, id2).get("sleeping") == 3,
                 "bpf reading of the cgroup2 test cgroup")
    src = {lab["id"]: lab["source"] for lab, _ in s["cgshim_load_source"]}
    assert src[id2] == "bpf", src[id2]
    assert {k: states(s, id2)[k] for k in want} == want
    _check_confined(name)
    print(f"\nbpf: pinned {sorted(made)} with CAP_BPF+CAP_PERFMON; exporter (no caps) reads source bpf")
