"""The table, the targets, the JSON record and the plot of one run."""
import dataclasses
import json
import os
import platform
import subprocess

from . import bpf_case
from . import cases as c

# Short names of the floors in the "x floor" column.
_FLOOR_TAGS = {
    "floor: CGROUPSTATS, held dir fd": "held fd",
    "floor: socket+bind+lookup+close": "fresh lookup",
    "floor: TASKSTATS": "TASKSTATS",
    c.F_SCAN: "scan",
    c.F_CGS: "held fd",
    c.F_SWEEP_V1: "CGROUPSTATS",
    c.F_SWEEP_V2: "scan",
    "floor: raw pass (C: open+read+close)": "raw pass",
}


def machine():
    u = os.uname()
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"uname": " ".join([u.sysname, u.nodename, u.release, u.version, u.machine]),
            "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "source": source_state()}


def source_state():
    """The commit measured, and whether cgshim/ differed from it (uncommitted changes)."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=c.REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--", "cgshim")
    return commit + (" + uncommitted changes in cgshim/" if dirty else "")


def _us(ns):
    us = ns / 1000
    if us < 10:
        return f"{us:.2f}"
    if us < 1000:
        return f"{us:.1f}"
    return f"{us:,.0f}"


def table(results):
    head = ("case", "size", "median us", "IQR us", "us/thread", "x floor", "peer slower x")
    lines = []
    section = None
    body = []
    for r in results.rows:
        if r.section != section:
            section = r.section
            body.append(None)
            body.append((f"[{section}]",) + ("",) * 6)
        floor = ""
        if r.x_floor is not None:
            floor = f"{r.x_floor:.2f} ({_FLOOR_TAGS.get(r.floor, r.floor.replace('floor: ', ''))})"
        peer = f"{r.peer_slower:.1f}" if r.peer_slower is not None else ""
        per_thread = f"{r.per_thread_ns / 1000:.3f}" if r.per_thread_ns is not None else ""
        body.append(("  " + r.name, r.size, _us(r.median_ns),
                     f"{_us(r.q1_ns)}-{_us(r.q3_ns)}", per_thread, floor, peer))
    cells = [head] + [b for b in body if b is not None]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]

    def fmt(row):
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
    lines.append(fmt(head))
    lines.append("  ".join("-" * w for w in widths))
    for b in body[1:]:
        lines.append("" if b is None else fmt(b))
    return "\n".join(lines)


def _status(ok):
    return "MET" if ok else "NOT MET"


def targets(results, plan):
    """[(target, status, figure)]; status MET, NOT MET or NOT MEASURED."""
    out = []
    R = results

    def add(text, ok, figure):
        out.append((text, "NOT MEASURED" if ok is None else _status(ok), figure))

    def per_sweep(text, sec, case, base, limit, note=""):
        """A target of case <= limit x base, both per sweep."""
        x = R.ratio(sec, case, base)
        if x is None:
            add(text, None, "case did not run")
            return
        add(text, x <= limit, f"{x:.2f}x ({_us(R.row(sec, case).median_ns)} us vs "
            f"{_us(R.row(sec, base).median_ns)} us per sweep){note}")

    sec = "1. v1 cpu_load, netlink"
    x = R.ratio(sec, "get_cpu_load(path)", "floor: CGROUPSTATS, held dir fd")
    if x is None:
        add("v1 get_cpu_load (8 tasks) <= 2x CGROUPSTATS held-fd floor", None, "case did not run")
    else:
        case, floor = R.row(sec, "get_cpu_load(path)"), R.row(sec, "floor: CGROUPSTATS, held dir fd")
        xr = R.ratio(sec, "Reader.cpu_load(path)", "floor: CGROUPSTATS, held dir fd")
        add("v1 get_cpu_load (8 tasks) <= 2x CGROUPSTATS held-fd floor", x <= 2,
            f"{x:.2f}x ({_us(case.median_ns)} us vs {_us(floor.median_ns)} us; "
            f"Reader.cpu_load {xr:.2f}x)")

    sec = "2. taskstats(pid)"
    x = R.ratio(sec, "peer: pyroute2 TaskStats.get_pid_stat", "taskstats(pid)")
    if x is None:
        add("taskstats(pid) >= 40x faster than pyroute2 get_pid_stat", None, "case did not run")
    else:
        case, peer = R.row(sec, "taskstats(pid)"), R.row(sec, "peer: pyroute2 TaskStats.get_pid_stat")
        add("taskstats(pid) >= 40x faster than pyroute2 get_pid_stat", x >= 40,
            f"{x:.1f}x ({_us(case.median_ns)} us vs {_us(peer.median_ns)} us)")

    sec = "3. scan at 1000 threads"
    x = R.ratio(sec, c.SCAN, c.F_PREAD)
    if x is None:
        add("v2 scan per thread <= 1.3x pread floor at 1000 threads", None, "case did not run")
        add("v2 1000-thread cgroup <= 5 ms", None, "case did not run")
    else:
        case, floor = R.row(sec, c.SCAN), R.row(sec, c.F_PREAD)
        xs = R.ratio(sec, c.SCAN, c.F_SCAN)
        add("v2 scan per thread <= 1.3x pread floor at 1000 threads", x <= 1.3,
            f"{x:.2f}x ({case.per_thread_ns / 1000:.3f} vs {floor.per_thread_ns / 1000:.3f} "
            f"us/thread; vs the whole-scan floor with list and psi: {xs:.2f}x)")
        add("v2 1000-thread cgroup <= 5 ms", case.median_ns <= 5 * c.MS,
            f"{case.median_ns / c.MS:.2f} ms")

    ncg, per = plan.sweep
    note = "" if not plan.quick else f" [quick size {ncg}x{per}, target is 200x50]"
    sec = f"4. node sweep {ncg}x{per}"
    for name, floor, label in ((c.SWEEP_V2, c.F_SWEEP_V2, "v2 scan"),
                               (c.SWEEP_V1, c.F_SWEEP_V1, "v1 netlink")):
        per_sweep(f"sweep 10,000 threads in 200 cgroups ({label}) <= 1.3x sum of floors",
                  sec, name, floor, 1.3, note)
    per_sweep("exact load (schedstat clocks) adds <= 1.6x to a v2 scan sweep of 200x50",
              sec, c.EXACT_V2, c.SWEEP_V2, 1.6, note)
    if plan.big:
        ncg, per = plan.big
        sec = f"5. node sweep {ncg}x{per}"
        for name, floor, label in ((c.SWEEP_V2, c.F_BIG_V2, "v2 scan"),
                                   (c.SWEEP_V1, c.F_SWEEP_V1, "v1 netlink")):
            per_sweep(f"sweep {ncg * per:,} threads in {ncg} cgroups ({label}) <= 1.3x sum of "
                      f"floors", sec, name, floor, 1.3)
    sweep = R.resources.get("sweep")
    if sweep is None:
        add("sweep RSS <= 40 MB", None, "case did not run")
        add("fds flat after warm-up", None, "case did not run")
    else:
        hwm = max(sweep["vmhwm_sweep_kb"], sweep["vmhwm_end_kb"]) / 1024
        add("sweep RSS <= 40 MB", hwm <= 40,
            f"VmHWM {hwm:.1f} MB (at start-up {sweep['vmhwm_start_kb'] / 1024:.1f} MB){note}")
        flat = sweep["fds_after_warmup"] == sweep["fds_after_calls"]
        add("fds flat after warm-up", flat,
            f"{sweep['fds_after_warmup']} -> {sweep['fds_after_calls']} after "
            f"{sweep['calls']:,} calls, {sweep['fds_min']}..{sweep['fds_max']} during them "
            f"(scanner cache cap {sweep['max_fds']}; {sweep['fds_start']} fds before the "
            f"Reader, {sweep['fds_after_close']} after close)")
    _bpf_targets(R, plan, add)
    return out


def _bpf_targets(R, plan, add):
    from . import bpf_case as b

    ncg, per = b.sizes(plan)[0]
    sec = f"6. bpf at {ncg}x{per}"
    note = "" if not plan.quick else f" [quick size {ncg}x{per}, target is 200x50]"
    row, floor = R.row(sec, b.BPF_SWEEP), R.row(sec, b.F_PASS)
    texts = ("v2 bpf node sweep 200x50 <= 3 ms", "v2 bpf node sweep >= 15x faster than the scan sweep",
             "v2 bpf node sweep <= 1.3x the raw pass from C")
    if row is None:
        for t in texts:
            add(t, None, "case did not run")
        return
    faster = R.ratio(sec, b.SCAN_SWEEP, b.BPF_SWEEP)
    x = R.ratio(sec, b.BPF_SWEEP, b.F_PASS)
    add(texts[0], row.median_ns <= 3 * c.MS, f"{row.median_ns / c.MS:.2f} ms{note}")
    add(texts[1], faster >= 15, f"{faster:.1f}x (scan {R.row(sec, b.SCAN_SWEEP).median_ns / c.MS:.2f} ms){note}")
    add(texts[2], x <= 1.3, f"{x:.2f}x (floor {floor.median_ns / c.MS:.2f} ms){note}")
    sizes = b.sizes(plan)
    if len(sizes) > 1:
        big = R.row(f"6. bpf at {sizes[1][0]}x{sizes[1][1]}", b.BPF_SWEEP)
        if big is not None:
            lin = big.per_thread_ns / row.per_thread_ns
            add(f"v2 bpf sweep linear to {sizes[1][0] * sizes[1][1]:,} threads (per-thread cost "
                f"<= 1.3x that at {ncg * per:,})", lin <= 1.3,
                f"{lin:.2f}x ({big.per_thread_ns:.0f} vs {row.per_thread_ns:.0f} ns/thread)")


def targets_text(items, results):
    lines = ["Targets"]
    width = max(len(t) for t, _, _ in items)
    for text, status, figure in items:
        lines.append(f"  {status:<12} {text.ljust(width)}  {figure}")
    exp = results.resources.get("exporter")
    if exp:
        if "skipped" in exp:
            lines.append(f"  {'info':<12} exporter: {exp['skipped']}")
        else:
            lines.append(f"  {'info':<12} exporter VmHWM {exp['vmhwm_kb'] / 1024:.1f} MB after "
                         f"{exp['scrapes']} scrapes ({exp['metrics_bytes']:,} bytes each)")
    return "\n".join(lines)


def write_json(path, results, plan, items, argv):
    data = {
        "machine": machine(),
        "command": "python -m benchmarks " + " ".join(argv),
        "plan": dataclasses.asdict(plan),
        "rows": [dataclasses.asdict(r) for r in results.rows],
        "rounds_ns": results.groups,
        "resources": results.resources,
        "targets": [{"target": t, "status": s, "figure": f} for t, s, f in items],
        "notes": results.notes,
        "errors": [{"case": n, "error": e} for n, e in results.errors],
    }
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def plot(path, results):
    """Per-thread cost against thread count (log-log), from the case-3 groups, and the
    bpf node sweep (case 6: every thread of 200 cgroups in one pass) beside them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [
        (c.NAIVE, "naive Python: open+read+close /proc/<tid>/stat", "tab:red", "v-"),
        (c.F_ORC, "floor: openat+read+close task/<tid>/stat (C)", "tab:gray", "s--"),
        (c.SCAN, "cgshim scan (Reader.cpu_load, cgroup2)", "tab:blue", "o-"),
        (c.F_SCAN, "floor: list + pread held fds + psi (C)", "tab:cyan", "d--"),
        (c.F_PREAD, "floor: pread on held fds (C)", "black", "x:"),
        (c.NETLINK, "cgshim netlink (Reader.cpu_load, v1)", "tab:green", "^-"),
        (c.F_CGS, "floor: CGROUPSTATS held fd (C)", "tab:olive", "+--"),
        (bpf_case.BPF_SWEEP, "cgshim bpf node sweep (Reader.sweep, 200 cgroups)", "tab:purple", "*-"),
        (bpf_case.F_PASS, "floor: bpf pass open+read+close (C)", "tab:pink", "*--"),
    ]
    points = {}
    for r in results.rows:
        if r.section.startswith(("3. scan at", "6. bpf at")) and r.threads:
            points.setdefault(r.name, []).append((r.threads, r.per_thread_ns / 1000))
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(8, 6.4), dpi=100)
    for name, label, color, style in series:
        pts = sorted(points.get(name, []))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=label,
                    linewidth=1.6, markersize=6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("threads read (one cgroup; the bpf rows: all threads of the sweep)")
    ax.set_ylabel("cost per thread per reading (us, median)")
    ax.set_title("Reading one cgroup's task states: cost per thread")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    u = os.uname()
    fig.text(0.01, 0.01, f"Linux {u.release}, {os.cpu_count()} cores; median thread CPU time "
             f"per reading / threads; python -m benchmarks", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return True
