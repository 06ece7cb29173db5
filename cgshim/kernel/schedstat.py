"""The per-thread scheduler clocks: /proc/<pid>/task/<tid>/schedstat, and the thread's start
time from /proc/<pid>/task/<tid>/stat.

schedstat is written by proc_pid_schedstat() (fs/proc/base.c; the file exists when the kernel
has CONFIG_SCHED_INFO, which CONFIG_TASK_DELAY_ACCT and CONFIG_SCHEDSTATS select; mode 0444)::

    seq_printf(m, "%llu %llu %lu\\n", task->se.sum_exec_runtime,
               task->sched_info.run_delay, task->sched_info.pcount);

- ``sum_exec_runtime``: nanoseconds the thread has run on a CPU (CFS/EEVDF accounting,
  update_curr() in kernel/sched/fair.c). For a thread on a CPU at the moment of the read it
  is up to one tick stale: the read does not call update_curr().
- ``run_delay``: nanoseconds the thread has been runnable but waiting on a runqueue. It is
  credited by sched_info_arrive() (kernel/sched/stats.h) when the thread gets a CPU, so a
  wait in progress is not counted until the thread next runs.
- ``pcount``: how many times it got a CPU.

(kernel/sched/stats.c show_schedstat() writes the system-wide /proc/schedstat, per CPU:
the runqueue sums of the same two clocks; not read here.)

Both clocks only grow for the life of a task, and a task's sum of the two is the time it
has spent in TASK_RUNNING (on a CPU or queued for one). Summed over a cgroup's threads,
Δ(run + run_delay) / Δt is the exact average number of runnable threads over Δt.

``starttime`` is field 22 of the stat line (fs/proc/array.c do_task_stat():
``nsec_to_clock_t(timens_add_boottime_ns(task->start_boottime))``): clock ticks (USER_HZ,
``os.sysconf("SC_CLK_TCK")``) since boot, in this reader's time namespace. With the tid it
tells a thread from a later one that reuses its tid.

- :func:`parse_schedstat` / :func:`parse_stat_starttime`: pure parsers on bytes.
- :func:`read_thread` / :func:`read_threads`: thin readers, open/read/close per file (the C
  scanner reads the same files through held fds).
"""
import errno
import os
import time

import attrs

from cgshim.errors import CgshimError, ParseError, PermissionDenied

__all__ = ["CLK_TCK", "Schedstat", "ThreadClock", "boot_ticks", "parse_schedstat",
           "parse_stat_starttime", "read_thread", "read_threads"]

#: USER_HZ: the unit of stat's starttime (fs/proc/array.c nsec_to_clock_t)
CLK_TCK = os.sysconf("SC_CLK_TCK")

_U64 = (1 << 64) - 1
# Long enough for a stat line up to field 22: pid, comm (<= 64 bytes), then 19 numbers of at
# most 20 digits each; the C scanner reads the same prefix.
STAT_PREFIX = 512
_SCHEDSTAT_MAX = 128  # three u64 (<= 20 digits each), two spaces and a newline
_GONE = (errno.ENOENT, errno.ESRCH)


@attrs.frozen
class Schedstat:
    """One thread's /proc/<pid>/task/<tid>/schedstat, in nanoseconds (see the module doc)."""

    run_ns: int  # se.sum_exec_runtime
    wait_ns: int  # sched_info.run_delay
    timeslices: int  # sched_info.pcount


@attrs.frozen
class ThreadClock:
    """What the runnable-time tracker needs of one thread at one read."""

    tid: int
    starttime: int  # clock ticks since boot (stat field 22)
    run_ns: int
    wait_ns: int


def _decimal(token: bytes, what: str, data: bytes) -> int:
    if not token or not token.isdigit():
        raise ParseError(f"{what}: {token[:24]!r} is not a decimal number in {data[:80]!r}")
    value = int(token)
    if value > _U64:
        raise ParseError(f"{what}: {token[:24]!r} does not fit in 64 bits")
    return value


