"""A fake host in a directory, for Reader tests without root (as prometheus/procfs's fixtures).

:class:`FakeHost` builds, under one directory, what a :class:`cgshim.Reader` reads:

- ``mountinfo``: a hybrid host's cgroup lines (fs/proc_namespace.c show_mountinfo format), a
  v1 ``cpu`` hierarchy at ``<root>/sys/fs/cgroup/cpu`` and cgroup2 at
  ``<root>/sys/fs/cgroup/unified``, with the major:minor of the directory's own filesystem
  (so the Reader's same-device check holds);
- cgroup directories with their thread lists (``tasks`` on v1, ``cgroup.threads`` on v2),
  ``cgroup.stat`` (v2) and ``cpu.pressure`` (v2, psi_show() format);
- ``proc/<tid>/task/<tid>/stat`` files (fs/proc/array.c do_task_stat format) and
  ``proc/pressure/cpu``.

Point a Reader at it with ``Reader(mountinfo=host.mountinfo, proc_root=host.proc)``.
Everything is plain files: no kernel object is involved, so any state can be built.
"""
import os

PRESSURE = ("some avg10=1.50 avg60=0.75 avg300=0.25 total=12345\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")


def stat_line(tid, state, comm="worker"):
    """One /proc/<tid>/task/<tid>/stat line (do_task_stat): pid (comm) state and numbers."""
    rest = " ".join(["1"] + ["0"] * 48)
    return f"{tid} ({comm}) {state} {rest}\n"


class FakeHost:
    def __init__(self, root):
        self.root = str(root)
        self.proc = os.path.join(self.root, "proc")
        self.v1 = os.path.join(self.root, "sys/fs/cgroup/cpu")
        self.v2 = os.path.join(self.root, "sys/fs/cgroup/unified")
        for d in (self.proc, self.v1, self.v2):
            os.makedirs(d, exist_ok=True)
        st = os.stat(self.root)
        dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        self.mountinfo = os.path.join(self.root, "mountinfo")
        with open(self.mountinfo, "w") as f:
            f.write(f"21 1 {dev} / / rw,relatime shared:1 - ext4 /dev/root rw\n"
                    f"30 21 {dev} / {self.v1} rw,nosuid,nodev,noexec,relatime shared:9 - "
                    f"cgroup cgroup rw,cpu\n"
                    f"31 21 {dev} / {self.v2} rw,nosuid,nodev,noexec,relatime shared:8 - "
                    f"cgroup2 cgroup2 rw,nsdelegate\n")
        self.write(os.path.join(self.proc, "pressure", "cpu"), PRESSURE)

    @staticmethod
    def write(path, text):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    def thread(self, tid, state, comm="worker"):
        """A thread's stat file in the fake /proc."""
        self.write(os.path.join(self.proc, str(tid), "task", str(tid), "stat"),
                   stat_line(tid, state, comm))
        return tid

    def cgroup(self, version, name, tids=(), *, pressure=PRESSURE, listing=None):
        """A cgroup directory ``name`` (relative, may be nested) listing ``tids``.

        ``listing`` replaces the thread list's text; ``pressure=None`` leaves out
        cpu.pressure. v2 parents' cgroup.stat count their descendants.
        """
        top = self.v1 if version == 1 else self.v2
        path = os.path.join(top, name)
        os.makedirs(path, exist_ok=True)
        text = listing if listing is not None else "".join(f"{t}\n" for t in tids)
        self.write(os.path.join(path, "tasks" if version == 1 else "cgroup.threads"), text)
        if version == 2:
            if pressure is not None:
                self.write(os.path.join(path, "cpu.pressure"), pressure)
            for d in [path] + self._ancestors(top, name):
                below = sum(len(dirs) for _, dirs, _ in os.walk(d))
                self.write(os.path.join(d, "cgroup.stat"),
                           f"nr_descendants {below}\nnr_dying_descendants 0\n")
        return path

    @staticmethod
    def _ancestors(top, name):
        parts = name.strip("/").split("/")[:-1]
        return [os.path.join(top, *parts[:i]) for i in range(1, len(parts) + 1)]
