"""Build glue for the cffi extensions; metadata lives in pyproject.toml.

The ``_bpf`` unit links libbpf and is left out (with a warning) where libbpf is missing;
the BPF program is compiled with clang by build_ext, beside the extensions, and left out
where clang is missing. The package builds and installs either way; ``cgshim.backends()``
then says why the bpf backend is absent.
"""
import importlib.machinery
import importlib.util
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext as _build_ext

_spec = importlib.util.spec_from_file_location(
    "_cgshim_build", os.path.join(os.path.dirname(os.path.abspath(__file__)), "cgshim", "_native", "build.py"))
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)

modules = ["cgshim/_native/build.py:netlink", "cgshim/_native/build.py:procscan"]
_no_libbpf = _build.libbpf_missing()
if _no_libbpf is None:
    modules.append("cgshim/_native/build.py:bpf")
else:
    print(f"cgshim: building without the bpf backend: {_no_libbpf}", file=sys.stderr)


class build_ext(_build_ext):
    """Also compiles the BPF object (package data of cgshim._native, bpf/cgshim.bpf.o)."""

    def run(self):
        super().run()
        if self.inplace:
            self._remove_shadowing_builds()
        if _no_libbpf is not None:
            return
        if self.inplace:
            dest = os.path.join(os.path.dirname(_build.BPF_SOURCE))
        else:
            dest = os.path.join(self.build_lib, "cgshim", "_native", "bpf")
        why = _build.compile_bpf_object(dest)
        if why:
            print(f"cgshim: no BPF object, the bpf backend will be absent: {why}", file=sys.stderr)

    def _remove_shadowing_builds(self):
        """An in-place build writes ``_unit.abi3.so``; a ``_unit.cpython-*.so`` left beside it
        by ``python cgshim/_native/build.py`` comes first in importlib's EXTENSION_SUFFIXES
        and would be imported instead of the fresh build: remove it."""
        for ext in self.extensions:
            fresh = self.get_ext_fullpath(ext.name)
            folder, base = os.path.split(fresh)
            stem = ext.name.rpartition(".")[2]
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                other = os.path.join(folder, stem + suffix)
                if other != fresh and os.path.exists(other):
                    print(f"cgshim: removing {other}: it would shadow the fresh {base}",
                          file=sys.stderr)
                    os.unlink(other)


setup(cffi_modules=modules, cmdclass={"build_ext": build_ext})
