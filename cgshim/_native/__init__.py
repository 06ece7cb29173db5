"""cgshim's C core: ``_netlink`` (netlink.c), ``_procscan`` (procscan.c) and ``_bpf``
(bpf.c, linked with libbpf; built only where libbpf is), built by cffi.

``netlink``, ``procscan`` and ``bpf`` are the loaded cffi modules (with ``.ffi`` and ``.lib``), or
None when that extension is not built or cannot load; ``load_errors`` then says why, and
callers fall back to the pure-Python paths.
"""
import importlib

load_errors = {}


def _load(name):
    try:
        return importlib.import_module(f"cgshim._native._{name}")
    except ImportError as exc:  # not built, or built for another interpreter
        load_errors[name] = exc
        return None


netlink = _load("netlink")
procscan = _load("procscan")
bpf = _load("bpf")
