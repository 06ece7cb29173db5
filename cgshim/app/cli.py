"""``python -m cgshim`` (console script ``cgshim``): probe a host, read cgroups, watch them.

Subcommands::

    cgshim [probe] [--json]                 what this host offers, and a reading of our own cgroup
    cgshim load PATH... [--recursive] [--backends NAME,...] [--json]
    cgshim taskstats PID [--tgid] [--json]
    cgshim top [--interval S] [--root PATH]... [--sort KEY] [--once | --iterations N] [--json]
               [--runtime-endpoint EP]
    cgshim serve [--listen HOST:PORT] [--interval S] [--root PATH]... [--runtime-endpoint EP]
    cgshim bpf pin [--dir DIR] [--cgroup-root DIR] [--no-mount] [--json]
    cgshim bpf unpin [--dir DIR] [--json]

Exit status: 0 success; 1 a reading failed (a cgshim error; for the probe: no load reading
was produced; for ``load``: at least one path failed, the others are still printed);
2 usage error, or a library of an extra missing (``serve`` needs ``cgshim[exporter]``;
one line names the extra); 130 interrupted (Ctrl-C) -- except ``top`` and ``serve``, for which q,
Ctrl-C and SIGTERM are the normal way out (0). There is no "partial" status: per-item
errors are in the output, and the status says whether anything failed.

JSON (``--json``), stable keys:

- probe: ``kernel`` {release, version, machine}; ``cgroup`` {ok, mode, mounts: [{version,
  mount_point, root, controllers}], skipped_lines (mountinfo lines left out), error}; ``taskstats_family`` {ok, id, errno, error};
  ``taskstats_pid`` {ok, pid, version, payload_size, errno, error}; ``psi`` {ok, path, cpu:
  PRESSURE|null, error}; ``backends``: [{name, available, implementation ("native" |
  "python" | "pyroute2" | null), reason (why not, or why not the C core), cgroup_versions}]
  in the Reader's default chain order; ``own_cgroup``: [{hierarchy ("cpu" | "cgroup2"), cgroup (the name in
  /proc/self/cgroup), directory, ok, load: LOAD|null, error}]; ``readings`` (how many
  own_cgroup entries produced a reading); with ``--runtime-endpoint``, ``runtime``: {ok,
  endpoint, runtime ("name version (CRI v1)"), pods, containers, error}. Every check has
  ``ok`` and ``error`` (null when ok).
- load: ``readings``: [{path (as given), ok, load: LOAD|null, error, error_type}].
- taskstats: every struct taskstats field by its kernel name (null when the kernel did not
  send it; ``*_delay_max_ts`` as {tv_sec, tv_nsec}) and ``payload_size``.
- top --json: one object per refresh and line: {time, interval, sort, cgroups: [{name,
  path, running, sleeping, d, load, psi, source, reason, exact}], errors}.

LOAD is {path, cgroup_version, source ("netlink" | "scan" | "psi"), implementation
("native" | "python" | "pyroute2"), reason, nr_running,
nr_sleeping, nr_uninterruptible, nr_stopped, nr_io_wait, pressure: PRESSURE|null,
timestamp (CLOCK_MONOTONIC seconds), runnable_seconds, runqueue_seconds (exact-load
counters of this process's Reader, null where the backend reads no thread clocks)}; PRESSURE is {some: LINE, full: LINE|null}, LINE
{avg10, avg60, avg300 (percent), total_usec}. Counts are null where the backend cannot
know them (see cgshim.model.CpuLoad).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import attrs

from cgshim.app import exporter
from cgshim.errors import CgshimError, ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Libraries that come with an extra, not with `pip install cgshim` (see pyproject.toml).
_EXTRAS = {"prometheus_client": "exporter", "yaml": "exporter", "bcrypt": "exporter",
           "pyroute2": "reference"}

_EPILOG = """\
exit status: 0 success; 1 a reading failed (probe: no load reading produced; load: at least
one path failed); 2 usage error; 130 interrupted. top and serve exit 0 on q, Ctrl-C, SIGTERM.
--json output keys are documented in `python -m pydoc cgshim.app.cli`."""


# ------------------------------------------------------------------------ /proc/self/cgroup


@attrs.frozen
class ProcCgroup:
    """One line of /proc/<pid>/cgroup (kernel/cgroup/cgroup.c proc_cgroup_show):
    ``hierarchy_id:controllers:path``; cgroup2 is id 0 with no controllers. ``deleted`` when
    the kernel appended " (deleted)" (a removed cgroup2 cgroup)."""

    hierarchy_id: int
    controllers: tuple
    path: str
    deleted: bool = False


def parse_proc_cgroup(text: str) -> list[ProcCgroup]:
    """Parse the text of /proc/<pid>/cgroup; a malformed line raises ParseError.

    A trailing " (deleted)" marks a removed cgroup (proc_cgroup_show() in
    kernel/cgroup/cgroup.c); a live cgroup whose name ends so is indistinguishable.
    """
    from cgshim.errors import ParseError

    out = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        fields = line.split(":", 2)
        if len(fields) != 3 or not fields[0].isascii() or not fields[0].isdigit():
            raise ParseError(f"/proc/self/cgroup line {lineno}: want 'id:controllers:path', "
                             f"got {line[:120]!r}")
        path, deleted = fields[2], False
        if path.endswith(" (deleted)"):
            path, deleted = path[: -len(" (deleted)")], True
        if not path.startswith("/"):
            raise ParseError(f"/proc/self/cgroup line {lineno}: path {path[:120]!r} is not absolute")
        controllers = tuple(c for c in fields[1].split(",") if c)
        out.append(ProcCgroup(int(fields[0]), controllers, path, deleted))
    return out


def _parts(path):
    return [p for p in path.split("/") if p and p != "."]


def _directory_of(cgroup_path: str, mount) -> str:
    """The directory of cgroup ``cgroup_path`` under ``mount`` (a hierarchy.Mount), or
    NotACgroup when the mount shows another part of the hierarchy."""
    from cgshim.errors import NotACgroup

    parts, root = _parts(cgroup_path), _parts(mount.root)
    if ".." in parts or parts[: len(root)] != root:
        raise NotACgroup(f"cgroup {cgroup_path} is not visible under {mount.mount_point}, which "
                         f"shows {mount.root} of its hierarchy (another cgroup or mount namespace)")
    return os.path.join(mount.mount_point, *parts[len(root):])


# ------------------------------------------------------------------------------------ probe


def _error_fields(exc):
    """``errno`` and ``error`` of a failed check."""
    if isinstance(exc, (CgshimError, OSError)):
        message = str(exc)
    else:  # a bug; the probe still reports it rather than dying
        message = f"unexpected {type(exc).__name__}: {exc} (a cgshim bug; please report it)"
    return {"errno": getattr(exc, "errno", None), "error": message}


def _pressure_dict(pressure):
    if pressure is None:
        return None
    return {"some": attrs.asdict(pressure.some),
            "full": None if pressure.full is None else attrs.asdict(pressure.full)}


def probe() -> dict:
    """Run every check of the quick probe; each reports its own failure (see module docstring)."""
    from cgshim.app.top import load_dict

    u = os.uname()
    result = {"kernel": {"release": u.release, "version": u.version, "machine": u.machine}}

    hier = None
    try:
        from cgshim.kernel.mounts import hierarchy

        hier = hierarchy()
        result["cgroup"] = {
            "ok": True, "mode": hier.mode, "error": None, "skipped_lines": hier.skipped_lines,
            "mounts": [{"version": m.version, "mount_point": m.mount_point, "root": m.root,
                        "controllers": list(m.controllers)} for m in hier.mounts],
        }
    except Exception as exc:  # noqa: BLE001 -- the probe reports, never dies
        result["cgroup"] = {"ok": False, "mode": None, "mounts": [], "skipped_lines": None,
                            "error": _error_fields(exc)["error"]}

    fam = {"ok": False, "id": None, "errno": None, "error": None}
    pid = {"ok": False, "pid": os.getpid(), "version": None, "payload_size": None,
           "errno": None, "error": None}
    sock = None
    try:
        from cgshim.kernel import netlink

        sock = netlink.open_socket(1.0)
        fam.update(ok=True, id=sock.family_id)
    except Exception as exc:  # noqa: BLE001
        fam.update(_error_fields(exc))
    if sock is not None and fam["ok"]:
        try:
            ts = sock.taskstats(os.getpid())
            pid.update(ok=True, version=ts.version, payload_size=ts.payload_size)
        except Exception as exc:  # noqa: BLE001
            pid.update(_error_fields(exc))
    else:
        pid.update(error="not tried: the TASKSTATS family does not answer")
    if sock is not None:
        sock.close()
    result["taskstats_family"], result["taskstats_pid"] = fam, pid

    psi_path = "/proc/pressure/cpu"
    try:
        from cgshim.kernel.psi import read_pressure

        pressure = read_pressure(psi_path)
        if pressure is None:
            why = ("PSI disabled (booted with psi=0, or CONFIG_PSI_DEFAULT_DISABLED)"
                   if os.path.exists(psi_path) else "no such file: kernel without CONFIG_PSI")
            result["psi"] = {"ok": False, "path": psi_path, "cpu": None, "error": why}
        else:
            result["psi"] = {"ok": True, "path": psi_path, "cpu": _pressure_dict(pressure),
                             "error": None}
    except Exception as exc:  # noqa: BLE001
        result["psi"] = {"ok": False, "path": psi_path, "cpu": None,
                         "error": _error_fields(exc)["error"]}

    try:
        from cgshim.reader import backends

        result["backends"] = [attrs.asdict(b) for b in backends().values()]
    except Exception as exc:  # noqa: BLE001
        result["backends"] = [{"name": None, "available": False, "implementation": None,
                               "reason": _error_fields(exc)["error"], "cgroup_versions": []}]
    result["own_cgroup"] = _probe_own(hier, load_dict)
    result["readings"] = sum(1 for e in result["own_cgroup"] if e["ok"])
    return result


def _probe_own(hier, load_dict):
    """get_cpu_load of this process's own cgroup on each hierarchy (v1 cpu, cgroup2)."""
    entries = []
    try:
        with open("/proc/self/cgroup") as f:
            lines = parse_proc_cgroup(f.read())
    except Exception as exc:  # noqa: BLE001
        return [{"hierarchy": None, "cgroup": None, "directory": None, "ok": False,
                 "load": None, "error": f"/proc/self/cgroup: {_error_fields(exc)['error']}"}]
    wanted = []
    cpu = next((line for line in lines if "cpu" in line.controllers), None)
    v2 = next((line for line in lines if line.hierarchy_id == 0 and not line.controllers), None)
    if cpu is not None:
        wanted.append(("cpu", cpu, None if hier is None else hier.v1_mount("cpu")))
    if v2 is not None:
        wanted.append(("cgroup2", v2, None if hier is None else hier.v2))
    if not wanted:
        return [{"hierarchy": None, "cgroup": None, "directory": None, "ok": False, "load": None,
                 "error": "/proc/self/cgroup names neither a v1 cpu cgroup nor a cgroup2 one"}]
    reader = None
    try:
        for label, line, mount in wanted:
            entry = {"hierarchy": label, "cgroup": line.path, "directory": None, "ok": False,
                     "load": None, "error": None}
            entries.append(entry)
            try:
                if hier is None:
                    raise CgshimError("the cgroup mounts are unknown (see the cgroup check)")
                if mount is None:
                    raise CgshimError(f"this process is in {label} cgroup {line.path}, but the "
                                      f"{label} hierarchy is not mounted in this mount namespace")
                entry["directory"] = _directory_of(line.path, mount)
                if reader is None:
                    from cgshim.reader import Reader

                    reader = Reader()
                entry["load"] = load_dict(reader.cpu_load(entry["directory"]))
                entry["ok"] = True
            except Exception as exc:  # noqa: BLE001
                entry["error"] = _error_fields(exc)["error"]
    finally:
        if reader is not None:
            reader.close()
    return entries


