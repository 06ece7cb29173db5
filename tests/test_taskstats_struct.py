"""decode_taskstats against payloads built here from an independent transcription of
include/uapi/linux/taskstats.h (offsets written out by hand, x86_64), and against the
running kernel."""
import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgshim.errors import MalformedReply
from cgshim.kernel.taskstats import TaskStats, Timespec, decode_taskstats

from tests.support.require import require_root

# name: (offset, struct format char, version that added it) -- v16/v17 placement.
V16 = {
    "version": (0, "H", 8), "ac_exitcode": (4, "I", 8), "ac_flag": (8, "B", 8),
    "ac_nice": (9, "B", 8),
    "cpu_count": (16, "Q", 8), "cpu_delay_total": (24, "Q", 8),
    "blkio_count": (32, "Q", 8), "blkio_delay_total": (40, "Q", 8),
    "swapin_count": (48, "Q", 8), "swapin_delay_total": (56, "Q", 8),
    "cpu_run_real_total": (64, "Q", 8), "cpu_run_virtual_total": (72, "Q", 8),
    # ac_comm: 80..112
    "ac_sched": (112, "B", 8),
    "ac_uid": (120, "I", 8), "ac_gid": (124, "I", 8), "ac_pid": (128, "I", 8),
    "ac_ppid": (132, "I", 8), "ac_btime": (136, "I", 8),
    "ac_etime": (144, "Q", 8), "ac_utime": (152, "Q", 8), "ac_stime": (160, "Q", 8),
    "ac_minflt": (168, "Q", 8), "ac_majflt": (176, "Q", 8),
    "coremem": (184, "Q", 8), "virtmem": (192, "Q", 8),
    "hiwater_rss": (200, "Q", 8), "hiwater_vm": (208, "Q", 8),
    "read_char": (216, "Q", 8), "write_char": (224, "Q", 8),
    "read_syscalls": (232, "Q", 8), "write_syscalls": (240, "Q", 8),
    "read_bytes": (248, "Q", 8), "write_bytes": (256, "Q", 8),
    "cancelled_write_bytes": (264, "Q", 8),
    "nvcsw": (272, "Q", 8), "nivcsw": (280, "Q", 8),
    "ac_utimescaled": (288, "Q", 8), "ac_stimescaled": (296, "Q", 8),
    "cpu_scaled_run_real_total": (304, "Q", 8),
    "freepages_count": (312, "Q", 8), "freepages_delay_total": (320, "Q", 8),
    "thrashing_count": (328, "Q", 9), "thrashing_delay_total": (336, "Q", 9),
    "ac_btime64": (344, "Q", 10),
    "compact_count": (352, "Q", 11), "compact_delay_total": (360, "Q", 11),
    "ac_tgid": (368, "I", 12), "ac_tgetime": (376, "Q", 12),
    "ac_exe_dev": (384, "Q", 12), "ac_exe_inode": (392, "Q", 12),
    "wpcopy_count": (400, "Q", 13), "wpcopy_delay_total": (408, "Q", 13),
    "irq_count": (416, "Q", 14), "irq_delay_total": (424, "Q", 14),
    "cpu_delay_max": (432, "Q", 16), "cpu_delay_min": (440, "Q", 16),
    "blkio_delay_max": (448, "Q", 16), "blkio_delay_min": (456, "Q", 16),
    "swapin_delay_max": (464, "Q", 16), "swapin_delay_min": (472, "Q", 16),
    "freepages_delay_max": (480, "Q", 16), "freepages_delay_min": (488, "Q", 16),
    "thrashing_delay_max": (496, "Q", 16), "thrashing_delay_min": (504, "Q", 16),
    "compact_delay_max": (512, "Q", 16), "compact_delay_min": (520, "Q", 16),
    "wpcopy_delay_max": (528, "Q", 16), "wpcopy_delay_min": (536, "Q", 16),
    "irq_delay_max": (544, "Q", 16), "irq_delay_min": (552, "Q", 16),
}
# v17: struct __kernel_timespec {s64 tv_sec; s64 tv_nsec} each, 560..688.
V17_TS = {
    "cpu_delay_max_ts": 560, "blkio_delay_max_ts": 576, "swapin_delay_max_ts": 592,
    "freepages_delay_max_ts": 608, "thrashing_delay_max_ts": 624,
    "compact_delay_max_ts": 640, "wpcopy_delay_max_ts": 656, "irq_delay_max_ts": 672,
}
# v15: the same fields, with each <x>_delay_max/_min right after <x>_delay_total.
V15 = {
    "version": (0, "H"), "ac_exitcode": (4, "I"), "ac_flag": (8, "B"), "ac_nice": (9, "B"),
    "cpu_count": (16, "Q"), "cpu_delay_total": (24, "Q"),
    "cpu_delay_max": (32, "Q"), "cpu_delay_min": (40, "Q"),
    "blkio_count": (48, "Q"), "blkio_delay_total": (56, "Q"),
    "blkio_delay_max": (64, "Q"), "blkio_delay_min": (72, "Q"),
    "swapin_count": (80, "Q"), "swapin_delay_total": (88, "Q"),
    "swapin_delay_max": (96, "Q"), "swapin_delay_min": (104, "Q"),
    "cpu_run_real_total": (112, "Q"), "cpu_run_virtual_total": (120, "Q"),
    # ac_comm: 128..160
    "ac_sched": (160, "B"),
    "ac_uid": (168, "I"), "ac_gid": (172, "I"), "ac_pid": (176, "I"), "ac_ppid": (180, "I"),
    "ac_btime": (184, "I"),
    "ac_etime": (192, "Q"), "ac_utime": (200, "Q"), "ac_stime": (208, "Q"),
    "ac_minflt": (216, "Q"), "ac_majflt": (224, "Q"), "coremem": (232, "Q"),
    "virtmem": (240, "Q"), "hiwater_rss": (248, "Q"), "hiwater_vm": (256, "Q"),
    "read_char": (264, "Q"), "write_char": (272, "Q"), "read_syscalls": (280, "Q"),
    "write_syscalls": (288, "Q"), "read_bytes": (296, "Q"), "write_bytes": (304, "Q"),
    "cancelled_write_bytes": (312, "Q"), "nvcsw": (320, "Q"), "nivcsw": (328, "Q"),
    "ac_utimescaled": (336, "Q"), "ac_stimescaled": (344, "Q"),
    "cpu_scaled_run_real_total": (352, "Q"),
    "freepages_count": (360, "Q"), "freepages_delay_total": (368, "Q"),
    "freepages_delay_max": (376, "Q"), "freepages_delay_min": (384, "Q"),
    "thrashing_count": (392, "Q"), "thrashing_delay_total": (400, "Q"),
    "thrashing_delay_max": (408, "Q"), "thrashing_delay_min": (416, "Q"),
    "ac_btime64": (424, "Q"),
    "compact_count": (432, "Q"), "compact_delay_total": (440, "Q"),
    "compact_delay_max": (448, "Q"), "compact_delay_min": (456, "Q"),
    "ac_tgid": (464, "I"), "ac_tgetime": (472, "Q"),
    "ac_exe_dev": (480, "Q"), "ac_exe_inode": (488, "Q"),
    "wpcopy_count": (496, "Q"), "wpcopy_delay_total": (504, "Q"),
    "wpcopy_delay_max": (512, "Q"), "wpcopy_delay_min": (520, "Q"),
    "irq_count": (528, "Q"), "irq_delay_total": (536, "Q"),
    "irq_delay_max": (544, "Q"), "irq_delay_min": (552, "Q"),
}
SIZES = {8: 328, 9: 344, 10: 352, 11: 368, 12: 400, 13: 416, 14: 432, 15: 560, 16: 560,
         17: 688}
