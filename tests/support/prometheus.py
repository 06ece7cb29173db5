"""A real Prometheus server (Debian's ``prometheus`` package) for tests: its own config file,
data directory and port on 127.0.0.1, all in a directory of the test's; stopped by pid.

    with Prometheus(tmp_path, [target], scrape_interval="1s") as prom:
        prom.wait_for(lambda: prom.query('up') ...)

Nothing of the package's own instance is touched: not its config (/etc/prometheus), not its
data (/var/lib/prometheus), not its port 9090.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import yaml

BINARY = "prometheus"


def available():
    return shutil.which(BINARY) is not None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusError(AssertionError):
    pass


class Prometheus:
    """``targets``: host:port strings scraped by one job ``cgshim`` every ``scrape_interval``.
    ``scheme``, ``basic_auth`` ((user, password)) and ``ca_file`` go to that job's config."""

    def __init__(self, workdir, targets, *, scrape_interval="1s", scheme="http",
                 basic_auth=None, ca_file=None, extra_jobs=(), start_timeout=120.0):
        self.dir = os.path.join(str(workdir), "prometheus")
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        job = {"job_name": "cgshim", "scrape_interval": scrape_interval,
               "scrape_timeout": scrape_interval, "scheme": scheme,
               "static_configs": [{"targets": list(targets)}]}
        if basic_auth is not None:
            job["basic_auth"] = {"username": basic_auth[0], "password": basic_auth[1]}
        if ca_file is not None:
            job["tls_config"] = {"ca_file": ca_file}
        config = {"global": {"scrape_interval": scrape_interval,
                             "evaluation_interval": scrape_interval},
                  "scrape_configs": [job, *extra_jobs]}
        self.config_file = os.path.join(self.dir, "prometheus.yml")
        with open(self.config_file, "w") as f:
            yaml.safe_dump(config, f)
        self.log_file = os.path.join(self.dir, "prometheus.log")
        self.proc = None
        for attempt in range(5):  # the free port may be taken between probe and bind
            self.port = _free_port()
            self._start()
            try:
                self._wait_ready(start_timeout)
                return
            except PrometheusError:
                self.close()
                if attempt == 4 or "address already in use" not in self.log():
                    raise

    def _start(self):
        log = open(self.log_file, "ab")
        try:
            self.proc = subprocess.Popen(
                [BINARY, f"--config.file={self.config_file}",
                 f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 f"--web.console.templates={os.path.join(self.dir, 'consoles')}",
                 f"--web.console.libraries={os.path.join(self.dir, 'console_libraries')}",
                 "--storage.tsdb.retention.time=1h", "--log.level=info"],
                cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        self.url = f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited ({self.proc.returncode}): "
                                      f"{self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready within {timeout} s: "
                                      f"{self.log()[-2000:]}")
            time.sleep(0.2)

    def log(self):
        try:
            with open(self.log_file, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def api(self, path, **params):
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=30) as resp:
            doc = json.load(resp)
        if doc.get("status") != "success":
            raise PrometheusError(f"{url}: {doc}")
        return doc["data"]

    def query(self, expr):
        """Instant query: [(labels, float value)]."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def query_range(self, expr, start, end, step=1.0):
        """Range query: [(labels, [(t, value)])]."""
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        return [(r["metric"], [(float(t), float(v)) for t, v in r["values"]])
                for r in data["result"]]

    def targets(self):
        return self.api("targets")["activeTargets"]

    def wait_for(self, predicate, what, timeout=60.0):
        """Poll ``predicate()`` until it returns a truthy value (returned); fail after timeout."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                result = predicate()
            except (AssertionError, LookupError, ValueError) as exc:
                result, last = None, exc
            if result:
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"not seen in prometheus within {timeout} s: {what}"
                                      f" (last: {last!r}; targets: {self.targets()})")
            time.sleep(0.25)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
