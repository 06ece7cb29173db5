"""The one model: value types every backend produces and every consumer reads.

- :class:`TaskCounts` -- task counts of one cgroup, in one field order everywhere
  (nr_running, nr_sleeping, nr_uninterruptible, nr_stopped, nr_io_wait).
- :class:`CpuLoad` -- one reading: the counts, CPU pressure, and which backend and which
  implementation produced them.
- :class:`BackendStatus` -- whether a backend can serve this host, and how
  (:func:`cgshim.backends`).
"""
import collections.abc
import types

import attrs

#: The count fields, in the one order of TaskCounts and CpuLoad.
COUNT_FIELDS = ("nr_running", "nr_sleeping", "nr_uninterruptible", "nr_stopped", "nr_io_wait")


@attrs.frozen
class TaskCounts:
    """Task counts of one cgroup: struct cgroupstats (include/uapi/linux/cgroupstats.h)
    by meaning, in CpuLoad's field order.

    ``nr_io_wait`` is None where the source cannot see it (in_iowait is not in /proc);
    a count not given is 0. Backends that know more (the scanner) subclass this.
    """

    nr_running: int = 0
    nr_sleeping: int = 0
    nr_uninterruptible: int = 0
    nr_stopped: int = 0
    nr_io_wait: "int | None" = None

    def plus(self, other: "TaskCounts") -> "TaskCounts":
        """The sum of two cgroups' counts (a pod as the sum of its containers); a count
        that one side cannot see (None) is None in the sum."""
        return TaskCounts(*(None if a is None or b is None else a + b for a, b in (
            (self.nr_running, other.nr_running), (self.nr_sleeping, other.nr_sleeping),
            (self.nr_uninterruptible, other.nr_uninterruptible),
            (self.nr_stopped, other.nr_stopped), (self.nr_io_wait, other.nr_io_wait))))


@attrs.frozen
class CpuLoad:
    """One reading of a cgroup's task states, and its CPU pressure.

    ``source`` says which backend produced the counts, and with it their exact meaning:

    - ``"netlink"``: the kernel's CGROUPSTATS answer (cgroup v1). Counts are the kernel's
      exact-match classification in cgroupstats_build() (kernel/cgroup/cgroup-v1.c):
      a sleep that carries extra state bits is counted nowhere. On kernels >= 6.1 that
      leaves out *freezable* sleeps (futex waits, nanosleep) from nr_sleeping and
      *killable* D sleeps from nr_uninterruptible, although /proc shows them as S and D.
      The kernel's task iterator can also visit a task that migrates between cgroups during
      the request twice: a transient over-count by the kernel itself.
    - ``"scan"``: the state letter of each of the cgroup's own threads in
      /proc/<tid>/task/<tid>/stat (cgroup v2, or v1 without netlink). R, S, D, T map to
      nr_running, nr_sleeping, nr_uninterruptible, nr_stopped, so every S and D sleeper
      counts, each distinct tid once. ``nr_io_wait`` is None: in_iowait is not visible in
      /proc.
    - ``"bpf"``: the same letters as the scan (cgroup v2), read in the kernel by cgshim's
      BPF iterator (__task_state_index(), include/linux/sched.h) for every cgroup in one
      pass; each of the cgroup's own threads once, as cgroup.threads lists them, also
      those not visible in this pid namespace. ``nr_io_wait`` is None.
    - ``"psi"``: the threads could not be enumerated (no permission, or some not visible
      in this pid namespace), or the caller asked for PSI only: every count is None and
      only ``pressure`` is filled.

    ``implementation`` says which code produced the counts: ``"native"`` (cgshim's C core),
    ``"python"`` (pure Python: the scanner without its C core, and PSI) or ``"pyroute2"``
    (netlink through pyroute2 when the C core does not load). A fallback from the C core is
    never silent: it shows here.

    nr_running and nr_stopped mean the same on every backend (what the load average
    is built from). ``reason`` says why a preferred backend was not used, or is None.

    ``runnable_seconds`` and ``runqueue_seconds`` (exact load, :mod:`cgshim.runnable`):
    counters kept by the Reader, in seconds, of the time the cgroup's own threads spent
    runnable (on a CPU or waiting for one: Σ sum_exec_runtime + run_delay) and waiting on
    a runqueue (Σ run_delay), since this Reader's first reading of the cgroup. They never
    go down for the life of the Reader; Δ/Δt between two readings is the exact average
    number of runnable (waiting) threads (:class:`cgshim.RunnableAverage`). None where the
    backend cannot see the threads' clocks (netlink, psi) and for recursive readings.
    """

    path: str
    cgroup_version: int
    source: str
    nr_running: "int | None"
    nr_sleeping: "int | None"
    nr_uninterruptible: "int | None"
    nr_stopped: "int | None"
    nr_io_wait: "int | None"
    pressure: "object | None"  # cgshim.kernel.psi.Pressure
    timestamp: float
    reason: "str | None" = None
    implementation: "str | None" = None
    runnable_seconds: "float | None" = None
    runqueue_seconds: "float | None" = None

    @property
    def counts(self) -> "TaskCounts | None":
        """The counts as TaskCounts, or None for a PSI-only reading."""
        if self.nr_running is None:
            return None
        return TaskCounts(self.nr_running, self.nr_sleeping, self.nr_uninterruptible,
                          self.nr_stopped, self.nr_io_wait)


