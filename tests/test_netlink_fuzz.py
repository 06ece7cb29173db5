"""Hypothesis on the netlink reply parsers (cgshim/_native/netlink.c through cgshim.kernel.netlink).

Contract: any input either parses or raises a CgshimError subclass (never a crash, never
another exception); valid replies, synthetic or captured from the kernel here, parse to
the values they carry and re-parse to the same values. Run under the sanitizer build
(CGSHIM_SANITIZE=1) this also checks that no input makes the C read out of bounds.
"""
import errno
import os
import struct

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from cgshim import _native
from cgshim.kernel import netlink
from cgshim.errors import CgshimError, MalformedReply, NetlinkError
from cgshim.model import TaskCounts
from cgshim.kernel.taskstats import decode_taskstats
from tests.support.require import require_kernel, require_root
from tests.test_netlink import (CGROUPSTATS_CMD_ATTR_FD, CGROUPSTATS_CMD_GET, CTRL_ATTR_FAMILY_NAME,
                          CTRL_CMD_GETFAMILY, GENL_ID_CTRL, TASKSTATS_CMD_ATTR_PID,
                          TASKSTATS_CMD_ATTR_TGID, TASKSTATS_CMD_GET, genl, need_native, nla,
                          nlmsg, raw_exchange, raw_family_id)

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_MULTI = 2
FAMILY = 0x1F
CGROUPSTATS_CMD_NEW, CGROUPSTATS_TYPE_CGROUP_STATS = 5, 1
TASKSTATS_CMD_NEW = 2
T_PID, T_TGID, T_STATS, T_AGGR_PID, T_AGGR_TGID, T_NULL = 1, 2, 3, 4, 5, 6
CTRL_CMD_NEWFAMILY, CTRL_ATTR_FAMILY_ID = 1, 1

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def _native_built():
    need_native()


def outcome(parser, msg):
    """(value, None) or (None, CgshimError); anything else propagates and fails the test."""
    try:
        return parser(msg), None
    except CgshimError as exc:
        return None, exc


def parse_family(msg):
    """The C family-id parser (used only on the socket path) as a Python callable."""
    mod = _native.netlink
    out = mod.ffi.new("uint16_t *")
    rc = mod.lib.cg_nl_parse_family(msg, len(msg), out)
    if rc:
        raise netlink._error(rc, "family reply")
    return out[0]


PARSERS = [netlink.parse_cgroupstats, netlink.parse_taskstats, netlink.parse_taskstats_raw,
           parse_family]

# --- synthetic replies, built as kernel/taskstats.c builds them ------------------------

def cgroupstats_msg(values, *, pre=b"", post=b"", cmd=CGROUPSTATS_CMD_NEW, flags=0,
                    msg_type=FAMILY):
    body = genl(cmd) + pre + nla(CGROUPSTATS_TYPE_CGROUP_STATS, struct.pack("=5Q", *values)) + post
    return nlmsg(msg_type, body, flags=flags)


def taskstats_msg(task_id, payload, *, tgid=False, pre=b"", inner_pre=b"", inner_post=b"",
                  post=b"", cmd=TASKSTATS_CMD_NEW):
    inner = (inner_pre + nla(T_TGID if tgid else T_PID, struct.pack("=I", task_id))
             + nla(T_STATS, payload) + inner_post)
    body = genl(cmd) + pre + nla(T_AGGR_TGID if tgid else T_AGGR_PID, inner) + post
    return nlmsg(FAMILY, body)


def error_msg(err, echo=bytes(16)):
    return nlmsg(NLMSG_ERROR, struct.pack("=i", err) + echo)


u64 = st.integers(0, 2**64 - 1)
counts = st.tuples(u64, u64, u64, u64, u64)
# attributes a parser must skip: NULL pads and types it does not know
skipped_attr = st.builds(lambda t, p: nla(t, p),
                         st.sampled_from([0, T_NULL, 7, 8, 100, 0x3FFF]), st.binary(max_size=24))
