"""Prometheus exporter: cAdvisor's container load metrics, served again on every cgroup host.

cAdvisor >= 0.60 refuses its load reader on cgroup v2 and kubelet 1.36 dropped the metrics;
this exporter serves them under cAdvisor's names, help texts and types (google/cadvisor
metrics/prometheus.go), so existing dashboards and alerts keep working:

- ``container_cpu_load_average_10s``, ``container_cpu_load_d_average_10s`` (gauges): milli-load,
  ``int32(avg*1000)`` of the smoothed nr_running / nr_uninterruptible (:class:`cgshim.load.LoadTracker`),
  with the sampling interval in the role of cAdvisor's housekeeping interval;
- ``container_tasks_state{state}`` (gauge), state = sleeping | running | stopped |
  uninterruptible | iowaiting. A count the backend cannot know is left out, never shown as 0:
  no ``iowaiting`` from the /proc scan (in_iowait is not in /proc), no state at all for a
  PSI-only reading. What the counts mean per backend: :class:`cgshim.model.CpuLoad`;
- ``container_pressure_{cpu,memory,io}_{waiting,stalled}_seconds_total`` (counters): PSI ``some``
  / ``full`` totals in seconds, from the cgroup2 directory (on a hybrid host, the v1 cgroup's
  twin in the unified hierarchy). Only where the file exists; ``stalled`` only where the file
  has a ``full`` line (no zero series for absent PSI, unlike cAdvisor).

exact load (docs/exact-load.md; with the container series' labels, where the backend reads
threads' schedstat clocks: scan, bpf; not netlink or psi):

- ``cgshim_container_cpu_runnable_seconds_total`` and ``cgshim_container_cpu_runqueue_seconds_total``
  (counters): time the cgroup's own threads were runnable (run + run_delay) / waiting
  (run_delay), since the exporter's first reading; ``rate()`` over any window is the exact
  average number of runnable / waiting threads, where cAdvisor's gauge samples;
- ``cgshim_container_load1``, ``cgshim_container_load5``, ``cgshim_container_load15`` (gauges):
  the kernel's load average arithmetic fed with that exact runnable average plus the D count;

and its own: ``cgshim_load_source{id,source,implementation}`` (1 per cgroup; source = netlink
| scan | psi, implementation = native | python | pyroute2: never a silent fallback) and
``cgshim_sampling_errors_total{error}`` (failed readings by cgshim error class), plus
``cgshim_cgroups`` (cgroups with a reading), with ``runtime_endpoint``
``cgshim_runtime_up{endpoint}`` (1 while the runtime answers, 0 while series carry path-only
labels), and the standard ``process_*`` metrics.

Labels. Every per-cgroup series carries kubelet's label set for the same cgroup (its
/metrics/cadvisor: ``container``, ``id``, ``image``, ``name``, ``namespace``, ``pod``) and
``pod_uid``, ``container_id``, ``qos`` from :func:`cgshim.k8s.parse_cgroup`. ``id`` is the
cgroup's name within its hierarchy, as cAdvisor writes it ("/kubepods.slice/...";
:attr:`cgshim.kernel.mounts.Resolved.name`). The other five come from the container runtime
when ``runtime_endpoint`` is given (:class:`cgshim.cri.IdentityCache`, with the values kubelet
writes: see :mod:`cgshim.cri`); without it, or while the runtime does not answer, they are
empty and the series carry what the path tells. A metric's label set is fixed, so a value
that does not apply is the empty string, which PromQL treats exactly like an absent label:
``container_cpu_load_average_10s{id="/system.slice"}`` selects the same series cAdvisor's did,
and ``{namespace="prod", pod=~"api-.*", container="app"}`` the same as kubelet's.
No sample timestamps are attached (the scrape time is used).

Sampling. The cgroups exported are each root and all its descendants, found again with
:func:`cgshim.app.discovery.walk` at every tick, so cgroups that appear are picked up and removed
ones are dropped (with their series) at the next tick. One :class:`cgshim.load.Sampler` thread
reads them every ``interval`` seconds, CPU load and memory/io pressure alike; a scrape only
formats the latest figures and never touches a cgroup file. If two roots name the same cgroup
(a hybrid host's v1 and cgroup2 trees both hold ``/x``), the first root given wins: ids stay
unique.

HTTP. ``GET /metrics`` (query strings are ignored), ``GET /healthz`` (200 once the sampler has
produced a reading and while its thread runs, else 503), other paths 404, other methods 405.
No request selects a file or a cgroup: the set is fixed by the roots given at start. Binds
127.0.0.1 unless told otherwise. The server, its limits (``--web.max-requests``,
``--web.request-timeout``) and ``--web.config.file`` (TLS, basic auth) are
:mod:`cgshim.app.web` and :mod:`cgshim.app.webconfig`.

Entry points: :func:`serve` (used by ``python -m cgshim serve``) and this module's own
:func:`main`, ``python -m cgshim.app.exporter [--listen HOST:PORT] [--interval S] [--root PATH ...]``
with the same options. Exit status of main: 0 after SIGTERM/SIGINT, 1 on a runtime error
(bad root, address in use, sampler failure), 2 on bad usage or without prometheus_client (the
extra ``cgshim[exporter]``; imported only when an Exporter is made).
"""
import argparse
import gzip
import os
import signal
import sys
import threading
import time

