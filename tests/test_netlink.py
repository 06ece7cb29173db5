"""cgshim.kernel.netlink against the real kernel: TASKSTATS family, taskstats, cgroupstats.

Ground truth comes from the kernel itself (a raw AF_NETLINK query made here with the
socket module, /proc) and from test-bed threads pinned in known states.
"""
import errno
import gc
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from cgshim import _native
from cgshim.kernel import netlink
from cgshim.errors import CgshimError, NetlinkError, NetlinkTimeout
from cgshim.model import TaskCounts
from tests.support.require import require_kernel, require_root

# --- a minimal netlink client on Python's socket module (independent of the C core) ---
NETLINK_GENERIC = 16
NETLINK_CONNECTOR = 11
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 3, 1, 2
TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_ATTR_PID, TASKSTATS_CMD_ATTR_TGID = 1, 2
CGROUPSTATS_CMD_GET, CGROUPSTATS_CMD_ATTR_FD = 4, 1


def nla(attr_type, payload):
    """One netlink attribute, padded to 4 bytes."""
    raw = struct.pack("=HH", 4 + len(payload), attr_type) + payload
    return raw + b"\0" * (-len(raw) % 4)


def nlmsg(msg_type, payload, *, flags=0, seq=1, pid=0):
    return struct.pack("=IHHII", 16 + len(payload), msg_type, flags, seq, pid) + payload


def genl(cmd, version=1):
    return struct.pack("=BBH", cmd, version, 0)


def split_messages(data):
    off = 0
    while off + 16 <= len(data):
        (length,) = struct.unpack_from("=I", data, off)
        if length < 16 or off + length > len(data):
            raise AssertionError(f"kernel sent a bad netlink frame at {off}: {data!r}")
        yield data[off:off + length]
        off += (length + 3) & ~3


def raw_exchange(msg_type, cmd, attrs, *, seq=7, sock=None, timeout=5.0):
    """Send one request with NLM_F_ACK; return (reply messages, final NLMSG_ERROR message)."""
    own = sock is None
    if own:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        sock.bind((0, 0))
    try:
        sock.settimeout(timeout)
        body = genl(cmd) + b"".join(nla(t, p) for t, p in attrs)
        sock.sendto(nlmsg(msg_type, body, flags=NLM_F_REQUEST | NLM_F_ACK, seq=seq), (0, 0))
        replies = []
        while True:
            for msg in split_messages(sock.recv(1 << 16)):
                _, mtype, _, mseq, _ = struct.unpack_from("=IHHII", msg)
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    return replies, msg
                replies.append(msg)
    finally:
        if own:
            sock.close()