@attrs.frozen
class BackendStatus:
    """What :func:`cgshim.backends` says about one backend on this host.

    ``available``: whether it can read cgroups here; ``reason``: why not (None when
    available; also set when available with a fallback implementation, saying why the
    preferred one is not used). ``implementation``: what would read ("native", "python",
    "pyroute2"), None when unavailable. ``cgroup_versions``: the cgroup versions it reads.
    """

    name: str
    available: bool
    implementation: "str | None"
    reason: "str | None"
    cgroup_versions: tuple


class Sweep(collections.abc.Mapping):
    """One pass over a node's cgroups (:meth:`cgshim.Reader.sweep`): a read-only mapping
    from each cgroup's absolute directory to its :class:`CpuLoad`, in the order the pass
    found them (parents before children).

    - ``timestamp``: ``time.monotonic()`` when the pass began (the clock of
      ``CpuLoad.timestamp``); ``duration``: seconds the pass took.
    - ``errors``: cgroup directory -> the typed error (a :class:`cgshim.CgshimError`) that
      cgroup got instead of a reading; e.g. CgroupNotFound for one removed mid-sweep. One
      cgroup failing never fails the sweep. A root that does not exist is here too.
    - ``roots``: each root as given -> its absolute directory.
    - ``warnings``: what the pass could not do as well as it should, in words (e.g. the
      scanner's fd cache cannot hold every thread of the node under RLIMIT_NOFILE, so
      some stat files are opened on every sweep).
    """

    __slots__ = ("_readings", "_errors", "_roots", "_timestamp", "_duration", "_warnings")

    def __init__(self, readings, *, timestamp, duration, errors=None, roots=None, warnings=()):
        self._readings = dict(readings)
        self._errors = types.MappingProxyType(dict(errors or {}))
        self._roots = types.MappingProxyType(dict(roots or {}))
        self._timestamp = float(timestamp)
        self._duration = float(duration)
        self._warnings = tuple(warnings)

    timestamp = property(lambda self: self._timestamp, doc="monotonic time the pass began")
    duration = property(lambda self: self._duration, doc="seconds the pass took")
    errors = property(lambda self: self._errors, doc="cgroup directory -> typed error")
    roots = property(lambda self: self._roots, doc="root as given -> absolute directory")
    warnings = property(lambda self: self._warnings, doc="what the pass could not do well")

    def __getitem__(self, path):
        return self._readings[path]

    def __iter__(self):
        return iter(self._readings)

    def __len__(self):
        return len(self._readings)

    def __contains__(self, path):
        return path in self._readings

    def __repr__(self):
        return (f"<Sweep {len(self._readings)} cgroups, {len(self._errors)} errors, "
                f"{self._duration * 1e3:.2f} ms>")