import attrs

from cgshim.kernel import psi
from cgshim import k8s
from cgshim.app import discovery, web
from cgshim.app.web import parse_listen
from cgshim.cri import parse_endpoint
from cgshim.errors import CgroupNotFound, CgshimError, ConfigError
from cgshim.kernel.mounts import Resolved, hierarchy as _load_hierarchy, pressure_dir
from cgshim.load import Sampler
from cgshim.model import Sweep
from cgshim.reader import Reader

__all__ = ["Exporter", "Reading", "serve", "main", "DEFAULT_LISTEN"]

DEFAULT_LISTEN = "127.0.0.1:9560"

# id first (the sampler keys on it); then kubelet's five (cgshim.cri), then the path's three.
_BASE_LABELS = ("id", "container", "image", "name", "namespace", "pod", "pod_uid",
                "container_id", "qos")
# (CpuLoad field, cAdvisor's state label), in cAdvisor's order.
_STATES = (("nr_sleeping", "sleeping"), ("nr_running", "running"), ("nr_stopped", "stopped"),
           ("nr_uninterruptible", "uninterruptible"), ("nr_io_wait", "iowaiting"))
_PSI_RESOURCES = (("cpu", "CPU"), ("memory", "memory"), ("io", "IO"))


@attrs.frozen
class _Cgroup:
    """A cgroup in the exported set: where it is, and its labels."""

    resolved: Resolved
    labels: tuple  # values of _BASE_LABELS
    generation: int = -1  # of the runtime identity cache the labels were made from


@attrs.frozen
class Reading:
    """One tick's reading of a cgroup, as the exporter's Sampler stores it.

    ``cpu_load`` is the :class:`cgshim.model.CpuLoad` (its ``pressure`` is cpu.pressure);
    ``memory`` and ``io`` are :class:`cgshim.kernel.psi.Pressure` or None where the file is absent.
    The counts are the CpuLoad's only (the Sampler's tracker reads ``cpu_load``).
    """

    cgroup: _Cgroup
    cpu_load: object
    memory: object
    io: object


def _cadvisor_id(name):
    """The cgroup name as cAdvisor writes it.

    Seen from inside a cgroup namespace (a pod's), a bind of the host's whole hierarchy shows
    its root in mountinfo as "/../.." (kernel/cgroup cgroup_show_path), which
    :func:`cgshim.kernel.mounts.resolve` carries into the name. Those leading ".." lead from the
    namespace root up to the real root, so the host-relative name is what follows them.
    """
    parts = [p for p in name.split("/") if p]
    while parts and parts[0] == "..":
        parts.pop(0)
    return "/" + "/".join(parts)


