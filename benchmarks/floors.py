"""The floors: benchmarks/floor.c built with cffi at run time, and thin wrappers.

The extension is compiled into benchmarks/out/ (git-ignored) under a name carrying a
hash of floor.c, floor.h and the compiler flags, so an edited source is rebuilt and an
unchanged one is reused. Each wrapper returns nanoseconds for its whole loop and raises
OSError when the C loop reports a failed syscall or a kernel error.
"""
import errno
import hashlib
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
_CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra"]


def _sources():
    with open(os.path.join(HERE, "floor.h")) as f:
        header = f.read()
    with open(os.path.join(HERE, "floor.c")) as f:
        source = f.read()
    return header, source


def build():
    """Build (or reuse) the extension; return the loaded module (``.ffi``, ``.lib``)."""
    header, source = _sources()
    digest = hashlib.sha256("\0".join([header, source, *_CFLAGS, sys.version]).encode())
    name = f"_floor_{digest.hexdigest()[:12]}"
    os.makedirs(OUT, exist_ok=True)
    found = [f for f in os.listdir(OUT) if f.startswith(name + ".") and f.endswith(".so")]
    if not found:
        from cffi import FFI

        builder = FFI()
        builder.cdef(header)
        builder.set_source(name, '#include <stdint.h>\n#include "floor.h"\n',
                           sources=[os.path.join(HERE, "floor.c")], include_dirs=[HERE],
                           extra_compile_args=_CFLAGS)
        path = builder.compile(tmpdir=OUT, verbose=False)
    else:
        path = os.path.join(OUT, found[0])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(result, what):
    if result < 0:
        err = -result
        raise OSError(err, f"floor {what}: {os.strerror(err)} ({errno.errorcode.get(err, '?')})")
    return result


class Floors:
    """The C loops, with a netlink socket and the TASKSTATS family id held for them."""

    def __init__(self):
        self.mod = build()
        self.ffi, self.lib = self.mod.ffi, self.mod.lib
        self.lib.fl_use_clock(0)
        self.nlfd = _check(self.lib.fl_nl_open(), "netlink socket")
        try:
            self.family = _check(self.lib.fl_family_id(self.nlfd), "family lookup")
        except Exception:
            os.close(self.nlfd)
            raise
        self._keep = []

    def close(self):
        if self.nlfd >= 0:
            os.close(self.nlfd)
            self.nlfd = -1

    def ints(self, values):
        arr = self.ffi.new("int[]", list(values) or [0])
        self._keep.append(arr)
        return arr

    # Each returns a callable n -> nanoseconds for n iterations.
    def family_lookup(self):
        return lambda n: _check(self.lib.fl_family(self.nlfd, n), "genl family lookup")

    def family_fresh(self):
        return lambda n: _check(self.lib.fl_family_fresh(n), "socket+family lookup")

    def cgroupstats(self, dirfds):
        arr, count = self.ints(dirfds), len(dirfds)
        return lambda n: _check(self.lib.fl_cgroupstats(self.nlfd, self.family, arr, count, n),
                                "CGROUPSTATS")

    def cgroupstats_open(self, path):
        cpath = self.ffi.new("char[]", os.fsencode(path))
        self._keep.append(cpath)
        return lambda n: _check(self.lib.fl_cgroupstats_open(self.nlfd, self.family, cpath, n),
                                "CGROUPSTATS open+close")

    def taskstats(self, pid):
        return lambda n: _check(self.lib.fl_taskstats(self.nlfd, self.family, pid, n), "TASKSTATS")

    def pread(self, fds):
        arr, count = self.ints(fds), len(fds)
        return lambda n: _check(self.lib.fl_pread(arr, count, n), "pread")

    def orc(self, procfd, tids):
        arr, count = self.ints(tids), len(tids)
        return lambda n: _check(self.lib.fl_orc(procfd, arr, count, n), "open+read+close")

    def scan(self, cgroups):
        """``cgroups``: list of (list_path, psi_fd or -1, [stat fds])."""
        names = [self.ffi.new("char[]", os.fsencode(c[0])) for c in cgroups]
        lists = self.ffi.new("char *[]", names)
        psi = self.ints(c[1] for c in cgroups)
        counts = self.ints(len(c[2]) for c in cgroups)
        fds = self.ints(fd for c in cgroups for fd in c[2])
        self._keep += [names, lists]
        ncg = len(cgroups)
        return lambda n: _check(self.lib.fl_scan(ncg, lists, psi, counts, fds, n), "scan")

    def bpf_pass(self, path, cap=64 << 20):
        """n passes of the pinned iterator at ``path``: open + read to EOF + close."""
        cpath = self.ffi.new("char[]", os.fsencode(path))
        buf = self.ffi.new("uint8_t[]", cap)
        self._keep += [cpath, buf]
        return lambda n: _check(self.lib.fl_bpf_pass(cpath, buf, cap, n), "bpf pass")
