"""Accuracy of the exact runnable average against cAdvisor's sampled load, on designed
workloads: ``python -m benchmarks.exact_load [--seconds 60] [--json FILE]`` (root).

Each case runs k processes in one cgroup2 cgroup (tests.support.testbed.PeriodicWorker:
busy by wall clock for d of every period), for a run of ``--seconds`` after a 12 s start. Each
worker measures its own runnable intervals, so the truth over any window is known even when
contention makes workers overrun their design. Every second (at a fixed phase of the second,
as a housekeeping loop ticks) the script:

- reads the cgroup through a cgshim Reader: ``CpuLoad.runnable_seconds`` gives the exact
  average over the last 10 s (``exact10``), fed also to a RunnableAverage (load1);
- takes cAdvisor's sample, nr_running of the same reading, and smooths it as
  ``container_cpu_load_average_10s`` does with a 1 s housekeeping interval (``cad1``); every
  10th sample goes to a tracker with a 10 s interval (``cad10``, kubelet's setting);

and compares each figure with the truth over the 10 s before it (the workers' own
intervals). Printed: mean and worst absolute error over the run, and the mean of each
figure, per case. Not a timing benchmark: the machine may be shared (then workers overrun,
and the truth follows them).
"""
import argparse
import json
import os
import sys
import time

from cgshim import Reader, RunnableAverage
from cgshim.load import LoadTracker
from tests.support.testbed import Testbed, sleep_until

CASES = {
    "3x50% of 1 s, in phase": [(0.5, 1.0, 0.0)] * 3,
    "3x50% of 1 s, staggered": [(0.5, 1.0, i / 3) for i in range(3)],
    "4x100% (2 cores)": [(1.0, 1.0, 0.0)] * 4,
    "5x30% of 130 ms": [(0.3, 0.13, i / 5) for i in range(5)],
    "1x50% of 10 s": [(0.5, 10.0, 0.0)],
}
WARMUP = 12.0  # seconds before the first compared tick: one full 10 s window, and start-up


def run_case(name, workers, seconds, phase=0.3):
    with Testbed(prefix="cgshim-bench-exact-") as bed, Reader() as reader:
        cg = bed.cgroup(2)
        procs = [bed.periodic(d, p, cgroup=cg, phase=ph, seconds=seconds + WARMUP + 2)
                 for d, p, ph in workers]
        start = time.monotonic() + 0.3
        for w in procs:
            w.go(start)
        avg, cad1, cad10 = RunnableAverage(), LoadTracker(1.0), LoadTracker(10.0)
        ticks = []
        n = 0
        while True:
            t_tick = start + phase + n
            if t_tick > start + WARMUP + seconds:
                break
            sleep_until(t_tick)
            load = reader.cpu_load(cg)
            avg.update(load.timestamp, load.runnable_seconds, load.runqueue_seconds,
                       load.nr_uninterruptible)
            cad1.update(load.nr_running)
            if n % 10 == 0:
                cad10.update(load.nr_running)
            ticks.append((load.timestamp, load.runnable_seconds, cad1.load_average,
                          cad10.load_average, avg.load1))
            n += 1
        rows = []
        for i in range(10, len(ticks)):
            t, runnable, c1, c10, load1 = ticks[i]
            if t - start < WARMUP:
                continue
            t0, runnable0 = ticks[i - 10][:2]
            truth = sum(w.runnable_seconds(t0, t) for w in procs) / (t - t0)
            rows.append({"t": t - start, "truth": truth, "exact10": (runnable - runnable0) / (t - t0),
                         "cad1": c1, "cad10": c10, "load1": load1})
    designed = sum(d for d, _, _ in workers)
    out = {"case": name, "designed": designed, "seconds": seconds, "rows": rows}
    for key in ("exact10", "cad1", "cad10"):
        errors = [abs(r[key] - r["truth"]) for r in rows]
        out[key] = {"mean": sum(r[key] for r in rows) / len(rows),
                    "mean_abs_err": sum(errors) / len(errors), "max_abs_err": max(errors)}
    out["truth"] = sum(r["truth"] for r in rows) / len(rows)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.exact_load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="compared run per case (60)")
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="only these cases")
    ap.add_argument("--json", metavar="FILE", help="write every tick's figures as JSON")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root: it creates a cgroup and moves processes into it", file=sys.stderr)
        return 2
    results = []
    print(f"{'case':28} {'designed':>8} {'truth':>6} | {'exact 10s':>17} | {'cAdvisor 1s':>17} | "
          f"{'cAdvisor 10s':>17}")
    print(f"{'':28} {'':>8} {'':>6} | {'mean  |err| max':>17} | {'mean  |err| max':>17} | "
          f"{'mean  |err| max':>17}")
    for name in args.case or list(CASES):
        r = run_case(name, CASES[name], args.seconds)
        results.append(r)
        cells = " | ".join(f"{r[k]['mean']:5.2f} {r[k]['mean_abs_err']:5.2f} {r[k]['max_abs_err']:5.2f}"
                           for k in ("exact10", "cad1", "cad10"))
        print(f"{name:28} {r['designed']:8.2f} {r['truth']:6.2f} | {cells}", flush=True)
    with open("/proc/loadavg") as f:
        print(f"machine: {os.cpu_count()} CPUs, /proc/loadavg at the end: {f.read().strip()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
