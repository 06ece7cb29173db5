"""A clean process for the resource figures: ``python -m benchmarks.child sweep``.

Reads ``{"paths": [...], "calls": N, "sweeps": K}`` as JSON on stdin, and with one
Reader: sweeps every path K times (peak RSS of the sweep), counts its open fds, makes N
more cpu_load calls cycling over the paths, counts the fds again. Prints JSON: VmHWM in
kB after start-up, after the sweeps and at the end; the fd counts before and after the
calls, and their least and greatest value sampled 50 times during the calls.
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
    with Reader() as reader:
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


def main():
    if sys.argv[1:] != ["sweep"]:
        sys.exit("usage: python -m benchmarks.child sweep < spec.json")
    print(json.dumps(sweep(json.load(sys.stdin))))


if __name__ == "__main__":
    main()
