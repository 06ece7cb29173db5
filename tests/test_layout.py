"""The layers a newcomer sees: README's Layout table names exactly the modules in the tree,
and the library never imports its consumers (cgshim/app/)."""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _layout_section():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    return text[text.index("## Layout"):]


def _tree_modules():
    out = set()
    for top in ("cgshim", os.path.join("tests", "support")):
        for d, _, files in os.walk(os.path.join(REPO, top)):
            for f in files:
                # cffi's generated _netlink.c / _procscan.c and its build script are no layer
                if f.endswith((".py", ".c")) and not f.startswith("_") and f != "build.py":
                    out.add(os.path.relpath(os.path.join(d, f), REPO))
    return out


def test_readme_layout_names_the_tree():
    table = _layout_section()
    named = set(re.findall(r"`([\w/.]+\.(?:py|c))`", table))
    dirs = set(re.findall(r"`([\w/]+/)`", table))
    missing = {p for p in named if not os.path.exists(os.path.join(REPO, p))}
    assert not missing, f"README's Layout names modules that are not in the tree: {missing}"
    for d in dirs:
        assert os.path.isdir(os.path.join(REPO, d)), d
    unnamed = _tree_modules() - named
    assert not unnamed, f"modules missing from README's Layout: {sorted(unnamed)}"


def test_library_does_not_import_the_consumers():
    code = ("import sys, pkgutil, importlib, cgshim\n"
            "for m in pkgutil.walk_packages(cgshim.__path__, 'cgshim.'):\n"
            "    if not m.name.startswith(('cgshim.app', 'cgshim.__main__', 'cgshim._native.build')):\n"
            "        importlib.import_module(m.name)\n"
            "print(sorted(n for n in sys.modules if n.startswith('cgshim.app.')))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
