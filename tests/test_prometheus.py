"""The exporter under a real Prometheus (Debian's package, started by tests/support/prometheus.py
on its own port, config and data directory): scraped every second, queried through its HTTP API
for the test bed's cgroups; promtool on a scrape; TLS and basic auth the Prometheus way; the
Grafana dashboard's queries. Issue 14."""
import json
import os
import re
import shutil
import subprocess
import urllib.request

import bcrypt
import pytest

from tests.support import certs as _certs
from tests.support import prometheus as _prom
from tests.support.require import require_kernel
from tests.support.served import REPO

pytestmark = pytest.mark.kernel

DASHBOARD = os.path.join(REPO, "deploy", "grafana-dashboard.json")
# promtool reads the "d" of cAdvisor's container_cpu_load_d_average_10s as an abbreviated unit;
# the name is kept (issue 14). Nothing else may be reported.
CADVISOR_NAME_LINT = "container_cpu_load_d_average_10s metric names should not contain abbreviated units"


def require_prometheus():
    require_kernel(_prom.available() and shutil.which("promtool"),
                   "needs Debian's prometheus package (prometheus, promtool): apt-get install prometheus")


@pytest.fixture
def prometheus(tmp_path):
    require_prometheus()
    started = []

    def start(targets, **kw):
        prom = _prom.Prometheus(tmp_path / f"p{len(started)}", targets, **kw)
        started.append(prom)
        return prom

    yield start
    for prom in started:
        prom.close()


def cg_id(path, mount):
    return "/" + os.path.relpath(path, mount)


def bed(testbed):
    """A (v2): 3 threads in S. B (v1 cpu, no twin): 2 in S, 2 in T. C (v2): three busy
    workers pinned to CPU 0, so that 3 are running and they wait for each other (cpu PSI)."""
    a, b, c = testbed.cgroup(2), testbed.cgroup(1), testbed.cgroup(2)
    testbed.spawn(pipe=2, cgroups=[a])
    testbed.spawn(pipe=1, cgroups=[b])
    testbed.spawn(pipe=1, cgroups=[b]).stop()
    for _ in range(3):
        w = testbed.spawn(busy=True, cgroups=[c], settle=False)
        os.sched_setaffinity(w.pid, {0})
        w.wait_settled()
    v1, v2 = testbed.root(1), testbed.root(2)
    ids = {"a": cg_id(a, v2), "b": cg_id(b, v1), "c": cg_id(c, v2)}
    want = {
        ids["a"]: {"sleeping": 3, "running": 0, "stopped": 0, "uninterruptible": 0},
        ids["b"]: {"sleeping": 2, "running": 0, "stopped": 2, "uninterruptible": 0,
                   "iowaiting": 0},
        ids["c"]: {"sleeping": 0, "running": 3, "stopped": 0, "uninterruptible": 0},
    }
    return [a, b, c], ids, want


def promql_regex(ids):
    """An alternation of ``ids`` as a PromQL string literal's content (backslashes doubled)."""
    return "|".join(re.escape(i) for i in ids).replace("\\", "\\\\")


def by_id(result, key="state"):
    out = {}
    for labels, value in result:
        out.setdefault(labels.get("id"), {})[labels.get(key)] = value
    return out


