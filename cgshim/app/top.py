"""``python -m cgshim top``: a live view of cgroups by CPU load.

Which cgroups: each ``--root`` directory and every cgroup below it (found anew at every
refresh, so cgroups come and go; :mod:`cgshim.app.discovery`, shared with the exporter).
Without ``--root``, the host's cgroup root of its mode: the cgroup2 mount on a unified host,
the v1 ``cpu`` hierarchy on a hybrid or legacy host.
On hybrid hosts v1 ``cpu`` is chosen rather than both trees because the same tasks usually
sit in both (each would show twice) and v1 is where the kernel's own CGROUPSTATS counts
come from; PSI of a v1 cgroup is still shown, from its cgroup2 twin when that exists (see
:class:`cgshim.reader.Reader`). Pass ``--root`` twice to see both trees.

Columns: cgroup name (within its hierarchy), RUN / SLEEP / D (nr_running, nr_sleeping,
nr_uninterruptible of the cgroup's *own* tasks, as CGROUPSTATS counts them), LOAD (the
cAdvisor-style smoothed nr_running, :class:`cgshim.load.LoadTracker` over the refreshes with
``--interval`` as its interval), EXACT beside it (the exact average number of runnable threads
between the last two refreshes, from the threads' cumulative run + run_delay clocks:
:class:`cgshim.RunnableAverage`; scan and bpf backends only, ``-`` elsewhere and on the first
refresh), PSI10 (cpu.pressure ``some avg10``, percent) and BACKEND
(``CpuLoad.source``: netlink, scan or psi). ``-`` marks a figure that does not exist
(a psi-only reading, a cgroup without cpu.pressure).

With ``runtime_endpoint`` (``--runtime-endpoint unix:///run/containerd/containerd.sock``) the
CGROUP column shows a pod's or container's Kubernetes name instead of its path when the
runtime knows it (:class:`cgshim.cri.IdentityCache`, read-only CRI calls): ``namespace/pod``
for a pod cgroup, ``namespace/pod/container`` for a container, ``namespace/pod (sandbox)``
for the sandbox (pause) container; ``path`` stays the cgroup directory. The cache is filled
once before the first frame (bounded by its timeout) and refreshed by its own thread.

One :class:`cgshim.reader.Reader` and one :class:`cgshim.load.Sampler` serve the session;
each refresh takes one sample on the calling thread, so the load average advances exactly
once per displayed frame.

When stdin and stdout are terminals the view is drawn with curses and refreshed in place;
keys r s d l e p n sort by running, sleeping, D, load, exact, PSI, name; q or Ctrl-C (or SIGTERM)
quit with the terminal restored and exit status 0. Otherwise (or with ``json=True``) each
refresh prints one plain table (or one JSON line), for pipes and scripts; ``iterations``
stops after that many refreshes.
"""
from __future__ import annotations

import itertools
import json as _json
import math
import shutil
import signal
import sys
import time

import attrs

from cgshim.app import discovery
from cgshim.load import Sampler
from cgshim.reader import Reader

__all__ = ["SORT_KEYS", "Row", "load_dict", "rows_from_snapshot", "sort_rows", "format_table",
           "run"]

#: sort name -> key letter in the curses view
SORT_KEYS = {"running": "r", "sleeping": "s", "d": "d", "load": "l", "exact": "e", "psi": "p",
             "name": "n"}
_BY_LETTER = {letter: name for name, letter in SORT_KEYS.items()}

# (title, width) of the numeric columns, after the flexible CGROUP column.
_COLUMNS = (("RUN", 5), ("SLEEP", 6), ("D", 4), ("LOAD", 7), ("EXACT", 7), ("PSI10", 7),
            ("BACKEND", 8))
_MIN_NAME = 10


@attrs.frozen
class Row:
    """One cgroup as the view shows it. ``None`` where a figure does not exist."""

    name: str
    path: str
    running: int | None
    sleeping: int | None
    d: int | None
    load: float | None
    psi: float | None
    source: str
    reason: str | None = None
    exact: float | None = None  # RunnableAverage.runnable