COMM_RAW = b"w\xc3\xb6rker\0left-over-bytes"  # NUL then junk: must be cut at the NUL
COMM = "w\u00f6rker"
ALL_NAMES = set(V16) | set(V17_TS) | {"ac_comm"}


def distinct(offset, fmt):
    """A value unique to its offset that would look different if read at any other
    offset or width (u64 values use the upper 32 bits too)."""
    if fmt == "B":
        return (offset * 7 + 1) & 0xFF
    if fmt == "H":
        raise AssertionError("only version is a u16")
    if fmt == "I":
        return 0x01000000 + offset * 1001
    return 0x0100000000000000 + (offset << 32) + offset * 3


def build(table, comm_at, version, size, ts_table=None):
    """A payload of ``size`` bytes: padding 0xEE, every field its distinct value."""
    buf = bytearray(b"\xee" * max(size, 688 + 64))
    expected = {}
    for name, spec in table.items():
        offset, fmt = spec[0], spec[1]
        value = version if name == "version" else distinct(offset, fmt)
        struct.pack_into("=" + fmt, buf, offset, value)
        expected[name] = (offset + struct.calcsize(fmt), value, spec[2] if len(spec) > 2 else 15)
    buf[comm_at:comm_at + 32] = COMM_RAW.ljust(32, b"\xee")
    expected["ac_comm"] = (comm_at + 32, COMM, 8)
    for name, offset in (ts_table or {}).items():
        sec, nsec = 1_700_000_000 + offset, -(offset * 1000)  # s64: negative must survive
        struct.pack_into("=qq", buf, offset, sec, nsec)
        expected[name] = (offset + 16, Timespec(sec, nsec), 17)
    return bytes(buf[:size]), expected


