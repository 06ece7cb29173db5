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
