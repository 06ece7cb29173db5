"""cgshim's C core, compiled by cffi from netlink.c and procscan.c.

``ffi`` and ``lib`` are None when the extension is not built or cannot load;
``load_error`` then says why (callers fall back to pure-Python paths).
"""
try:
    from ._core import ffi, lib  # noqa: F401
    load_error = None
except ImportError as exc:  # not built, or built for another interpreter
    ffi = lib = None
    load_error = exc