def load_dict(load) -> dict:
    """A :class:`cgshim.model.CpuLoad` as plain JSON-able data (stable keys: see
    ``python -m cgshim --help``)."""
    pressure = None
    if load.pressure is not None:
        pressure = {kind: None if line is None else attrs.asdict(line)
                    for kind, line in (("some", load.pressure.some), ("full", load.pressure.full))}
    return {
        "path": load.path,
        "cgroup_version": load.cgroup_version,
        "source": load.source,
        "implementation": load.implementation,
        "reason": load.reason,
        "nr_running": load.nr_running,
        "nr_sleeping": load.nr_sleeping,
        "nr_uninterruptible": load.nr_uninterruptible,
        "nr_stopped": load.nr_stopped,
        "nr_io_wait": load.nr_io_wait,
        "pressure": pressure,
        "timestamp": load.timestamp,
        "runnable_seconds": load.runnable_seconds,
        "runqueue_seconds": load.runqueue_seconds,
    }


def rows_from_snapshot(snapshot: dict, names: dict) -> list[Row]:
    """Rows from :meth:`cgshim.load.Sampler.snapshot`; ``names`` maps path -> display name
    (paths missing from it show as the path)."""
    rows = []
    for path, sample in snapshot.items():
        load = sample.cpu_load
        psi = load.pressure.some.avg10 if load.pressure is not None else None
        rows.append(Row(name=names.get(path, path), path=path, running=load.nr_running,
                        sleeping=load.nr_sleeping, d=load.nr_uninterruptible,
                        load=sample.load_average, psi=psi, source=load.source, reason=load.reason,
                        exact=getattr(sample, "runnable", None)))
    return rows


_ATTR = {"running": "running", "sleeping": "sleeping", "d": "d", "load": "load", "exact": "exact",
         "psi": "psi"}


def sort_rows(rows, key: str = "load") -> list[Row]:
    """Rows sorted by ``key`` (one of :data:`SORT_KEYS`): figures largest first with absent
    ones last, names alphabetically; ties broken by name, then path."""
    if key == "name":
        return sorted(rows, key=lambda r: (r.name, r.path))
    try:
        attr = _ATTR[key]
    except KeyError:
        raise ValueError(f"unknown sort key {key!r}; one of {', '.join(SORT_KEYS)}") from None

    def order(row):
        value = getattr(row, attr)
        return (value is None, 0 if value is None else -value, row.name, row.path)

    return sorted(rows, key=order)


def _fmt(value, spec):
    if value is None:
        return "-"
    return format(value, spec)


def _clip_name(name: str, width: int) -> str:
    """``name`` padded to ``width``, or its tail behind ".." when too long (the tail of a
    cgroup path is what tells containers apart)."""
    if len(name) <= width:
        return name.ljust(width)
    if width <= 2:
        return name[-width:] if width > 0 else ""
    return ".." + name[-(width - 2):]


def format_table(rows, width: int = 100) -> list[str]:
    """The header line and one line per row, each at most ``width`` characters (at least
    the numeric columns and a short name column are kept; narrower terminals clip)."""
    fixed = sum(w + 1 for _, w in _COLUMNS)
    name_w = max(_MIN_NAME, width - fixed)
    header = "CGROUP".ljust(name_w) + "".join(" " + t.rjust(w) for t, w in _COLUMNS)
    lines = [header]
    for r in rows:
        cells = (_fmt(r.running, "d"), _fmt(r.sleeping, "d"), _fmt(r.d, "d"),
                 _fmt(r.load, ".2f"), _fmt(r.exact, ".2f"), _fmt(r.psi, ".2f"), r.source)
        lines.append(_clip_name(r.name, name_w)
                     + "".join(" " + c.rjust(w) for c, (_, w) in zip(cells, _COLUMNS)))
    return [line[:width].rstrip() for line in lines]


# ------------------------------------------------------------------------------ session


class _Quit(Exception):
    """Raised from the SIGTERM handler to leave the view through its cleanup."""