def scrape_text(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        return resp.read().decode()


def test_prometheus_scrapes_the_test_bed(testbed, served, prometheus):
    roots, ids, want = bed(testbed)
    srv = served(roots, interval=1.0)
    prom = prometheus([srv.address])
    prom.wait_for(lambda: prom.query('up{job="cgshim"}') == [(
        {"__name__": "up", "instance": srv.address, "job": "cgshim"}, 1.0)], "up == 1")

    sel = promql_regex(want)
    prom.wait_for(lambda: by_id(prom.query(f'container_tasks_state{{id=~"{sel}"}}')) == want,
                  f"container_tasks_state == {want}")
    loads = prom.wait_for(
        lambda: (lambda r: r if r.get(ids["c"], {}).get(None, 0) > 0 else None)(
            by_id(prom.query(f'container_cpu_load_average_10s{{id=~"{sel}"}}'))),
        "load average of C climbing")
    # A and B have nothing running: cAdvisor's average stays 0; C has had 3 running since its
    # first sample: above 0, never above 3000 milli-load.
    assert loads[ids["a"]] == {None: 0.0} and loads[ids["b"]] == {None: 0.0}, loads
    assert 0 < loads[ids["c"]][None] <= 3000, loads
    loads_d = by_id(prom.query(f'container_cpu_load_d_average_10s{{id=~"{sel}"}}'))
    assert loads_d == {i: {None: 0.0} for i in want}, loads_d

    # rate() over the PSI counters: C's threads queue on one CPU, so its cpu "some" grows.
    rate = prom.wait_for(
        lambda: [v for _, v in prom.query(
            f'rate(container_pressure_cpu_waiting_seconds_total{{id="{ids["c"]}"}}[5s])') if v > 0],
        "rate of C's cpu pressure > 0")
    assert 0 < rate[0] <= 1.0 + 1e-6, rate  # seconds of stall per second
    for res in ("memory", "io"):
        got = prom.query(f'rate(container_pressure_{res}_waiting_seconds_total{{id=~"{sel}"}}[5s])')
        assert {labels["id"] for labels, _ in got} == {ids["a"], ids["c"]}, (res, got)
        assert all(v >= 0 for _, v in got)
    # B is v1 without a twin: no PSI series at all (never zeros).
    assert prom.query(f'container_pressure_cpu_waiting_seconds_total{{id="{ids["b"]}"}}') == []

    # Every scrape so far succeeded.
    assert prom.query('min_over_time(up{job="cgshim"}[1h])')[0][1] == 1.0

    # promtool: nothing but what cAdvisor's own name brings.
    proc = subprocess.run(["promtool", "check", "metrics"], input=scrape_text(srv.port),
                          capture_output=True, text=True, timeout=60)
    problems = [x for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
    assert problems in ([], [CADVISOR_NAME_LINT]), problems


def test_prometheus_over_tls_with_basic_auth(testbed, served, prometheus, tmp_path):
    require_kernel(shutil.which("openssl"), "needs openssl to make test certificates")
    roots, ids, want = bed(testbed)
    certs = _certs.make(tmp_path)
    hashed = bcrypt.hashpw(b"right-password", bcrypt.gensalt(6)).decode()
    config = tmp_path / "web.yml"
    config.write_text(f"tls_server_config:\n  cert_file: {certs.server_cert}\n"
                      f"  key_file: {certs.server_key}\n"
                      f"basic_auth_users:\n  prometheus: {hashed}\n")
    srv = served(roots[:1], "--web.config.file", str(config), interval=1.0)
    assert srv.scheme == "https"
    wrong = {"job_name": "wrong-password", "scrape_interval": "1s", "scrape_timeout": "1s",
             "scheme": "https", "tls_config": {"ca_file": certs.ca},
             "basic_auth": {"username": "prometheus", "password": "wrong"},
             "static_configs": [{"targets": [srv.address]}]}
    plain = {"job_name": "plain-http", "scrape_interval": "1s", "scrape_timeout": "1s",
             "scheme": "http", "static_configs": [{"targets": [srv.address]}]}
    prom = prometheus([srv.address], scheme="https", ca_file=certs.ca,
                      basic_auth=("prometheus", "right-password"), extra_jobs=[wrong, plain])
    prom.wait_for(lambda: prom.query('up{job="cgshim"}')[0][1] == 1.0, "up == 1 over TLS")
    prom.wait_for(lambda: by_id(prom.query(f'container_tasks_state{{id="{ids["a"]}"}}'))
                  == {ids["a"]: want[ids["a"]]}, "A's task states over TLS")

    def scraped(job):
        t = [t for t in prom.targets() if t["labels"]["job"] == job]
        return t[0] if t and t[0]["health"] != "unknown" else None

    bad = prom.wait_for(lambda: scraped("wrong-password"), "the wrong-password job scraped")
    assert bad["health"] == "down" and "401" in bad["lastError"], bad
    assert prom.query('up{job="wrong-password"}')[0][1] == 0.0
    plain_target = prom.wait_for(lambda: scraped("plain-http"), "the plain-http job scraped")
    assert plain_target["health"] == "down" and "400" in plain_target["lastError"], plain_target
    assert prom.query('min_over_time(up{job="cgshim"}[1h])')[0][1] == 1.0
    # The refused scrapes are counted in a line a minute at most, never a traceback.
    lines = [x for x in srv.lines() if "serving " not in x]
    assert len(lines) <= 3 and not any("Traceback" in x for x in lines), lines


# --- the Grafana dashboard ----------------------------------------------------------------------

_METRIC = re.compile(r"\b(container_[a-z0-9_]+|cgshim_[a-z0-9_]+|up)\b")


def dashboard_queries():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    out = []

    def walk(panels):
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((panel["title"], target["expr"]))

    walk(dash["panels"])
    return dash, out


def substitute(expr, ids_regex):
    """Grafana's variables as a user picking "All" and the test bed's cgroups would set them."""
    for var in ("namespace", "pod", "container"):
        expr = expr.replace(f"${var}", ".*").replace(f"${{{var}}}", ".*")
    expr = expr.replace("$id", ids_regex).replace("${id}", ids_regex)
    expr = expr.replace("$__rate_interval", "5s").replace("$__interval", "1s")
    assert "$" not in expr, expr
    return expr


def test_dashboard_is_valid_grafana_json():
    dash, queries = dashboard_queries()
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"namespace", "pod", "container", "id"} <= variables, variables
    assert len(queries) >= 8
    for title, expr in queries:
        for var in ("namespace", "pod", "container"):
            if "container_" in expr and "up{" not in expr:
                assert f'{var}=~"${var}"' in expr, (title, expr)


def test_every_dashboard_query_returns_the_test_beds_series(testbed, served, prometheus):
    """Each panel's query, with the variables set to All and id to the test bed's cgroups,
    returns series for them from the real Prometheus. A panel whose metric the exporter does
    not serve yet (the exact-load series of another issue) is checked only once it is served."""
    roots, ids, want = bed(testbed)
    srv = served(roots, interval=1.0)
    prom = prometheus([srv.address])
    served_names = {m.group(0) for m in re.finditer(r"^[a-z_0-9]+", scrape_text(srv.port), re.M)}
    sel = promql_regex(want)
    prom.wait_for(lambda: len(by_id(prom.query(f'container_tasks_state{{id=~"{sel}"}}'))) == 3,
                  "the test bed in prometheus")
    prom.wait_for(lambda: prom.query(f'rate(container_pressure_cpu_waiting_seconds_total{{id=~"{sel}"}}[5s])'),
                  "two scrapes of the pressure counters")
    _, queries = dashboard_queries()
    checked, not_served = [], []
    for title, expr in queries:
        names = set(_METRIC.findall(expr)) - {"up"}
        if not all(any(s == n or s.startswith(n + "_") or s == n for s in served_names)
                   for n in names):
            not_served.append((title, expr))
            continue
        query = substitute(expr, sel)
        result = prom.wait_for(lambda: prom.query(query), f"panel {title!r}: {query}")
        if 'id=~"$id"' in expr and "by (" not in expr and "sum(" not in expr:
            got = {labels.get("id") for labels, _ in result}
            assert got and got <= set(want), (title, query, got)
        checked.append(title)
    print(f"dashboard: {len(checked)} panel queries checked; not served yet: {not_served}")
    assert len(checked) >= 8, (checked, not_served)
    # Only these may be absent: the exact-load series (another issue), and the errors counter,
    # which has no sample until a reading fails.
    may_be_absent = re.compile(r"cgshim_container_\w+|cgshim_sampling_errors_total")
    for title, expr in not_served:
        assert all(may_be_absent.fullmatch(n) for n in set(_METRIC.findall(expr)) - {"up"}), \
            (title, expr)
