"""Decoding of ``struct taskstats`` (include/uapi/linux/taskstats.h), every version 8..17.

The kernel sends the struct as the TASKSTATS_TYPE_STATS attribute of a TASKSTATS_CMD_GET
answer (kernel/taskstats.c, ``nla_reserve_64bit(..., sizeof(struct taskstats))``). It grows
with its ``version`` field; what this module knows (x86_64 sizeof):

====  =====  ==============================================================
 ver  bytes  added
====  =====  ==============================================================
   8    328  prefix up to freepages_count/_delay_total
   9    344  thrashing_count, thrashing_delay_total
  10    352  ac_btime64
  11    368  compact_count, compact_delay_total
  12    400  ac_tgid (u32 + 4 pad), ac_tgetime, ac_exe_dev, ac_exe_inode
  13    416  wpcopy_count, wpcopy_delay_total
  14    432  irq_count, irq_delay_total
  15    560  <x>_delay_max/_min inserted right after each <x>_delay_total: an ABI
             break (kernel commits 658eb5ab916d, f65c64f311ee, b016d0873777)
  16    560  the same 16 u64 moved to the end (commit 0bf2d838de1f)
  17    688  <x>_delay_max_ts, 8 x struct __kernel_timespec {s64 sec; s64 nsec}
====  =====  ==============================================================

Fields past the end of what the kernel sent, or newer than the version it claims, are
``None`` (absent), never 0. A version newer than 17 decodes its known v17 prefix. Less
than the v8 prefix (328 bytes) raises :class:`cgshim.errors.MalformedReply`.

Byte order is the host's (the kernel copies the struct as is). The explicit
``aligned(8)`` members make the layout the same on 32- and 64-bit ABIs.
"""
import struct

import attrs

from cgshim.errors import MalformedReply

TS_COMM_LEN = 32

#: Newest struct version whose layout this module knows.
KNOWN_VERSION = 17

#: sizeof(struct taskstats) per version on x86_64.
TASKSTATS_SIZES = {8: 328, 9: 344, 10: 352, 11: 368, 12: 400, 13: 416, 14: 432,
                   15: 560, 16: 560, 17: 688}

#: Size of the v8 prefix: the least a kernel with TASKSTATS_VERSION >= 8 sends.
MIN_SIZE = TASKSTATS_SIZES[8]

# Delay categories carrying _delay_max/_min (v15+) and _delay_max_ts (v17), in kernel order.
_DELAY_KINDS = ("cpu", "blkio", "swapin", "freepages", "thrashing", "compact", "wpcopy", "irq")


@attrs.frozen
class Timespec:
    """``struct __kernel_timespec`` (include/uapi/linux/time_types.h): wall-clock time."""

    tv_sec: int
    tv_nsec: int


# ---------------------------------------------------------------------------------------
# Layouts: sequences of (name, struct format, version that introduced the field).
# A name of None is padding. "ts" marks a struct __kernel_timespec (two s64).

def _u64(*names, since):
    return [(n, "Q", since) for n in names]


_V8_HEAD = [
    ("version", "H", 8), (None, "2x", 8),
    ("ac_exitcode", "I", 8),
    ("ac_flag", "B", 8), ("ac_nice", "B", 8), (None, "6x", 8),  # cpu_count aligned(8)
]
_DELAY1 = ["cpu_count", "cpu_delay_total", "blkio_count", "blkio_delay_total",
           "swapin_count", "swapin_delay_total"]
_RUN = ["cpu_run_real_total", "cpu_run_virtual_total"]
_BASIC = [
    ("ac_comm", "%ds" % TS_COMM_LEN, 8),
    ("ac_sched", "B", 8), (None, "3x", 8),  # ac_pad[3]
    (None, "4x", 8),  # ac_uid aligned(8)
    ("ac_uid", "I", 8), ("ac_gid", "I", 8), ("ac_pid", "I", 8), ("ac_ppid", "I", 8),
    ("ac_btime", "I", 8), (None, "4x", 8),  # ac_etime aligned(8)
]
_V8_TAIL = _u64(
    "ac_etime", "ac_utime", "ac_stime", "ac_minflt", "ac_majflt",
    "coremem", "virtmem", "hiwater_rss", "hiwater_vm",
    "read_char", "write_char", "read_syscalls", "write_syscalls",
    "read_bytes", "write_bytes", "cancelled_write_bytes", "nvcsw", "nivcsw",
    "ac_utimescaled", "ac_stimescaled", "cpu_scaled_run_real_total", since=8)