def _labels(cgroup_id, identity=None):
    """Values of _BASE_LABELS; ``identity`` is an IdentityCache or None (path only)."""
    parsed = k8s.parse_cgroup(cgroup_id)
    if parsed is None:
        return (cgroup_id, "", "", "", "", "", "", "", "")
    who = None
    if identity is not None:
        # a container's (or sandbox's) own cgroup by its id, a pod cgroup by the pod's uid
        who = (identity.container(parsed.container_id) if parsed.container_id
               else identity.pod(parsed.pod_uid))
    kube = ("", "", "", "", "") if who is None else (who.container, who.image, who.name,
                                                     who.namespace, who.pod)
    return (cgroup_id, *kube, parsed.pod_uid, parsed.container_id or "", parsed.qos)


class _Collector:
    """prometheus_client custom collector over an Exporter's latest readings."""

    def __init__(self, exporter):
        self._exporter = exporter

    def describe(self):
        return []  # families vary with what is present; nothing to check at register time

    def collect(self):
        return self._exporter._families()


class Exporter:
    """Samples ``roots`` and all their descendant cgroups every ``interval`` seconds and serves
    the readings as Prometheus metrics (see the module docstring).

    ``roots``: cgroup directories or names, as :func:`cgshim.kernel.mounts.resolve` accepts them
    (empty: :func:`cgshim.app.discovery.default_roots`, the host's whole tree); each must exist now (CgroupNotFound / NotACgroup otherwise); one that is removed later is
    counted as a sampling error at each tick until it comes back. ``reader``: a
    :class:`cgshim.reader.Reader` to use (it stays the caller's); by default the Exporter makes
    one and closes it in :meth:`stop`.

    ``runtime_endpoint`` (e.g. ``unix:///run/containerd/containerd.sock``): name pods and
    containers as kubelet does, from the runtime over CRI (:class:`cgshim.cri.IdentityCache`,
    its thread started and stopped with the sampler; ``runtime_timeout`` bounds each call,
    ``runtime_resync`` is the periodic refresh). The sampler only reads the cache.

    ``registry`` is the exporter's own CollectorRegistry (not prometheus_client's global one);
    :meth:`wsgi_app` serves it. Use as a context manager, or :meth:`start` / :meth:`stop`.
    """

    def __init__(self, roots, interval=1.0, *, reader=None, runtime_endpoint=None,
                 runtime_timeout=2.0, runtime_resync=60.0):
        prometheus_client = _prometheus_client()  # first: nothing is started without it
        if isinstance(roots, (str, bytes)):
            raise TypeError("roots must be a list of cgroup paths, not one string")
        roots = list(roots or ())
        self._own_reader = reader is None
        self._reader = Reader() if reader is None else reader
        try:
            self._hier = getattr(self._reader, "hierarchy", None) or _load_hierarchy()
            # Resolved now, so that a mistyped root fails at start, not silently at each tick.
            self._roots = discovery.resolve_roots(roots, self._hier)
            self._lock = threading.Lock()  # guards _cgroups, _errors, _ticks
            self._cgroups = {}  # path -> _Cgroup, the set of the last tick
            self._errors = {}  # cgshim error class name -> count
            self._ticks = 0
            self._exposition = None  # set by wsgi_app(); rendered after each tick
            self._sampler = Sampler(_SamplingReader(self), self._paths, interval,
                                    on_error=self._count_error, on_tick=self._after_tick)
            self.identity = None
            if runtime_endpoint is not None:
                from cgshim.cri import IdentityCache

                self.identity = IdentityCache(runtime_endpoint, timeout=runtime_timeout,
                                              resync=runtime_resync)
        except BaseException:
            if self._own_reader:
                self._reader.close()
            raise
        self.registry = prometheus_client.CollectorRegistry()
        self.registry.register(_Collector(self))
        prometheus_client.ProcessCollector(registry=self.registry)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def interval(self):
        return self._sampler.interval

    @property
    def roots(self):
        """The roots as resolved at start (absolute directories)."""
        return [r.path for r in self._roots]

    def start(self):
        """Start the sampler thread (the first tick happens at once)."""
        if self.identity is not None:
            self.identity.start()
        self._sampler.start()
        return self

    def stop(self):
        """Stop the sampler thread, wait for it, and close the Reader if it is ours.
        Re-raises an exception that ended the sampler (a bug, not a CgshimError)."""
        try:
            self._sampler.stop()
        finally:
            if self.identity is not None:
                self.identity.stop()
            if self._own_reader:
                self._reader.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def sample_once(self):
        """Take one tick now, on the calling thread (tests; the thread does this itself)."""
        self._sampler.sample_once()

    @property
    def sampler_exception(self):
        """The exception that ended the sampler thread, or None."""
        return self._sampler.exception

    def ready(self):
        """True while the sampler thread runs and has completed a tick."""
        if not self._sampler.running:
            return False
        with self._lock:
            ticks = self._ticks
        return ticks >= 2 or bool(self._sampler.snapshot())

    def error_counts(self):
        """cgshim error class name -> failed readings so far."""
        with self._lock:
            return dict(self._errors)

    # -- sampling (sampler thread) ----------------------------------------------------------
    def _after_tick(self):
        exposition = self._exposition
        if exposition is not None:
            exposition.prepare()

    def _count_error(self, path, exc):
        name = type(exc).__name__
        with self._lock:
            self._errors[name] = self._errors.get(name, 0) + 1

    def _paths(self):
        """The current set: each root and its descendants, first root winning a shared id."""
        cgroups, errors = discovery.walk(self._roots)
        for path, exc in errors:  # a root itself was removed, or became unreadable
            self._count_error(path, exc)
        found = {}
        seen_ids = set()
        with self._lock:
            known = dict(self._cgroups)
        for resolved in cgroups:
            cgroup = known.get(resolved.path)
            if cgroup is None or (self.identity is not None
                                  and cgroup.generation != self.identity.generation):
                cgroup = self._describe(resolved)
            if cgroup.labels[0] in seen_ids:
                continue
            seen_ids.add(cgroup.labels[0])
            found[resolved.path] = cgroup
        with self._lock:
            gone = [p for p in self._cgroups if p not in found]
            self._cgroups = found
            self._ticks += 1
        for path in gone:
            self._release(path)
        return list(found)

    def _describe(self, resolved):
        # read before the lookups: a refresh in between makes the next tick describe it again
        generation = -1 if self.identity is None else self.identity.generation
        return _Cgroup(resolved=resolved, labels=_labels(_cadvisor_id(resolved.name), self.identity),
                       generation=generation)

    def _release(self, path):
        """Let the Reader close what it holds for a cgroup that left the set."""
        self._reader.forget(path)

    def _pressure(self, cgroup, resource):
        resolved = cgroup.resolved
        v2_dir = pressure_dir(resolved, self._hier)
        if v2_dir is None:
            return None
        try:
            return psi.read_pressure(os.path.join(v2_dir, f"{resource}.pressure"))
        except CgroupNotFound:
            return None  # removed meanwhile: the next tick drops it
        except CgshimError as exc:
            self._count_error(resolved.path, exc)
            return None

    # -- scrape ------------------------------------------------------------------------------
    def _families(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        samples = self._sampler.snapshot()
        load = GaugeMetricFamily(
            "container_cpu_load_average_10s",
            "Value of container cpu load average over the last 10 seconds.", labels=_BASE_LABELS)
        load_d = GaugeMetricFamily(
            "container_cpu_load_d_average_10s",
            "Value of container cpu load.d average over the last 10 seconds.", labels=_BASE_LABELS)
        tasks = GaugeMetricFamily(
            "container_tasks_state", "Number of tasks in given state",
            labels=_BASE_LABELS + ("state",))
        pressure = {}
        for resource, word in _PSI_RESOURCES:
            pressure[resource, "some"] = CounterMetricFamily(
                f"container_pressure_{resource}_waiting_seconds_total",
                f"Total time duration tasks in the container have waited due to {word} congestion.",
                labels=_BASE_LABELS)
            pressure[resource, "full"] = CounterMetricFamily(
                f"container_pressure_{resource}_stalled_seconds_total",
                f"Total time duration no tasks in the container could make progress due to "
                f"{word} congestion.", labels=_BASE_LABELS)
        runnable = CounterMetricFamily(
            "cgshim_container_cpu_runnable_seconds",
            "Cumulative time the container's own threads were runnable (on a CPU or waiting "
            "for one: sum of schedstat run + run_delay), counted by this exporter; rate() is "
            "the exact average number of runnable threads.", labels=_BASE_LABELS)
        runqueue = CounterMetricFamily(
            "cgshim_container_cpu_runqueue_seconds",
            "Cumulative time the container's own threads waited on a runqueue for a CPU (sum "
            "of schedstat run_delay), counted by this exporter; rate() is the exact average "
            "number of waiting threads.", labels=_BASE_LABELS)
        loadavg = {n: GaugeMetricFamily(
            f"cgshim_container_load{n}",
            f"The kernel's {n}-minute load average (calc_load, 5 s steps) of the container's "
            f"own threads, fed with their exact runnable average plus the D count.",
            labels=_BASE_LABELS) for n in (1, 5, 15)}
        source = GaugeMetricFamily(
            "cgshim_load_source",
            "1 per cgroup: how its task counts were read (netlink: CGROUPSTATS on cgroup v1, "
            "scan: thread states in /proc, psi: counts unavailable) and by which code (native: "
            "cgshim's C core, python, pyroute2).", labels=("id", "source", "implementation"))
        for _, sample in sorted(samples.items()):
            reading = sample.cpu_load
            if not isinstance(reading, Reading):
                continue
            labels = list(reading.cgroup.labels)
            cpu = reading.cpu_load
            if sample.milli_load is not None:
                load.add_metric(labels, sample.milli_load)
                load_d.add_metric(labels, sample.milli_load_d)
            for field, state in _STATES:
                value = getattr(cpu, field)
                if value is not None:
                    tasks.add_metric(labels + [state], value)
            for resource, lines in (("cpu", cpu.pressure), ("memory", reading.memory),
                                    ("io", reading.io)):
                if lines is None:
                    continue
                pressure[resource, "some"].add_metric(labels, lines.some.total_usec / 1e6)
                if lines.full is not None:
                    pressure[resource, "full"].add_metric(labels, lines.full.total_usec / 1e6)
            if cpu.runnable_seconds is not None:
                runnable.add_metric(labels, cpu.runnable_seconds)
                runqueue.add_metric(labels, cpu.runqueue_seconds)
            if sample.load1 is not None:
                for n, value in ((1, sample.load1), (5, sample.load5), (15, sample.load15)):
                    loadavg[n].add_metric(labels, value)
            source.add_metric([labels[0], cpu.source, cpu.implementation or ""], 1)
        errors = CounterMetricFamily(
            "cgshim_sampling_errors",
            "Failed cgroup readings by the sampler, by cgshim error class.", labels=("error",))
        for name, count in sorted(self.error_counts().items()):
            errors.add_metric([name], count)
        cgroups = GaugeMetricFamily("cgshim_cgroups", "Cgroups with a current reading.",
                                    value=len(samples))
        families = [load, load_d, tasks, *pressure.values(), runnable, runqueue,
                    *loadavg.values(), source, errors, cgroups]
        if self.identity is not None:
            up = GaugeMetricFamily(
                "cgshim_runtime_up", "1 if the container runtime answered the last CRI refresh "
                "(pods and containers carry kubelet's labels), 0 if not (path-only labels).",
                labels=("endpoint",))
            up.add_metric([self.identity.endpoint], 1 if self.identity.status().ok else 0)
            families.append(up)
        return families

    def runtime_status(self):
        """One line on the runtime identity: None without --runtime-endpoint."""
        if self.identity is None:
            return None
        from cgshim.cri import describe_status

        return describe_status(self.identity.status())

    # -- HTTP ----------------------------------------------------------------------------------
    def wsgi_app(self):
        """A WSGI app: /metrics, /healthz, 404 for anything else; query strings ignored.

        /metrics is rendered once per sampler tick, not once per scrape: the cgroup families
        only change when a tick completes, and rendering 1,000 cgroups (13,000 samples) costs
        ~0.1 s of CPU, which scrapers every second (or an HA pair) would otherwise pay each
        time, inside their scrape timeout. While it is being scraped, the sampler thread renders
        right after each tick, so a scrape only copies bytes; unscraped, nothing is rendered.
        The body (and its gzip member) is cached with the tick it shows; the process_*
        metrics are rendered fresh and appended (as a second gzip member when compressed;
        gzip readers, Go's included, read concatenated members). Text format 0.0.4, as
        cAdvisor serves.
        """
        metrics = self._exposition = _CachedExposition(self)

        def app(environ, start_response):
            path = environ.get("PATH_INFO", "")
            method = environ.get("REQUEST_METHOD", "GET")
            if path not in ("/metrics", "/healthz"):
                return _plain(start_response, "404 Not Found", b"not found: try /metrics\n")
            if method not in ("GET", "HEAD"):
                return _plain(start_response, "405 Method Not Allowed", b"use GET\n",
                              [("Allow", "GET, HEAD")])
            if path == "/healthz":
                # The runtime's state is said but never fails the check: without it the
                # exporter still serves every series, with path-only labels.
                runtime = self.runtime_status()
                extra = b"" if runtime is None else f"{runtime}\n".encode()
                if self.ready():
                    return _plain(start_response, "200 OK", b"ok\n" + extra)
                return _plain(start_response, "503 Service Unavailable",
                              b"not sampling\n" + extra)
            # No parameter of ours; prometheus_client's name[] filter is not offered either.
            gzipped = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "").lower()
            body = metrics.render(gzipped)
            headers = [("Content-Type", _CONTENT_TYPE), ("Content-Length", str(len(body)))]
            if gzipped:
                headers.append(("Content-Encoding", "gzip"))
            start_response("200 OK", headers)
            return [body]

        return app


