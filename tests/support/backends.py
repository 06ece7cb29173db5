"""Which backend a default Reader uses on cgroup v2 in this test process.

The chain on v2 is bpf -> scan -> psi: a root test process with the _bpf extension and the
compiled program loads its own BPF iterator, so its v2 readings come from "bpf"; without
them (or as nobody, with no pin) from "scan", with the reason. Tests of the default chain
compare against :func:`v2_source` rather than a fixed name.
"""
import functools


@functools.lru_cache(maxsize=None)
def v2_source():
    from cgshim.reader import backends

    return "bpf" if backends()["bpf"].available else "scan"


def without_c_core(*units):
    """The first lines of a child interpreter's code that make the named units of the C
    core (``_netlink``, ``_procscan``, ``_bpf``; all three by default) fail to import, as
    on a host where they were not built."""
    units = units or ("_netlink", "_procscan", "_bpf")
    return "import json, sys\n" + "".join(
        f"sys.modules['cgshim._native.{u}'] = None\n" for u in units)
