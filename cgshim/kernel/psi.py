"""Pressure stall information: /proc/pressure/{cpu,memory,io} and <cgroup2 dir>/*.pressure.

Format (Documentation/accounting/psi.rst; written by kernel/sched/psi.c psi_show)::

    some avg10=0.00 avg60=0.00 avg300=0.00 total=0
    full avg10=0.00 avg60=0.00 avg300=0.00 total=0

avg* are percentages of wall time over 10/60/300 s, total is the stall time in microseconds
(monotonic counter). The cpu ``full`` line exists since 5.13. PSI off at boot (psi=0 or
CONFIG_PSI_DEFAULT_DISABLED) makes reads fail with EOPNOTSUPP; since 6.1 writing 0 to
cgroup.pressure hides a cgroup's files. Either way ``read_pressure`` answers None: no PSI is
reported as absent, never as zeros.
"""
from __future__ import annotations

import math
import re

import attrs

from cgshim.errors import ParseError, Unsupported, translate

_AVGS = ("avg10", "avg60", "avg300")


@attrs.frozen
class PressureLine:
    """One line: averages in percent, ``total_usec`` the cumulative stall time in microseconds."""

    avg10: float
    avg60: float
    avg300: float
    total_usec: int


@attrs.frozen
class Pressure:
    """``some``: some tasks stalled; ``full``: all non-idle tasks stalled (None if not shown)."""

    some: PressureLine
    full: PressureLine | None = None


def _parse_line(kind: str, tokens: list, lineno: int) -> PressureLine:
    values = {}
    for tok in tokens:
        key, eq, value = tok.partition("=")
        if not eq or not key or not value:
            raise ParseError(f"pressure line {lineno} ({kind}): {tok!r} is not key=value")
        if key in values:
            raise ParseError(f"pressure line {lineno} ({kind}): {key} given twice")
        values[key] = value
    missing = [k for k in _AVGS + ("total",) if k not in values]
    if missing:
        raise ParseError(f"pressure line {lineno} ({kind}): missing {', '.join(missing)} "
                         "(truncated file?)")
    avgs = []
    for key in _AVGS:
        try:
            v = float(values[key])
        except ValueError:
            raise ParseError(f"pressure line {lineno} ({kind}): {key}={values[key]!r} "
                             "is not a number") from None
        if not math.isfinite(v) or v < 0:
            raise ParseError(f"pressure line {lineno} ({kind}): {key}={values[key]!r} out of range")
        avgs.append(v)
    total = values["total"]
    if not (total.isascii() and total.isdigit()):
        raise ParseError(f"pressure line {lineno} ({kind}): total={total!r} is not a "
                         "non-negative integer")
    return PressureLine(avgs[0], avgs[1], avgs[2], int(total))


def parse_pressure(text: str) -> Pressure:
    """Parse a *.pressure file. Keys other than avg10/avg60/avg300/total are ignored, as are
    well-formed lines of a kind other than some/full; no ``some`` line -> ParseError."""
    lines = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        kind, *tokens = line.split()
        if kind in lines:
            raise ParseError(f"pressure line {lineno}: a second {kind!r} line")
        if kind in ("some", "full"):
            lines[kind] = _parse_line(kind, tokens, lineno)
        elif not tokens or not all("=" in t for t in tokens) or "=" in kind:
            raise ParseError(f"pressure line {lineno}: not 'some|full key=value...': {line!r}")
    if "some" not in lines:
        raise ParseError(f"pressure text has no 'some' line: {text[:200]!r}")
    return Pressure(some=lines["some"], full=lines.get("full"))


def read_pressure(path: str, *, cgroup: str | None = None) -> Pressure | None:
    """Read and parse a pressure file; ``cgroup`` is the cgroup directory it belongs to
    (None for /proc/pressure/*).

    None when the file does not exist (a v1 directory, PSI hidden for the cgroup, a kernel
    without PSI) or reading answers EOPNOTSUPP (PSI disabled at boot). Other errors by
    :func:`cgshim.errors.translate`: EACCES/EPERM -> PermissionDenied; the cgroup removed
    (ENODEV at open or read, ENOENT of its directory) -> CgroupNotFound; EIO -> KernelError.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        error = translate(exc, path, cgroup=cgroup, optional=True)
        if isinstance(error, Unsupported):
            return None
        raise error from None
    return decode_pressure(data, path)


#: exactly what psi_show() writes ("%s avg10=%lu.%02lu avg60=%lu.%02lu avg300=%lu.%02lu
#: total=%llu\n", some then full; a u64 has at most 20 digits): matched at once, the general
#: parser for anything else
_LINE = (rb" avg10=(\d{1,20}\.\d\d) avg60=(\d{1,20}\.\d\d) avg300=(\d{1,20}\.\d\d)"
         rb" total=(\d{1,20})\n")
_KERNEL_FORM = re.compile(rb"some" + _LINE + rb"(?:full" + _LINE + rb")?")


def decode_pressure(data: bytes, path: str) -> Pressure:
    """Parse the bytes read from pressure file ``path`` (ParseError naming the file)."""
    m = _KERNEL_FORM.fullmatch(data)
    if m is not None:  # the same answer as parse_pressure (tests/test_psi.py), ~4x cheaper
        g = m.groups()
        some = PressureLine(float(g[0]), float(g[1]), float(g[2]), int(g[3]))
        if g[4] is None:
            return Pressure(some)
        return Pressure(some, PressureLine(float(g[4]), float(g[5]), float(g[6]), int(g[7])))
    try:
        return parse_pressure(data.decode("ascii"))
    except UnicodeDecodeError:
        raise ParseError(f"{path} is not ASCII text: {data[:100]!r}") from None
    except ParseError as exc:
        raise ParseError(f"{path}: {exc}") from None
