"""Soak of the exporter under churn, scraped by a real Prometheus (issue 14 "Steady under churn"):
1,000 cgroups under the exporter's root, 50 created and 50 removed every second, worker
processes (with their threads) moving between them, Prometheus scraping every second.

Checked: no failed scrape (``up`` 1 at every scrape), no series of a removed cgroup in
Prometheus later than one sampling interval plus one scrape interval (plus the 1 s query step)
after its removal, nothing in the exporter's log and no sampling error but CgroupNotFound (a
cgroup removed while read, counted), RSS, fds and threads flat after a warm-up.

CGSHIM_EXPORTER_SOAK_SECONDS sets the duration (default 120, what CI runs);
CGSHIM_EXPORTER_SOAK_REPORT names a JSON file for the figures (docs/ has a long run's).
"""
import json
import os
import random
import statistics
import time

import pytest

from tests.support import prometheus as _prom
from tests.support.require import require_kernel
from tests.support.served import Served

pytestmark = pytest.mark.kernel

SECONDS = float(os.environ.get("CGSHIM_EXPORTER_SOAK_SECONDS", "120"))
REPORT = os.environ.get("CGSHIM_EXPORTER_SOAK_REPORT")
CGROUPS = 1000
CHURN = 50  # created and removed per second
WORKERS = 8
INTERVAL = 1.0  # the exporter's sampling interval and Prometheus' scrape interval
WARMUP = 0.25  # share of the run before the figures count
RSS_GROWTH = 16 << 20
FD_GROWTH = 16


def rmdir_retry(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY while the last task's exit is still being accounted
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_exporter_under_churn_with_prometheus(testbed, tmp_path):
    require_kernel(_prom.available(), "needs Debian's prometheus package: apt-get install prometheus")
    root = testbed.cgroup(2)
    mount = testbed.root(2)

    def cid(path):
        return "/" + os.path.relpath(path, mount)

    live = [testbed.cgroup(2, parent=root) for _ in range(CGROUPS)]
    workers = [testbed.spawn(pipe=2, cgroups=[random.choice(live)]) for _ in range(WORKERS)]
    srv = Served([root], interval=INTERVAL)
    removed = {}  # id -> time.time() of its removal
    figures = []  # (t, rss, fds, threads)
    try:
        with _prom.Prometheus(tmp_path, [srv.address], scrape_interval=f"{INTERVAL:g}s") as prom:
            prom.wait_for(lambda: prom.query('up{job="cgshim"}') and
                          prom.query('up{job="cgshim"}')[0][1] == 1.0, "first scrape")
            t0 = time.time()
            end = time.monotonic() + SECONDS
            tick = time.monotonic()
            while time.monotonic() < end:
                new = [testbed.cgroup(2, parent=root) for _ in range(CHURN)]
                for w in workers:  # every worker (3 threads) moves to one of the new cgroups
                    testbed.move(w, random.choice(new))
                live += new
                for path in live[:CHURN]:  # the oldest: no worker is left in them
                    rmdir_retry(path)
                    removed[cid(path)] = time.time()
                del live[:CHURN]
                figures.append((time.monotonic(), srv.rss(), srv.fds(), srv.threads()))
                tick += 1.0
                time.sleep(max(0.0, tick - time.monotonic()))
            t1 = time.time()
            time.sleep(3 * INTERVAL)  # the last removals reach Prometheus

            span = f"{int(t1 - t0) + 1}s"
            scrapes = prom.query(f'count_over_time(up{{job="cgshim"}}[{span}])')[0][1]
            failed = prom.query(f'count_over_time(up{{job="cgshim"}}[{span}]) - '
                                f'sum_over_time(up{{job="cgshim"}}[{span}])')[0][1]
            durations = {q: prom.query(f'quantile_over_time({q}, scrape_duration_seconds'
                                       f'{{job="cgshim"}}[{span}])')[0][1] for q in (0.5, 0.99, 1)}
            errors = {labels["error"]: v for labels, v in prom.query("cgshim_sampling_errors_total")}
            series = prom.query(f'max_over_time(scrape_samples_scraped{{job="cgshim"}}[{span}])')
            late = []
            prefix = cid(root) + "/"
            step_start = t0
            while step_start < t1 + 3:  # in 5-minute windows: bounded answers on long runs
                step_end = min(step_start + 300, t1 + 3)
                for labels, values in prom.query_range(
                        f'count by (id) (container_tasks_state{{id=~"{prefix}.*"}})',
                        step_start, step_end, 1.0):
                    gone = removed.get(labels["id"])
                    if gone is None:
                        continue
                    last = max(t for t, _ in values)
                    if last > gone + 2 * INTERVAL + 1.0:
                        late.append((labels["id"], round(last - gone, 2)))
                step_start = step_end + 1
    finally:
        lines = srv.lines()
        status = srv.close()

    steady = [f for f in figures if f[0] >= figures[0][0] + WARMUP * SECONDS]
    quarter = max(1, len(steady) // 4)
    first, last = steady[:quarter], steady[-quarter:]
    rss_growth = statistics.median(f[1] for f in last) - statistics.median(f[1] for f in first)
    report = {
        "seconds": SECONDS, "cgroups": CGROUPS, "churn_per_s": CHURN, "workers": WORKERS,
        "removed": len(removed), "scrapes": scrapes, "failed_scrapes": failed,
        "scrape_duration_s_p50_p99_max": [round(durations[q], 3) for q in (0.5, 0.99, 1)],
        "max_samples_per_scrape": series[0][1] if series else None,
        "sampling_errors": errors, "late_series": late[:20], "late_count": len(late),
        "rss_mib": [round(f[1] / 2**20, 1) for f in (steady[0], steady[-1])],
        "rss_max_mib": round(max(f[1] for f in steady) / 2**20, 1),
        "rss_growth_mib": round(rss_growth / 2**20, 2),
        "fds_first_max_last_max": [max(f[2] for f in first), max(f[2] for f in last)],
        "threads_min_max": [min(f[3] for f in steady), max(f[3] for f in steady)],
        "log_lines": [x for x in lines if "serving " not in x][:10],
    }
    print("exporter soak:", json.dumps(report))
    if REPORT:
        with open(REPORT, "w") as f:
            json.dump(report, f, indent=2)

    assert status == 0, lines
    assert report["log_lines"] == [], report
    assert failed == 0 and scrapes >= 0.8 * SECONDS, report
    assert late == [], report
    assert set(errors) <= {"CgroupNotFound"}, report
    assert rss_growth < RSS_GROWTH, report
    assert report["fds_first_max_last_max"][1] <= report["fds_first_max_last_max"][0] + FD_GROWTH, report
    assert report["threads_min_max"][1] - report["threads_min_max"][0] <= 2, report