skipped = st.lists(skipped_attr, max_size=3).map(b"".join)


@st.composite
def payloads(draw, min_size=328, max_size=1200):
    """struct taskstats bytes: any content, a version >= 8, any length >= the v8 prefix."""
    size = draw(st.one_of(st.sampled_from([328, 344, 352, 368, 400, 416, 432, 560, 688]),
                          st.integers(min_size, max_size)))
    body = bytearray(draw(st.binary(min_size=size, max_size=size)))
    struct.pack_into("=H", body, 0, draw(st.integers(8, 0xFFFF)))
    return bytes(body)



def _struct_order(vals):
    """TaskCounts of five values in struct cgroupstats order (include/uapi/linux/cgroupstats.h)."""
    sleeping, running, stopped, uninterruptible, io_wait = vals
    return TaskCounts(nr_running=running, nr_sleeping=sleeping, nr_uninterruptible=uninterruptible,
                      nr_stopped=stopped, nr_io_wait=io_wait)

@st.composite
def valid_messages(draw):
    """(message, parser, expected value) for a well-formed synthetic reply."""
    if draw(st.booleans()):
        vals = draw(counts)
        msg = cgroupstats_msg(vals, pre=draw(skipped), post=draw(skipped))
        return msg, netlink.parse_cgroupstats, _struct_order(vals)
    payload = draw(payloads())
    tid = draw(st.integers(1, 2**32 - 1))
    tgid = draw(st.booleans())
    msg = taskstats_msg(tid, payload, tgid=tgid, pre=draw(skipped), post=draw(skipped),
                        inner_pre=draw(skipped), inner_post=draw(skipped))
    return msg, netlink.parse_taskstats_raw, netlink.RawTaskstats(tid, tgid, payload)


# --- properties on synthetic input -----------------------------------------------------

@FUZZ
@given(st.binary(max_size=1500))
@example(b"")
@example(bytes(16))
@example(struct.pack("=IHHII", 0xFFFFFFFF, FAMILY, 0, 0, 0))
def test_random_bytes(data):
    for parser in PARSERS:
        outcome(parser, data)


@FUZZ
@given(st.sampled_from([0, NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN, GENL_ID_CTRL,
                        FAMILY, 0xFFFF]),
       st.integers(0, 0xFFFF), st.binary(max_size=800))
def test_random_body_behind_valid_header(msg_type, flags, body):
    msg = struct.pack("=IHHII", 16 + len(body), msg_type, flags, 1, 0) + body
    for parser in PARSERS:
        outcome(parser, msg)


@FUZZ
@given(counts, skipped, skipped)
def test_cgroupstats_roundtrip(vals, pre, post):
    msg = cgroupstats_msg(vals, pre=pre, post=post)
    assert netlink.parse_cgroupstats(msg) == _struct_order(vals)
    assert netlink.parse_cgroupstats(msg) == netlink.parse_cgroupstats(bytearray(msg))


@FUZZ
@given(payloads(max_size=8000), st.integers(1, 2**32 - 1), st.booleans(),
       skipped, skipped, skipped, skipped)
def test_taskstats_roundtrip_any_length(payload, tid, tgid, pre, inner_pre, inner_post, post):
    """Longer (future) structs come through whole; the decoder sees exactly them."""
    msg = taskstats_msg(tid, payload, tgid=tgid, pre=pre, inner_pre=inner_pre,
                        inner_post=inner_post, post=post)
    assert netlink.parse_taskstats_raw(msg) == netlink.RawTaskstats(tid, tgid, payload)
    assert netlink.parse_taskstats(msg) == decode_taskstats(payload)


def test_taskstats_largest_attribute():
    # nla_len is a u16: the biggest STATS payload a nest of PID + STATS can hold
    payload = struct.pack("=H", 99) + bytes(65516 - 2)  # nest: 4 + 8 + 4 + 65516 = 65532
    msg = taskstats_msg(42, payload)
    raw = netlink.parse_taskstats_raw(msg)
    assert raw.payload == payload and raw.id == 42