_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _text(families):
    """Prometheus text format 0.0.4 of metric families whose metric and label names are
    valid legacy names (ours are constants), byte for byte what prometheus_client's
    generate_latest writes for them (labels sorted, values by its floatToGoString).

    generate_latest checks and escapes every label *name* of every sample (UTF-8 names since
    prometheus_client 0.21): 0.17 s of CPU for 1,000 cgroups (13,000 samples of 9 labels) at
    every tick, against 0.03 s here. The label values are escaped as the format requires.
    """
    from prometheus_client.utils import floatToGoString

    out = []
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        help_text = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {family.type}\n")
        order = None
        for sample in family.samples:
            labels = sample.labels
            if labels:
                if order is None:
                    order = sorted(labels)
                pairs = ",".join(f'{k}="{_escape_value(labels[k])}"' for k in order)
                out.append(f"{sample.name}{{{pairs}}} {floatToGoString(sample.value)}\n")
            else:
                out.append(f"{sample.name} {floatToGoString(sample.value)}\n")
    return "".join(out).encode("utf-8")


def _escape_value(value):
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')
    return value


def _prometheus_client():
    """prometheus_client, imported when an Exporter is made: it is the extra cgshim[exporter],
    so the command line and the library load without it."""
    try:
        import prometheus_client
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "prometheus_client":
            raise
        raise ModuleNotFoundError("the exporter needs prometheus_client: "
                                  "pip install 'cgshim[exporter]'", name="prometheus_client") from exc
    return prometheus_client


