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
