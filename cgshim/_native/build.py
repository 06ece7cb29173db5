"""cffi build scripts (out-of-line API mode) for cgshim's C core.

Small extensions, one job each: ``cgshim._native._netlink`` (netlink.c: taskstats
and cgroupstats over generic netlink), ``cgshim._native._procscan`` (procscan.c: the
per-thread /proc state scan) and ``cgshim._native._bpf`` (bpf.c: cgshim's BPF iterators
loaded, pinned and read with libbpf, and the parser of their records). ``_bpf`` links
libbpf; it is built only where :func:`libbpf_missing` finds libbpf's headers and library
(setup.py asks), so the package still builds and installs without them. The BPF program
itself (bpf/cgshim.bpf.c) is compiled by :func:`compile_bpf_object` with clang, from
setup.py's build_ext, into ``bpf/cgshim.bpf.o`` beside the extension (never committed). Each unit's header holds only what cffi's cdef understands
(integer #defines, structs, prototypes; no include guards), so one text declares the API
to cffi and to the compiler.

Set CGSHIM_SANITIZE=1 to build with AddressSanitizer + UBSan (CI's fuzz run).
Build one unit in place while developing: ``python cgshim/_native/build.py netlink``.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

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


def _unit(name, libraries=()):
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
        libraries=list(libraries),
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    return builder


netlink = _unit("netlink")
procscan = _unit("procscan")
bpf = _unit("bpf", libraries=["bpf"])

BPF_SOURCE = os.path.join(HERE, "bpf", "cgshim.bpf.c")
BPF_OBJECT = "cgshim.bpf.o"

_PROBE = """#include <bpf/libbpf.h>
#include <bpf/bpf.h>
int main(void) { return bpf_iter_create(-1) > 0 || libbpf_major_version() < 1; }
"""


def libbpf_missing():
    """None if libbpf >= 1.0 (headers and library) can be compiled and linked against,
    else why not: the C compiler's own words."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    with tempfile.TemporaryDirectory(prefix="cgshim-libbpf-probe-") as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(_PROBE)
        try:
            proc = subprocess.run(cc + [src, "-o", os.path.join(tmp, "probe"), "-lbpf"],
                                  capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"no C compiler to probe libbpf with: {exc}"
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if "error" in ln] or proc.stderr.splitlines()
            return f"libbpf >= 1.0 not found (install libbpf-dev): {' '.join(lines[:2])[:300]}"
    return None


def compile_bpf_object(dest_dir, *, name=BPF_OBJECT, defines=()):
    """Compile bpf/cgshim.bpf.c to ``dest_dir``/``name`` with clang -target bpf (CO-RE:
    the program's kernel structs carry preserve_access_index, so no vmlinux.h or BTF of the
    build machine is needed). Returns None, or why no object was built; a stale object is
    removed first, so a failed build never leaves an old program behind."""
    os.makedirs(dest_dir, exist_ok=True)
    out = os.path.join(dest_dir, name)
    if os.path.exists(out):
        os.unlink(out)
    clang = os.environ.get("CGSHIM_CLANG") or shutil.which("clang")
    if clang is None:
        return "clang not found at build time (install clang)"
    arch = {"x86_64": "x86", "aarch64": "arm64", "ppc64le": "powerpc", "s390x": "s390",
            "riscv64": "riscv"}.get(os.uname().machine, os.uname().machine)
    multiarch = sysconfig.get_config_var("MULTIARCH")
    cmd = [clang, "-g", "-O2", "-target", "bpf", f"-D__TARGET_ARCH_{arch}", *defines,
           "-I", os.path.join(HERE, "bpf")]
    if multiarch:  # <asm/types.h> lives under the multiarch include dir on Debian
        cmd += ["-I", f"/usr/include/{multiarch}"]
    cmd += ["-c", BPF_SOURCE, "-o", out]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"clang failed: {exc}"
    if proc.returncode != 0:
        return f"clang failed: {proc.stderr.strip()[-500:]}"
    return None


if __name__ == "__main__":
    os.chdir(TOP)
    for unit in sys.argv[1:] or ["netlink", "procscan", "bpf"]:
        if unit == "bpf":
            why = libbpf_missing()
            if why:
                print(f"skipping _bpf: {why}", file=sys.stderr)
                continue
            why = compile_bpf_object(os.path.join(HERE, "bpf"))
            if why:
                print(f"no BPF object: {why}", file=sys.stderr)
        globals()[unit].compile(tmpdir=TOP, verbose=True)
