"""Case: the bpf backend (issue 11) against the scan, on the same node, in one group.

The node: ``ncg`` cgroup2 cgroups of ``per`` threads each (one worker each), plus whatever
else runs on the machine. cgshim's iterators are pinned on a private bpffs (a temp dir,
never /sys/fs/bpf) and read the way a Reader of any uid reads them.

Rows (per size):
- ``bpf node sweep``: every cgroup of the node from one pass -- ``Reader.sweep`` when the
  Reader has it, else one pass plus a lookup per cgroup (what sweep does).
- ``bpf Reader.cpu_load, one cgroup (one pass)``: a single cgroup through a Reader that
  reads the pin: one whole pass.
- ``bpf Reader.cpu_load, one cgroup (own link)``: the same through a Reader that loaded the
  program itself: a link of the per-cgroup iterator to that cgroup alone; its peer is
  ``scan Reader.cpu_load, one cgroup``.
- ``scan sweep``: the scan of every cgroup by a scan-only Reader (held stat fds).
- floor ``raw pass (C)``: open + read to EOF + close of the pinned iterator in C, no parsing.
- floor ``scan x cgroups``: the kernel work of the scan (as in the sweep case).
"""
import os
import subprocess
import tempfile

from cgshim.kernel import bpf
from cgshim.kernel.mounts import hierarchy
from cgshim.reader import Reader

from .cases import CaseError, _expect, _sleepers, _stat_fds, _tids, testbed
from .measure import timed

BPF_SWEEP = "bpf node sweep, one Reader"
BPF_ONE = "bpf Reader.cpu_load, one cgroup (one pass)"
BPF_LINK = "bpf Reader.cpu_load, one cgroup (own link)"
SCAN_ONE = "scan Reader.cpu_load, one cgroup"
SCAN_SWEEP = "scan sweep, scan-only Reader"
F_PASS = "floor: raw pass (C: open+read+close)"
F_SCAN = "floor: scan x cgroups"


def sizes(plan):
    return [(20, 50)] if plan.quick else [(200, 50), (200, 150)]


def case_bpf(ctx):
    if bpf.native_missing() or bpf.object_path() is None:
        raise CaseError(f"bpf backend not built: {bpf.native_missing() or 'no BPF object'}")
    v2root = hierarchy().v2.mount_point
    mnt = tempfile.mkdtemp(prefix="cgshim-test-bench-bpf-")
    os.chmod(mnt, 0o755)
    bpf.mount_bpffs(mnt)
    try:
        pins = os.path.join(mnt, "pins")
        bpf.pin(pins, cgroup_root=v2root)
        for ncg, per in sizes(ctx.plan):
            _one_size(ctx, pins, ncg, per)
    finally:
        subprocess.run(["umount", mnt], check=False)
        os.rmdir(mnt)


def _one_size(ctx, pins, ncg, per):
    f = ctx.floors
    size = f"{ncg}x{per}"
    with testbed() as bed:
        top = bed.cgroup(2)
        v2s = []
        for _ in range(ncg):
            c = bed.cgroup(2, parent=top)
            bed.spawn(cgroups=[c], **_sleepers(per))
            v2s.append(c)
        inos = [os.stat(c).st_ino for c in v2s]
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        # the scan floor holds a stat fd per thread: only where they fit beside the scanner's
        with_floor = 2 * ncg * per + 1000 < soft
        scan_floor = [(os.path.join(c, "cgroup.threads"), ctx.open(os.path.join(c, "cpu.pressure")),
                       _stat_fds(ctx, _tids(c))) for c in v2s] if with_floor else None
        with Reader(bpf_pin_dir=pins) as reader, Reader(backends=("scan",)) as scan, \
                Reader(bpf_pin_dir=os.path.join(pins, "none")) as loader, \
                bpf.Source.pinned(pins) as src:
            for c in v2s:
                _expect(reader.cpu_load(c), "bpf", nr_running=0, nr_sleeping=per)
                _expect(scan.cpu_load(c), "scan", nr_running=0, nr_sleeping=per)
            _expect(loader.cpu_load(v2s[0]), "bpf", nr_running=0, nr_sleeping=per)
            if loader._targets[v2s[0]].bpf_fd is None:
                raise CaseError("the loading Reader read one cgroup without its own link")
            p = src.read_pass()
            pin = os.path.join(pins, bpf.PIN_NAMES[bpf.MECH_CGROUP if p.mechanism == "cgroup"
                                                   else bpf.MECH_TASK])
            ctx.results.notes.append(
                f"bpf {size}: {p.mechanism} pass of {p.bytes} bytes ({p.objects} objects, "
                f"{len(p)} cgroups with threads); the C reader holds {p.memory} bytes")
            if hasattr(reader, "sweep"):
                def bpf_sweep():
                    reader.sweep([top])
            else:
                def bpf_sweep():
                    q = src.read_pass()
                    for i in inos:
                        q.task_counts(i)
            if hasattr(scan, "sweep"):
                def scan_sweep():
                    scan.sweep([top])
            else:
                def scan_sweep():
                    for c in v2s:
                        scan.cpu_load(c)
            loops = {
                BPF_SWEEP: timed(bpf_sweep),
                BPF_ONE: timed(reader.cpu_load, v2s[0]),
                BPF_LINK: timed(loader.cpu_load, v2s[0]),
                SCAN_ONE: timed(scan.cpu_load, v2s[0]),
                SCAN_SWEEP: timed(scan_sweep),
                F_PASS: f.bpf_pass(pin),
            }
            spec = [
                (BPF_SWEEP, "case", F_PASS, SCAN_SWEEP),
                (BPF_ONE, "case", F_PASS, ""),
                (BPF_LINK, "case", "", SCAN_ONE),
                (SCAN_ONE, "case", "", ""),
                (SCAN_SWEEP, "case", F_SCAN if with_floor else "", ""),
                (F_PASS, "floor", "", ""),
            ]
            if with_floor:
                loops[F_SCAN] = f.scan(scan_floor)
                spec.append((F_SCAN, "floor", "", ""))
            ctx.group(f"6. bpf at {size}", size, loops, spec, threads=ncg * per)
        ctx.close_fds()
