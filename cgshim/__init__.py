"""cgshim: a container's CPU load on cgroup v1, v2 and hybrid hosts.

``get_cpu_load(path)`` answers everywhere: on cgroup v1 with the kernel's CGROUPSTATS
netlink answer, on cgroup v2 from the states of the cgroup's own threads, plus PSI.
See :class:`CpuLoad` for what the counts mean on each backend.
"""
from cgshim.errors import (
    CgroupNotFound,
    CgshimError,
    FamilyNotFound,
    KernelError,
    MalformedReply,
    NetlinkError,
    NetlinkTimeout,
    NotACgroup,
    ParseError,
    PermissionDenied,
    Unsupported,
)
from cgshim.kernel.mounts import Hierarchy, Mount, hierarchy
from cgshim.load import LoadTracker, Sampler
from cgshim.model import BackendStatus, CpuLoad, Sweep, TaskCounts
from cgshim.kernel.netlink import taskstats
from cgshim.kernel.psi import Pressure, PressureLine
from cgshim.reader import Reader, backends, get_cpu_load
from cgshim.runnable import RunnableAverage
from cgshim.kernel.taskstats import TaskStats

__version__ = "0.1.0"

__all__ = [
    "BackendStatus", "CgroupNotFound", "CgshimError", "CpuLoad", "FamilyNotFound", "Hierarchy",
    "KernelError", "LoadTracker", "MalformedReply", "Mount", "NetlinkError", "NetlinkTimeout", "NotACgroup", "ParseError",
    "PermissionDenied", "Pressure", "PressureLine", "Reader", "RunnableAverage", "Sampler",
    "Sweep", "TaskCounts",
    "TaskStats", "Unsupported", "backends", "get_cpu_load", "hierarchy", "taskstats",
]
