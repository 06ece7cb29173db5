"""cgshim: a container's CPU load on cgroup v1, v2 and hybrid hosts.

``get_cpu_load(path)`` answers everywhere: on cgroup v1 with the kernel's CGROUPSTATS
netlink answer, on cgroup v2 from the states of the cgroup's own threads, plus PSI.
See :class:`CpuLoad` for what the counts mean on each backend.
"""
from .errors import (
    CgroupNotFound,
    CgshimError,
    FamilyNotFound,
    MalformedReply,
    NetlinkError,
    NetlinkTimeout,
    NotACgroup,
    ParseError,
    PermissionDenied,
    Unsupported,
)
from .hierarchy import Hierarchy, Mount, hierarchy
from .load import LoadTracker, Sampler
from .model import CpuLoad, TaskCounts
from .netlink import taskstats
from .psi import Pressure, PressureLine
from .reader import Reader, get_cpu_load
from .taskstats_struct import TaskStats

__version__ = "0.1.0"

__all__ = [
    "CgroupNotFound", "CgshimError", "CpuLoad", "FamilyNotFound", "Hierarchy", "LoadTracker",
    "MalformedReply", "Mount", "NetlinkError", "NetlinkTimeout", "NotACgroup", "ParseError",
    "PermissionDenied", "Pressure", "PressureLine", "Reader", "Sampler", "TaskCounts",
    "TaskStats", "Unsupported", "get_cpu_load", "hierarchy", "taskstats",
]
