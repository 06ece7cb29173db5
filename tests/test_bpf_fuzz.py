"""Hypothesis on the parsers of a BPF pass: cgshim.kernel.bpf.parse_pass (Python) and
cg_bpf_pass_parse (bpf.c, through parse_pass_c).

Contract: any bytes either parse or raise a CgshimError subclass (MalformedPass or
PassFormatMismatch), never another exception or a crash; the two parsers give the same
Pass or the same error class for every input; a pass built from known records parses to
those records added up per cgroup. Under the sanitizer build (.ci/sanitize) this also
checks that no input makes the C parser read out of bounds.
"""
import os
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cgshim import _native
from cgshim.errors import CgshimError, MalformedPass, PassFormatMismatch
from cgshim.kernel import bpf
from tests.support.require import require_kernel

EXAMPLES = int(os.environ.get("CGSHIM_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
U64 = 2**64 - 1


# -- a writer of passes, from records.h (independent of the parsers under test) ---------

def head(mechanism=bpf.MECH_CGROUP, fmt=bpf.FORMAT, magic=bpf.MAGIC, size=24, root=1):
    return struct.pack("=HHHHQQ", bpf.REC_HEAD, size, fmt, mechanism, magic, root)


def cgroup_rec(cid, nr, runtime=0, delay=0):
    return struct.pack("=HH9IQQQ", bpf.REC_CGROUP, 64, *nr, cid, runtime, delay)


def task_rec(cid, state, runtime=0, delay=0):
    return struct.pack("=HHB3xQQQ", bpf.REC_TASK, 32, state, cid, runtime, delay)


def end(objects=0):
    return struct.pack("=HH4xQ", bpf.REC_END, 16, objects)


def need_c():
    require_kernel(_native.bpf is not None,
                   f"the _bpf extension is not built: {bpf.native_missing()} (install libbpf-dev)")


def outcome(parser, data):
    try:
        return parser(data), None
    except CgshimError as exc:
        return None, exc


def both(data):
    """Parse with both parsers; they must agree. Returns the Python outcome."""
    py = outcome(bpf.parse_pass, data)
    c = outcome(bpf.parse_pass_c, data)
    if py[1] is None:
        assert c[1] is None, (c[1], data[:64])
        assert c[0] == py[0]
    else:
        assert c[1] is not None, (py[1], data[:64])
        assert type(c[1]) is type(py[1]), (c[1], py[1])
        assert c[1].errno == py[1].errno
    return py


@pytest.fixture(autouse=True)
def _c_built():
    need_c()


ids = st.integers(1, U64)
counts = st.lists(st.integers(0, 2**32 - 1), min_size=9, max_size=9).filter(
    lambda nr: 0 < sum(nr) <= 2**32 - 1)
clock = st.integers(0, U64)


@FUZZ
@given(st.lists(st.tuples(ids, counts, clock, clock), max_size=40, unique_by=lambda r: r[0]),
       st.integers(0, U64))
def test_cgroup_pass_parses_to_its_records(recs, objects):
    data = head(bpf.MECH_CGROUP) + b"".join(cgroup_rec(*r) for r in recs) + end(objects)
    got, err = both(data)
    assert err is None
    assert got.mechanism == "cgroup" and got.objects == objects and got.bytes == len(data)
    assert got.root == 1
    assert list(got) == [r[0] for r in recs]
    for cid, nr, rt, dl in recs:
        c = got[cid]
        assert c.nr == tuple(nr) and c.sum_exec_runtime == rt and c.run_delay == dl
        assert c.threads == sum(nr)


@FUZZ
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 8), clock, clock), max_size=200))
def test_task_pass_adds_up_per_cgroup(recs):
    data = head(bpf.MECH_TASK) + b"".join(task_rec(*r) for r in recs) + end(len(recs))
    got, err = both(data)
    assert err is None and got.mechanism == "task"
    want = {}
    for cid, state, rt, dl in recs:
        nr, srt, sdl = want.get(cid, ([0] * 9, 0, 0))
        nr[state] += 1
        want[cid] = (nr, (srt + rt) & U64, (sdl + dl) & U64)
    assert list(got) == list(want)
    for cid, (nr, rt, dl) in want.items():
        assert got[cid] == bpf.CgroupTasks(cid, rt, dl, tuple(nr))


@FUZZ
@given(st.binary(max_size=600))
@example(b"")
@example(head())
@example(head() + b"\x04\x00\x00\x00")
@example(head() + end() + end())
@example(head(bpf.MECH_TASK) + cgroup_rec(1, [1] + [0] * 8) + end())
@example(head() + task_rec(1, 0) + end())
def test_any_bytes_parse_or_raise_alike(data):
    both(data)


