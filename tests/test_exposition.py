"""/metrics is rendered once per sampler tick and cached (cgshim/app/exporter.py
_CachedExposition): scrapes between ticks get the same cgroup lines, a new tick shows new
figures, the gzip body (two gzip members) decompresses to the plain one."""
import gzip

import pytest

from cgshim.app import exporter as exporter_mod

pytestmark = pytest.mark.kernel


def scrape(app, gzipped=False):
    environ = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET", "QUERY_STRING": "",
               "HTTP_ACCEPT_ENCODING": "gzip" if gzipped else "identity"}
    got = {}

    def start_response(status, headers):
        got["status"], got["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    assert got["status"] == "200 OK"
    assert int(got["headers"]["Content-Length"]) == len(body)
    if gzipped:
        assert got["headers"]["Content-Encoding"] == "gzip"
        body = gzip.decompress(body)  # both members
    return body.decode()


def cgroup_lines(text):
    return sorted(x for x in text.splitlines() if x.startswith("container_"))


def test_rendered_once_per_tick(testbed):
    cg = testbed.cgroup(2)
    testbed.spawn(pipe=1, cgroups=[cg])
    exp = exporter_mod.Exporter([cg], 1.0)
    try:
        app = exp.wsgi_app()
        exp.sample_once()
        first = scrape(app)
        assert 'state="sleeping"} 2.0' in first
        cached = exp._exposition._plain
        second = scrape(app)
        assert exp._exposition._plain is cached  # not rendered again
        assert cgroup_lines(first) == cgroup_lines(second)
        assert "process_open_fds" in second  # rendered fresh every scrape
        assert cgroup_lines(scrape(app, gzipped=True)) == cgroup_lines(first)

        testbed.spawn(pipe=1, cgroups=[cg])
        exp.sample_once()  # a tick: scraped before, so rendered at once on this thread
        assert exp._exposition._plain is not cached
        ahead = exp._exposition._plain
        third = scrape(app)
        assert exp._exposition._plain is ahead
        assert 'state="sleeping"} 4.0' in third
        assert cgroup_lines(scrape(app, gzipped=True)) == cgroup_lines(third)
    finally:
        exp.stop()


class _Families:
    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


def test_text_is_generate_latest_byte_for_byte():
    """The exporter's own text writer against prometheus_client's, on awkward values."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    def families():
        g = GaugeMetricFamily("container_x", 'help with \\ and "quotes"\nand a newline',
                              labels=("id", "pod", "a_first"))
        for i, value in enumerate(["/plain", 'q"uote', "back\\slash", "new\nline", "ünï", ""]):
            g.add_metric([value, f"p{i}", "z"], [0.0, 1.5, 1e21, float("inf"), -float("inf"),
                                                  float("nan")][i])
        c = CounterMetricFamily("cgshim_y", "a counter", labels=("error",))
        c.add_metric(["CgroupNotFound"], 3)
        n = GaugeMetricFamily("cgshim_cgroups", "no labels", value=7)
        empty = GaugeMetricFamily("container_empty", "no samples", labels=("id",))
        return [g, c, n, empty]

    registry = CollectorRegistry()
    registry.register(_Families(families()))
    assert exporter_mod._text(families()) == generate_latest(registry)


def test_text_of_a_real_exporter_is_generate_latest(testbed):
    from prometheus_client import CollectorRegistry, generate_latest

    cg = testbed.cgroup(2)
    testbed.cgroup(2, parent=cg)
    testbed.spawn(pipe=1, cgroups=[cg])
    exp = exporter_mod.Exporter([cg], 1.0)
    try:
        exp.sample_once()
        exp.sample_once()
        registry = CollectorRegistry()
        registry.register(_Families(list(exp._families())))
        assert exporter_mod._text(exp._families()) == generate_latest(registry)
    finally:
        exp.stop()
