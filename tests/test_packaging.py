"""Dependencies follow the layers: ``pip install cgshim`` brings what get_cpu_load needs
(cffi, attrs); prometheus_client comes with ``cgshim[exporter]``, pyroute2 with
``cgshim[reference]``. A consumer started without its extra prints one line naming the extra
and exits 2; the library and the probe work without either.

One real fresh virtualenv (``pip install`` of a copy of this tree: it builds the C core,
~30 s), and cheaper children with the extras' modules blocked by a sys.meta_path finder."""
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRAS = ("prometheus_client", "pyroute2")

_BLOCK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Block())
"""


def run_blocked(code, blocked=EXTRAS, timeout=120):
    """``code`` in a child interpreter (this tree first on sys.path) that cannot import
    the modules in ``blocked``."""
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", _BLOCK.format(blocked=set(blocked)) + code],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_library_and_cli_import_without_the_extras():
    proc = run_blocked(
        "import json, cgshim, cgshim.app.cli, cgshim.app.exporter, cgshim.app.top\n"
        "from cgshim.app.cli import build_parser\n"
        "build_parser().parse_args(['serve', '--listen', '127.0.0.1:0'])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.partition('.')[0] in "
        f"{EXTRAS!r})))\n")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


@pytest.mark.parametrize("argv", [["-m", "cgshim", "serve", "--listen", "127.0.0.1:0"],
                                  ["-m", "cgshim.app.exporter", "--listen", "127.0.0.1:0"]])
def test_serve_without_prometheus_client_names_the_extra(argv):
    code = f"import runpy, sys; sys.argv = {argv[1:]!r}; runpy.run_module({argv[1]!r}, run_name='__main__')"
    proc = run_blocked(code, blocked=("prometheus_client",))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'cgshim[exporter]'" in lines[0], lines
    assert proc.stdout == ""


def test_pyroute2_path_without_pyroute2_names_the_extra():
    """What needs pyroute2 (the reference socket: taskstats when the C core is not loaded)
    says which extra brings it; the command exits 2 with one line."""
    proc = run_blocked(
        "import cgshim._native, sys\n"
        "cgshim._native.netlink = None  # as when the C core is not built\n"
        "from cgshim.app.cli import main\n"
        "sys.exit(main(['taskstats', '1']))\n", blocked=("pyroute2",))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'cgshim[reference]'" in lines[0], lines
    proc = run_blocked("import cgshim.kernel.reference", blocked=("pyroute2",))
    assert proc.returncode == 1 and "pip install 'cgshim[reference]'" in proc.stderr


def _copy_tree(dst):
    """This tree without virtualenvs, builds, caches and VCS data (what a clean checkout is)."""
    skip = shutil.ignore_patterns(".git", ".venv*", ".ci-venv", "build", "dist", "*.egg-info",
                                  "__pycache__", "*.so", ".hypothesis", ".pytest_cache")
    shutil.copytree(REPO, dst, ignore=skip, symlinks=True)


def test_in_place_build_removes_a_dev_build_that_would_shadow_it(tmp_path):
    """``python cgshim/_native/build.py netlink`` (a unit built while developing) writes
    ``_netlink.cpython-*.so``, which importlib prefers to the ``_netlink.abi3.so`` of an
    in-place build (what ``pip install -e .`` runs): the in-place build removes it, so the
    fresh build is the one imported."""
    src = tmp_path / "src"
    _copy_tree(src)
    native = src / "cgshim" / "_native"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args, timeout=1200):
        return subprocess.run([sys.executable, *args], cwd=src, env=env, capture_output=True,
                              text=True, timeout=timeout)

    dev = run("cgshim/_native/build.py", "netlink")
    assert dev.returncode == 0, dev.stderr[-3000:]
    shadow = native / ("_netlink" + importlib.machinery.EXTENSION_SUFFIXES[0])
    assert [p.name for p in native.glob("_netlink*.so")] == [shadow.name]
    build = run("setup.py", "-q", "build_ext", "--inplace")
    assert build.returncode == 0, build.stderr[-3000:]
    assert [p.name for p in native.glob("_netlink*.so")] == ["_netlink.abi3.so"]
    assert f"removing {shadow}" in build.stderr
    loaded = run("-c", "import cgshim._native._netlink as m; print(m.__file__)", timeout=120)
    assert loaded.stdout.strip() == str(native / "_netlink.abi3.so"), loaded.stderr


def test_fresh_venv_install_brings_no_extra(tmp_path):
    """A real `pip install .` into a new virtualenv: neither prometheus_client nor pyroute2
    is installed, the probe and get_cpu_load work, serve names its extra and exits 2."""
    src, venv = tmp_path / "src", tmp_path / "venv"
    _copy_tree(src)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([py, "-m", "pip", "install", "-q", str(src)], env=env,
                             capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]

    def run(*args):  # from tmp_path, so that this tree's cgshim is not on sys.path
        return subprocess.run([py, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)

    listed = run("-m", "pip", "list", "--format", "json")
    installed = {p["name"].lower().replace("-", "_") for p in json.loads(listed.stdout)}
    assert {"cgshim", "cffi", "attrs"} <= installed
    assert not installed & {"prometheus_client", "pyroute2"}, sorted(installed)

    probe = run("-m", "cgshim", "--json")
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout)["readings"] >= 1
    load = run("-c", "import cgshim, json, os\n"
                     "assert cgshim.__file__.startswith(os.path.realpath(os.sys.prefix))\n"
                     "line = [l for l in open('/proc/self/cgroup') if l.startswith('0::')][0]\n"
                     "l = cgshim.get_cpu_load(line.strip()[3:] or '/')\n"
                     "print(json.dumps([l.source, l.nr_running]))")
    assert load.returncode == 0, load.stderr
    source, running = json.loads(load.stdout)
    assert source in ("scan", "netlink") and running >= 1  # at least this very thread

    serve = run("-m", "cgshim", "serve", "--listen", "127.0.0.1:0")
    assert serve.returncode == 2, serve.stderr
    lines = serve.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'cgshim[exporter]'" in lines[0], lines
