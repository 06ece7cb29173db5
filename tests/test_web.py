"""The exporter's HTTP server under abuse (cgshim/app/web.py), as a real ``cgshim serve`` on
loopback: thousands of idle and slow-header connections, a burst over --web.max-requests,
oversized and malformed requests, a low RLIMIT_NOFILE. Issue 14 "Bounded under abuse" and
issue 9 "Log spam under idle connections"."""
import http.client
import resource
import socket
import statistics
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cgshim.app import web
from tests.support.require import require_kernel

pytestmark = pytest.mark.kernel

IDLE = 2000
SLOW = 2000


def raise_own_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    require_kernel(hard == resource.RLIM_INFINITY or hard >= need,
                   f"needs a hard RLIMIT_NOFILE >= {need} for {need} loopback sockets, have {hard}")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft


@pytest.fixture
def nofile():
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield raise_own_nofile
    resource.setrlimit(resource.RLIMIT_NOFILE, old)


def get(port, path="/metrics", method="GET", timeout=30.0, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def raw(port, data, timeout=30.0):
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def wait(predicate, what, timeout=60.0, state=None):
    """Poll ``predicate``; on timeout say what was awaited and, from ``state()``, what was seen."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            seen = f" (seen: {state()})" if state else ""
            raise AssertionError(f"not within {timeout} s: {what}{seen}")
        time.sleep(0.05)


def settled_fds(srv, quiet=0.5, timeout=30.0):
    """The server's fd count once it has stayed the same for ``quiet`` s: a connection the
    client has just closed may still be open on the server's side for a moment, and a
    count taken then would be one too high for good."""
    deadline = time.monotonic() + timeout
    last, since = srv.fds(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(f"the server's fds did not settle within {timeout} s")
        time.sleep(0.05)
        now = srv.fds()
        if now != last:
            last, since = now, time.monotonic()
    return last


def ids_in(body):
    return {s.labels.get("id") for fam in text_string_to_metric_families(body.decode())
            for s in fam.samples} - {None}


def connect_many(port, n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.settimeout(30)
            s.connect(("127.0.0.1", port))
            socks.append(s)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def test_idle_and_slow_header_connections_leave_metrics_answering(testbed, served, nofile):
    """2,000 idle and 2,000 slow-header (slowloris) connections at once: /metrics answers,
    threads stay within --web.max-requests, memory stays bounded, the connections are closed
    at the deadline, and the log says so in at most a few short lines."""
    nofile(IDLE + SLOW + 512)
    cg = testbed.cgroup(2)
    testbed.spawn(pipe=1, cgroups=[cg])
    srv = served([cg], "--web.max-requests", "4", "--web.request-timeout", "20")
    wait(lambda: get(srv.port, "/healthz")[0] == 200, "healthz 200")
    status, _, body = get(srv.port)
    assert status == 200 and len(ids_in(body)) == 1
    threads_before, fds_before, rss_before = srv.threads(), settled_fds(srv), srv.rss()

    idle = slow = []
    stop = threading.Event()
    try:
        idle = connect_many(srv.port, IDLE)
        slow = connect_many(srv.port, SLOW)
        for s in slow:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")

        def trickle():  # one more header line per connection, every second: never the end
            n = 0
            while not stop.wait(1.0):
                for s in slow:
                    try:
                        s.sendall(b"X-%d: y\r\n" % n)
                    except OSError:
                        pass
                n += 1

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        # Every connection was accepted (none waits in the SYN queue).
        wait(lambda: srv.fds() >= fds_before + IDLE + SLOW, "all connections accepted",
             state=lambda: f"server fds {srv.fds()}, baseline {fds_before}, "
                           f"client sockets {len(idle)}+{len(slow)}")

        latencies = []
        for _ in range(5):
            t0 = time.monotonic()
            status, _, body = get(srv.port, timeout=30)
            latencies.append(time.monotonic() - t0)
            assert status == 200 and len(ids_in(body)) == 1
        threads_during, rss_during = srv.threads(), srv.rss()
        print(f"abuse: {IDLE}+{SLOW} connections: /metrics latencies "
              f"{[round(x, 3) for x in latencies]} s; threads {threads_before} -> "
              f"{threads_during}; RSS {rss_before >> 20} -> {rss_during >> 20} MiB")
        # The bound: answering within 1 s (median of 5, on a shared 2-core machine).
        # Before: the backlog of 5 dropped SYNs and a scrape waited >= 1 s for a retransmit.
        assert statistics.median(latencies) < 1.0, latencies
        # Before: main, sampler, loop and the one worker the first requests used.
        assert threads_during <= threads_before - 1 + 4, (threads_before, threads_during)
        assert rss_during - rss_before < 64 << 20, (rss_before, rss_during)

        # At the deadline (20 s from accept) the server closes every one of them.
        wait(lambda: srv.fds() <= fds_before + 8, "connections closed at the deadline", 120,
             state=lambda: f"server fds {srv.fds()}, baseline {fds_before}")
    finally:
        stop.set()
        for s in idle + slow:
            s.close()
    lines = [x for x in srv.lines() if "serving " not in x]
    assert not any("Traceback" in x for x in lines), lines
    assert 1 <= len(lines) <= 3, lines
    assert all(len(x) < 300 for x in lines), lines
    assert any("without a complete request within 20 s" in x for x in lines), lines
    assert srv.close() == 0


def test_over_max_requests_is_503(testbed, served):
    """--web.max-requests 1 and 100 requests sent at once: each is answered, 200 or 503."""
    cg = testbed.cgroup(2)
    srv = served([cg], "--web.max-requests", "1")
    wait(lambda: get(srv.port, "/healthz")[0] == 200, "healthz 200")
    socks = connect_many(srv.port, 100)
    try:
        for s in socks:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        statuses = []
        for s in socks:
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            statuses.append(int(data.split(b" ", 2)[1]))
            if statuses[-1] == 503:
                assert b"--web.max-requests 1" in data and b"Retry-After: 1" in data
    finally:
        for s in socks:
            s.close()
    assert set(statuses) == {200, 503}, statuses
    assert get(srv.port)[0] == 200


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /" + b"a" * (web.MAX_REQUEST_LINE + 10) + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /" + b"a" * (web.MAX_REQUEST_LINE + 10), 414),  # no newline at all
    (b"GET /metrics HTTP/1.1\r\n" + b"X-Long: " + b"b" * web.MAX_HEAD + b"\r\n\r\n", 431),
    (b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 3000 + b"\r\n", 431),
    (b"garbage\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\n folded: x\r\n\r\n", 400),
    (b"GET metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS to a plain port
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 405),
    (b"DELETE /healthz HTTP/1.1\r\n\r\n", 405),
    (b"GET /metrics/../etc/passwd HTTP/1.1\r\n\r\n", 404),
    (b"GET http://127.0.0.1/metrics HTTP/1.1\r\n\r\n", 200),  # absolute-form
    (b"GET /metrics HTTP/1.0\n\n", 200),  # bare LF
])
def test_request_limits_and_routes(testbed, served, request_bytes, status):
    cg = testbed.cgroup(2)
    srv = served([cg])
    wait(lambda: get(srv.port, "/healthz")[0] == 200, "healthz 200")
    answer = raw(srv.port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert b"\r\nConnection: close\r\n" in answer
    lines = [x for x in srv.lines() if "serving " not in x]
    assert len(lines) <= 1 and not any("Traceback" in x for x in lines), lines
    assert get(srv.port)[0] == 200  # still serving


def test_head_has_no_body(testbed, served):
    cg = testbed.cgroup(2)
    srv = served([cg])
    wait(lambda: get(srv.port, "/healthz")[0] == 200, "healthz 200")
    for path in ("/metrics", "/healthz"):
        answer = raw(srv.port, b"HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"", answer[:300]
        length = int(dict(x.split(b": ", 1) for x in head.split(b"\r\n")[1:])[b"Content-Length"])
        assert length > 0


def test_connection_limit_under_a_low_rlimit(testbed, served, nofile):
    """With RLIMIT_NOFILE 1024 (soft = hard: it cannot be raised) the server keeps to its
    connection limit: 1,500 idle connections push out the oldest ones instead of running out
    of fds, and /metrics keeps answering."""
    nofile(2048)
    cg = testbed.cgroup(2)
    srv = served([cg], nofile=1024)
    wait(lambda: get(srv.port, "/healthz")[0] == 200, "healthz 200")
    limit = 1024 // 2 - web.FD_RESERVE
    socks = []
    try:
        socks = connect_many(srv.port, 1500)
        wait(lambda: any("connection limit" in x for x in srv.lines()), "the limit reported")
        status, _, body = get(srv.port, timeout=30)
        assert status == 200 and len(ids_in(body)) == 1
        assert srv.fds() <= 1024
        # The oldest connections were the ones closed.
        socks[0].settimeout(30)
        try:
            assert socks[0].recv(1) == b""
        except ConnectionResetError:
            pass  # closed by abort: an RST
    finally:
        for s in socks:
            s.close()
    lines = [x for x in srv.lines() if "serving " not in x]
    assert any(f"connection limit ({limit})" in x for x in lines), lines
    assert len(lines) <= 2 and not any("Traceback" in x for x in lines), lines
    assert not any("EMFILE" in x or "Too many open files" in x for x in lines), lines


def test_half_closed_client_still_gets_its_response(testbed, served):
    """``printf 'GET ...' | nc`` style: the client shuts its side after the request."""
    cg = testbed.cgroup(2)
    srv = served([cg])
    wait(lambda: get(srv.port, "/healthz")[0] == 200, "healthz 200")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 200 ") and b"container_tasks_state{" in out, out[:200]