def parse_schedstat(data: bytes) -> Schedstat:
    """Parse one schedstat file: exactly three decimal numbers separated by single spaces,
    with an optional final newline, as proc_pid_schedstat() prints them. Anything else
    (truncated, extra fields, signs, blanks, non-digits, > 2**64-1) raises ParseError."""
    if data.endswith(b"\n"):
        data = data[:-1]
    parts = data.split(b" ")
    if len(parts) != 3:
        raise ParseError(f"not a schedstat line (want 3 numbers 'run run_delay pcount'): {data[:80]!r}")
    run, wait, count = (_decimal(p, "schedstat", data) for p in parts)
    return Schedstat(run_ns=run, wait_ns=wait, timeslices=count)


def parse_stat_starttime(data: bytes) -> int:
    """Field 22 (starttime, clock ticks since boot) of a /proc/<pid>[/task/<tid>]/stat line, or
    of a prefix of it that reaches field 22.

    Fields are counted after the *last* ')' (comm, field 2, may hold spaces and ')'): the state
    is field 3, so starttime is the 20th token after it. Raises ParseError if there is no ')',
    fewer tokens, or the token is not a decimal number.
    """
    end = data.rfind(b")")
    if end < 0:
        raise ParseError(f"not a /proc stat line (no ')' closing the comm): {data[:80]!r}")
    rest = data[end + 1:]
    tokens = rest.split(None, 20)  # state (field 3) .. starttime (22), then the rest
    # Field 22 is complete only if something follows it: field 23 or the line's end. A
    # prefix cut inside it would otherwise give a wrong (shorter) number.
    if len(tokens) < 20 or (len(tokens) == 20 and rest[-1:] not in (b" ", b"\n", b"\t")):
        raise ParseError(f"stat line ends before field 22 (starttime) is complete: {data[:80]!r}...")
    start = tokens[19]
    return _decimal(start, "stat field 22 (starttime)", data)


def boot_ticks() -> int:
    """Now, in starttime's unit: CLOCK_BOOTTIME in clock ticks (rounded down, as
    nsec_to_clock_t rounds a thread's start time down)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) * CLK_TCK // 1_000_000_000


def _read_at(dir_fd, name, size):
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=dir_fd)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def read_thread(tid: int, proc_root: str = "/proc", *, dir_fd=None) -> "ThreadClock | None":
    """Read one thread's clocks: its stat (for starttime) and schedstat files under
    ``<proc_root>/<tid>/task/<tid>/``. None if the thread has exited (ENOENT/ESRCH, also
    between the two reads); PermissionDenied (EACCES/EPERM); ParseError on garbage.

    The two files are read one after the other, not atomically; both belong to the same
    task as long as that task lives (a tid is reused only after its task is reaped), so a
    reused tid can only make the pair come from two tasks if the first task died in between
    -- and then its stat would have answered ESRCH first, or its schedstat does.
    """
    own = dir_fd is None
    if own:
        dir_fd = os.open(proc_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        base = f"{int(tid)}/task/{int(tid)}/"
        stat = _read_at(dir_fd, base + "stat", STAT_PREFIX)
        sched = _read_at(dir_fd, base + "schedstat", _SCHEDSTAT_MAX)
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise PermissionDenied(f"{proc_root}/{tid}/task/{tid}: {exc.strerror}") from exc
        raise CgshimError(f"{proc_root}/{tid}/task/{tid}: {exc}") from exc
    finally:
        if own:
            os.close(dir_fd)
    clocks = parse_schedstat(sched)
    return ThreadClock(tid=int(tid), starttime=parse_stat_starttime(stat),
                       run_ns=clocks.run_ns, wait_ns=clocks.wait_ns)


def read_threads(tids, proc_root: str = "/proc") -> list:
    """:func:`read_thread` for each tid (one proc root fd for all); exited threads are left
    out."""
    dir_fd = os.open(proc_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        out = []
        for tid in tids:
            clock = read_thread(tid, proc_root, dir_fd=dir_fd)
            if clock is not None:
                out.append(clock)
        return out
    finally:
        os.close(dir_fd)