class _CachedExposition:
    """The exporter's /metrics body: cgroup families rendered once per completed tick."""

    def __init__(self, exporter):
        from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

        self._exporter = exporter
        self._generate = generate_latest
        self._samples = CollectorRegistry()
        self._samples.register(_Collector(exporter))
        self._process = CollectorRegistry()
        ProcessCollector(registry=self._process)
        self._lock = threading.Lock()  # one rendering at a time; others wait for it
        self._tick = None
        self._plain = self._gzip = None

        self._wanted = False  # scraped since the last prepare(): render ahead
        self._wanted_gzip = False

    def _current(self, gzipped):
        """The cached body for the last completed tick (rendered now if stale); under _lock."""
        tick = self._exporter._sampler.ticks
        if tick != self._tick or self._plain is None:
            self._plain = _text(self._exporter._families())
            self._gzip = None
            self._tick = tick
        if gzipped and self._gzip is None:
            self._gzip = gzip.compress(self._plain, compresslevel=6, mtime=0)
        return self._gzip if gzipped else self._plain

    def prepare(self):
        """After a tick (sampler thread): render it now if someone has been scraping."""
        with self._lock:
            if not self._wanted:
                return
            self._wanted = False
            self._current(self._wanted_gzip)

    def render(self, gzipped):
        with self._lock:
            self._wanted = True
            self._wanted_gzip = gzipped
            cached = self._current(gzipped)
        process = self._generate(self._process)
        return cached + (gzip.compress(process, compresslevel=6, mtime=0) if gzipped else process)