def check(ts, expected, version, size):
    assert isinstance(ts, TaskStats)
    assert ts.payload_size == size
    for name in ALL_NAMES:
        end, value, since = expected.get(name, (10**9, None, 99))
        want = value if end <= size and since <= version else None
        assert getattr(ts, name) == want, name


@pytest.mark.parametrize("version", [8, 9, 10, 11, 12, 13, 14, 16, 17])
def test_each_version_at_its_own_size(version):
    size = SIZES[version]
    data, expected = build(V16, 80, version, size, V17_TS)
    ts = decode_taskstats(data)
    check(ts, expected, version, size)
    present = {n for n in ALL_NAMES if getattr(ts, n) is not None}
    assert present == {n for n, (_, _, since) in expected.items() if since <= version}


def test_v15_puts_max_min_in_the_middle():
    data, expected = build(V15, 128, 15, 560)
    ts = decode_taskstats(data)
    check(ts, expected, 15, 560)
    assert ts.cpu_delay_max_ts is None
    # The same bytes read as v16 put other values in those names: the layouts differ.
    as16 = decode_taskstats(struct.pack("=H", 16) + data[2:])
    assert as16.blkio_count != ts.blkio_count
    assert as16.ac_pid != ts.ac_pid
    assert as16.cpu_delay_max != ts.cpu_delay_max
    assert as16.cpu_count == ts.cpu_count  # offset 16 in both


def test_v16_bytes_are_not_v15():
    data, expected = build(V16, 80, 16, 560)
    ts16 = decode_taskstats(data)
    ts15 = decode_taskstats(struct.pack("=H", 15) + data[2:])
    assert ts16.ac_pid == expected["ac_pid"][1]
    assert ts15.ac_pid != ts16.ac_pid
    assert ts15.irq_delay_min == ts16.irq_delay_min  # last u64, same offset in both


@pytest.mark.parametrize("size", [329, 343, 350, 360, 372, 380, 399, 431, 440, 500, 559])
def test_truncated_newest_layout_keeps_whole_fields_only(size):
    data, expected = build(V16, 80, 17, size, V17_TS)
    check(decode_taskstats(data), expected, 17, size)


@pytest.mark.parametrize("size", [330, 420, 559])
def test_truncated_v15(size):
    data, expected = build(V15, 128, 15, size)
    check(decode_taskstats(data), expected, 15, size)


@pytest.mark.parametrize("version,size", [(9, 560), (12, 432), (14, 560), (16, 688)])
def test_fields_newer_than_the_version_are_absent_even_if_bytes_follow(version, size):
    data, expected = build(V16, 80, version, size, V17_TS)
    ts = decode_taskstats(data)
    check(ts, expected, version, size)


@pytest.mark.parametrize("version,size", [(18, 688), (18, 720), (40000, 1000), (17, 700)])
def test_future_version_decodes_known_prefix(version, size):
    data, expected = build(V16, 80, version, size, V17_TS)
    ts = decode_taskstats(data)
    check(ts, expected, version, size)
    assert ts.version == version
    assert ts.irq_delay_max_ts == expected["irq_delay_max_ts"][1]


@pytest.mark.parametrize("size", [0, 1, 2, 100, 327])
def test_shorter_than_v8_raises(size):
    data, _ = build(V16, 80, 16, 560)
    with pytest.raises(MalformedReply):
        decode_taskstats(data[:size])