@FUZZ
@given(valid_messages())
def test_every_truncation_is_malformed(case):
    msg, parser, expected = case
    assert parser(msg) == expected
    for cut in range(len(msg)):
        with pytest.raises(MalformedReply):
            parser(msg[:cut])


@FUZZ
@given(valid_messages(), st.data())
def test_truncation_with_consistent_nlmsg_len(case, data):
    """Cut the message and make nlmsg_len agree: parses to the same value (only pads
    were cut) or is refused."""
    msg, parser, expected = case
    cut = data.draw(st.integers(16, len(msg)))
    short = bytearray(msg[:cut])
    struct.pack_into("=I", short, 0, cut)
    value, err = outcome(parser, bytes(short))
    assert err is not None or value == expected


def _attr_offsets(msg, start=20, end=None, depth=0):
    """Offsets of every attribute header in a well-formed message, and of those nested
    in a taskstats aggregate."""
    end = len(msg) if end is None else end
    msg_type = struct.unpack_from("=H", msg, 4)[0]
    out, off = [], start
    while off + 4 <= end:
        length, attr_type = struct.unpack_from("=HH", msg, off)
        if length < 4:
            raise AssertionError(f"not a well-formed message: nla_len {length} at {off}")
        out.append(off)
        if attr_type in (T_AGGR_PID, T_AGGR_TGID) and depth == 0 and msg_type != GENL_ID_CTRL:
            out += _attr_offsets(msg, off + 4, off + length, depth + 1)
        off += (length + 3) & ~3
    return out


@FUZZ
@given(valid_messages(), st.data())
def test_lying_nla_len(case, data):
    msg, parser, expected = case
    offsets = _attr_offsets(msg)
    off = data.draw(st.sampled_from(offsets))
    length = data.draw(st.one_of(st.integers(0, 7), st.integers(0, 0xFFFF)))
    bad = bytearray(msg)
    struct.pack_into("=H", bad, off, length)
    value, err = outcome(parser, bytes(bad))
    if length < 4 or length > len(msg) - off:
        assert isinstance(err, MalformedReply)
    assert err is not None or value is not None


@FUZZ
@given(valid_messages(), st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)),
                                  min_size=1, max_size=8))
def test_random_byte_flips(case, flips):
    msg, parser, _ = case
    bad = bytearray(msg)
    for pos, byte in flips:
        bad[pos % len(bad)] = byte
    for p in PARSERS:
        outcome(p, bytes(bad))


@FUZZ
@given(valid_messages(), st.integers(0, 255))
def test_wrong_genl_command(case, cmd):
    msg, parser, expected = case
    bad = bytearray(msg)
    right = bad[16]
    assume(cmd != right)
    bad[16] = cmd
    with pytest.raises(MalformedReply):
        parser(bytes(bad))


@FUZZ
@given(valid_messages(), st.sampled_from([NLMSG_NOOP, NLMSG_DONE, NLMSG_OVERRUN, 0, 5, 15]))
def test_control_messages_where_a_reply_belongs(case, msg_type):
    msg, parser, _ = case
    bad = bytearray(msg)
    struct.pack_into("=H", bad, 4, msg_type)
    with pytest.raises(MalformedReply):
        parser(bytes(bad))


@FUZZ
@given(valid_messages(), st.integers(0, 0xFFFF))
def test_multipart_flag_is_refused(case, flags):
    msg, parser, expected = case
    bad = bytearray(msg)
    struct.pack_into("=H", bad, 6, flags)
    value, err = outcome(parser, bytes(bad))
    if flags & NLM_F_MULTI:
        assert isinstance(err, MalformedReply)
    else:
        assert value == expected  # other flags do not matter