class _SamplingReader:
    """What the Exporter's Sampler reads through: the Reader's CpuLoad plus memory and io
    pressure of the same cgroup, so that every file is read on the sampler thread."""

    def __init__(self, exporter):
        self._exporter = exporter

    def cpu_load(self, path, *, recursive=False):
        exporter = self._exporter
        with exporter._lock:
            cgroup = exporter._cgroups.get(path)
        if cgroup is None:  # left the set since the tick began
            raise CgroupNotFound(f"{path}: no longer in the exported set")
        cpu = exporter._reader.cpu_load(path, recursive=recursive)
        return Reading(cgroup=cgroup, cpu_load=cpu, memory=exporter._pressure(cgroup, "memory"),
                       io=exporter._pressure(cgroup, "io"))

    @property
    def sweep(self):
        """The Sampler's node pass, or None for a reader without sweep() (then it reads
        each cgroup with :meth:`cpu_load`)."""
        return self._sweep if hasattr(self._exporter._reader, "sweep") else None

    def _sweep(self, roots, *, recursive=False):
        """One Reader.sweep() over ``roots`` (the Sampler passes the exported roots), each
        CpuLoad of the exported set wrapped as a Reading with memory and io pressure."""
        exporter = self._exporter
        swept = exporter._reader.sweep(roots, recursive=recursive)
        with exporter._lock:
            cgroups = dict(exporter._cgroups)
        readings = {}
        for path, cpu in swept.items():
            cgroup = cgroups.get(path)
            if cgroup is not None:  # else not exported (a shared id) or new since the tick began
                readings[path] = Reading(cgroup=cgroup, cpu_load=cpu,
                                         memory=exporter._pressure(cgroup, "memory"),
                                         io=exporter._pressure(cgroup, "io"))
        return Sweep(readings, timestamp=swept.timestamp, duration=swept.duration,
                     errors=swept.errors, roots=swept.roots, warnings=swept.warnings)