def _maxmin(kind, since):
    return _u64(f"{kind}_delay_max", f"{kind}_delay_min", since=since)


def _later(with_maxmin):
    """Fields of v8's freepages_* onwards; with_maxmin: the v15 placement of max/min."""
    mm = (lambda kind: _maxmin(kind, 15)) if with_maxmin else (lambda kind: [])
    return (
        _u64("freepages_count", "freepages_delay_total", since=8) + mm("freepages")
        + _u64("thrashing_count", "thrashing_delay_total", since=9) + mm("thrashing")
        + _u64("ac_btime64", since=10)
        + _u64("compact_count", "compact_delay_total", since=11) + mm("compact")
        + [("ac_tgid", "I", 12), (None, "4x", 12)]  # ac_tgetime aligned(8)
        + _u64("ac_tgetime", "ac_exe_dev", "ac_exe_inode", since=12)
        + _u64("wpcopy_count", "wpcopy_delay_total", since=13) + mm("wpcopy")
        + _u64("irq_count", "irq_delay_total", since=14) + mm("irq")
    )


def _v15_layout():
    head = list(_V8_HEAD)
    for i in range(0, len(_DELAY1), 2):
        count, total = _DELAY1[i], _DELAY1[i + 1]
        head += _u64(count, total, since=8) + _maxmin(count[:-len("_count")], 15)
    return head + _u64(*_RUN, since=8) + _BASIC + _V8_TAIL + _later(True)


def _v17_layout():
    """v8..v14 grow at the end; v16 appends max/min, v17 the max timestamps."""
    out = list(_V8_HEAD) + _u64(*_DELAY1, *_RUN, since=8) + _BASIC + _V8_TAIL + _later(False)
    for kind in _DELAY_KINDS:
        out += _maxmin(kind, 16)
    out += [(f"{kind}_delay_max_ts", "ts", 17) for kind in _DELAY_KINDS]
    return out


def _check_size(layout, size):
    got = struct.calcsize("=" + "".join("qq" if f == "ts" else f for _, f, _ in layout))
    assert got == size, (got, size)


_LAYOUT_V15 = _v15_layout()
_LAYOUT_V17 = _v17_layout()
_check_size(_LAYOUT_V15, TASKSTATS_SIZES[15])
_check_size(_LAYOUT_V17, TASKSTATS_SIZES[17])

#: Every field of struct taskstats this module decodes, in v17 order (TaskStats' order).
FIELDS = tuple(name for name, _, _ in _LAYOUT_V17 if name is not None)

_TS_FIELDS = frozenset(f"{kind}_delay_max_ts" for kind in _DELAY_KINDS)
_SINCE_16_FIELDS = frozenset(f"{kind}_delay_{m}" for kind in _DELAY_KINDS for m in ("max", "min"))


_TASKSTATS_DOC = """One decoded ``struct taskstats`` (include/uapi/linux/taskstats.h).

Attributes carry the kernel's field names (``version``, ``ac_pid``, ``nvcsw``,
``cpu_delay_max``, ...; see :data:`FIELDS`); a field the payload did not carry is None.
``ac_comm`` is a str (bytes up to the first NUL, undecodable bytes replaced);
``<x>_delay_max_ts`` (v17) are :class:`Timespec`; ``payload_size`` is the number of bytes
the kernel sent. Delay fields read 0 while delay accounting is off
(sysctl kernel.task_delayacct, default off since 5.14).

Lazy and immutable: the object keeps the payload bytes (a private copy) and decodes a
field from them when it is read, so a caller that reads three of the 79 fields pays for
three. Setting or deleting an attribute raises ``attrs.exceptions.FrozenInstanceError``;
two TaskStats are equal when every field is.
"""

