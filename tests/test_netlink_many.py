"""CGROUPSTATS for many cgroups in one native call (cg_nl_cgroupstats_many) on the real
kernel: every answer equals the one-request answer for the same fd, one cgroup's error
never touches another's, and a receive queue that overflows loses no cgroup."""
import errno
import os
import socket
import time

import pytest

from cgshim.errors import NetlinkError
from cgshim.kernel import netlink
from cgshim.model import TaskCounts
from tests.support.require import require_root
from tests.test_netlink import need_native


def _unused_fd():
    """An fd number that is not open in this process (and stays so: nothing opens here)."""
    for fd in range(4000, 8000):
        try:
            os.fstat(fd)
        except OSError:
            return fd
    raise AssertionError("no free fd number")


@pytest.fixture
def tree(testbed):
    """40 v1 cgroups; every fourth holds a worker with pipe sleepers (counted), one busy."""
    need_native()
    top = testbed.cgroup(1)
    cgs = [testbed.cgroup(1, parent=top) for _ in range(40)]
    for i in range(0, 40, 4):
        testbed.spawn(cgroups=[cgs[i]], pipe=i % 3 + 1)
    testbed.spawn(busy=True, cgroups=[cgs[1]])
    fds = [os.open(c, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for c in cgs]
    yield testbed, cgs, fds
    for fd in fds:
        os.close(fd)


def test_many_equals_one_by_one(tree):
    _, cgs, fds = tree
    with netlink.TaskstatsSocket() as sock:
        many = sock.cgroupstats_many(fds)
        one = [sock.cgroupstats(fd) for fd in fds]
    assert all(isinstance(c, TaskCounts) for c in many)
    # sleepers do not change state; the spinner may be caught between R and waiting
    assert [c.nr_sleeping for c in many] == [c.nr_sleeping for c in one]
    assert [c.nr_sleeping for c in many[::4]] == [i % 3 + 2 for i in range(0, 40, 4)]
    assert many[1].nr_running + many[1].nr_sleeping == 1


def test_errors_stay_with_their_cgroup(tree):
    bed, cgs, fds = tree
    v2 = bed.cgroup(2)
    v2fd = os.open(v2, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    closed = _unused_fd()
    try:
        with netlink.TaskstatsSocket() as sock:
            got = sock.cgroupstats_many([fds[0], v2fd, -1, closed, fds[4], fds[8]])
    finally:
        os.close(v2fd)
    assert isinstance(got[0], TaskCounts) and got[0].nr_sleeping == 2
    assert isinstance(got[1], NetlinkError) and got[1].errno == errno.EINVAL
    assert isinstance(got[2], NetlinkError) and got[2].errno == errno.EBADF
    assert isinstance(got[3], NetlinkError) and got[3].errno == errno.EBADF
    assert [got[4].nr_sleeping, got[5].nr_sleeping] == [3, 4]


def test_removed_cgroup_answers_enoent_alone(tree):
    bed, cgs, fds = tree
    os.rmdir(cgs[2])  # empty: removable while we hold its fd
    # Dying, it answers all zeros until the kernel frees it after RCU grace periods:
    # 30-48 ms measured on this VM, longer on a loaded one, so wait by the clock.
    deadline = time.monotonic() + 20
    with netlink.TaskstatsSocket() as sock:
        while True:
            got = sock.cgroupstats_many(fds)
            if isinstance(got[2], NetlinkError):
                break
            assert got[2] == TaskCounts(0, 0, 0, 0, 0)
            assert time.monotonic() < deadline, "removed cgroup never answered ENOENT"
            time.sleep(0.002)
    assert got[2].errno == errno.ENOENT
    assert all(isinstance(c, TaskCounts) for i, c in enumerate(got) if i != 2)
    assert got[0].nr_sleeping == 2


@pytest.mark.parametrize("window", [1, 3, 40, 1024])
def test_overflowing_queue_loses_nothing(tree, window):
    """A 4 KiB receive buffer holds ~5 answers: windows of 40 and 1024 overflow it, the
    kernel drops answers (ENOBUFS), and the dropped cgroups are asked again."""
    _, _, fds = tree
    with netlink.TaskstatsSocket() as sock:
        want = sock.cgroupstats_many(fds)  # also sets the large buffer once
        sk = socket.socket(fileno=sock._fd)
        try:
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        finally:
            sk.detach()
        for _ in range(3):
            got = sock.cgroupstats_many(fds * 3, window=window)
            assert [c.nr_sleeping for c in got] == [c.nr_sleeping for c in want] * 3
        # and the socket still serves single requests afterwards (no stale answers)
        assert sock.cgroupstats(fds[4]).nr_sleeping == 3


def test_empty_and_bad_arguments():
    need_native()
    require_root()
    with netlink.TaskstatsSocket() as sock:
        assert sock.cgroupstats_many([]) == []
        assert [e.errno for e in sock.cgroupstats_many([-5, 2**31 - 1])] == [errno.EBADF] * 2
    with pytest.raises(NetlinkError) as exc:
        sock.cgroupstats_many([0])
    assert exc.value.errno == errno.EBADF