def _fmt_pressure(p):
    if p is None:
        return "no cpu.pressure"
    out = "some avg10={avg10:.2f} avg60={avg60:.2f} avg300={avg300:.2f} total={total_usec}us".format(**p["some"])
    if p["full"] is not None:
        out += "; full avg10={avg10:.2f} total={total_usec}us".format(**p["full"])
    return out


def _fmt_counts(load):
    names = (("running", "nr_running"), ("sleeping", "nr_sleeping"), ("D", "nr_uninterruptible"),
             ("stopped", "nr_stopped"), ("io_wait", "nr_io_wait"))
    return " ".join(f"{short}={'-' if load[key] is None else load[key]}" for short, key in names)


def print_probe(r, out):
    w = out.write
    k = r["kernel"]
    w(f"kernel:            {k['release']} ({k['machine']})\n")
    cg = r["cgroup"]
    _check_line(w, "cgroup mode", cg, cg["mode"], "unknown")
    if cg["ok"]:
        for m in cg["mounts"]:
            what = ",".join(m["controllers"]) if m["version"] == 1 else "cgroup2"
            w(f"  v{m['version']} {m['mount_point']}  (root {m['root']}; {what})\n")
        if cg["skipped_lines"]:
            w(f"  {cg['skipped_lines']} mountinfo line(s) skipped: outside the documented "
              "grammar, and no cgroup mount\n")
    fam, pid, psi = r["taskstats_family"], r["taskstats_pid"], r["psi"]
    _check_line(w, "TASKSTATS family", fam, f"answers, id {fam['id']}", "does not answer")
    _check_line(w, "TASKSTATS per pid", pid, f"works (struct taskstats version "
                f"{pid['version']}, {pid['payload_size']} bytes)", "fails")
    _check_line(w, "PSI", psi, f"available; {psi['path']}: {_fmt_pressure(psi['cpu'])}",
                "unavailable")
    w("backends:\n")
    for b in r["backends"]:
        state = f"available, {b['implementation']}" if b["available"] else "unavailable"
        versions = "/".join(f"v{v}" for v in b["cgroup_versions"])
        w(f"  {b['name'] or '?':<8} {state:<20} ({versions})\n")
        if b["reason"]:
            w(f"    why: {b['reason']}\n")
    w("own cgroup:\n")
    for e in r["own_cgroup"]:
        head = f"  {e['hierarchy'] or '?'} {e['cgroup'] or ''}"
        if e["directory"]:
            head += f" ({e['directory']})"
        if e["ok"]:
            load = e["load"]
            w(f"{head}\n    backend {load['source']} ({load['implementation']}): "
              f"{_fmt_counts(load)}\n")
            w(f"    why: {load['reason'] or _default_reason(load)}\n")
            w(f"    pressure: {_fmt_pressure(load['pressure'])}\n")
        else:
            w(f"{head}\n    no reading: {e['error']}\n")
    rt = r.get("runtime")
    if rt is not None:
        _check_line(w, "runtime", rt, f"{rt['runtime']} at {rt['endpoint']}: {rt['pods']} pods, "
                    f"{rt['containers']} containers and sandboxes (read-only CRI calls)",
                    f"{rt['endpoint']} does not answer")
    w(f"load readings:     {r['readings']}\n")