class _Layout:
    """Precomputed decoding of one layout: a struct.Struct for every whole-field prefix."""

    def __init__(self, layout):
        self.names = []        # field names in this layout's order (no padding)
        self.offsets = []      # byte offset where each named field starts
        self.formats = []      # struct format of each named field ("ts": a timespec)
        self.ends = []         # byte offset where each named field ends
        self.since = []        # version that introduced each named field
        self.structs = []      # structs[n]: Struct decoding the first n named fields
        fmt = "="
        self.structs.append(struct.Struct(fmt))
        for name, f, since in layout:
            start = struct.calcsize(fmt)
            fmt += "qq" if f == "ts" else f
            if name is None:
                continue
            self.offsets.append(start)
            self.formats.append(f)
            self.names.append(name)
            self.since.append(since)
            self.ends.append(struct.calcsize(fmt))
            self.structs.append(struct.Struct(fmt))
        self.comm_index = self.names.index("ac_comm")
        # Position of each field in TaskStats' argument order.
        self.target = [FIELDS.index(n) for n in self.names]
        self.identity = self.target == list(range(len(self.names)))
        self.ts_start = next((i for i, n in enumerate(self.names) if n in _TS_FIELDS), None)

    def count(self, version, size):
        """How many leading fields a payload of ``size`` bytes and ``version`` carries."""
        n = 0
        for end, since in zip(self.ends, self.since):
            if end > size or since > version:
                break
            n += 1
        return n


_V15 = _Layout(_LAYOUT_V15)
_V17 = _Layout(_LAYOUT_V17)
_NFIELDS = len(FIELDS)
_VERSION = struct.Struct("=H")

# (layout, version-as-gated, size) -> number of fields; sizes are few, so this stays small.
_count_cache = {}


def _size_and_version(data):
    """(length, the u16 ``version`` at offset 0) of a payload at least as long as the v8
    prefix, else MalformedReply."""
    size = len(data)
    if size < MIN_SIZE:
        raise MalformedReply(
            f"struct taskstats payload is {size} bytes, less than the {MIN_SIZE} of version 8;"
            " not a TASKSTATS_TYPE_STATS attribute, or a kernel older than 2.6.3x")
    return size, _VERSION.unpack_from(data)[0]


def _check(data):
    """(bytes, version, layout, number of fields present) of a payload, or MalformedReply."""
    size, version = _size_and_version(data)
    key = (version, size)
    hit = _lazy_cache.get(key)
    if hit is not None:
        return hit
    if version < 8:
        raise MalformedReply(
            f"struct taskstats claims version {version} in a {size}-byte payload;"
            " versions before 8 are shorter than 328 bytes")
    layout = _V15 if version == 15 else _V17
    hit = (layout, layout.count(min(version, KNOWN_VERSION), size))
    if len(_lazy_cache) < 4096:
        _lazy_cache[key] = hit
    return hit


# (version, size) -> (layout, fields present); few distinct keys in practice, bounded anyway
_lazy_cache = {}


def decode_taskstats(data) -> "TaskStats":
    """Decode a TASKSTATS_TYPE_STATS attribute payload (bytes-like) into a :class:`TaskStats`.

    The layout follows the ``version`` field (u16 at offset 0) and the payload length;
    raises :class:`MalformedReply` when fewer than the 328 bytes of the v8 prefix came, or
    when the version is older than 8 (the kernel never sends such a version at that size).
    Fields are decoded when read (see :class:`TaskStats`).
    """
    if type(data) is not bytes:
        data = bytes(data)  # a private copy: the caller's buffer may change
    hit = _lazy_cache.get((_version_of(data)[0], len(data))) if len(data) >= MIN_SIZE else None
    layout, n = hit if hit is not None else _check(data)
    obj = _new(TaskStats)
    _set(obj, "_state", (data, layout, n))
    return obj


_new = object.__new__
_set = object.__setattr__
_version_of = _VERSION.unpack_from


