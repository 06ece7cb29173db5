"""Clean processes for the benchmarks.

``python -m benchmarks.child sweep`` -- the resource figures:

Reads ``{"paths": [...], "calls": N, "sweeps": K}`` as JSON on stdin, and with one
Reader: sweeps every path K times (peak RSS of the sweep), counts its open fds, makes N
more cpu_load calls cycling over the paths, counts the fds again. Prints JSON: VmHWM in
kB after start-up, after the sweeps and at the end; the fd counts before and after the
calls, and their least and greatest value sampled 50 times during the calls.

``python -m benchmarks.child serve`` -- a timed loop in a process of its own, driven line
by line over stdin/stdout so that the parent interleaves it with its other loops (a loop
of the group like any other). The first line sets it up, as JSON:

- ``{"kind": "sweep", "roots": [...], "wall": false, "runnable": false}``: one Reader
  sweeping ``roots`` (warmed up by three sweeps), with exact load (schedstat clocks) if
  ``runnable`` is true (default false: the bare scan, as the floor reads); answers ``{"ready": ..., "cgroups", "threads", "warnings",
  "errors"}``.
- ``{"kind": "scan_floor", "cgroups": [...], "wall": false}``: benchmarks/floor.c's scan
  floor over those cgroup2 cgroups with every stat fd held.

Then each line ``{"n": N}`` runs the loop N times and answers ``{"ns": elapsed}``, timed
by this process's thread CPU time (or wall time). EOF ends it. Why a process of its own:
RLIMIT_NOFILE is per process, and a sweep of 10,000 threads holds 10,000 stat fds, as its
floor does; both in one process would not fit the hard limit of 20,000 here.
"""
import itertools
import json
import os
import sys


MAX_FDS = 4096  # Reader's default max_fds


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def _fds():
    return len(os.listdir("/proc/self/fd")) - 1  # the listdir's own fd


def sweep(spec):
    from cgshim.kernel.threadstat import effective_max_fds
    from cgshim.reader import Reader

    paths, calls, sweeps = spec["paths"], spec["calls"], spec["sweeps"]
    out = {"fds_start": _fds()}
    with Reader(backends=("netlink", "scan", "psi")) as reader:  # bpf has its own case
        out["vmhwm_start_kb"] = _status_kb("VmHWM")
        for _ in range(sweeps):
            for p in paths:
                reader.cpu_load(p)
        out["vmhwm_sweep_kb"] = _status_kb("VmHWM")
        out["fds_after_warmup"] = _fds()
        seen = []
        every = max(1, calls // 50)
        for i, p in enumerate(itertools.islice(itertools.cycle(paths), calls), 1):
            reader.cpu_load(p)
            if i % every == 0:
                seen.append(_fds())
        out["fds_after_calls"] = _fds()
        out["fds_min"], out["fds_max"] = min(seen, default=0), max(seen, default=0)
        out["max_fds"] = effective_max_fds(MAX_FDS)
        out["calls"] = calls
        out["vmhwm_end_kb"] = _status_kb("VmHWM")
    out["fds_after_close"] = _fds()
    return out


def _raise_nofile():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _serve_sweep(spec):
    import time

    from cgshim.reader import Reader

    clock = time.perf_counter_ns if spec.get("wall") else time.thread_time_ns
    reader = Reader(backends=("netlink", "scan", "psi"),  # bpf has its own case
                    runnable=bool(spec.get("runnable", False)))
    roots = spec["roots"]
    for _ in range(3):
        swept = reader.sweep(roots)
    info = {"cgroups": len(swept), "errors": {p: str(e) for p, e in swept.errors.items()},
            "warnings": list(swept.warnings),
            "sources": sorted({r.source for r in swept.values()}),
            "sleeping": sum(r.nr_sleeping or 0 for r in swept.values()),
            "runnable": sum(r.runnable_seconds is not None for r in swept.values()),
            "running": sum(r.nr_running or 0 for r in swept.values())}

    def loop(n):
        t0 = clock()
        for _ in range(n):
            reader.sweep(roots)
        return clock() - t0
    return loop, info


def _serve_scan_floor(spec):
    import os

    from benchmarks.floors import Floors

    floors = Floors()
    floors.lib.fl_use_clock(int(bool(spec.get("wall"))))
    cgroups = []
    threads = 0
    for c in spec["cgroups"]:
        with open(os.path.join(c, "cgroup.threads")) as f:
            tids = sorted({int(t) for t in f.read().split()})
        threads += len(tids)
        fds = [os.open(f"/proc/{t}/task/{t}/stat", os.O_RDONLY | os.O_CLOEXEC) for t in tids]
        psi = os.open(os.path.join(c, "cpu.pressure"), os.O_RDONLY | os.O_CLOEXEC)
        cgroups.append((os.path.join(c, "cgroup.threads"), psi, fds))
    return floors.scan(cgroups), {"cgroups": len(cgroups), "threads": threads}


def serve():
    _raise_nofile()
    spec = json.loads(sys.stdin.readline())
    make = {"sweep": _serve_sweep, "scan_floor": _serve_scan_floor}[spec["kind"]]
    loop, info = make(spec)
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        n = json.loads(line)["n"]
        print(json.dumps({"ns": loop(n)}), flush=True)


def main():
    if sys.argv[1:] == ["serve"]:
        serve()
        return
    if sys.argv[1:] != ["sweep"]:
        sys.exit("usage: python -m benchmarks.child sweep < spec.json | serve")
    print(json.dumps(sweep(json.load(sys.stdin))))


if __name__ == "__main__":
    main()