def _check_line(w, label, check, found, failed):
    """One check of the probe: its label, then what it found, or why it failed."""
    text = found if check["ok"] else f"{failed}: {check['error']}"
    w(f"{label + ':':<19}{text}\n")


def _default_reason(load):
    if load["source"] == "netlink":
        return "cgroup v1: the kernel's CGROUPSTATS answer"
    if load["source"] == "scan":
        return "cgroup2 has no CGROUPSTATS (the kernel answers EINVAL): thread states from /proc"
    return "thread states unavailable"


def probe_runtime(endpoint, timeout=2.0) -> dict:
    """The runtime check of ``probe --runtime-endpoint``: one refresh of a
    :class:`cgshim.cri.IdentityCache` (read-only CRI calls, each bounded by ``timeout``)."""
    entry = {"ok": False, "endpoint": endpoint, "runtime": None, "pods": 0, "containers": 0,
             "error": None}
    try:
        from cgshim.cri import IdentityCache

        cache = IdentityCache(endpoint, timeout=timeout)
        try:
            cache.refresh()
            st = cache.status()
        finally:
            cache.stop()
        entry.update(ok=st.ok, runtime=st.runtime, pods=st.pods, containers=st.containers,
                     error=None if st.ok else f"{st.error}; series would carry path-only labels")
    except Exception as exc:  # noqa: BLE001 -- the probe reports, never dies
        entry["error"] = _error_fields(exc)["error"]
    return entry