class _Session:
    """The reader, sampler and cgroup discovery behind one ``top`` run."""

    def __init__(self, roots, interval, runtime_endpoint=None):
        self.reader = Reader()
        self.identity = None
        try:
            self.roots = discovery.resolve_roots(roots, self.reader.hierarchy)
            if runtime_endpoint is not None:
                from cgshim.cri import IdentityCache

                self.identity = IdentityCache(runtime_endpoint)
                self.identity.refresh()  # names in the first frame; a failure is shown
                self.identity.start()
        except BaseException:
            self.reader.close()
            raise
        self.names = {}
        self.walk_errors = []
        self.read_errors = {}
        self.sampler = Sampler(self.reader, self._discover, interval, on_error=self._on_error)

    def close(self):
        try:
            if self.identity is not None:
                self.identity.stop()
        finally:
            self.reader.close()

    def _discover(self):
        """Every root and its descendants; a root that fails is reported, not fatal."""
        cgroups, errors = discovery.walk(self.roots)
        names = {c.path: c.name for c in cgroups}
        if self.identity is not None:
            names = {path: kube_name(name, self.identity) or name for path, name in names.items()}
        self.names = names
        self.walk_errors = [f"{path}: {exc}" for path, exc in errors]
        return list(self.names)

    def _on_error(self, path, exc):
        if path is not None:
            self.read_errors[path] = str(exc)

    def tick(self):
        self.sampler.sample_once()

    def rows(self, sort):
        # a path whose latest reading failed keeps its previous figures (the status line
        # names the failure)
        snap = self.sampler.snapshot()
        return sort_rows(rows_from_snapshot(snap, self.names), sort)

    def status(self):
        errs = self.walk_errors + [f"{p}: {e}" for p, e in self.read_errors.items()]
        if self.identity is not None and not self.identity.status().ok:
            from cgshim.cri import describe_status

            errs.append(describe_status(self.identity.status()))
        if not errs:
            return ""
        return f"{len(errs)} error(s); latest: {errs[-1]}"


def kube_name(cgroup_name, identity):
    """``namespace/pod[/container]`` (or ``namespace/pod (sandbox)``) for a pod or container
    cgroup the runtime knows, else None. ``identity``: a :class:`cgshim.cri.IdentityCache`."""
    from cgshim import k8s

    parsed = k8s.parse_cgroup(cgroup_name)
    if parsed is None:
        return None
    if parsed.container_id is None:
        who = identity.pod(parsed.pod_uid)
        return None if who is None or not who.pod else f"{who.namespace}/{who.pod}"
    who = identity.container(parsed.container_id)
    if who is None or not who.pod:
        return None
    if not who.container:
        return f"{who.namespace}/{who.pod} (sandbox)"
    return f"{who.namespace}/{who.pod}/{who.container}"


def _plain(session, sort, interval, iterations, as_json, out):
    frames = 0
    next_tick = time.monotonic()
    while True:
        session.read_errors.clear()
        session.tick()
        frames += 1
        rows = session.rows(sort)
        if as_json:
            doc = {"time": time.time(), "interval": interval, "sort": sort,
                   "cgroups": [attrs.asdict(r) for r in rows],
                   "errors": session.walk_errors + [f"{p}: {e}" for p, e in session.read_errors.items()]}
            out.write(_json.dumps(doc) + "\n")
        else:
            stamp = time.strftime("%H:%M:%S")
            out.write(f"cgshim top {stamp}  {len(rows)} cgroups  interval {interval:g}s  "
                      f"sort {sort}\n")
            status = session.status()
            if status:
                out.write(status + "\n")
            width = shutil.get_terminal_size((100, 24)).columns  # $COLUMNS, else 100
            out.write("\n".join(format_table(rows, width)) + "\n\n")
        out.flush()
        if iterations is not None and frames >= iterations:
            return 0
        next_tick += interval
        now = time.monotonic()
        if next_tick < now:
            next_tick = now + interval
        time.sleep(next_tick - now)


