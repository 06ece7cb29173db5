"""cAdvisor-compatible load averages of cgroups, and a background sampler.

:class:`LoadTracker` smooths a cgroup's task counts exactly as cAdvisor does for the gauges
``container_cpu_load_average_10s`` and ``container_cpu_load_d_average_10s``
(google/cadvisor manager/container.go: ``newContainerData``, ``updateLoad``, ``updateLoadD``,
``updateStats``):

- ``decay = exp(-housekeeping_interval_seconds / 10)``, fixed for the tracker's life (cAdvisor
  does not rescale it when a housekeeping tick comes late);
- the first sample initialises the average ("for faster stabilization");
- afterwards ``avg = avg*decay + sample*(1-decay)``, with ``nr_running`` for the load average
  and ``nr_uninterruptible`` for the "d" average;
- the exported value is milli-load, ``int32(avg * 1000)``: a Go float-to-int conversion, which
  truncates toward zero (2.9999 -> 2999, never rounded up).

:class:`Sampler` polls a set of cgroups through a :class:`cgshim.Reader` on one background
thread and keeps one tracker per cgroup, which is what cAdvisor's housekeeping loop does for
its containers.
"""
import math
import numbers
import operator
import threading
import time

import attrs

from cgshim.errors import CgroupNotFound, CgshimError
from cgshim.runnable import RunnableAverage

__all__ = ["LoadTracker", "Sample", "Sampler", "milli_load"]

_INT32_MAX = 2**31 - 1


def milli_load(average):
    """cAdvisor's ``int32(avg * 1000)`` for a non-negative average (None stays None).

    Go converts float64 to int32 by truncating toward zero; an out-of-range result is
    implementation-defined in Go, so it is clamped to the int32 maximum here (a load of
    more than 2.1 million runnable tasks).
    """
    if average is None:
        return None
    scaled = average * 1000.0
    if scaled >= _INT32_MAX:
        return _INT32_MAX
    return math.trunc(scaled)