@pytest.mark.parametrize("version", [0, 1, 7])
def test_version_before_8_raises(version):
    data, _ = build(V16, 80, version, 328)
    with pytest.raises(MalformedReply):
        decode_taskstats(data)


def test_comm_without_nul_and_undecodable_bytes():
    data = bytearray(build(V16, 80, 16, 560)[0])
    data[80:112] = b"\xff" + b"a" * 31
    ts = decode_taskstats(bytes(data))
    assert ts.ac_comm == "\ufffd" + "a" * 31
    data[80:112] = bytes(32)
    assert decode_taskstats(bytes(data)).ac_comm == ""


def test_accepts_bytearray_and_memoryview():
    data, expected = build(V16, 80, 16, 560)
    for form in (bytearray(data), memoryview(data)):
        check(decode_taskstats(form), expected, 16, 560)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=800))
def test_random_bytes_decode_or_raise_malformed(data):
    try:
        ts = decode_taskstats(data)
    except MalformedReply:
        assert len(data) < 328 or struct.unpack_from("=H", data)[0] < 8
        return
    assert ts.payload_size == len(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=8, max_value=0xFFFF), st.integers(min_value=328, max_value=800),
       st.randoms(use_true_random=False))
def test_random_payloads_with_a_plausible_version(version, size, rnd):
    body = bytes(rnd.getrandbits(8) for _ in range(size - 2))
    ts = decode_taskstats(struct.pack("=H", version) + body)
    assert ts.version == version and ts.payload_size == size
    table = V15 if version == 15 else V16
    for name, spec in table.items():
        offset, fmt = spec[0], spec[1]
        since = 15 if version == 15 else spec[2]
        end = offset + struct.calcsize(fmt)
        if end <= size and since <= version:
            assert getattr(ts, name) == struct.unpack_from("=" + fmt, ts_bytes(version, body),
                                                           offset)[0], name
        else:
            assert getattr(ts, name) is None, name


def ts_bytes(version, body):
    return struct.pack("=H", version) + body


# --- the running kernel -----------------------------------------------------------------

