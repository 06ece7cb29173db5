"""cffi build script (out-of-line API mode) for cgshim's C core, ``cgshim._native._core``.

Each C unit has a header holding only what cffi's cdef understands (integer
#defines, structs, prototypes; no include guards), so the same text declares the
API to cffi and to the compiler. Set CGSHIM_SANITIZE=1 to build with
AddressSanitizer + UBSan (used by CI's fuzz run).
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
UNITS = ["netlink", "procscan"]

ffibuilder = FFI()
ffibuilder.cdef("\n".join(open(os.path.join(HERE, u + ".h")).read() for u in UNITS))

_cflags = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"]
_ldflags = []
if os.environ.get("CGSHIM_SANITIZE") == "1":
    _cflags += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                "-fno-sanitize-recover=undefined"]
    _ldflags += ["-fsanitize=address,undefined"]

ffibuilder.set_source(
    "cgshim._native._core",
    "".join(f'#include "{u}.h"\n' for u in UNITS),
    sources=[os.path.relpath(os.path.join(HERE, u + ".c")) for u in UNITS],
    include_dirs=[HERE],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
