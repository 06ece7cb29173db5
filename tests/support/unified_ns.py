"""Simulate a pure cgroup v2 host for one Python snippet, without touching the host's mounts.

``run_unified(code)`` runs ``python -c code`` in a private mount namespace (unshare -m,
propagation private) in which cgroup2 is mounted over /sys/fs/cgroup; the v1 mounts below
it are then hidden. The cgroup2 hierarchy is the host's own one (the same cgroups as
/sys/fs/cgroup/unified), so a Testbed inside must clean up as usual. Needs root.
"""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(REPO, "tests")

_SCRIPT = 'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$0" -c "$1"'


def run_unified(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``code`` under a simulated unified host; returns the finished process (text
    stdout/stderr captured). The repo root and tests/ are on PYTHONPATH. A hang past
    ``timeout`` seconds raises subprocess.TimeoutExpired (the child is killed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, TESTS] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", _SCRIPT, sys.executable, code],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )
