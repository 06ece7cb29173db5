"""schedstat: the parsers of /proc/<pid>/task/<tid>/schedstat and of stat's starttime (field
22), property-tested, and the thin reader on this process's own threads (no root needed)."""
import os
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from cgshim.errors import ParseError
from cgshim.kernel.schedstat import (
    CLK_TCK, STAT_PREFIX, Schedstat, boot_ticks, parse_schedstat, parse_stat_starttime,
    read_thread, read_threads,
)

U64 = st.integers(0, 2**64 - 1)


@given(U64, U64, U64, st.booleans())
def test_schedstat_round_trip(run, wait, count, newline):
    data = b"%d %d %d" % (run, wait, count) + (b"\n" if newline else b"")
    assert parse_schedstat(data) == Schedstat(run, wait, count)


@pytest.mark.parametrize("data", [
    b"", b"\n", b"1 2", b"1 2\n", b"1 2 3 4\n", b"1  2 3\n", b" 1 2 3\n", b"1 2 3 \n",
    b"-1 2 3\n", b"+1 2 3\n", b"1 2 x\n", b"1 2 3\n\n", b"18446744073709551616 0 0\n",
    b"1\t2 3\n", b"0 0 0\x00",
])
def test_schedstat_rejects_what_the_kernel_never_prints(data):
    with pytest.raises(ParseError):
        parse_schedstat(data)


@given(st.binary(max_size=64))
def test_schedstat_garbage_is_parse_error_or_three_numbers(data):
    try:
        got = parse_schedstat(data)
    except ParseError:
        return
    assert b"%d %d %d" % (got.run_ns, got.wait_ns, got.timeslices) == data.rstrip(b"\n")


COMM = st.binary(min_size=0, max_size=64).filter(lambda c: b"\x00" not in c)


def _stat_line(pid, comm, start, state=b"R"):
    # fields 4..21 (18 numbers), 22 = starttime, then vsize and more
    before = b" ".join(b"%d" % n for n in range(4, 22))
    return b"%d (%s) %s %s %d 123456 789 0 0\n" % (pid, comm, state, before, start)


@given(st.integers(1, 2**22), COMM, U64)
def test_starttime_after_any_comm(pid, comm, start):
    """comm may hold spaces, ')' and newlines: only the last ')' ends it."""
    assert parse_stat_starttime(_stat_line(pid, comm, start)) == start


@given(COMM, U64, st.data())
def test_starttime_of_a_prefix_is_exact_or_an_error(comm, start, data):
    """A prefix cut anywhere either still holds the whole of field 22 or is a ParseError:
    never a shorter (wrong) number."""
    line = _stat_line(7, comm, start)
    cut = data.draw(st.integers(0, len(line)))
    try:
        got = parse_stat_starttime(line[:cut])
    except ParseError:
        return
    assert got == start


def test_starttime_of_the_real_stat_file_and_the_prefix_length():
    with open(f"/proc/self/task/{threading.get_native_id()}/stat", "rb") as f:
        line = f.read()
    assert parse_stat_starttime(line) == int(line[line.rindex(b")") + 1:].split()[19])
    assert parse_stat_starttime(line[:STAT_PREFIX]) == parse_stat_starttime(line)
    # the thread started before now, in the same clock
    assert parse_stat_starttime(line) <= boot_ticks()


def test_read_thread_clocks_grow_while_spinning_and_exited_is_none():
    tid = threading.get_native_id()
    t0 = time.monotonic()
    first = read_thread(tid)
    end = t0 + 0.05
    while time.monotonic() < end:
        pass
    second = read_thread(tid)
    elapsed = time.monotonic() - t0
    assert second.tid == tid and second.starttime == first.starttime
    assert second.run_ns > first.run_ns and second.wait_ns >= first.wait_ns
    # A spinning thread is runnable all the time: on a CPU or waiting for one, however busy
    # the machine. Both reads ran on this thread (no wait in progress); sum_exec_runtime of
    # a running thread may lag by up to a tick (<= 10 ms at HZ=100) at either read.
    gained = (second.run_ns + second.wait_ns - first.run_ns - first.wait_ns) / 1e9
    assert elapsed - 0.011 <= gained <= elapsed + 0.011

    box = []
    t = threading.Thread(target=lambda: box.append(threading.get_native_id()))
    t.start()
    t.join()
    # join() returns when the thread has finished its Python part; the kernel task goes a
    # moment later: wait for it (polling, no fixed sleep).
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/self/task/{box[0]}") and time.monotonic() < deadline:
        time.sleep(0.001)
    assert read_thread(box[0]) is None
    assert [c.tid for c in read_threads([box[0], tid])] == [tid]


def test_boot_ticks_is_uptime():
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    assert abs(boot_ticks() / CLK_TCK - uptime) < 1.0