def attrs_of(buf):
    """{type: payload} of a flat attribute list."""
    out, off = {}, 0
    while off + 4 <= len(buf):
        length, attr_type = struct.unpack_from("=HH", buf, off)
        out[attr_type & 0x3FFF] = buf[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def raw_family_id():
    replies, ack = raw_exchange(GENL_ID_CTRL, CTRL_CMD_GETFAMILY,
                                [(CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0")])
    assert struct.unpack_from("=i", ack, 16)[0] == 0 and len(replies) == 1
    (family,) = struct.unpack("=H", attrs_of(replies[0][20:])[CTRL_ATTR_FAMILY_ID])
    return family


def need_native():
    require_kernel(_native.netlink is not None,
                   f"native netlink extension not built: {_native.load_errors.get('netlink')}")


def kernel_at_least(major, minor):
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def open_fds():
    return set(os.listdir("/proc/self/fd"))


def unused_fd():
    """A high fd number that is not open (and that new fds will not take soon)."""
    for fd in range(900, 1000):
        try:
            os.fstat(fd)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return fd
    pytest.fail("no unused fd number in 900..999")


@pytest.fixture
def sock():
    need_native()
    with netlink.TaskstatsSocket(timeout=2.0) as s:
        yield s


# --- family ----------------------------------------------------------------------------

@pytest.mark.kernel
def test_family_id_matches_raw_query(sock):
    assert sock.family_id == raw_family_id()
    assert sock.family_id == sock.family_id  # cached, still the same


@pytest.mark.kernel
def test_stale_family_id_is_looked_up_again(sock):
    real = sock.family_id
    # An id no family has: the kernel answers ENOENT, the socket re-resolves once.
    sock._family = 0xFFF0
    assert sock.taskstats(os.getpid()).ac_pid == os.getpid()
    assert sock.family_id == real


# --- taskstats -------------------------------------------------------------------------

@pytest.mark.kernel
def test_taskstats_of_self(sock):
    require_root()
    pid = os.getpid()
    st = sock.taskstats(pid)
    with open("/proc/self/comm") as f:
        comm = f.read().rstrip("\n")
    assert st.ac_pid == pid
    assert st.ac_comm == comm
    assert st.version >= 8
    raw = sock.taskstats_raw(pid)
    assert (raw.id, raw.is_tgid) == (pid, False)
    assert struct.unpack_from("=H", raw.payload)[0] == st.version
    assert len(raw.payload) == st.payload_size >= 328


@pytest.mark.kernel
def test_module_level_taskstats_and_open_socket():
    need_native()
    require_root()
    assert netlink.taskstats(os.getpid()).ac_pid == os.getpid()
    s = netlink.open_socket(timeout=1.0)
    try:
        assert isinstance(s, netlink.TaskstatsSocket)
        assert s.taskstats(os.getpid(), tgid=True).ac_comm is not None
    finally:
        s.close()


@pytest.mark.kernel
def test_tgid_stats_sum_of_threads(sock, testbed):
    # A stopped process: no thread runs or switches while we read, so the additive
    # fields of the TGID answer (fill_stats_for_tgid: live threads' nvcsw, nivcsw,
    # ac_utime, ac_stime, delay counts; none of its threads ever exited) must equal
    # the sum of the per-thread answers exactly.
    w = testbed.spawn(busy=True, pipe=2, poll=1, futex=1)
    deadline = time.monotonic() + 10
    while sock.taskstats(w.pid).ac_utime == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # let the busy main thread accumulate measurable CPU time
    w.stop()
    group = sock.taskstats(w.pid, tgid=True)
    threads = [sock.taskstats(tid) for tid in w.tids]
    assert len(threads) == 5
    assert {t.ac_pid for t in threads} == set(w.tids)
    for field in ("nvcsw", "nivcsw", "ac_utime", "ac_stime", "cpu_count"):
        assert getattr(group, field) == sum(getattr(t, field) for t in threads), field
    assert group.ac_utime > 0
    raw = sock.taskstats_raw(w.pid, tgid=True)
    assert (raw.id, raw.is_tgid) == (w.pid, True)


@pytest.mark.kernel
def test_taskstats_of_missing_pid_is_esrch(sock):
    require_root()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no task (unless reused at once)
    if os.path.exists(f"/proc/{child.pid}"):
        pytest.skip("pid reused immediately")
    for tgid in (False, True):
        with pytest.raises(NetlinkError) as info:
            sock.taskstats(child.pid, tgid=tgid)
        assert info.value.errno == errno.ESRCH
    # the socket is still usable after an error
    assert sock.taskstats(os.getpid()).ac_pid == os.getpid()


# --- cgroupstats -----------------------------------------------------------------------

def _dirfd(path):
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


@pytest.mark.kernel
def test_cgroupstats_counts_known_threads(sock, testbed):
    cg = testbed.cgroup(1)
    busy = [testbed.spawn(busy=True, cgroups=[cg]) for _ in range(2)]
    stopped = testbed.spawn(pipe=2, cgroups=[cg])
    stopped.stop()
    # main thread in a pipe read + 2 pipe + 2 poll sleepers: 5 counted sleepers
    sleepers = testbed.spawn(pipe=2, poll=2, cgroups=[cg])
    fd = _dirfd(cg)
    try:
        counts = sock.cgroupstats(fd)
    finally:
        os.close(fd)
    assert counts == TaskCounts(nr_sleeping=5, nr_running=2, nr_stopped=len(stopped.tids),
                                nr_uninterruptible=0, nr_io_wait=0)
    assert len(stopped.tids) == 3 and len(busy) == 2 and len(sleepers.tids) == 5


@pytest.mark.kernel
def test_cgroupstats_ignores_freezable_sleepers(sock, testbed):
    # KERNEL-NOTES: since 6.1 futex and nanosleep waits sleep TASK_INTERRUPTIBLE |
    # TASK_FREEZABLE; cgroupstats_build() matches states exactly and counts them nowhere,
    # though /proc shows S. Only the main thread (pipe read) counts.
    cg = testbed.cgroup(1)
    w = testbed.spawn(futex=2, nanosleep=2, cgroups=[cg])
    assert set(w.expected_states().values()) == {"S"}
    fd = _dirfd(cg)
    try:
        counts = sock.cgroupstats(fd)
    finally:
        os.close(fd)
    expected_sleeping = 1 if kernel_at_least(6, 1) else 5
    assert counts == TaskCounts(nr_sleeping=expected_sleeping, nr_io_wait=0)


@pytest.mark.kernel
def test_cgroupstats_on_cgroup2_is_einval(sock, testbed):
    cg = testbed.cgroup(2)
    fd = _dirfd(cg)
    try:
        with pytest.raises(NetlinkError) as info:
            sock.cgroupstats(fd)
    finally:
        os.close(fd)
    assert info.value.errno == errno.EINVAL


@pytest.mark.kernel
def test_cgroupstats_on_non_cgroup_is_einval(sock):
    fd = _dirfd("/proc")
    try:
        with pytest.raises(NetlinkError) as info:
            sock.cgroupstats(fd)
    finally:
        os.close(fd)
    assert info.value.errno == errno.EINVAL


@pytest.mark.kernel
def test_cgroupstats_on_removed_cgroup(sock, testbed):
    # Measured on 6.18: right after rmdir the dying cgroup still answers (all zeros);
    # once it is freed (tens of ms later) the answer is ENOENT.
    cg = testbed.cgroup(1)
    w = testbed.spawn(pipe=1, cgroups=[cg])
    fd = _dirfd(cg)
    try:
        assert sock.cgroupstats(fd).nr_sleeping == 2
        w.kill()
        testbed.workers.remove(w)
        for _ in range(500):
            try:
                os.rmdir(cg)
                break
            except OSError as exc:
                assert exc.errno == errno.EBUSY
                time.sleep(0.01)
        answers = []
        deadline = time.monotonic() + 20
        while True:
            try:
                answers.append(sock.cgroupstats(fd))
            except NetlinkError as exc:
                assert exc.errno == errno.ENOENT
                break
            assert time.monotonic() < deadline, f"no ENOENT after rmdir: {answers[-3:]}"
            time.sleep(0.002)
        assert all(a == TaskCounts(0, 0, 0, 0, 0) for a in answers)
    finally:
        os.close(fd)


def _in_thread(fn):
    """Run fn in a thread; a hang is a failure, not a stuck test run."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: B902 - handed to the test
            result["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "netlink request hung"
    return result


@pytest.mark.kernel
def test_cgroupstats_on_closed_fd_does_not_hang(sock):
    fd = unused_fd()
    result = _in_thread(lambda: sock.cgroupstats(fd))
    assert isinstance(result.get("error"), NetlinkError)
    assert result["error"].errno == errno.EBADF  # the kernel sent only ACK(0)
    # the raw kernel behaviour this relies on: no reply, just the ACK with error 0
    replies, ack = raw_exchange(sock.family_id, CGROUPSTATS_CMD_GET,
                                [(CGROUPSTATS_CMD_ATTR_FD, struct.pack("=I", fd))])
    assert replies == [] and struct.unpack_from("=i", ack, 16)[0] == 0


@pytest.mark.kernel
def test_no_answer_times_out():
    # The kernel's connector socket never ACKs nor answers a message it does not
    # know: a socket talking to it must give up after its timeout.
    need_native()
    with netlink.TaskstatsSocket(timeout=0.2) as s:
        s.family_id  # cache the id: the request goes out at once
        try:
            conn = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_CONNECTOR)
        except OSError as exc:
            require_kernel(False, f"no NETLINK_CONNECTOR socket: {exc}")
        with conn:
            conn.bind((0, 0))
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 200000))
            os.dup2(conn.fileno(), s._fd)  # the TaskstatsSocket now talks to the connector
            fd = _dirfd("/proc")
            try:
                result = _in_thread(lambda: s.cgroupstats(fd))
            finally:
                os.close(fd)
    assert isinstance(result.get("error"), NetlinkTimeout), result
    assert result["error"].errno == errno.ETIMEDOUT


@pytest.mark.kernel
def test_stale_and_foreign_messages_are_skipped(sock):
    require_root()
    family = sock.family_id
    mine = socket.socket(fileno=os.dup(sock._fd))
    try:
        port = mine.getsockname()[0]
        # A request this socket never waits for: its reply and ACK are stale.
        mine.sendto(nlmsg(family, genl(TASKSTATS_CMD_GET) + nla(TASKSTATS_CMD_ATTR_PID,
                          struct.pack("=I", 1)), flags=NLM_F_REQUEST | NLM_F_ACK,
                          seq=0xDEADBEEF), (0, 0))
        # A user process pretending to answer with the next sequence number.
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC) as other:
            other.bind((0, 0))
            for seq in range(sock._seq + 1, sock._seq + 4):
                other.sendto(nlmsg(NLMSG_ERROR, struct.pack("=i", -errno.EPERM) + bytes(16),
                                   seq=seq), (port, 0))
        for _ in range(3):
            assert sock.taskstats(os.getpid()).ac_pid == os.getpid()
    finally:
        mine.close()


@pytest.mark.kernel
def test_shared_socket_across_threads(sock, testbed):
    require_root()
    cg = testbed.cgroup(1)
    testbed.spawn(pipe=2, cgroups=[cg])  # 3 counted sleepers
    fd = _dirfd(cg)
    errors = []
    barrier = threading.Barrier(6)

    def worker(n):
        try:
            tid = threading.get_native_id()
            barrier.wait()
            for i in range(150):
                if (i + n) % 3 == 0:
                    got = sock.cgroupstats(fd)
                    if got != TaskCounts(nr_sleeping=3, nr_io_wait=0):
                        errors.append(("cgroupstats", got))
                else:
                    st = sock.taskstats(tid)
                    if st.ac_pid != tid:
                        errors.append(("taskstats", tid, st.ac_pid))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    os.close(fd)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


# --- lifetime --------------------------------------------------------------------------

@pytest.mark.kernel
def test_no_fd_leaks():
    need_native()
    require_root()
    gc.collect()
    before = open_fds()
    for _ in range(100):
        with netlink.TaskstatsSocket(timeout=1.0) as s:
            s.family_id
    for _ in range(50):
        netlink.TaskstatsSocket(timeout=1.0)  # dropped without close()
    gc.collect()
    s = netlink.TaskstatsSocket(timeout=1.0)
    bad = unused_fd()
    for call, args in ((s.taskstats, (2**31 - 2,)), (s.cgroupstats, (bad,))):
        for _ in range(20):
            with pytest.raises(NetlinkError):
                call(*args)
    d = _dirfd("/proc")
    with pytest.raises(NetlinkError):
        s.cgroupstats(d)
    os.close(d)
    s.close()
    assert open_fds() == before


def test_closed_socket_raises_cgshim_error():
    need_native()
    s = netlink.TaskstatsSocket(timeout=1.0)
    assert not s.closed
    s.close()
    s.close()  # idempotent
    assert s.closed
    for call in (lambda: s.family_id, lambda: s.taskstats(os.getpid()), lambda: s.cgroupstats(0)):
        with pytest.raises(CgshimError):
            call()


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "1"])
def test_bad_timeout_is_refused(timeout):
    need_native()
    with pytest.raises(ValueError):
        netlink.TaskstatsSocket(timeout=timeout)


@pytest.mark.kernel
def test_open_socket_falls_back_without_the_extension(monkeypatch):
    require_root()
    from cgshim.kernel import reference
    from cgshim.errors import Unsupported

    monkeypatch.setattr(_native, "netlink", None)  # as if the extension were not built
    with pytest.raises(Unsupported):
        netlink.TaskstatsSocket()
    s = netlink.open_socket(timeout=1.0)
    try:
        assert isinstance(s, reference.TaskstatsSocket)
        assert s.taskstats(os.getpid()).ac_pid == os.getpid()
    finally:
        s.close()
