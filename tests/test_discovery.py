"""cgshim.app.discovery: default roots per host layout (fixture mountinfo, including the
legacy host without a v1 cpu hierarchy that once crashed the exporter), the walk on real
cgroups, and both consumers on such a host."""
import os

import pytest

from cgshim.app import discovery
from cgshim.errors import CgroupNotFound, Unsupported
from cgshim.kernel.mounts import _hierarchy_from, parse_mountinfo, pressure_dir, resolve
from cgshim.reader import default_roots
from tests.support.unified_ns import run_with_mountinfo

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
"""
UNIFIED = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
LEGACY = """\
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
"""
# A legacy host without a v1 cpu hierarchy (only memory and pids mounted) and no cgroup2.
LEGACY_NO_CPU = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
33 31 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 31 0:31 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
"""
# Hybrid with the cpu controller left to cgroup2: the v2 mount is the default.
HYBRID_NO_V1_CPU = """\
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
"""


def _h(text):
    return _hierarchy_from(parse_mountinfo(text))


@pytest.mark.parametrize("text, want", [
    (UNIFIED, ["/sys/fs/cgroup"]),
    (HYBRID, ["/sys/fs/cgroup/cpu,cpuacct"]),
    (LEGACY, ["/sys/fs/cgroup/cpu"]),
    (HYBRID_NO_V1_CPU, ["/sys/fs/cgroup/unified"]),
])
def test_default_roots_per_layout(text, want):
    """The consumers' default is the library's (cgshim.reader.default_roots, also sweep's)."""
    h = _h(text)
    assert default_roots(h) == want


def test_legacy_host_without_cpu_asks_for_a_root():
    h = _h(LEGACY_NO_CPU)
    assert (h.mode, h.v2, h.v1_mount("cpu")) == ("legacy", None, None)
    assert default_roots(h) == []
    with pytest.raises(Unsupported, match="--root") as info:
        discovery.resolve_roots([], h)
    assert "/sys/fs/cgroup/memory" in str(info.value)


def test_roots_must_be_a_list():
    with pytest.raises(TypeError):
        discovery.resolve_roots("/sys/fs/cgroup", _h(UNIFIED))


@pytest.mark.kernel
@pytest.mark.parametrize("command", [["serve", "--listen", "127.0.0.1:0"], ["top", "--once"]])
def test_consumers_on_a_legacy_host_without_cpu(tmp_path, command):
    """Both consumers, with no --root, on a host whose mountinfo (bind-mounted over the
    child's own) shows v1 memory and pids only: one line naming --root, exit 1, no traceback
    (the exporter's own copy of the default roots once dereferenced the absent cgroup2)."""
    from tests.support.require import require_root

    require_root()
    fake = tmp_path / "mountinfo"
    fake.write_text(LEGACY_NO_CPU)
    code = f"import sys; from cgshim.app.cli import main; sys.exit(main({command!r}))"
    proc = run_with_mountinfo(code, str(fake), timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--root" in lines[0] and "no cgroup2 mount" in lines[0], lines


@pytest.mark.kernel
def test_walk_names_dedupes_and_reports(testbed):
    top = testbed.cgroup(2)
    a = testbed.cgroup(2, parent=top, name="a")
    b = testbed.cgroup(2, parent=a, name="b")
    v1 = testbed.cgroup(1)
    hier = _h(open("/proc/self/mountinfo").read())
    gone = testbed.cgroup(2)
    roots = discovery.resolve_roots([top, a, v1, gone], hier)  # a is reached twice
    os.rmdir(gone)
    found, errors = discovery.walk(roots)
    top_name = "/" + os.path.basename(top)
    assert [(c.path, c.name, c.version) for c in found] == [
        (top, top_name, 2), (a, top_name + "/a", 2), (b, top_name + "/a/b", 2),
        (v1, "/" + os.path.basename(v1), 1)]
    assert [(path, type(exc)) for path, exc in errors] == [(gone, CgroupNotFound)]
    # the v2 directory of each: its own on v2, its twin (none here) on v1
    assert [pressure_dir(c, hier) for c in found] == [top, a, b, None]
    twin = testbed.cgroup(2, name=os.path.basename(v1))
    assert pressure_dir(resolve(v1, hier), hier) == twin