class TaskStats:
    __doc__ = _TASKSTATS_DOC
    __slots__ = ("_state",)

    def __setattr__(self, name, value):
        raise attrs.exceptions.FrozenInstanceError()

    def __delattr__(self, name):
        raise attrs.exceptions.FrozenInstanceError()

    def __reduce__(self):
        return decode_taskstats, (self._state[0],)

    @property
    def payload_size(self) -> int:
        return len(self._state[0])

    def _values(self):
        return tuple(getattr(self, name) for name in FIELDS)

    def __eq__(self, other):
        if other.__class__ is not TaskStats:
            return NotImplemented
        return self.payload_size == other.payload_size and self._values() == other._values()

    def __hash__(self):
        return hash((self.payload_size, self._values()))

    def __repr__(self):
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS)
        return f"TaskStats({inner}, payload_size={self.payload_size})"


def _getter(layout, j):
    """A function payload -> value of the j-th named field of layout."""
    name, start, end = layout.names[j], layout.offsets[j], layout.ends[j]
    if name == "ac_comm":
        def comm(data):
            raw = data[start:end]
            nul = raw.find(b"\0")
            return (raw if nul < 0 else raw[:nul]).decode("utf-8", "replace")
        return comm
    if name in _TS_FIELDS:
        unpack = struct.Struct("=qq").unpack_from
        return lambda data: Timespec(*unpack(data, start))
    unpack = struct.Struct("=" + layout.formats[j]).unpack_from
    return lambda data: unpack(data, start)[0]


class _Field:
    """Descriptor of one TaskStats field: decoded from the payload when read."""

    __slots__ = ("by_layout",)

    def __init__(self, name):
        # per layout: (index among its named fields, getter); a field every layout has
        self.by_layout = {id(lay): (lay.names.index(name), _getter(lay, lay.names.index(name)))
                          for lay in (_V15, _V17) if name in lay.names}

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        data, layout, n = obj._state
        hit = self.by_layout.get(id(layout))
        if hit is None:
            return None  # a field this layout does not have (v15 has no timespecs)
        j, get = hit
        return get(data) if j < n else None


for _name in FIELDS:
    setattr(TaskStats, _name, _Field(_name))
del _name
TaskStats.__module__ = __name__


def decode_taskstats_eager(data) -> dict:
    """Every field of a TASKSTATS_TYPE_STATS payload decoded at once: a dict name -> value
    (None where absent) plus ``payload_size``. The reference the lazy :class:`TaskStats`
    is tested against; same checks and errors as :func:`decode_taskstats`.

    The layout follows the ``version`` field (u16 at offset 0) and the payload length;
    raises :class:`MalformedReply` when fewer than the 328 bytes of the v8 prefix came, or
    when the version is older than 8 (the kernel never sends such a version at that size).
    """
    size, version = _size_and_version(data)
    if version < 8:
        raise MalformedReply(
            f"struct taskstats claims version {version} in a {size}-byte payload;"
            " versions before 8 are shorter than 328 bytes")
    layout = _V15 if version == 15 else _V17
    gate = min(version, KNOWN_VERSION)
    key = (version == 15, gate, size)
    n = _count_cache.get(key)
    if n is None:
        n = layout.count(gate, size)
        if len(_count_cache) < 4096:
            _count_cache[key] = n
    values = list(layout.structs[n].unpack_from(data))
    comm = values[layout.comm_index]
    nul = comm.find(b"\0")
    values[layout.comm_index] = (comm if nul < 0 else comm[:nul]).decode("utf-8", "replace")
    ts = layout.ts_start
    if ts is not None and n > ts:
        # Each timespec occupies two slots of `values`; fold them into Timespec objects.
        flat = values[ts:]
        values[ts:] = [Timespec(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    if layout.identity:
        values.extend([None] * (_NFIELDS - n))
    else:
        out = [None] * _NFIELDS
        for pos, value in zip(layout.target, values):
            out[pos] = value
        values = out
    out = dict(zip(FIELDS, values))
    out["payload_size"] = size
    return out


__all__ = ["TaskStats", "Timespec", "decode_taskstats", "decode_taskstats_eager", "FIELDS", "KNOWN_VERSION",
           "TASKSTATS_SIZES", "MIN_SIZE", "TS_COMM_LEN"]