def _count(value, name):
    """A task count as an int: TypeError for None, floats and bools, ValueError if negative."""
    if value is None or isinstance(value, bool):
        raise TypeError(f"{name} must be a task count (int >= 0), got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a task count (int >= 0), got {value!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class LoadTracker:
    """Exponentially smoothed ``nr_running`` and ``nr_uninterruptible`` of one cgroup.

    ``interval_seconds`` is the time between samples (cAdvisor's housekeeping interval); it must
    be a finite number > 0, else ``ValueError``. Feed one sample per interval with
    :meth:`update`. Not thread-safe on its own: :class:`Sampler` guards its trackers with a lock.
    """

    __slots__ = ("_interval", "_decay", "_load", "_load_d", "_samples")

    def __init__(self, interval_seconds):
        if isinstance(interval_seconds, bool) or not isinstance(interval_seconds, numbers.Real):
            raise TypeError(f"interval_seconds must be a number of seconds, got {interval_seconds!r}")
        interval = float(interval_seconds)
        if not math.isfinite(interval) or interval <= 0:
            raise ValueError(f"interval_seconds must be finite and > 0, got {interval_seconds!r}")
        self._interval = interval
        self._decay = math.exp(-interval / 10.0)
        self._load = None
        self._load_d = None
        self._samples = 0

    def __repr__(self):
        return (
            f"LoadTracker(interval_seconds={self._interval!r}, load_average={self._load!r}, "
            f"load_d_average={self._load_d!r}, samples={self._samples})"
        )

    @property
    def interval_seconds(self):
        return self._interval

    @property
    def decay(self):
        """``exp(-interval_seconds / 10)``: the weight the previous average keeps per sample."""
        return self._decay

    @property
    def samples(self):
        """How many samples :meth:`update` has taken."""
        return self._samples

    def update(self, nr_running, nr_uninterruptible=0):
        """Take one sample. Counts must be ints >= 0: None, floats or bools raise TypeError,
        negative values ValueError, and then neither average changes."""
        running = _count(nr_running, "nr_running")
        blocked = _count(nr_uninterruptible, "nr_uninterruptible")
        if self._load is None:
            self._load = float(running)
            self._load_d = float(blocked)
        else:
            d = self._decay
            self._load = self._load * d + float(running) * (1.0 - d)
            self._load_d = self._load_d * d + float(blocked) * (1.0 - d)
        self._samples += 1

    @property
    def load_average(self):
        """Smoothed nr_running (float), None before the first sample."""
        return self._load

    @property
    def load_d_average(self):
        """Smoothed nr_uninterruptible (float), None before the first sample."""
        return self._load_d

    @property
    def milli_load(self):
        """``int32(load_average * 1000)`` as cAdvisor exports it (None before the first sample)."""
        return milli_load(self._load)

    @property
    def milli_load_d(self):
        """``int32(load_d_average * 1000)`` as cAdvisor exports it (None before the first sample)."""
        return milli_load(self._load_d)


@attrs.frozen
class Sample:
    """One cgroup's latest reading and smoothed load, as :meth:`Sampler.snapshot` returns it.

    ``cpu_load`` is the reader's latest ``CpuLoad``. The averages are None while no sample with
    task counts has been taken (a PSI-only reading has ``nr_running`` None and leaves them
    unchanged). ``samples`` counts the tracker's updates, ``errors`` the failed readings of
    this path so far.

    Exact load (:class:`cgshim.RunnableAverage` over the readings' ``runnable_seconds``):
    ``runnable`` / ``runqueue`` the exact average number of runnable / waiting threads
    between the last two readings, ``load1``/``load5``/``load15`` the cgroup-local kernel
    load averages; None where the backend gives no runnable time (netlink, psi), and
    ``runnable``/``runqueue`` also until the second such reading.
    """

    path: str
    cpu_load: object
    load_average: float | None
    load_d_average: float | None
    milli_load: int | None
    milli_load_d: int | None
    samples: int
    errors: int
    runnable: float | None = None
    runqueue: float | None = None
    load1: float | None = None
    load5: float | None = None
    load15: float | None = None


class Sampler:
    """Polls cgroups every ``interval`` seconds on one background thread and smooths their load.

    ``reader`` is a :class:`cgshim.Reader` (anything with ``cpu_load(path, *, recursive=False)``
    returning a :class:`cgshim.CpuLoad`, or an object whose ``cpu_load`` attribute is one;
    optionally with ``sweep(roots, *, recursive=False)`` returning a :class:`cgshim.Sweep`
    of such readings).
    ``paths`` is either a fixed iterable of cgroup paths or a callable returning the current
    ones, asked again at every tick (e.g. built on :func:`cgshim.k8s.discover`).

    Per tick, the paths are read in one ``reader.sweep(roots, recursive=recursive)`` over
    the fewest of them that cover the rest (a reader without ``sweep`` reads each path with
    ``reader.cpu_load(path, recursive=recursive)``; both give the same reading):

    - a reading with task counts updates that path's :class:`LoadTracker` (created on its first
      reading); one whose ``nr_running`` or ``nr_uninterruptible`` is None (a PSI-only source)
      replaces the latest reading but leaves the averages unchanged;
    - a reading with ``runnable_seconds`` (exact load) updates that path's
      :class:`cgshim.RunnableAverage`;
    - :class:`~cgshim.errors.CgroupNotFound` drops the path with its tracker and error count; a
      fixed path set then stops polling it for good, a callable may return it again later and it
      starts afresh (a new cgroup under an old name is a new container);
    - any other :class:`~cgshim.errors.CgshimError` is counted for that path and passed to
      ``on_error(path, exc)``; the previous reading and averages stay;
    - a path the callable no longer returns is dropped. If the callable itself raises a
      CgshimError, ``on_error(None, exc)`` is called and the previous path set is polled.

    ``on_tick()``, if given, is called on the sampling thread after every completed tick
    (:attr:`ticks` counts them), e.g. to render the new snapshot before anyone asks for it.

    Other exceptions are bugs and are not swallowed: :meth:`sample_once` raises them; on the
    background thread they end sampling, are kept in :attr:`exception` and re-raised by
    :meth:`stop`.

    The trackers use ``interval`` as cAdvisor uses its housekeeping interval, so a sampler with
    the same interval reproduces ``container_cpu_load_average_10s``: 1 s is standalone cAdvisor's
    default ``--housekeeping_interval``, 10 s what kubelet's embedded cAdvisor sets
    (pkg/kubelet/cadvisor/cadvisor_linux.go ``defaultHousekeepingInterval``). Extra :meth:`sample_once` calls while the thread runs
    add samples and so speed up the decay.
    """

    def __init__(self, reader, paths, interval, *, recursive=False, on_error=None, on_tick=None):
        self._reader = reader
        self._on_tick = on_tick
        self._interval = LoadTracker(interval).interval_seconds  # validates like the tracker
        self._recursive = bool(recursive)
        self._on_error = on_error
        if callable(paths):
            self._paths_fn = paths
            self._paths = ()
        else:
            if isinstance(paths, (str, bytes)):
                raise TypeError("paths must be an iterable of cgroup paths or a callable, not one string")
            self._paths_fn = None
            self._paths = tuple(dict.fromkeys(paths))
        self._lock = threading.Lock()  # guards _trackers, _latest, _errors, _paths
        self._tick_lock = threading.Lock()  # one sample_once at a time
        self._trackers = {}
        self._runnable = {}  # path -> RunnableAverage (readings with runnable_seconds)
        self._latest = {}
        self._errors = {}
        self._ticks = 0  # completed ticks
        self._stop_event = threading.Event()
        self._thread = None
        self.exception = None

    # --- public -------------------------------------------------------------------------------

    @property
    def interval(self):
        return self._interval

    @property
    def running(self):
        """True while the background thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def paths(self):
        """The paths polled at the last tick (for a fixed set: those not yet dropped)."""
        with self._lock:
            return self._paths

    def error_counts(self):
        """path -> failed readings so far, for paths still tracked (a dropped path's count goes
        with it); paths that never produced a reading are included."""
        with self._lock:
            return dict(self._errors)

    def snapshot(self):
        """path -> :class:`Sample` for every tracked path with at least one reading, taken under
        the sampler's lock so no entry is half-updated."""
        with self._lock:
            out = {}
            for path, cpu_load in self._latest.items():
                tracker = self._trackers.get(path)
                exact = self._runnable.get(path)
                out[path] = Sample(
                    path=path,
                    cpu_load=cpu_load,
                    load_average=tracker.load_average if tracker else None,
                    load_d_average=tracker.load_d_average if tracker else None,
                    milli_load=tracker.milli_load if tracker else None,
                    milli_load_d=tracker.milli_load_d if tracker else None,
                    samples=tracker.samples if tracker else 0,
                    errors=self._errors.get(path, 0),
                    runnable=exact.runnable if exact else None,
                    runqueue=exact.runqueue if exact else None,
                    load1=exact.load1 if exact else None,
                    load5=exact.load5 if exact else None,
                    load15=exact.load15 if exact else None,
                )
            return out

    def sample_once(self):
        """Read every path once now, on the calling thread, and update the trackers."""
        with self._tick_lock:
            self._tick(self._stop_event if threading.current_thread() is self._thread else None)
            with self._lock:
                self._ticks += 1
            if self._on_tick is not None:
                self._on_tick()

    @property
    def ticks(self):
        """Ticks completed so far: what a consumer caching a rendering of :meth:`snapshot`
        keys it on (the snapshot is a whole tick's only between ticks)."""
        with self._lock:
            return self._ticks

    def start(self):
        """Start the background thread; the first tick happens at once. RuntimeError if running."""
        if self.running:
            raise RuntimeError("Sampler is already running")
        self._stop_event.clear()
        self.exception = None
        self._thread = threading.Thread(target=self._run, name="cgshim-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop the background thread and wait for it: it returns after the reading in flight,
        not after the rest of the interval. Re-raises an exception that ended the thread."""
        self._stop_event.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if self.exception is not None:
            exc, self.exception = self.exception, None
            raise exc

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # --- internals ----------------------------------------------------------------------------

    def _run(self):
        next_tick = time.monotonic()
        while not self._stop_event.is_set():
            try:
                self.sample_once()
            except BaseException as exc:  # a bug in the reader or a callback: stop, keep it for stop()
                self.exception = exc
                return
            next_tick += self._interval
            now = time.monotonic()
            if next_tick < now:  # a tick overran: skip the missed ones rather than burst
                next_tick = now + self._interval
            self._stop_event.wait(next_tick - now)

    def _current_paths(self):
        if self._paths_fn is None:
            return self._paths
        try:
            paths = tuple(dict.fromkeys(self._paths_fn()))
        except CgshimError as exc:
            self._report(None, exc)
            return self._paths
        with self._lock:
            self._paths = paths
            for gone in set(self._trackers).union(self._latest, self._errors).difference(paths):
                self._forget(gone)
        return paths

    def _forget(self, path):
        """Drop a path's state; caller holds self._lock."""
        self._trackers.pop(path, None)
        self._runnable.pop(path, None)
        self._latest.pop(path, None)
        self._errors.pop(path, None)

    def _report(self, path, exc):
        if self._on_error is not None:
            self._on_error(path, exc)

    def _swept(self, paths):
        """path -> CpuLoad or the CgshimError it got, from one ``reader.sweep()`` over the
        fewest roots that cover ``paths``; None if the reader has no sweep (then each path
        is read with ``cpu_load``) or the sweep itself failed (reported, then the same)."""
        sweep = getattr(self._reader, "sweep", None)
        if sweep is None or not paths:
            return None
        roots = _covering(paths)
        try:
            swept = sweep(roots, recursive=self._recursive)
        except CgshimError as exc:
            self._report(None, exc)
            return None
        out = {}
        for path in paths:
            key = _swept_key(swept, roots, path)
            if key in swept:
                out[path] = swept[key]
            elif key in swept.errors:
                out[path] = swept.errors[key]
            else:  # removed between the path list and the sweep's walk
                out[path] = CgroupNotFound(f"{path}: not found by the sweep")
        return out

    def _tick(self, stop_event):
        paths = self._current_paths()
        swept = self._swept(paths)
        for path in paths:
            if stop_event is not None and stop_event.is_set():
                return
            try:
                if swept is None:
                    reading = self._reader.cpu_load(path, recursive=self._recursive)
                else:
                    reading = swept[path]
                    if isinstance(reading, CgshimError):
                        raise reading
            except CgroupNotFound:
                with self._lock:
                    self._forget(path)
                    if self._paths_fn is None:
                        self._paths = tuple(p for p in self._paths if p != path)
                continue
            except CgshimError as exc:
                with self._lock:
                    self._errors[path] = self._errors.get(path, 0) + 1
                self._report(path, exc)
                continue
            # A CpuLoad, or a consumer's reading that carries one (the exporter's Reading).
            load = getattr(reading, "cpu_load", reading)
            running = getattr(load, "nr_running", None)
            blocked = getattr(load, "nr_uninterruptible", None)
            with self._lock:
                self._errors.setdefault(path, 0)
                self._latest[path] = reading
                if running is not None and blocked is not None:
                    tracker = self._trackers.get(path)
                    if tracker is None:
                        tracker = self._trackers[path] = LoadTracker(self._interval)
                    tracker.update(running, blocked)
                runnable_s = getattr(load, "runnable_seconds", None)
                if runnable_s is not None:
                    exact = self._runnable.get(path)
                    if exact is None:
                        exact = self._runnable[path] = RunnableAverage()
                    if exact.timestamp is None or load.timestamp > exact.timestamp:
                        exact.update(load.timestamp, runnable_s, load.runqueue_seconds,
                                     blocked or 0)


def _covering(paths):
    """The paths none of whose ancestors is among ``paths`` (as given, compared by path
    components): a sweep of these reaches every one of ``paths``."""
    out = []
    for path in sorted(paths, key=lambda p: (p.rstrip("/").count("/"), p)):
        norm = path.rstrip("/") + "/"
        if not any(norm.startswith(root.rstrip("/") + "/") for root in out):
            out.append(path)
    return out


def _swept_key(swept, roots, path):
    """The absolute directory under which ``swept`` holds ``path`` (a directory, or a
    cgroup name under one of ``roots`` given as a name)."""
    if path in swept or path in swept.errors:
        return path
    for root in roots:
        base = swept.roots.get(root)
        if base is None:
            continue
        if path == root:
            return base
        prefix = root.rstrip("/") + "/"
        if path.startswith(prefix):
            return base.rstrip("/") + "/" + path[len(prefix):]
    return path
