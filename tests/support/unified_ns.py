"""Simulate another host's mounts for one Python snippet, without touching the host's mounts.

``run_unified(code)`` runs ``python -c code`` in a private mount namespace (unshare -m,
propagation private) in which cgroup2 is mounted over /sys/fs/cgroup; the v1 mounts below
it are then hidden. The cgroup2 hierarchy is the host's own one (the same cgroups as
/sys/fs/cgroup/unified), so a Testbed inside must clean up as usual. Needs root.

``run_with_mountinfo(code, path)`` runs ``python -c code`` with the file ``path`` bind-mounted
over its own /proc/<pid>/mountinfo (in a private mount namespace; the shell execs Python, so
the pid and /proc/self stay the same): everything that reads /proc/self/mountinfo sees that
text. ``v2_mountinfo_at`` writes such a text: the host's cgroup2 line moved to a test-bed
cgroup, which then stands for a hierarchy root. Need root.
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
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", _SCRIPT, sys.executable, code],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )


_BIND_SCRIPT = 'mount --bind "$2" /proc/$$/mountinfo && exec "$0" -c "$1"'


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, TESTS] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_with_mountinfo(code: str, mountinfo: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``code`` seeing the file ``mountinfo`` as /proc/self/mountinfo (see the module
    docstring); returns the finished process (text stdout/stderr captured)."""
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", _BIND_SCRIPT, sys.executable,
         code, mountinfo],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )


def v2_mountinfo_at(path, mount_point: str, root: str = "/") -> str:
    """Write to ``path`` this host's cgroup2 mountinfo line with mount point ``mount_point``
    (a test-bed cgroup2 directory: same device, so resolution accepts it) and root ``root``;
    returns ``path`` as str. No other mount is in it: the simulated host is unified."""
    with open("/proc/self/mountinfo") as f:
        line = next(x for x in f if " - cgroup2 " in x)
    fields = line.split(" ")
    fields[3], fields[4] = root, mount_point
    with open(path, "w") as f:
        f.write(" ".join(fields))
    return str(path)
