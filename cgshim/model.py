"""Value types shared by every backend."""
import attrs


@attrs.frozen
class TaskCounts:
    """Task counts of one cgroup, as struct cgroupstats (include/uapi/linux/cgroupstats.h)."""

    nr_sleeping: int
    nr_running: int
    nr_stopped: int
    nr_uninterruptible: int
    nr_io_wait: int


@attrs.frozen
class CpuLoad:
    """One reading of a cgroup's task states, and its CPU pressure.

    ``source`` says how the counts were obtained, and with it their exact meaning:

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
    - ``"psi"``: the threads could not be enumerated (no permission, or some not visible
      in this pid namespace): every count is None and only ``pressure`` is filled.

    nr_running and nr_stopped mean the same on every backend (what the load average
    is built from). ``reason`` says why a preferred backend was not used, or is None.
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