@FUZZ
@given(st.integers(-2**31, 2**31 - 1), st.binary(max_size=64))
@example(0, bytes(16))
@example(-errno.EINVAL, bytes(16))
@example(-4095, bytes(16))
@example(-4096, bytes(16))
@example(1, bytes(16))
def test_nlmsg_error_gives_its_errno(err, echo):
    msg = error_msg(err, echo)
    for parser in PARSERS:
        value, exc = outcome(parser, msg)
        assert value is None
        if len(echo) < 16 or err > 0 or err < -4095:
            assert isinstance(exc, MalformedReply)
        elif err == 0:  # a bare ACK: the kernel said yes and sent no data
            assert type(exc) is NetlinkError and exc.errno == errno.ENODATA
        else:
            assert isinstance(exc, NetlinkError) and exc.errno == -err


PAYLOAD = struct.pack("=H", 16) + bytes(558)


@pytest.mark.parametrize("msg", [
    # AGGR_PID holding a TGID
    nlmsg(FAMILY, genl(TASKSTATS_CMD_NEW) + nla(T_AGGR_PID, nla(T_TGID, b"\1\0\0\0") + nla(T_STATS, PAYLOAD))),
    # AGGR_TGID holding a PID
    nlmsg(FAMILY, genl(TASKSTATS_CMD_NEW) + nla(T_AGGR_TGID, nla(T_PID, b"\1\0\0\0") + nla(T_STATS, PAYLOAD))),
    # no id, no stats, no aggregate at all
    nlmsg(FAMILY, genl(TASKSTATS_CMD_NEW) + nla(T_AGGR_PID, nla(T_STATS, PAYLOAD))),
    nlmsg(FAMILY, genl(TASKSTATS_CMD_NEW) + nla(T_AGGR_PID, nla(T_PID, b"\1\0\0\0"))),
    nlmsg(FAMILY, genl(TASKSTATS_CMD_NEW) + nla(T_PID, b"\1\0\0\0") + nla(T_STATS, PAYLOAD)),
    nlmsg(FAMILY, genl(TASKSTATS_CMD_NEW)),
    nlmsg(FAMILY, b"\2\1"),  # genl header cut short
    # duplicates
    nlmsg(FAMILY, genl(TASKSTATS_CMD_NEW) + nla(T_AGGR_PID, nla(T_PID, b"\1\0\0\0") + nla(T_PID, b"\1\0\0\0") + nla(T_STATS, PAYLOAD))),
    nlmsg(FAMILY, genl(TASKSTATS_CMD_NEW) + nla(T_AGGR_PID, nla(T_PID, b"\1\0\0\0") + nla(T_STATS, PAYLOAD) + nla(T_STATS, PAYLOAD))),
    taskstats_msg(1, PAYLOAD, post=nla(T_AGGR_PID, nla(T_PID, b"\1\0\0\0") + nla(T_STATS, PAYLOAD))),
    # a pid attribute of the wrong size
    nlmsg(FAMILY, genl(TASKSTATS_CMD_NEW) + nla(T_AGGR_PID, nla(T_PID, b"\1\0") + nla(T_STATS, PAYLOAD))),
    # the nest claims more than the message holds
    nlmsg(FAMILY, genl(TASKSTATS_CMD_NEW) + struct.pack("=HH", 600, T_AGGR_PID) + nla(T_PID, b"\1\0\0\0")),
    # trailing garbage after nlmsg_len, and a datagram of two messages
    taskstats_msg(1, PAYLOAD) + b"\0" * 8,
    taskstats_msg(1, PAYLOAD) + error_msg(0),
    # struct taskstats shorter than version 8
    taskstats_msg(1, struct.pack("=H", 8) + bytes(300)),
    taskstats_msg(1, struct.pack("=H", 7) + bytes(400)),
], ids=lambda m: f"{len(m)}b")
def test_taskstats_nested_lies(msg):
    with pytest.raises(MalformedReply):
        netlink.parse_taskstats(msg)


