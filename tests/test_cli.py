"""``python -m cgshim`` as a user runs it: a subprocess, its exit status, its output.

The probe's JSON is checked against facts the test reads itself (mountinfo, a raw
CTRL_CMD_GETFAMILY, /proc/self/cgroup); ``load`` and ``taskstats`` against test-bed
cgroups and workers whose states are known."""
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import pytest
from hypothesis import given, strategies as st

from cgshim.app.cli import ProcCgroup, _directory_of, parse_proc_cgroup
from cgshim.errors import NotACgroup, ParseError
from cgshim.kernel.mounts import Mount
from tests.support.require import require_kernel, require_root
from tests.support.backends import v2_source, without_c_core

NETLINK_GENERIC = 16  # include/uapi/linux/netlink.h
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, timeout=60, prefix=()):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([*prefix, sys.executable, "-m", "cgshim", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_failure(proc, code):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.stderr.strip() and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ------------------------------------------------------------------- pure: /proc/self/cgroup

_name = st.text(alphabet=st.characters(blacklist_characters="/\n\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
# A live cgroup's path that itself ends in " (deleted)" reads exactly like a removed cgroup's
# (proc_cgroup_show() in kernel/cgroup/cgroup.c appends the suffix with no escaping): the
# format cannot tell them apart, so the round trip leaves such names out.
_path = st.lists(_name, max_size=4).map(lambda parts: "/" + "/".join(parts)).filter(
    lambda p: not p.endswith(" (deleted)"))
_ctrls = st.lists(st.sampled_from(["cpu", "cpuacct", "memory", "pids", "name=systemd", "net_cls"]),
                  unique=True, max_size=3)


@given(st.lists(st.tuples(st.integers(0, 20), _ctrls, _path, st.booleans()), max_size=6))
def test_parse_proc_cgroup_round_trip(entries):
    text = "".join(f"{i}:{','.join(c)}:{p}{' (deleted)' if d else ''}\n" for i, c, p, d in entries)
    assert parse_proc_cgroup(text) == [ProcCgroup(i, tuple(c), p, d) for i, c, p, d in entries]


def test_parse_proc_cgroup_real_shapes():
    text = "12:cpu,cpuacct:/kubepods/besteffort/pod1\n1:name=systemd:/init.scope\n0::/user.slice\n"
    assert parse_proc_cgroup(text) == [
        ProcCgroup(12, ("cpu", "cpuacct"), "/kubepods/besteffort/pod1"),
        ProcCgroup(1, ("name=systemd",), "/init.scope"),
        ProcCgroup(0, (), "/user.slice"),
    ]
    # a path may itself hold ':' (only the first two separate fields)
    assert parse_proc_cgroup("0::/a:b\n")[0].path == "/a:b"


@pytest.mark.parametrize("bad", ["garbage", "x::/", "0:cpu", "0::relative", "-1::/"])
def test_parse_proc_cgroup_rejects(bad):
    with pytest.raises(ParseError):
        parse_proc_cgroup(bad + "\n")


def test_directory_of_mount_roots():
    full = Mount("/sys/fs/cgroup", "/", 2)
    assert _directory_of("/", full) == "/sys/fs/cgroup"
    assert _directory_of("/a/b", full) == "/sys/fs/cgroup/a/b"
    sub = Mount("/sys/fs/cgroup", "/kubepods/pod1", 2)  # a bind mount of a subtree
    assert _directory_of("/kubepods/pod1/ctr", sub) == "/sys/fs/cgroup/ctr"
    for outside in ("/kubepods/pod2", "/", "/kubepods/pod1/../pod2"):
        with pytest.raises(NotACgroup):
            _directory_of(outside, sub)


# -------------------------------------------------------------------------- usage, exit 2


@pytest.mark.parametrize("args", [
    ["bogus"],
    ["load"],
    ["taskstats"],
    ["taskstats", "abc"],
    ["taskstats", "0"],
    ["top", "--interval", "0"],
    ["top", "--interval", "nan"],
    ["top", "--once", "--iterations", "2"],
    ["top", "--sort", "colour"],
    ["serve", "--listen", "9560"],
    ["serve", "--listen", "localhost:http"],
    ["--no-such-flag"],
])
def test_usage_errors_exit_2(args):
    proc = cli(*args)
    assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
    assert "usage:" in proc.stderr and "Traceback" not in proc.stderr


def test_help_documents_exit_status():
    proc = cli("--help")
    assert proc.returncode == 0
    assert "exit status" in proc.stdout and "2 usage error" in proc.stdout
    for sub in ("probe", "load", "taskstats", "top", "serve"):
        assert sub in proc.stdout


# ----------------------------------------------------------------------------------- probe


def raw_taskstats_family_id():
    """CTRL_CMD_GETFAMILY for "TASKSTATS" on a plain AF_NETLINK socket (include/uapi/linux/
    genetlink.h): nlmsghdr + genlmsghdr + CTRL_ATTR_FAMILY_NAME; reply CTRL_ATTR_FAMILY_ID."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC) as s:
        s.settimeout(5)
        name = b"TASKSTATS\0"
        attr = struct.pack("=HH", 4 + len(name), 2) + name
        attr += b"\0" * (-len(attr) % 4)
        payload = struct.pack("=BBH", 3, 1, 0) + attr  # CTRL_CMD_GETFAMILY, version 1
        s.send(struct.pack("=IHHII", 16 + len(payload), 0x10, 1, 1, 0) + payload)  # NLM_F_REQUEST
        data = s.recv(65536)
    length, kind = struct.unpack_from("=IH", data)
    assert kind == 0x10, f"reply type {kind} (an NLMSG_ERROR: the family does not answer)"
    off = 16 + 4
    while off + 4 <= length:
        alen, atype = struct.unpack_from("=HH", data, off)
        if atype == 1:  # CTRL_ATTR_FAMILY_ID
            return struct.unpack_from("=H", data, off + 4)[0]
        off += (alen + 3) & ~3
    raise AssertionError("no CTRL_ATTR_FAMILY_ID in the reply")


def mode_from_mountinfo():
    """legacy / hybrid / unified from /proc/self/mountinfo, read here independently."""
    v1_ctrl = v2 = False
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fstype, _source, opts = line.split(" - ")[1].split()
            if fstype == "cgroup2":
                v2 = True
            elif fstype == "cgroup" and any(
                    o in ("cpu", "cpuacct", "memory", "pids") for o in opts.split(",")):
                v1_ctrl = True
    return "hybrid" if v1_ctrl and v2 else ("legacy" if v1_ctrl else "unified")


def own_cgroups():
    """This process's cgroup in the v1 cpu hierarchy and in cgroup2, from /proc/self/cgroup."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            if hid == "0":
                out["cgroup2"] = path
            elif "cpu" in ctrls.split(","):
                out["cpu"] = path
    return out


def check_kinds(obj, schema):
    assert set(obj) == set(schema), (sorted(obj), sorted(schema))
    for key, kinds in schema.items():
        assert isinstance(obj[key], kinds), (key, obj[key])


OPT_STR, OPT_INT = (str, type(None)), (int, type(None))
LOAD_SCHEMA = {"path": str, "cgroup_version": int, "source": str, "implementation": str,
               "reason": OPT_STR,
               "nr_running": OPT_INT, "nr_sleeping": OPT_INT, "nr_uninterruptible": OPT_INT,
               "nr_stopped": OPT_INT, "nr_io_wait": OPT_INT, "pressure": (dict, type(None)),
               "timestamp": float, "runnable_seconds": (float, type(None)),
               "runqueue_seconds": (float, type(None))}


@pytest.mark.kernel
def test_probe_json_schema_and_facts():
    require_root()
    proc = cli("--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert set(r) == {"kernel", "cgroup", "taskstats_family", "taskstats_pid", "psi",
                      "backends", "own_cgroup", "readings"}
    check_kinds(r["kernel"], {"release": str, "version": str, "machine": str})
    assert r["kernel"]["release"] == os.uname().release

    check_kinds(r["cgroup"], {"ok": bool, "mode": str, "mounts": list, "skipped_lines": int,
                              "error": type(None)})
    assert r["cgroup"]["mode"] == mode_from_mountinfo() == "hybrid"
    for m in r["cgroup"]["mounts"]:
        check_kinds(m, {"version": int, "mount_point": str, "root": str, "controllers": list})
        assert os.path.isdir(m["mount_point"])
    assert any(m["version"] == 2 for m in r["cgroup"]["mounts"])
    assert any("cpu" in m["controllers"] for m in r["cgroup"]["mounts"] if m["version"] == 1)

    fam = r["taskstats_family"]
    check_kinds(fam, {"ok": bool, "id": int, "errno": type(None), "error": type(None)})
    assert fam["ok"] and fam["id"] == raw_taskstats_family_id()

    pid = r["taskstats_pid"]
    check_kinds(pid, {"ok": bool, "pid": int, "version": int, "payload_size": int,
                      "errno": type(None), "error": type(None)})
    assert pid["ok"] and pid["version"] >= 8 and pid["payload_size"] >= 328

    psi = r["psi"]
    check_kinds(psi, {"ok": bool, "path": str, "cpu": dict, "error": type(None)})
    assert psi["ok"] and psi["path"] == "/proc/pressure/cpu"
    assert set(psi["cpu"]["some"]) == {"avg10", "avg60", "avg300", "total_usec"}
    assert psi["cpu"]["some"]["total_usec"] > 0

    # This host (hybrid, C core built) offers every backend, each by its native code.
    assert [b["name"] for b in r["backends"]] == ["bpf", "netlink", "scan", "psi"]
    for b in r["backends"]:
        check_kinds(b, {"name": str, "available": bool, "implementation": str,
                        "reason": type(None), "cgroup_versions": list})
        assert b["available"]
    assert {b["name"]: b["implementation"] for b in r["backends"]} == \
        {"bpf": "native", "netlink": "native", "scan": "native", "psi": "python"}

    # The probe runs in this process's cgroups (a child inherits them).
    mine = own_cgroups()
    entries = {e["hierarchy"]: e for e in r["own_cgroup"]}
    assert set(entries) == {"cpu", "cgroup2"}
    assert r["readings"] == 2
    for label, source, version in (("cpu", "netlink", 1), ("cgroup2", v2_source(), 2)):
        e = entries[label]
        check_kinds(e, {"hierarchy": str, "cgroup": str, "directory": str, "ok": bool,
                        "load": dict, "error": type(None)})
        assert e["ok"] and e["cgroup"] == mine[label]
        load = e["load"]
        check_kinds(load, LOAD_SCHEMA)
        assert (load["source"], load["cgroup_version"]) == (source, version)
        assert load["implementation"] == "native"
        assert load["path"] == os.path.realpath(e["directory"])
        # the probe's own main thread was running while it read
        assert load["nr_running"] >= 1


@pytest.mark.kernel
def test_probe_text_names_each_check():
    require_root()
    proc = cli()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"TASKSTATS family:  answers, id {raw_taskstats_family_id()}" in out
    assert "cgroup mode:       hybrid" in out
    assert "backend netlink (native):" in out and f"backend {v2_source()} (native):" in out
    for line in ("bpf      available, native", "netlink  available, native",
                 "scan     available, native", "psi      available, python"):
        assert f"\n  {line}" in out
    assert "load readings:     2" in out


@pytest.mark.kernel
def test_probe_without_cap_net_admin_reports_eperm_and_still_reads():
    """A host lacking something: each check reports its own error, nothing crashes."""
    require_root()
    setpriv = shutil.which("setpriv")
    require_kernel(setpriv is not None, "needs setpriv (util-linux) to drop CAP_NET_ADMIN")
    proc = cli("--json", prefix=(setpriv, "--bounding-set=-net_admin"))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["taskstats_family"]["ok"]  # the family lookup needs no capability
    pid = r["taskstats_pid"]
    assert not pid["ok"] and pid["errno"] == 1 and "CAP_NET_ADMIN" in pid["error"]
    assert r["readings"] == 2  # CGROUPSTATS has no capability check; the scan needs none


@pytest.mark.kernel
def test_probe_on_a_simulated_unified_host():
    """cgroup2 alone (v1 hidden): the probe still reads its own cgroup, by scan, and exits 0;
    the v1 cpu cgroup that /proc/self/cgroup still names is reported as not mounted."""
    require_root()
    require_kernel(shutil.which("unshare") is not None, "needs unshare (util-linux)")
    from tests.support.unified_ns import run_unified

    proc = run_unified("import sys; from cgshim.app.cli import main; sys.exit(main(['--json']))")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["cgroup"]["mode"] == "unified"
    assert [m["mount_point"] for m in r["cgroup"]["mounts"]] == ["/sys/fs/cgroup"]
    entries = {e["hierarchy"]: e for e in r["own_cgroup"]}
    v2 = entries["cgroup2"]
    assert v2["ok"] and v2["directory"].startswith("/sys/fs/cgroup")
    assert v2["load"]["source"] == v2_source() and v2["load"]["nr_running"] >= 1
    assert v2["load"]["pressure"] is not None
    if "cpu" in entries:  # the v1 hierarchies exist in the kernel, just not mounted here
        assert not entries["cpu"]["ok"] and "not mounted" in entries["cpu"]["error"]
    assert r["readings"] == 1


# ------------------------------------------------------------------------------------ load


def table_rows(text):
    """{first column: other columns} of a whitespace table with a header line."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    header = lines[0]
    assert header[0] == "CGROUP"
    return {cols[0]: dict(zip(header[1:], cols[1:])) for cols in lines[1:] if not cols[0].endswith(":")}


@pytest.fixture
def busy_pair(testbed):
    """One busy worker, in a v1 cpu cgroup and a cgroup2 cgroup at once."""
    v1, v2 = testbed.cgroup(1), testbed.cgroup(2)
    worker = testbed.spawn(busy=True, pipe=1, cgroups=(v1, v2))
    return v1, v2, worker


@pytest.mark.kernel
def test_load_json_v1_netlink_v2_scan(busy_pair):
    v1, v2, _ = busy_pair
    proc = cli("load", v1, v2, "--json")
    assert proc.returncode == 0, proc.stderr
    readings = json.loads(proc.stdout)["readings"]
    assert [e["path"] for e in readings] == [v1, v2]
    a, b = readings[0], readings[1]
    assert a["ok"] and b["ok"] and a["error"] is None
    check_kinds(a["load"], LOAD_SCHEMA)
    assert (a["load"]["source"], a["load"]["cgroup_version"], a["load"]["nr_running"]) == ("netlink", 1, 1)
    assert (b["load"]["source"], b["load"]["cgroup_version"], b["load"]["nr_running"]) == (v2_source(), 2, 1)
    # the main thread spins (R), the pipe thread sleeps (S): the scan sees that S
    assert b["load"]["nr_sleeping"] == 1 and b["load"]["nr_io_wait"] is None
    assert b["load"]["pressure"] is not None  # cgroup2 has cpu.pressure


@pytest.mark.kernel
def test_load_table(busy_pair):
    v1, v2, _ = busy_pair
    proc = cli("load", v1, v2)
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert rows[v1]["SOURCE"] == "netlink" and rows[v1]["RUN"] == "1" and rows[v1]["VER"] == "1"
    assert rows[v2]["SOURCE"] == v2_source() and rows[v2]["RUN"] == "1" and rows[v2]["VER"] == "2"
    assert rows[v2]["IOWAIT"] == "-"


@pytest.mark.kernel
def test_load_backends_option(busy_pair):
    """load --backends scan reads v1 by scan; a chain without a v2 backend fails cleanly;
    an unknown name is a usage error."""
    v1, v2, _ = busy_pair
    proc = cli("load", "--backends", "scan", v1, "--json")
    assert proc.returncode == 0, proc.stderr
    load = json.loads(proc.stdout)["readings"][0]["load"]
    assert (load["source"], load["implementation"], load["reason"], load["nr_running"]) == \
        ("scan", "native", None, 1)
    assert_clean_failure(cli("load", "--backends", "netlink", v2), 1)
    usage = cli("load", "--backends", "scan,bogus", v2)
    assert usage.returncode == 2 and "want distinct names out of bpf,netlink" in usage.stderr


@pytest.mark.kernel
def test_load_table_notes_a_reading_without_the_c_core(busy_pair):
    v1, v2, _ = busy_pair
    code = (without_c_core("_procscan", "_bpf") +
            "from cgshim.app.cli import main\nsys.exit(main(['load', sys.argv[1]]))\n")
    proc = subprocess.run([sys.executable, "-c", code, v2], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert table_rows(proc.stdout)[v2]["SOURCE"] == "scan"
    assert f"note: {v2}: counted by python, not by cgshim's C core" in proc.stdout


@pytest.mark.kernel
def test_load_recursive(testbed):
    parent = testbed.cgroup(2)
    child = testbed.cgroup(2, parent=parent)
    testbed.spawn(busy=True, cgroups=(child,))
    flat = json.loads(cli("load", parent, "--json").stdout)["readings"][0]["load"]
    deep = json.loads(cli("load", parent, "--recursive", "--json").stdout)["readings"][0]["load"]
    assert flat["nr_running"] == 0 and deep["nr_running"] == 1


@pytest.mark.kernel
def test_load_missing_cgroup_fails_cleanly(testbed):
    gone = os.path.join(testbed.root(2), "cgshim-test-never-created")
    proc = cli("load", gone)
    assert_clean_failure(proc, 1)
    assert gone in proc.stderr


@pytest.mark.kernel
def test_load_partial_failure_json(busy_pair):
    v1, _, _ = busy_pair
    gone = v1 + "-missing"
    proc = cli("load", v1, gone, "--json")
    assert_clean_failure(proc, 1)
    readings = json.loads(proc.stdout)["readings"]
    assert readings[0]["ok"] and readings[0]["load"]["nr_running"] == 1
    assert not readings[1]["ok"] and readings[1]["load"] is None
    assert readings[1]["error_type"] == "CgroupNotFound" and readings[1]["path"] == gone


# ------------------------------------------------------------------------------- taskstats


@pytest.mark.kernel
def test_taskstats_json_of_a_worker(testbed):
    worker = testbed.spawn(pipe=2)
    proc = cli("taskstats", str(worker.pid), "--json")
    assert proc.returncode == 0, proc.stderr
    ts = json.loads(proc.stdout)
    assert ts["ac_pid"] == worker.pid
    with open(f"/proc/{worker.pid}/comm") as f:
        assert ts["ac_comm"] == f.read().strip()
    assert ts["version"] >= 8 and ts["payload_size"] >= 328
    # fields of versions newer than the kernel's are absent (null), never 0
    if ts["version"] < 17:
        assert ts["cpu_delay_max_ts"] is None

    group = json.loads(cli("taskstats", str(worker.pid), "--tgid", "--json").stdout)
    # the thread group's context switches include the main thread's (read earlier)
    assert group["nvcsw"] >= ts["nvcsw"]


@pytest.mark.kernel
def test_taskstats_text_and_missing_pid(testbed):
    worker = testbed.spawn()
    proc = cli("taskstats", str(worker.pid))
    assert proc.returncode == 0, proc.stderr
    fields = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert fields["ac_pid"].strip() == str(worker.pid)
    worker.kill()
    assert_clean_failure(cli("taskstats", str(worker.pid)), 1)


# ----------------------------------------------------------------------------------- serve


@pytest.mark.kernel
def test_serve_wires_the_exporter(busy_pair):
    """`serve` runs cgshim.app.exporter.serve with the CLI's options; SIGTERM ends it with 0."""
    _, v2, _ = busy_pair
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "cgshim", "serve", "--listen", "127.0.0.1:0",
                             "--interval", "0.2", "--root", v2], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # "cgshim exporter: serving http://127.0.0.1:PORT/metrics, ..."
        m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert m, line
        url = f"http://127.0.0.1:{m.group(1)}/metrics"
        name = "/" + os.path.basename(v2)
        pattern = re.compile(r'container_tasks_state\{[^}]*id="%s"[^}]*state="running"[^}]*\} (\S+)'
                             % re.escape(name))
        for _ in range(100):  # the first sample lands within an interval or two
            with urllib.request.urlopen(url, timeout=5) as resp:
                found = pattern.search(resp.read().decode())
            if found:
                break
            time.sleep(0.1)
        assert found and float(found.group(1)) == 1.0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.kernel
def test_serve_address_in_use_fails_cleanly():
    require_root()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli("serve", "--listen", f"127.0.0.1:{port}", "--root", "/")
    assert_clean_failure(proc, 1)
    assert str(port) in proc.stderr


def test_version_from_one_place():
    """`python -m cgshim --version` prints cgshim.__version__, which is also the installed
    distribution's version (pyproject.toml reads it from cgshim/__init__.py)."""
    from importlib.metadata import version

    import cgshim

    out = subprocess.run([sys.executable, "-m", "cgshim", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"cgshim {cgshim.__version__}\n"
    assert version("cgshim") == cgshim.__version__