def cmd_probe(args, out):
    r = probe()
    if getattr(args, "runtime_endpoint", None):
        r["runtime"] = probe_runtime(args.runtime_endpoint)
    if args.json:
        out.write(json.dumps(r, indent=2) + "\n")
    else:
        print_probe(r, out)
    return EXIT_OK if r["readings"] else EXIT_FAILED


# ------------------------------------------------------------------------------------- load


def cmd_load(args, out):
    from cgshim.reader import Reader
    from cgshim.app.top import load_dict

    entries = []
    with Reader(backends=args.backends) as reader:
        for path in args.paths:
            try:
                load = load_dict(reader.cpu_load(path, recursive=args.recursive))
                entries.append({"path": path, "ok": True, "load": load, "error": None,
                                "error_type": None})
            except CgshimError as exc:
                entries.append({"path": path, "ok": False, "load": None, "error": str(exc),
                                "error_type": type(exc).__name__})
    failed = [e for e in entries if not e["ok"]]
    if args.json:
        out.write(json.dumps({"readings": entries}, indent=2) + "\n")
    else:
        good = [e["load"] for e in entries if e["ok"]]
        if good:
            width = max(len("CGROUP"), *(len(x["path"]) for x in good))
            out.write(f"{'CGROUP':<{width}} VER SOURCE    RUN SLEEP     D  STOP IOWAIT  PSI10\n")
            for x in good:
                cells = [("-" if x[k] is None else str(x[k])) for k in
                         ("nr_running", "nr_sleeping", "nr_uninterruptible", "nr_stopped",
                          "nr_io_wait")]
                psi = "-" if x["pressure"] is None else f"{x['pressure']['some']['avg10']:.2f}"
                out.write(f"{x['path']:<{width}} {x['cgroup_version']:>3} {x['source']:<8} "
                          f"{cells[0]:>4} {cells[1]:>5} {cells[2]:>5} {cells[3]:>5} "
                          f"{cells[4]:>6} {psi:>6}\n")
            for x in good:
                if x["reason"]:
                    out.write(f"note: {x['path']}: {x['reason']}\n")
                if x["source"] != "psi" and x["implementation"] != "native":
                    out.write(f"note: {x['path']}: counted by {x['implementation']}, not by "
                              f"cgshim's C core (see the probe's backends)\n")
    out.flush()
    for e in failed:
        print(f"cgshim load: {e['path']}: {_one_line(e['error'])}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _backend_names(text):
    from cgshim.reader import BACKENDS

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{text!r}: want distinct names out of {','.join(BACKENDS)}, comma-separated")
    return names


def _one_line(text):
    return " ".join(str(text).split())


# -------------------------------------------------------------------------------- taskstats


def _jsonable(value):
    if attrs.has(type(value)):
        return attrs.asdict(value)
    return value


def cmd_taskstats(args, out):
    from cgshim.kernel import netlink
    from cgshim.kernel.taskstats import FIELDS

    ts = netlink.taskstats(args.pid, tgid=args.tgid)
    data = {name: _jsonable(getattr(ts, name)) for name in FIELDS}
    data["payload_size"] = ts.payload_size
    if args.json:
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        width = max(map(len, data))
        for name, value in data.items():
            if isinstance(value, dict):
                value = f"{value['tv_sec']}.{value['tv_nsec']:09d}"
            out.write(f"{name:<{width}}  {'-' if value is None else value}\n")
    return EXIT_OK


# ------------------------------------------------------------------------------ top, serve


def cmd_top(args, out):
    from cgshim.app import top

    iterations = 1 if args.once else args.iterations
    return top.run(args.root, interval=args.interval, sort=args.sort, iterations=iterations,
                   json=args.json, runtime_endpoint=args.runtime_endpoint)


def cmd_serve(args, out):
    try:
        exporter.serve(args.listen, args.interval, args.roots,
                       runtime_endpoint=args.runtime_endpoint,
                       runtime_resync=args.runtime_resync,
                       web_options=exporter.web.WebOptions.from_args(args))
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:  # a bad --web.config.file: nothing was bound
        print(f"cgshim serve: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the address cannot be bound (in use, not local, no permission)
        print(f"cgshim serve: {args.listen}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# ------------------------------------------------------------------------------------- bpf


def cmd_bpf(args, out):
    """Pin cgshim's BPF iterators (needs CAP_BPF + CAP_PERFMON) so that Readers of any uid,
    without capabilities, read them; or remove the pins."""
    from cgshim.kernel import bpf

    if args.action == "pin":
        root = args.cgroup_root
        if root is None:
            from cgshim.kernel.mounts import hierarchy

            v2 = hierarchy().v2
            if v2 is None:
                raise CgshimError("this host has no cgroup2 mount: nothing for the bpf pass to read")
            root = v2.mount_point
        paths = bpf.pin(args.dir, cgroup_root=root, mount=args.mount)
        result = {"action": "pin", "dir": args.dir, "cgroup_root": root, "pinned": paths}
    else:
        result = {"action": "unpin", "dir": args.dir, "removed": bpf.unpin(args.dir)}
    if args.json:
        out.write(json.dumps(result, indent=2) + "\n")
    else:
        for path in result.get("pinned", result.get("removed", [])):
            out.write(f"{'pinned' if args.action == 'pin' else 'removed'} {path}\n")
        if args.action == "unpin" and not result["removed"]:
            out.write(f"nothing pinned in {args.dir}\n")
    return EXIT_OK


# ------------------------------------------------------------------------------------ parser


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r}: want a positive number of seconds")
    return value


def _positive_int(text):
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: want a number >= 1")
    return value


def _pid(text):
    value = _positive_int(text)
    if value > 0x7FFFFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pid")
    return value


def build_parser():
    p = argparse.ArgumentParser(
        prog="cgshim", description="A container's CPU load (task states, load average, PSI) on "
        "cgroup v1, v2 and hybrid hosts. Without a subcommand: the quick probe.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", dest="probe_json",
                   help="probe output as JSON")
    from cgshim import __version__

    p.add_argument("--version", action="version", version=f"cgshim {__version__}")
    p.set_defaults(handler=cmd_probe, json=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, handler, help_text, json_flag=True):
        sp = sub.add_parser(name, help=help_text, description=help_text, epilog=_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(handler=handler)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print JSON (stable keys)")
        return sp

    sp = add("probe", cmd_probe,
             "what this host offers, and a reading of this process's own cgroup")
    sp.add_argument("--runtime-endpoint", type=exporter._endpoint, metavar="ENDPOINT",
                    help="also check the container runtime's CRI socket "
                    "(unix:///run/containerd/containerd.sock): who answers, pods and containers")

    sp = add("load", cmd_load, "task counts and CPU pressure of cgroups")
    sp.add_argument("paths", nargs="+", metavar="PATH",
                    help="cgroup directory (/sys/fs/cgroup/...) or cgroup name (/kubepods/...)")
    sp.add_argument("--recursive", "-r", action="store_true",
                    help="add the tasks of every descendant cgroup")
    sp.add_argument("--backends", type=_backend_names, metavar="NAME[,NAME...]",
                    help="the backends to try, in order (default: netlink,scan,psi; see the "
                         "probe for what this host offers)")

    sp = add("taskstats", cmd_taskstats, "struct taskstats of a task (needs CAP_NET_ADMIN)")
    sp.add_argument("pid", type=_pid, metavar="PID")
    sp.add_argument("--tgid", action="store_true", help="the whole thread group PID")

    sp = add("top", cmd_top, "live view of cgroups by load (q quits; r s d l p n sort)")
    sp.add_argument("--interval", "-i", type=_seconds, default=1.0,
                    help="seconds between refreshes, also the load average's interval (default 1)")
    sp.add_argument("--root", action="append", metavar="PATH",
                    help="show this cgroup and those below it (repeatable; default: the v1 cpu "
                    "hierarchy on hybrid/legacy hosts, cgroup2 on unified ones)")
    from cgshim.app.top import SORT_KEYS

    sp.add_argument("--sort", choices=list(SORT_KEYS), default="load", help="initial order")
    group = sp.add_mutually_exclusive_group()
    group.add_argument("--once", action="store_true", help="one refresh, then exit")
    group.add_argument("--iterations", "-n", type=_positive_int, metavar="N",
                       help="exit after N refreshes")
    sp.add_argument("--runtime-endpoint", type=exporter._endpoint, metavar="ENDPOINT",
                    help="container runtime's CRI socket (unix:///run/containerd/containerd.sock):"
                    " show namespace/pod/container instead of the cgroup path when known "
                    "(read-only calls; needs pip install 'cgshim[k8s]')")

    sp = add("serve", cmd_serve, "Prometheus exporter of cgroup load (cAdvisor's metric names)",
             json_flag=False)
    exporter.add_arguments(sp)  # one definition of the options, shared with the exporter

    from cgshim.kernel.bpf import DEFAULT_PIN_DIR

    sp = add("bpf", cmd_bpf, "pin or unpin cgshim's BPF iterators (bpf backend for any uid)")
    sp.add_argument("action", choices=["pin", "unpin"])
    sp.add_argument("--dir", default=DEFAULT_PIN_DIR,
                    help=f"directory on a bpffs for the pins (default {DEFAULT_PIN_DIR})")
    sp.add_argument("--cgroup-root", metavar="DIR",
                    help="cgroup2 directory the per-cgroup pass starts at (default: the "
                    "cgroup2 mount point, i.e. every cgroup)")
    sp.add_argument("--no-mount", dest="mount", action="store_false",
                    help="do not mount bpffs at /sys/fs/bpf when it is not mounted")
    return p


def _missing_extra(exc):
    """(module, extra) when ``exc`` is, or was raised from, the import error of a library
    that comes with an extra (e.g. netlink.open_socket's Unsupported without the C core
    and pyroute2); else None."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError):
            module = (exc.name or "").partition(".")[0]
            if module in _EXTRAS:
                return module, _EXTRAS[module]
        exc = exc.__cause__
    return None


def main(argv=None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    args.json = args.json or args.probe_json
    out = sys.stdout
    try:
        return args.handler(args, out)
    except (CgshimError, ModuleNotFoundError) as exc:
        command = args.command or "probe"
        missing = _missing_extra(exc)
        if missing is not None:
            module, extra = missing
            print(f"cgshim {command}: needs {module}, which comes with an extra: "
                  f"pip install 'cgshim[{extra}]'", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc, ModuleNotFoundError):
            raise
        print(f"cgshim {command}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of our output went away (`| head`): no traceback at exit either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
