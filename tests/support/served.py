"""``python -m cgshim serve`` as a subprocess on 127.0.0.1 and a free port, for tests that talk
to it as its users do (HTTP, HTTPS, a real Prometheus). Its stderr goes to a file the test reads
(``lines()``); ``close()`` stops it by pid (SIGTERM, then SIGKILL) and returns its exit status."""
import os
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SET_NOFILE = ("import os, resource, sys; n = int(sys.argv[1]); "
               "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])")


class Served:
    def __init__(self, roots, *args, interval=1.0, nofile=None, timeout=60.0):
        cmd = [sys.executable, "-m", "cgshim", "serve", "--listen", "127.0.0.1:0",
               "--interval", str(interval)]
        for root in roots:
            cmd += ["--root", root]
        cmd += list(args)
        if nofile is not None:
            # set by a small exec wrapper, not preexec_fn: a preexec_fn makes Popen fork()
            # and run Python's at-fork hooks in the child, where grpc's (this test process
            # has channels open) restarts its poller, whose epoll fd close_fds then closes:
            # the child aborts before exec ("epoll_wait error: Bad file descriptor"), about
            # 1 start in 70 here
            cmd = [sys.executable, "-c", _SET_NOFILE, str(nofile)] + cmd
        env = dict(os.environ, PYTHONPATH=REPO, PYTHONDONTWRITEBYTECODE="1")
        self._err = tempfile.NamedTemporaryFile(prefix="cgshim-test-serve-", suffix=".log")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._err)
        self.pid = self.proc.pid
        try:
            line = self._wait_line("serving ", timeout)
        except BaseException:
            self.close()
            raise
        url = line.split("serving ", 1)[1].split()[0].rstrip(",")
        self.scheme = url.split(":", 1)[0]
        self.port = int(url.rsplit(":", 1)[1].split("/")[0])
        self.address = f"127.0.0.1:{self.port}"

    def _wait_line(self, marker, timeout):
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines():
                if marker in line:
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited ({self.proc.returncode}): {self.lines()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not start within {timeout} s: {self.lines()}")
            time.sleep(0.05)

    def lines(self):
        with open(self._err.name, errors="replace") as f:
            return f.read().splitlines()

    def threads(self):
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss(self):
        with open(f"/proc/{self.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self._err.close()
        return self.proc.returncode
