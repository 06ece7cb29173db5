"""Soak (issue 6): many get_cpu_load calls over steady and churning cgroups; open fds and
RSS stay flat. CGSHIM_SOAK_CALLS (default 100000) is split between the steady run and the
churning one.

Bounds stated here:
- steady (nothing churns): after a warm-up the set of open fds is *identical* (+-0) and
  RSS grows by less than 5 MB;
- churning, Reader(max_cgroups=64): open fds never exceed the warm-up count plus
  2 x max_cgroups (a v1 directory fd and a cpu.pressure fd per cached cgroup) plus the
  scanner's max_fds, and RSS grows by less than 5 MB;
- the default Reader, as an agent runs it under systemd's default soft RLIMIT_NOFILE of
  1024, survives as many removed cgroups as a node sees: never an OSError (EMFILE), and
  never more than half of the fd budget held.
"""
import json
import os
import subprocess
import sys

import pytest

import cgshim
from cgshim.kernel.threadstat import effective_max_fds

pytestmark = pytest.mark.kernel

CALLS = int(os.environ.get("CGSHIM_SOAK_CALLS", "100000"))
RSS_BOUND = 5 * 1024 * 1024
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fds():
    return sorted(os.listdir("/proc/self/fd"))


def proc_counts(*workers):
    letters = [s for w in workers for s in w.expected_states().values()]
    return (letters.count("R"), letters.count("S"), letters.count("T"))


def test_steady_fds_identical_rss_flat(testbed):
    """get_cpu_load (the module's shared Reader) over v1, v2 and twin cgroups."""
    cases = []
    for version in (1, 2, 1, 2):
        cg = testbed.cgroup(version)
        w = testbed.spawn(busy=version == 1, pipe=2, cgroups=(cg,))
        cases.append((cg, proc_counts(w)))
    twin1 = testbed.cgroup(1)
    twin2 = testbed.cgroup(2, name=os.path.basename(twin1))
    w = testbed.spawn(pipe=1, cgroups=(twin1, twin2))
    cases += [(twin1, proc_counts(w)), (twin2, proc_counts(w))]
    calls = max(CALLS // 2, 2000)
    warm = min(2000, calls // 4)
    for i in range(calls):
        if i == warm:
            fds0, rss0 = fds(), rss()
        cg, want = cases[i % len(cases)]
        load = cgshim.get_cpu_load(cg)
        assert (load.nr_running, load.nr_sleeping, load.nr_stopped) == want, load
    assert fds() == fds0
    assert rss() - rss0 < RSS_BOUND, f"RSS grew {(rss() - rss0) / 1e6:.1f} MB"


def test_churning_fds_bounded_rss_flat(testbed):
    """A Reader(max_cgroups=64) while twin cgroups (v1 + v2 of one name) are removed and
    new ones created every 50 calls, as pods come and go."""
    max_cgroups = 64
    parent1 = testbed.cgroup(1)
    parent2 = testbed.cgroup(2, name=os.path.basename(parent1))
    w = testbed.spawn(busy=True, pipe=1, cgroups=(parent1, parent2))
    want = proc_counts(w)
    live = []
    serial = 0

    def new_pair():
        nonlocal serial
        serial += 1
        name = f"pod{serial}"
        pair = (os.path.join(parent1, name), os.path.join(parent2, name))
        for p in pair:
            os.mkdir(p)
        live.append(pair)

    for _ in range(8):
        new_pair()
    calls = max(CALLS - CALLS // 2, 2000)
    warm = min(5000, calls // 4)
    bound = None
    with cgshim.Reader(max_cgroups=max_cgroups) as reader:
        for i in range(calls):
            if i % 50 == 49:
                for p in live.pop(0):
                    os.rmdir(p)
                new_pair()
            if i == warm:
                rss0 = rss()
                bound = len(fds()) + 2 * max_cgroups + effective_max_fds(4096)
            if i % 3 == 0:
                load = reader.cpu_load(parent1 if i % 2 else parent2)
                assert (load.nr_running, load.nr_sleeping, load.nr_stopped) == want
            else:
                pair = live[i % len(live)]
                load = reader.cpu_load(pair[i % 2])
                assert (load.nr_running, load.nr_sleeping) == (0, 0)
            if bound is not None and i % 500 == 0:
                assert len(fds()) <= bound
        assert rss() - rss0 < RSS_BOUND, f"RSS grew {(rss() - rss0) / 1e6:.1f} MB"
    for pair in live:
        for p in pair:
            os.rmdir(p)


_AGENT = r"""
import json, os, resource, sys
import cgshim
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
parent1, parent2, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
peak, error = 0, None
for i in range(n):
    pair = [os.path.join(parent1, f"pod{i}"), os.path.join(parent2, f"pod{i}")]
    for p in pair:
        os.mkdir(p)
    try:
        for p in pair:
            cgshim.get_cpu_load(p)
        peak = max(peak, len(os.listdir("/proc/self/fd")))  # the agent's own need of an fd
    except Exception as exc:
        error = f"after {i} removed pods: {type(exc).__module__}.{type(exc).__name__}: {exc}"
    finally:
        for p in pair:
            os.rmdir(p)
    if error:
        break
print(json.dumps({"peak": peak, "error": error}))
"""


def test_default_reader_survives_pod_churn_under_nofile_1024(testbed):
    """An agent with the default Reader and systemd's soft limit of 1024 fds reads each new
    pod (a v1 + v2 twin) once; the pod is then removed. 1500 pods: no error, and the fds
    held stay under half the budget (512)."""
    parent1 = testbed.cgroup(1)
    parent2 = testbed.cgroup(2, name=os.path.basename(parent1))
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run([sys.executable, "-c", _AGENT, parent1, parent2, "1500"], env=env,
                              capture_output=True, text=True, timeout=300)
    finally:  # a child that died mid-way may leave a pod behind: ours, so remove it
        for parent in (parent1, parent2):
            for name in os.listdir(parent):
                if name.startswith("pod") and os.path.isdir(os.path.join(parent, name)):
                    os.rmdir(os.path.join(parent, name))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["error"] is None, out["error"]
    assert out["peak"] <= 512, out