def _draw(stdscr, curses, session, sort, interval, frame):
    """One frame: title (row 0), status, table, and at the bottom row the frame number again.

    ncurses emits a frame's changes top to bottom, so a terminal (or a test reading the pty)
    that shows the same frame number in the title and on the bottom row shows one whole
    frame, not the first rows of the next one over the rest of the last."""
    height, width = stdscr.getmaxyx()
    rows = session.rows(sort)
    keys = " ".join(f"{letter}={name}" for name, letter in SORT_KEYS.items())
    title = (f"cgshim top - {len(rows)} cgroups - every {interval:g}s - sort: {sort} - "
             f"frame {frame}  [{keys}; q quits]")
    lines = format_table(rows, max(width - 1, 1))
    stdscr.erase()

    def put(y, text, attr=0):
        if 0 <= y < height:
            try:
                stdscr.addnstr(y, 0, text, max(width - 1, 0), attr)
            except curses.error:
                pass  # a terminal too small for the line

    put(0, title)
    put(1, session.status())
    put(2, lines[0].ljust(max(width - 1, 0)), curses.A_REVERSE)
    for i, line in enumerate(lines[1:], start=3):
        if i >= height - 1:
            break
        put(i, line)
    put(height - 1, f"frame {frame}")
    stdscr.refresh()


def _curses(session, sort, interval, iterations):
    import curses

    try:
        stdscr = curses.initscr()
    except curses.error:
        return None  # no usable terminal description (TERM unset or unknown)
    try:
        curses.noecho()
        curses.cbreak()  # not raw(): Ctrl-C stays SIGINT
        stdscr.keypad(True)
        try:
            curses.curs_set(0)
        except curses.error:
            pass
        frames = 0
        drawn = itertools.count(1)  # every draw, refresh or redraw, is a new frame number
        next_tick = time.monotonic()
        while True:
            session.read_errors.clear()
            session.tick()
            frames += 1
            _draw(stdscr, curses, session, sort, interval, next(drawn))
            if iterations is not None and frames >= iterations:
                return 0
            next_tick += interval
            if next_tick < time.monotonic():
                next_tick = time.monotonic() + interval
            while True:  # keys until the next refresh is due
                left = next_tick - time.monotonic()
                if left <= 0:
                    break
                stdscr.timeout(max(1, math.ceil(left * 1000)))
                key = stdscr.getch()
                if key in (ord("q"), ord("Q")):
                    return 0
                if key == curses.KEY_RESIZE:
                    _draw(stdscr, curses, session, sort, interval, next(drawn))
                elif 0 <= key < 256 and chr(key).lower() in _BY_LETTER:
                    sort = _BY_LETTER[chr(key).lower()]
                    _draw(stdscr, curses, session, sort, interval, next(drawn))
    finally:
        try:
            stdscr.keypad(False)
            curses.nocbreak()
            curses.echo()
        finally:
            curses.endwin()


def run(roots=None, *, interval: float = 1.0, sort: str = "load", iterations: int | None = None,
        json: bool = False, out=None, runtime_endpoint: str | None = None) -> int:
    """Run the view until q / Ctrl-C / SIGTERM, or for ``iterations`` refreshes; returns the
    exit status (0). A root that does not resolve raises its CgshimError before anything is
    drawn. ``out`` (default sys.stdout) is where plain and JSON output goes."""
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort key {sort!r}; one of {', '.join(SORT_KEYS)}")
    if not (interval > 0 and math.isfinite(interval)):
        raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
    if iterations is not None and iterations < 1:
        raise ValueError(f"iterations must be >= 1, not {iterations!r}")
    out = sys.stdout if out is None else out
    session = _Session(list(roots or ()), interval, runtime_endpoint)

    def on_term(signum, frame):
        raise _Quit()

    handle_term = _main_thread()
    old_term = signal.signal(signal.SIGTERM, on_term) if handle_term else None
    try:
        if not json and out is sys.stdout and sys.stdin.isatty() and sys.stdout.isatty():
            status = _curses(session, sort, interval, iterations)
            if status is not None:
                return status
            print("cgshim top: the terminal (TERM) is not usable by curses; printing plain "
                  "tables", file=sys.stderr)
        return _plain(session, sort, interval, iterations, json, out)
    except (KeyboardInterrupt, _Quit):
        return 0
    finally:
        if handle_term:
            signal.signal(signal.SIGTERM, old_term if old_term is not None else signal.SIG_DFL)
        session.close()


def _main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()