def _plain(start_response, status, body, extra=()):
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), *extra])
    return [body]


# ------------------------------------------------------------------------------- serving




def serve(listen=DEFAULT_LISTEN, interval=1.0, roots=None, *, stop=None, runtime_endpoint=None,
          runtime_resync=60.0, web_options=None):
    """Serve the exporter's /metrics on ``listen`` until SIGTERM or SIGINT (or until the
    ``stop`` threading.Event is set), then stop the HTTP server and the sampler cleanly.

    ``roots``: cgroup directories or names to export with all their descendants (default: the
    host's whole tree, see :func:`cgshim.app.discovery.default_roots`). Call from the main
    thread: the signals are blocked in all threads and taken by the main one. Prints the bound address to stderr (port
    0 picks a free one). Raises CgshimError for a bad root, OSError if the address cannot be
    bound, and re-raises an exception that ended the sampler. ``runtime_endpoint`` and
    ``runtime_resync``: see :class:`Exporter`.

    ``web_options``: a :class:`cgshim.app.web.WebOptions` (web config file, request limits);
    its config file is loaded first, before anything is bound (ConfigError if it is bad).
    """
    web_options = web_options or web.WebOptions()
    config = web_options.load_config()
    web.raise_nofile_limit()  # before the Reader sizes its fd budget from it
    host, port = parse_listen(listen)
    signals = {signal.SIGTERM, signal.SIGINT}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # before any thread starts
    try:
        exporter = Exporter(roots, interval,
                            runtime_endpoint=runtime_endpoint, runtime_resync=runtime_resync)
        try:
            server = web.Server(exporter.wsgi_app(), host, port, config=config,
                                max_requests=web_options.max_requests,
                                request_timeout=web_options.request_timeout)
        except BaseException:
            exporter.stop()
            raise
        try:
            exporter.start()
            # Serve once the first tick is in (bounded): the first scrape then has every
            # series, also when that tick is slow (the bpf backend loads its program on it).
            deadline = time.monotonic() + max(10.0, 2 * exporter.interval)
            while not exporter.ready() and exporter.sampler_exception is None \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            server.start()
            host, port = server.server_address[:2]
            shown = f"[{host}]" if ":" in host else host
            print(f"cgshim exporter: serving {server.scheme}://{shown}:{port}/metrics, interval "
                  f"{exporter.interval:g} s, roots {' '.join(exporter.roots)}"
                  + (f", runtime {runtime_endpoint} (read-only CRI calls)"
                     if runtime_endpoint else ""), file=sys.stderr, flush=True)
            while stop is None or not stop.is_set():
                if signal.sigtimedwait(signals, 0.5) is not None:
                    break
                if exporter.sampler_exception is not None:
                    break
        finally:
            server.stop()
            exporter.stop()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _interval(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"interval must be > 0 seconds, got {text}")
    return value