@FUZZ
@given(st.data())
def test_mutated_passes_parse_or_raise_alike(data):
    mech = data.draw(st.sampled_from([bpf.MECH_CGROUP, bpf.MECH_TASK]))
    if mech == bpf.MECH_CGROUP:
        recs = data.draw(st.lists(st.tuples(ids, counts, clock, clock), max_size=6,
                                  unique_by=lambda r: r[0]))
        body = b"".join(cgroup_rec(*r) for r in recs)
    else:
        recs = data.draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10), clock, clock),
                                  max_size=12))
        body = b"".join(task_rec(*r) for r in recs)
    buf = bytearray(head(mech) + body + end(7))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "dup", "insert"]))
        if op == "flip" and buf:
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "cut" and buf:
            i = data.draw(st.integers(0, len(buf)))
            buf = buf[:i]
        elif op == "dup" and len(buf) > 16:
            i = data.draw(st.integers(16, len(buf) - 1))
            j = data.draw(st.integers(i, len(buf)))
            buf[i:i] = buf[i:j]
        else:
            i = data.draw(st.integers(0, len(buf)))
            buf[i:i] = data.draw(st.binary(max_size=40))
    both(bytes(buf))


def test_every_truncation_of_a_pass_is_malformed():
    data = (head(bpf.MECH_CGROUP) + cgroup_rec(5, [1, 2, 0, 0, 0, 0, 0, 0, 0], 10, 20)
            + cgroup_rec(9, [0, 0, 0, 0, 0, 0, 0, 0, 3]) + end(12))
    assert both(data)[0].get(5).count("S") == 2
    for cut in range(len(data)):
        _, err = both(data[:cut])
        assert isinstance(err, MalformedPass), cut
        assert err.errno == 74  # EBADMSG


@pytest.mark.parametrize("data,why", [
    (head(fmt=0) + end(), "format 0"),
    (head(fmt=2) + end(), "format 2"),
    (head(magic=0x1234) + end(), "magic"),
    (b"\x07\x00\x18\x00" + bytes(20) + end(), "kind"),
])
def test_another_format_is_refused_not_misread(data, why):
    _, err = both(data)
    assert isinstance(err, PassFormatMismatch), why
    assert err.errno == 71  # EPROTO
    assert "re-pin" in str(err) or "not a cgshim pass" in str(err)


@pytest.mark.parametrize("data", [
    head() + cgroup_rec(0, [1] + [0] * 8) + end(),              # cgroup id 0
    head() + cgroup_rec(3, [0] * 9) + end(),                    # a record without threads
    head() + cgroup_rec(3, [1] + [0] * 8) * 2 + end(),          # a cgroup twice
    head(bpf.MECH_TASK) + task_rec(3, 9) + end(),               # state index out of range
    head(mechanism=3) + end(),                                  # unknown mechanism
    head(size=32) + bytes(8) + end(),                           # HEAD of another size
    head() + end() + b"\x00",                                   # bytes after END
    head() + cgroup_rec(3, [1] + [0] * 8),                      # no END
    head() + struct.pack("=HH", bpf.REC_CGROUP, 0) + end(),     # a record of size 0
    head() + struct.pack("=HH", bpf.REC_END, 8) + bytes(4),     # END of the wrong size
    head() + head() + end(),                                    # a second HEAD
])
def test_malformed_passes(data):
    _, err = both(data)
    assert isinstance(err, MalformedPass)


def test_sums_wrap_like_the_kernels_u64():
    data = head(bpf.MECH_TASK) + task_rec(2, 0, U64, 5) + task_rec(2, 1, 3, U64) + end(2)
    got, err = both(data)
    assert got[2].sum_exec_runtime == 2 and got[2].run_delay == 4 and got[2].nr[:2] == (1, 1)


@pytest.mark.parametrize("capeff, lacking", [
    ("0000000000000000", "CAP_BPF and CAP_PERFMON"),
    ("0000008000000000", "CAP_PERFMON"),          # CAP_BPF (39) alone
    ("0000004000000000", "CAP_BPF"),              # CAP_PERFMON (38) alone
    ("000000c000000000", None),                   # both
    ("0000000000200000", None),                   # CAP_SYS_ADMIN grants both
])
def test_missing_load_capabilities_from_capeff(tmp_path, capeff, lacking):
    from cgshim.kernel.bpf import missing_load_capabilities

    status = tmp_path / "status"
    status.write_text(f"Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\n")
    got = missing_load_capabilities(str(status))
    if lacking is None:
        assert got is None
    else:
        assert got.endswith(f"lacks {lacking}"), got