def _nla(kind, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + bytes(-n % 4)


def _attrs(buf, off, end):
    while off + 4 <= end:
        n, kind = struct.unpack_from("=HH", buf, off)
        yield kind & 0x3FFF, off + 4, off + n
        off += (n + 3) & ~3


def raw_stats_payload(pid):
    """TASKSTATS_TYPE_STATS bytes for ``pid``, fetched with a hand-rolled socket (not cgshim's)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
    try:
        sock.settimeout(2)
        sock.bind((0, 0))

        def ask(family, cmd, attrs):
            body = struct.pack("=BBH", cmd, 1, 0) + attrs
            sock.send(struct.pack("=IHHII", 16 + len(body), family, 1, 1, 0) + body)
            return sock.recv(65536)

        reply = ask(0x10, 3, _nla(2, b"TASKSTATS\0"))
        family = next(struct.unpack_from("=H", reply, a)[0]
                      for k, a, _ in _attrs(reply, 20, len(reply)) if k == 1)
        reply = ask(family, 1, _nla(1, struct.pack("=I", pid)))
        for kind, a, b in _attrs(reply, 20, len(reply)):
            if kind == 4:
                for kind2, a2, b2 in _attrs(reply, a, b):
                    if kind2 == 3:
                        return reply[a2:b2]
        raise AssertionError(f"no TASKSTATS_TYPE_STATS in {reply!r}")
    finally:
        sock.close()


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.split()
    return out


@pytest.mark.kernel
def test_real_kernel_payload_matches_proc(testbed):
    worker = testbed.spawn(pipe=1)
    worker.stop()  # nothing moves while stopped: counters can be compared exactly
    data = raw_stats_payload(worker.pid)
    ts = decode_taskstats(data)
    status = proc_status(worker.pid)
    with open(f"/proc/{worker.pid}/comm") as f:
        comm = f.read().rstrip("\n")
    assert ts.payload_size == len(data)
    assert ts.version >= 8
    assert ts.ac_pid == worker.pid
    assert ts.ac_ppid == os.getpid() == int(status["PPid"][0])
    assert ts.ac_comm == comm
    assert ts.ac_uid == int(status["Uid"][0]) and ts.ac_gid == int(status["Gid"][0])
    assert ts.nvcsw == int(status["voluntary_ctxt_switches"][0])
    assert ts.nivcsw == int(status["nonvoluntary_ctxt_switches"][0])
    if ts.version >= 12:
        assert ts.ac_tgid == worker.pid
    # ac_btime is computed by the kernel from the boot time and the task's start time.
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    with open(f"/proc/{worker.pid}/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    started = btime + start_ticks / os.sysconf("SC_CLK_TCK")
    assert abs(ts.ac_btime - started) <= 2
    if ts.version >= 10:
        assert ts.ac_btime64 == ts.ac_btime


@pytest.mark.kernel
def test_real_kernel_payload_of_this_thread():
    require_root()  # TASKSTATS_CMD_GET needs CAP_NET_ADMIN
    data = raw_stats_payload(os.getpid())
    ts = decode_taskstats(data)
    with open("/proc/self/comm") as f:
        comm = f.read().rstrip("\n")
    assert (ts.ac_pid, ts.ac_comm, ts.ac_ppid) == (os.getpid(), comm, os.getppid())
    assert ts.ac_uid == os.getuid()
    if ts.version in SIZES:  # x86_64 sizes; the kernel sends sizeof(struct taskstats)
        assert len(data) == SIZES[ts.version]
    assert (ts.cpu_delay_max is not None) == (ts.version >= 15)
    assert (ts.irq_delay_max_ts is not None) == (ts.version >= 17)


# --- the lazy TaskStats against the eager decoder ----------------------------------------

from cgshim.kernel.taskstats import FIELDS, TASKSTATS_SIZES, decode_taskstats_eager  # noqa: E402


@st.composite
def any_version_payload(draw):
    """A payload of any struct version 8..17 (and a few newer), at its own size, cut
    short by whole or partial fields, or longer; random bytes behind a valid version."""
    version = draw(st.sampled_from(list(range(8, 18)) + [18, 40000]))
    own = TASKSTATS_SIZES.get(version, 688)
    size = draw(st.one_of(st.just(own), st.integers(328, own), st.integers(own, own + 200)))
    body = draw(st.binary(min_size=size - 2, max_size=size - 2))
    return struct.pack("=H", version) + body


@settings(max_examples=500, deadline=None)
@given(any_version_payload())
def test_lazy_equals_eager_every_field(data):
    lazy = decode_taskstats(data)
    eager = decode_taskstats_eager(data)
    for name in FIELDS:
        assert getattr(lazy, name) == eager[name], name
    assert lazy.payload_size == eager["payload_size"] == len(data)
    # equality and hashing follow the fields, not the bytes behind them
    again = decode_taskstats(bytearray(data))
    assert again == lazy and hash(again) == hash(lazy)


@pytest.mark.parametrize("version", sorted(SIZES))
def test_lazy_every_version_at_its_size(version):
    table = V15 if version == 15 else V16
    data, expected = build(table, 128 if version == 15 else 80, version, SIZES[version],
                           None if version == 15 else V17_TS)
    lazy = decode_taskstats(data)
    eager = decode_taskstats_eager(data)
    assert {n: getattr(lazy, n) for n in FIELDS} == {n: eager[n] for n in FIELDS}
    check(lazy, expected, version, SIZES[version])


def test_lazy_is_immutable_and_keeps_its_own_copy():
    import attrs
    buf = bytearray(build(V16, 80, 16, 560)[0])
    ts = decode_taskstats(buf)
    pid = ts.ac_pid
    buf[128:132] = b"\0\0\0\0"  # the caller's buffer changes: the TaskStats does not
    assert ts.ac_pid == pid
    for name in ("ac_pid", "version", "payload_size", "anything"):
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(ts, name, 1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        del ts.ac_pid
    assert "ac_pid=" in repr(ts) and ts != decode_taskstats(bytes(buf))
    import pickle
    assert pickle.loads(pickle.dumps(ts)) == ts


@pytest.mark.parametrize("cut", [0, 16, 327])
def test_lazy_truncated_reply_is_a_typed_error(cut):
    data = build(V16, 80, 16, 560)[0]
    with pytest.raises(MalformedReply):
        decode_taskstats(data[:cut])
    with pytest.raises(MalformedReply):
        decode_taskstats(struct.pack("=H", 7) + data[2:])
