"""cgshim.kernel.psi: parsing pressure files, and reading them from the real kernel."""
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cgshim.errors import CgshimError, ParseError
from cgshim.kernel.psi import Pressure, PressureLine, decode_pressure, parse_pressure, read_pressure
from tests.support.require import require_kernel

_avg = st.integers(0, 10000).map(lambda c: c / 100)     # what psi_show prints: %lu.%02lu
_line = st.builds(PressureLine, _avg, _avg, _avg, st.integers(0, 2**64 - 1))


def _render(kind, line, extra=""):
    return (f"{kind} avg10={line.avg10:.2f} avg60={line.avg60:.2f} avg300={line.avg300:.2f} "
            f"total={line.total_usec}{extra}\n")


@given(_line, st.none() | _line, st.sampled_from(["", " future=7", " x=1 y=abc"]))
def test_round_trip(some, full, extra):
    text = _render("some", some, extra) + (_render("full", full, extra) if full else "")
    assert parse_pressure(text) == Pressure(some=some, full=full)


def test_cpu_before_5_13_has_no_full():
    p = parse_pressure("some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\n")
    assert p == Pressure(PressureLine(1.5, 0.25, 0.0, 123456), None)


def test_no_trailing_newline_and_order():
    p = parse_pressure("full avg10=0.00 avg60=0.00 avg300=0.00 total=5\n"
                       "some avg10=0.00 avg60=0.00 avg300=0.00 total=9")
    assert (p.some.total_usec, p.full.total_usec) == (9, 5)


@pytest.mark.parametrize("text", [
    "",
    "\n",
    "some\n",
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",                  # no some
    "some avg10=0.00 avg60=0.00 avg300=0.00 tot",                        # truncated
    "some avg10=0.00 avg60=",                                            # truncated
    "some avg10=0.00 avg60=0.00 avg300=0.00\n",                          # no total
    "some avg10=x avg60=0.00 avg300=0.00 total=0\n",
    "some avg10=nan avg60=0.00 avg300=0.00 total=0\n",
    "some avg10=-1.00 avg60=0.00 avg300=0.00 total=0\n",
    "some avg10=0.00 avg60=0.00 avg300=0.00 total=-1\n",
    "some avg10=0.00 avg60=0.00 avg300=0.00 total=1.5\n",
    "some avg10=0.00 avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",      # key twice
    "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n" * 2,              # line twice
    "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nhello world\n",     # garbage line
    "<html>not a pressure file</html>\n",
])
def test_garbage(text):
    with pytest.raises(ParseError):
        parse_pressure(text)


@given(_line, st.none() | _line)
def test_kernel_form_fast_path_agrees(some, full):
    """decode_pressure matches psi_show()'s exact output at once: the same answer."""
    text = _render("some", some) + (_render("full", full) if full else "")
    assert decode_pressure(text.encode(), "f") == parse_pressure(text) == Pressure(some, full)


@given(st.binary(max_size=120) | st.sampled_from([
    b"some avg10=0.00 avg60=0.00 avg300=0.00 total=1\n",
    b"some avg10=0.00 avg60=0.00 avg300=0.00 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1",
    b"some avg10=0.00 avg60=0.00 avg300=0.00 total=1\nsome avg10=0.00 avg60=0.00 avg300=0.00 total=1\n",
    b"full avg10=0.00 avg60=0.00 avg300=0.00 total=1\n",
    b"some avg10=1.5 avg60=0.00 avg300=0.00 total=1\n",
]).flatmap(lambda b: st.tuples(st.just(b), st.binary(max_size=8)).map(lambda t: t[0] + t[1])))
def test_decode_pressure_agrees_with_the_parser_on_any_bytes(data):
    """Fast path or not, decode_pressure gives parse_pressure's answer or a ParseError."""
    try:
        want = parse_pressure(data.decode("ascii"))
    except (UnicodeDecodeError, ParseError):
        with pytest.raises(ParseError):
            decode_pressure(data, "f")
        return
    assert decode_pressure(data, "f") == want


def test_decode_pressure_refuses_what_the_parser_refuses_past_the_fast_path():
    """400 digits match \\d+ but are no u64: the fast path leaves them to the parser (inf)."""
    data = b"some avg10=" + b"9" * 400 + b".00 avg60=0.00 avg300=0.00 total=1\n"
    with pytest.raises(ParseError):
        parse_pressure(data.decode())
    with pytest.raises(ParseError):
        decode_pressure(data, "f")


@given(st.text(max_size=120))
def test_arbitrary_text_parses_or_raises_parse_error(text):
    try:
        p = parse_pressure(text)
    except ParseError:
        return
    assert isinstance(p.some, PressureLine)


# ---------------------------------------------------------------- the real kernel


@pytest.mark.kernel
def test_system_pressure_files():
    require_kernel(os.path.exists("/proc/pressure/cpu"), "kernel without PSI (/proc/pressure)")
    for res in ("cpu", "memory", "io"):
        p = read_pressure(f"/proc/pressure/{res}")
        assert p is not None and p.full is not None, res
    # system-level cpu "full" is defined as zero (kernel/sched/psi.c)
    assert read_pressure("/proc/pressure/cpu").full.total_usec == 0


@pytest.mark.kernel
def test_cgroup2_pressure_and_v1_has_none(testbed):
    d2 = testbed.cgroup(2)
    require_kernel(os.path.exists(os.path.join(d2, "cpu.pressure")), "cgroup2 without PSI files")
    w = testbed.spawn(busy=True, cgroups=[d2])
    first = read_pressure(os.path.join(d2, "cpu.pressure"))
    assert first is not None and first.full is not None
    w.kill()
    again = read_pressure(os.path.join(d2, "cpu.pressure"))
    assert again.some.total_usec >= first.some.total_usec            # a counter
    for res in ("memory", "io"):
        assert read_pressure(os.path.join(d2, f"{res}.pressure")) is not None
    d1 = testbed.cgroup(1)
    assert read_pressure(os.path.join(d1, "cpu.pressure")) is None   # v1 has no PSI
    assert read_pressure(os.path.join(d2, "no-such.pressure")) is None


@pytest.mark.kernel
def test_pressure_hidden_reads_as_none(testbed):
    """Since 6.1, writing 0 to cgroup.pressure hides the files: absent, not zeros."""
    d2 = testbed.cgroup(2)
    knob = os.path.join(d2, "cgroup.pressure")
    require_kernel(os.path.exists(knob), "kernel < 6.1: no cgroup.pressure knob")
    with open(knob, "w") as f:
        f.write("0")
    assert read_pressure(os.path.join(d2, "cpu.pressure")) is None
    with open(knob, "w") as f:
        f.write("1")
    assert read_pressure(os.path.join(d2, "cpu.pressure")) is not None


@pytest.mark.kernel
def test_read_errors_are_typed(testbed, tmp_path):
    d2 = testbed.cgroup(2)
    with pytest.raises(CgshimError):
        read_pressure(d2)                                    # a directory
    bad = tmp_path / "cpu.pressure"
    bad.write_bytes(b"some avg10=\xff\n")
    with pytest.raises(ParseError, match=str(bad)):
        read_pressure(str(bad))
    bad.write_text("some avg10=0.00 avg60=0.00 avg300=0.00\n")
    with pytest.raises(ParseError):
        read_pressure(str(bad))