def _checked(parse):
    """An argparse type: the text as given, once ``parse`` accepts it (its ValueError is the
    usage error)."""
    def check(text):
        try:
            parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return check


_listen, _endpoint = _checked(parse_listen), _checked(parse_endpoint)


def add_arguments(parser):
    """The serve options (shared with ``python -m cgshim serve``)."""
    parser.add_argument("--listen", default=DEFAULT_LISTEN, type=_listen, metavar="HOST:PORT",
                        help=f"address to serve /metrics on (default {DEFAULT_LISTEN}; "
                             "0.0.0.0:9560 to be scraped from other hosts)")
    parser.add_argument("--interval", default=1.0, type=_interval, metavar="SECONDS",
                        help="sampling interval, also the load average's housekeeping interval "
                             "(default 1)")
    parser.add_argument("--root", action="append", default=None, metavar="PATH", dest="roots",
                        help="cgroup directory or name to export with all its descendants; "
                             "repeatable (default: the host's whole cgroup tree)")
    parser.add_argument("--runtime-endpoint", default=None, type=_endpoint, metavar="ENDPOINT",
                        help="container runtime's CRI socket, e.g. "
                             "unix:///run/containerd/containerd.sock or "
                             "unix:///var/run/crio/crio.sock: label pods and containers as "
                             "kubelet does (namespace, pod, container, image, name); only "
                             "read-only calls are made (default: off, path-only labels; needs "
                             "pip install 'cgshim[k8s]')")
    parser.add_argument("--runtime-resync", default=60.0, type=_interval, metavar="SECONDS",
                        help="with --runtime-endpoint: seconds between full refreshes of the "
                             "runtime's pods and containers (default 60; new cgroups trigger "
                             "a refresh of their own)")
    web.add_arguments(parser)
    return parser


def main(argv=None):
    """``python -m cgshim.app.exporter``: the exporter's own entry point (same options as
    ``python -m cgshim serve``). Returns the exit status."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m cgshim.app.exporter",
        description="Serve cAdvisor's container load metrics (and PSI) for cgroups, on any "
                    "cgroup host. Exit 0 after SIGTERM/SIGINT, 1 on error, 2 on bad usage."))
    args = parser.parse_args(argv)
    try:
        serve(args.listen, args.interval, args.roots, runtime_endpoint=args.runtime_endpoint,
              runtime_resync=args.runtime_resync, web_options=web.WebOptions.from_args(args))
    except ConfigError as exc:  # a bad --web.config.file: a usage error, nothing was bound
        print(f"cgshim exporter: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in ("prometheus_client", "yaml", "bcrypt"):
            raise
        print(f"cgshim exporter: needs {exc.name}: pip install 'cgshim[exporter]'",
              file=sys.stderr)
        return 2
    except (CgshimError, OSError) as exc:
        print(f"cgshim exporter: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a sampler bug re-raised by serve: report, non-zero exit
        print(f"cgshim exporter: sampler failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
