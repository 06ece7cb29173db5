"""cgshim's benchmark harness: ``python -m benchmarks [--quick] [--json FILE] [--plot FILE]``.

Builds real cgroups and threads with :mod:`tests.support.testbed` (v1 ``cpu`` and cgroup2 on a
hybrid host; needs root), times each cgshim path interleaved with its floor -- the bare
syscalls in C, benchmarks/floor.c, compiled at run time -- and with the peer a user would
otherwise reach for, then prints one table and the targets of issue 5 as MET / NOT MET.
Exits non-zero only when a case errors, never because of a ratio. See BENCHMARKS.md.

- :mod:`benchmarks.floors` -- cffi build of floor.c and its wrappers
- :mod:`benchmarks.measure` -- rounds, interleaving, medians and paired ratios
- :mod:`benchmarks.cases` -- the cases and their test beds
- :mod:`benchmarks.report` -- table, targets, JSON, plot
- :mod:`benchmarks.child` -- the clean process of the resource figures
"""
