"""The package builds without libbpf and clang (issue 11): a wheel is made from a copy of
the tree in a private mount namespace where libbpf's headers and clang are hidden behind
empty tmpfs mounts; it holds the other extensions, no _bpf and no BPF object, and cgshim
imported from it says why the bpf backend is absent. Needs root (unshare -m)."""
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import pytest

from tests.support.require import require_kernel, require_root

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.kernel


def _copy_tree(dst):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.split(b"\0")
    for rel in filter(None, (os.fsdecode(f) for f in files)):
        src = os.path.join(REPO, rel)
        if not os.path.exists(src):
            continue
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, rel))


def test_wheel_without_libbpf_and_clang():
    require_root()
    require_kernel(shutil.which("unshare") is not None, "needs unshare(1)")
    require_kernel(os.path.isdir(REPO + "/.git") or os.path.isfile(REPO + "/.git"),
                   "needs the git checkout to copy the tree from")
    hide = [d for d in ("/usr/include/bpf", os.path.dirname(os.path.realpath(shutil.which("clang") or "/nonexistent")))
            if os.path.isdir(d)]
    with tempfile.TemporaryDirectory(prefix="cgshim-test-bpf-build-") as tmp:
        src, out = os.path.join(tmp, "src"), os.path.join(tmp, "wheel")
        _copy_tree(src)
        mounts = " && ".join(f"mount -t tmpfs none {d}" for d in hide) or "true"
        script = (f"{mounts} && exec {sys.executable} -m pip wheel --no-deps --no-build-isolation "
                  f"-v -w {out} {src}")
        proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "building without the bpf backend" in proc.stderr
        (wheel,) = os.listdir(out)
        with zipfile.ZipFile(os.path.join(out, wheel)) as z:
            names = z.namelist()
            z.extractall(os.path.join(tmp, "site"))
        assert any("/_netlink" in n for n in names) and any("/_procscan" in n for n in names)
        assert not any("/_bpf" in n or n.endswith(".bpf.o") for n in names), names
        check = ("import cgshim._native as n; from cgshim.kernel import bpf; "
                 "print(n.bpf is None, bpf.object_path() is None, bpf.native_missing())")
        proc = subprocess.run([sys.executable, "-c", check], cwd="/",
                              env=dict(os.environ, PYTHONPATH=os.path.join(tmp, "site")),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("True True cgshim was built without libbpf"), proc.stdout