@pytest.mark.parametrize("msg", [
    cgroupstats_msg((1, 2, 3, 4, 5), post=nla(CGROUPSTATS_TYPE_CGROUP_STATS, bytes(40))),
    nlmsg(FAMILY, genl(CGROUPSTATS_CMD_NEW) + nla(CGROUPSTATS_TYPE_CGROUP_STATS, bytes(39))),
    nlmsg(FAMILY, genl(CGROUPSTATS_CMD_NEW) + nla(7, bytes(40))),
    nlmsg(FAMILY, genl(CGROUPSTATS_CMD_NEW)),
    cgroupstats_msg((1, 2, 3, 4, 5))[:-1],
])
def test_cgroupstats_malformed(msg):
    with pytest.raises(MalformedReply):
        netlink.parse_cgroupstats(msg)


def test_cgroupstats_longer_struct_keeps_known_prefix():
    # struct cgroupstats "is not versioned"; a longer one keeps its first five u64
    msg = nlmsg(FAMILY, genl(CGROUPSTATS_CMD_NEW)
                + nla(CGROUPSTATS_TYPE_CGROUP_STATS, struct.pack("=6Q", 1, 2, 3, 4, 5, 6)))
    assert netlink.parse_cgroupstats(msg) == _struct_order((1, 2, 3, 4, 5))


# --- replies captured from the kernel --------------------------------------------------

