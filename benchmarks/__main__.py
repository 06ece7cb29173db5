"""``python -m benchmarks [--quick] [--json FILE] [--plot FILE]`` (see benchmarks/__init__.py)."""
import argparse
import os
import resource
import signal
import sys
import time
import traceback


def _raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard limit, as a node agent would run: the floors hold
    one fd per thread, and cgshim's scanner caps its fd cache at a quarter of the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="fewer rounds and sizes (10 and 1000 threads, sweep 20x50, 10k calls)")
    ap.add_argument("--json", metavar="FILE", help="write every figure and round as JSON")
    ap.add_argument("--plot", metavar="FILE", help="write a PNG of cost per thread vs threads")
    ap.add_argument("--wall", action="store_true",
                    help="time by wall clock instead of the thread's CPU time")
    ap.add_argument("--only", metavar="CASE", action="append",
                    help="run only these cases (v1, taskstats, scan, sweep, bpf); repeatable")
    args = ap.parse_args(argv)

    if os.geteuid() != 0:
        print("python -m benchmarks needs root: it creates cgroups and moves threads into them",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm)

    from cgshim import _native

    from . import cases, measure, report
    from .floors import Floors

    missing = [n for n in ("netlink", "procscan") if getattr(_native, n) is None]
    if missing:
        print(f"the C core is not built ({', '.join(missing)}): run "
              f"`python cgshim/_native/build.py` first", file=sys.stderr)
        return 2

    plan = cases.Plan.make(args.quick)
    measure.use_clock(args.wall)
    soft, _ = _raise_nofile()
    results = cases.Results()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    t0 = time.monotonic()
    floors = Floors()
    floors.lib.fl_use_clock(int(args.wall))
    ctx = cases.Context(plan, floors, results, log)
    clock = "wall clock" if args.wall else "thread CPU time"
    log(f"measuring {report.source_state()}")
    log(f"floors built; RLIMIT_NOFILE {soft}; {'quick' if plan.quick else 'full'} run, "
        f"{plan.rounds} rounds per group, timed by {clock}")
    try:
        for name, case in cases.CASES:
            if args.only and not any(o in name for o in args.only):
                continue
            log(f"case {name} ...")
            t = time.monotonic()
            try:
                case(ctx)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # the other cases still run; the exit status says so
                results.errors.append((name, f"{type(exc).__name__}: {exc}"))
                log(traceback.format_exc())
            log(f"  {time.monotonic() - t:.1f} s")
    except KeyboardInterrupt:
        log("interrupted: test beds were cleaned up")
        return 130
    finally:
        ctx.close()
        floors.close()

    items = report.targets(results, plan)
    print(report.table(results))
    print()
    print(report.targets_text(items, results))
    for note in results.notes:
        print(f"note: {note}")
    for name, err in results.errors:
        print(f"ERROR in case {name}: {err}")
    print(f"\n{'quick' if plan.quick else 'full'} run in {time.monotonic() - t0:.0f} s, "
          f"{plan.rounds} interleaved rounds per group, timed by {clock}; medians over rounds; "
          f"ratios are medians of per-round ratios: 'x floor' = case / floor, "
          f"'peer slower x' = peer / case")
    if args.json:
        report.write_json(args.json, results, plan, items, argv)
    if args.plot:
        if not report.plot(args.plot, results):
            print("no scan figures to plot", file=sys.stderr)
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
