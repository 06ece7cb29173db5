"""Rounds, interleaving and the statistics of one table row.

A *group* is a set of timed loops that do comparable work: cgshim's path, its floor,
its peer. Every round runs each loop once, in an order shuffled from round to round, so
all of them see the same drift of a shared machine; each timed run is preceded by an
untimed tenth of it, so that no loop pays for the caches the loop before it cooled
(the naive peers walk every thread of a process for each /proc/<tid>/stat they read). A row's figure is the median of its
per-call times over the rounds; its ratio to another loop of the group is the median of
the per-round ratios (round i against round i), which cancels drift between rounds.
"""
import random
import statistics
import time


# The clock of every loop: this thread's CPU time (user + system), which leaves out the
# time the harness waited while other processes ran on the shared cores; see use_clock.
_clock = time.thread_time_ns


def use_clock(wall):
    """Time Python loops by wall time (``time.perf_counter_ns``) or, by default, by this
    thread's CPU time. Every path measured here runs on the calling thread without
    sleeping (the kernel answers netlink requests inside send()), so on an idle machine
    both clocks agree; on a busy one CPU time leaves out the waits for a core."""
    global _clock
    _clock = time.perf_counter_ns if wall else time.thread_time_ns


def wall():
    """True if loops are timed by wall time (``--wall``)."""
    return _clock is time.perf_counter_ns


def timed(call, *args):
    """A loop of ``n`` calls of ``call(*args)`` -> nanoseconds, timed in Python."""
    def run(n):
        clock = _clock
        t0 = clock()
        for _ in range(n):
            call(*args)
        return clock() - t0
    return run


def calibrate(loop, target_ns, max_n=1_000_000):
    """An iteration count that makes ``loop`` take about ``target_ns``; also warms it up."""
    n = 1
    while True:
        took = loop(n)
        if took >= target_ns / 4 or n >= max_n:
            return max(1, min(max_n, round(n * target_ns / max(took, 1))))
        n *= 4


def run_group(loops, rounds, target_ns):
    """Run ``loops`` (name -> loop) interleaved; return name -> per-call ns, one per round."""
    names = list(loops)
    counts = {name: calibrate(loops[name], target_ns) for name in names}
    for name in names:  # one warm round at the calibrated size, not recorded
        loops[name](counts[name])
    per_call = {name: [] for name in names}
    order = random.Random(len(names))  # the same orders on every run
    for _ in range(rounds):
        order.shuffle(names)
        for name in names:
            loops[name](max(1, counts[name] // 10))
            per_call[name].append(loops[name](counts[name]) / counts[name])
    return per_call


def summary(values):
    """(median, q1, q3) of a list of numbers."""
    if len(values) < 2:
        v = values[0]
        return v, v, v
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q1, q3


def paired_ratio(top, bottom):
    """Median over rounds of top[i] / bottom[i]."""
    return statistics.median(t / b for t, b in zip(top, bottom))