@pytest.fixture(scope="module")
def captured():
    """Real kernel messages: {name: (bytes, parser)}."""
    require_root()
    need_native()
    family = raw_family_id()
    out = {}
    replies, _ = raw_exchange(GENL_ID_CTRL, CTRL_CMD_GETFAMILY,
                              [(CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0")])
    out["family"] = (replies[0], parse_family)
    for name, attr in (("pid", TASKSTATS_CMD_ATTR_PID), ("tgid", TASKSTATS_CMD_ATTR_TGID)):
        replies, _ = raw_exchange(family, TASKSTATS_CMD_GET, [(attr, struct.pack("=I", os.getpid()))])
        out[name] = (replies[0], netlink.parse_taskstats_raw)
    fd = os.open("/sys/fs/cgroup/cpu", os.O_RDONLY | os.O_DIRECTORY)
    try:
        replies, _ = raw_exchange(family, CGROUPSTATS_CMD_GET,
                                  [(CGROUPSTATS_CMD_ATTR_FD, struct.pack("=I", fd))])
    finally:
        os.close(fd)
    require_kernel(replies, "no v1 cpu hierarchy at /sys/fs/cgroup/cpu for a cgroupstats reply")
    out["cgroupstats"] = (replies[0], netlink.parse_cgroupstats)
    _, err = raw_exchange(family, TASKSTATS_CMD_GET, [(TASKSTATS_CMD_ATTR_PID, struct.pack("=I", 2**31 - 2))])
    out["esrch"] = (err, netlink.parse_taskstats)
    return out


@pytest.mark.kernel
def test_captured_replies_parse(captured):
    pid = os.getpid()
    assert captured["family"][1](captured["family"][0]) == raw_family_id()
    for name in ("pid", "tgid"):
        msg, parser = captured[name]
        raw = parser(msg)
        assert (raw.id, raw.is_tgid) == (pid, name == "tgid")
        assert raw == parser(msg)  # re-parses to the same value
        st = netlink.parse_taskstats(msg)
        assert st.version >= 8 and st.payload_size == len(raw.payload)
        if name == "pid":
            assert st.ac_pid == pid
    msg, parser = captured["cgroupstats"]
    assert parser(msg) == parser(msg)
    with pytest.raises(NetlinkError) as info:
        netlink.parse_taskstats(captured["esrch"][0])
    assert info.value.errno == errno.ESRCH


@pytest.mark.kernel
def test_captured_truncated_at_every_offset(captured):
    for name, (msg, parser) in captured.items():
        for cut in range(len(msg)):
            with pytest.raises(MalformedReply):
                parser(msg[:cut])


@pytest.mark.kernel
@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["family", "pid", "tgid", "cgroupstats", "esrch"]), data=st.data())
def test_captured_mutations(captured, name, data):
    msg, parser = captured[name]
    bad = bytearray(msg)
    kind = data.draw(st.sampled_from(["flip", "nla_len", "cmd", "type", "flags", "error"]))
    if kind == "flip":
        for pos, byte in data.draw(st.lists(st.tuples(st.integers(0, len(bad) - 1),
                                                      st.integers(0, 255)), min_size=1, max_size=6)):
            bad[pos] = byte
    elif kind == "nla_len" and name != "esrch":
        off = data.draw(st.sampled_from(_attr_offsets(msg)))
        struct.pack_into("=H", bad, off, data.draw(st.integers(0, 0xFFFF)))
    elif kind == "cmd":
        bad[16] = data.draw(st.integers(0, 255))
    elif kind == "type":
        struct.pack_into("=H", bad, 4, data.draw(st.sampled_from([1, 2, 3, 4, 0x10, 0xFFFF])))
    elif kind == "flags":
        struct.pack_into("=H", bad, 6, data.draw(st.integers(0, 0xFFFF)))
    elif kind == "error":
        bad = bytearray(error_msg(data.draw(st.integers(-5000, 10)), bytes(msg[:16])))
    for p in PARSERS:
        outcome(p, bytes(bad))


@pytest.mark.kernel
@FUZZ
@given(extra=st.binary(min_size=1, max_size=2000), version=st.integers(17, 0xFFFF))
def test_captured_payload_grown_like_a_future_kernel(captured, extra, version):
    """A newer kernel appends fields: the known prefix decodes as before."""
    raw = captured["pid"][1](captured["pid"][0])
    payload = bytearray(raw.payload + extra)
    struct.pack_into("=H", payload, 0, version)
    msg = taskstats_msg(raw.id, bytes(payload))
    grown = netlink.parse_taskstats(msg)
    before = decode_taskstats(raw.payload)
    assert grown.payload_size == len(payload)
    assert grown.ac_pid == before.ac_pid and grown.ac_comm == before.ac_comm
    assert grown.ac_utime == before.ac_utime and grown.nvcsw == before.nvcsw


# --- the many-cgroup walker (cg_nl_walk_cgroupstats): one received datagram ------------

NO_ANSWER = -1


def walk(datagram, seq0, n, last, errs=None):
    """Run the C walker; (return value, errs list, out as tuples)."""
    mod = _native.netlink
    out = mod.ffi.new("struct cg_nl_cgroupstats[]", max(n, 1))
    e = mod.ffi.new("int32_t[]", errs if errs is not None else [NO_ANSWER] * max(n, 1))
    rc = mod.lib.cg_nl_walk_cgroupstats(datagram, len(datagram), FAMILY, seq0, n, last, out, e)
    vals = [(o.nr_sleeping, o.nr_running, o.nr_stopped, o.nr_uninterruptible, o.nr_io_wait)
            for o in out]
    return rc, list(e)[:n], vals[:n]


def pad4(msg):
    return msg + b"\0" * (-len(msg) % 4)


@st.composite
def windows(draw):
    """A window of n answers as the kernel would queue them, each with its expectation."""
    n = draw(st.integers(1, 12))
    seq0 = draw(st.integers(0, 2**32 - 1))
    msgs, want = [], []
    for i in range(n):
        seq = (seq0 + i) & 0xFFFFFFFF
        kind = draw(st.sampled_from(["reply", "error", "none"] if i < n - 1 else
                                    ["reply", "error", "ack_only"]))
        if kind == "reply":
            vals = draw(counts)
            m = bytearray(cgroupstats_msg(vals))
            struct.pack_into("=I", m, 8, seq)
            msgs.append(bytes(m))
            want.append((0, vals))
        elif kind == "error":
            err = draw(st.sampled_from([errno.ENOENT, errno.EINVAL, errno.EPERM]))
            msgs.append(nlmsg(NLMSG_ERROR, struct.pack("=i", -err) + bytes(28), seq=seq))
            want.append((err, None))
        elif kind == "ack_only":
            want.append((errno.EBADF, None))
        else:
            want.append((NO_ANSWER, None))  # stays unanswered: the caller decides (EBADF)
        if i == n - 1 and kind == "reply":
            msgs.append(nlmsg(NLMSG_ERROR, struct.pack("=i", 0) + bytes(28), seq=seq))
        if i == n - 1 and kind == "ack_only":
            msgs.append(nlmsg(NLMSG_ERROR, struct.pack("=i", 0) + bytes(28), seq=seq))
    stale = draw(st.lists(st.integers(0, 2**32 - 1), max_size=3))
    for s in stale:  # answers of other sequence numbers are skipped
        if (s - seq0) & 0xFFFFFFFF >= n:
            msgs.insert(draw(st.integers(0, len(msgs))), nlmsg(NLMSG_ERROR, struct.pack("=i", -5)
                                                                + bytes(28), seq=s))
    return seq0, n, msgs, want


@FUZZ
@given(windows(), st.integers(1, 4))
def test_walk_matches_answers_by_sequence(window, parts):
    seq0, n, msgs, want = window
    # the same window split into datagrams at random message boundaries
    errs = [NO_ANSWER] * n
    complete = 0
    size = max(1, len(msgs) // parts)
    vals = [None] * n
    for k in range(0, len(msgs), size):
        before = errs
        rc, errs, got = walk(b"".join(pad4(m) for m in msgs[k:k + size]), seq0, n, n - 1, errs)
        assert rc in (0, 1)
        complete |= rc
        for i in range(n):
            if before[i] == NO_ANSWER and errs[i] == 0:
                vals[i] = got[i]
    assert complete == 1
    for i, (err, v) in enumerate(want):
        assert errs[i] == err, (i, errs, want)
        if err == 0:
            assert vals[i] == v


@FUZZ
@given(windows(), st.data())
def test_walk_any_truncation_or_flip_stays_bounded(window, data):
    seq0, n, msgs, _ = window
    dgram = b"".join(pad4(m) for m in msgs)
    cut = data.draw(st.integers(0, len(dgram)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, max(0, cut - 1)), st.integers(0, 255)),
                               max_size=6))
    buf = bytearray(dgram[:cut])
    for pos, val in flips:
        if pos < len(buf):
            buf[pos] = val
    rc, errs, _ = walk(bytes(buf), seq0, n, n - 1)
    assert rc in (-errno.EBADMSG, 0, 1)
    for e in errs:  # every cgroup: unanswered, answered, or a positive errno
        assert e == NO_ANSWER or 0 <= e < 4096


@FUZZ
@given(st.binary(max_size=2000), st.integers(0, 2**32 - 1), st.integers(0, 40))
def test_walk_random_bytes(data, seq0, n):
    rc, errs, _ = walk(data, seq0, n, max(n - 1, 0))
    assert rc in (-errno.EBADMSG, 0, 1)
    assert all(e == NO_ANSWER or 0 <= e < 4096 for e in errs)


def test_walk_second_answer_is_malformed():
    m = bytearray(cgroupstats_msg((1, 2, 3, 4, 5)))
    struct.pack_into("=I", m, 8, 10)
    rc, errs, _ = walk(bytes(m) + bytes(m), 10, 2, 1)
    assert rc == 0 and errs == [errno.EBADMSG, NO_ANSWER]


def test_walk_sequence_wraps():
    m = bytearray(cgroupstats_msg((1, 2, 3, 4, 5)))
    struct.pack_into("=I", m, 8, 1)  # seq0 = 2**32 - 1, so index 2
    rc, errs, vals = walk(bytes(m), 2**32 - 1, 3, 2)
    assert rc == 0 and errs == [NO_ANSWER, NO_ANSWER, 0] and vals[2] == (1, 2, 3, 4, 5)
