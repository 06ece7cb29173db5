"""cffi build scripts (out-of-line API mode) for cgshim's C core.

Two small extensions, one job each: ``cgshim._native._netlink`` (netlink.c: taskstats
and cgroupstats over generic netlink) and ``cgshim._native._procscan`` (procscan.c: the
per-thread /proc state scan). Each unit's header holds only what cffi's cdef understands
(integer #defines, structs, prototypes; no include guards), so one text declares the API
to cffi and to the compiler.

Set CGSHIM_SANITIZE=1 to build with AddressSanitizer + UBSan (CI's fuzz run).
Build one unit in place while developing: ``python cgshim/_native/build.py netlink``.
"""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))


def _flags():
    # _GNU_SOURCE for every translation unit (memrchr, recvmmsg), and a missing prototype is
    # an error rather than a silently truncated pointer.
    cflags = ["-O2", "-std=gnu11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Wno-unused-parameter",
              "-Werror=implicit-function-declaration"]
    ldflags = []
    if os.environ.get("CGSHIM_SANITIZE") == "1":
        cflags += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                   "-fno-sanitize-recover=undefined"]
        ldflags += ["-fsanitize=address,undefined"]
    return cflags, ldflags


def _unit(name):
    header = os.path.join(HERE, name + ".h")
    builder = FFI()
    with open(header) as f:
        builder.cdef(f.read())
    cflags, ldflags = _flags()
    builder.set_source(
        f"cgshim._native._{name}",
        f'#include "{name}.h"\n',
        sources=[os.path.relpath(os.path.join(HERE, name + ".c"), TOP)],
        include_dirs=[HERE],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    return builder


netlink = _unit("netlink")
procscan = _unit("procscan")

if __name__ == "__main__":
    os.chdir(TOP)
    for unit in sys.argv[1:] or ["netlink", "procscan"]:
        globals()[unit].compile(tmpdir=TOP, verbose=True)
