"""cgshim.kernel.mounts: mountinfo parsing, mode detection, path and name resolution."""
import ctypes
import ctypes.util
import json
import os
import subprocess
import sys

import attrs
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cgshim.errors import CgroupNotFound, NotACgroup, ParseError, Unsupported
from cgshim.kernel.mounts import (
    Hierarchy, Mount, _hierarchy_from, hierarchy, parse_mountinfo, resolve, twin_v2,
)
from tests.support.require import require_kernel, require_root
from tests.support.unified_ns import REPO, TESTS, run_unified, run_with_mountinfo

CGROUP_SUPER_MAGIC = 0x27E0EB
CGROUP2_SUPER_MAGIC = 0x63677270

HYBRID = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime shared:7 - sysfs sysfs rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:13 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime shared:18 - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:19 - cgroup2 cgroup2 rw,nsdelegate
"""

UNIFIED = """\
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""

LEGACY = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,noprefix,release_agent=/sbin/x,clone_children
33 31 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
"""


# ---------------------------------------------------------------- parse_mountinfo


def test_parse_fields():
    mi = parse_mountinfo(HYBRID)
    assert len(mi) == 8
    cpu = mi[4]
    assert (cpu.mount_id, cpu.parent_id, cpu.major, cpu.minor) == (32, 31, 0, 29)
    assert (cpu.root, cpu.mount_point) == ("/", "/sys/fs/cgroup/cpu,cpuacct")
    assert cpu.options == ("rw", "relatime")
    assert cpu.optional_fields == ("shared:10",)
    assert (cpu.fstype, cpu.source, cpu.super_options) == ("cgroup", "cgroup", ("rw", "cpu", "cpuacct"))
    assert mi[0].optional_fields == ()


def test_parse_escapes_and_many_optional_fields():
    line = (r"40 31 0:37 /a\040b\134c /mnt/my\040cg\011x\012y rw shared:3 master:1 propagate_from:2 "
            r"unbindable - cgroup my\040src rw,name=we\054ird")
    [m] = parse_mountinfo(line + "\n")
    assert m.root == "/a b\\c"
    assert m.mount_point == "/mnt/my cg\tx\ny"
    assert m.optional_fields == ("shared:3", "master:1", "propagate_from:2", "unbindable")
    assert m.source == "my src"
    # an escaped comma stays inside its option
    assert m.super_options == ("rw", "name=we,ird")


def test_parse_non_utf8_mount_point_survives_as_surrogates():
    raw = b"40 31 0:37 / /mnt/\xff\xfe rw - cgroup2 cgroup2 rw\n"
    [m] = parse_mountinfo(os.fsdecode(raw))
    assert os.fsencode(m.mount_point) == b"/mnt/\xff\xfe"


@pytest.mark.parametrize("text", [
    "40 31 0:37 / /x rw cgroup cgroup rw\n",               # no " - "
    "40 31 0:37 / /x rw - cgroup cgroup\n",                # super options missing
    "40 31 0:37 / /x rw - cgroup cgroup rw extra\n",       # too many after " - "
    "x 31 0:37 / /x rw - cgroup cgroup rw\n",              # bad id
    "40 31 037 / /x rw - cgroup cgroup rw\n",              # bad major:minor
    "40 31 0:-3 / /x rw - cgroup cgroup rw\n",
    "40 31 0:37 / /x - cgroup cgroup rw\n",                # too few before " - "
    "40 31 0:37  /x rw - cgroup cgroup rw\n",              # empty root
    "40 31 0:37 / /x rw - cgroup2 cgroup2 rw,nsdelegate x\n",  # cgroup super options never hold a space
    UNIFIED + "truncated 1 0:37 / /sys/fs/cgroup/x rw - cgroup2\n",
])
def test_unreadable_cgroup_line_fails(text):
    with pytest.raises(ParseError):
        parse_mountinfo(text)




def _escape(s):
    out = os.fsencode(s)
    for ch in b"\\ \t\n":
        out = out.replace(bytes([ch]), b"\\%03o" % ch)
    return os.fsdecode(out)


_path_char = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0")
_path = st.lists(st.text(_path_char, min_size=1, max_size=8), max_size=4).map(lambda p: "/" + "/".join(p))
_opt = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=",\0"), min_size=1, max_size=8)
_word = st.text(st.characters(whitelist_categories=("Ll", "Nd"), max_codepoint=127), min_size=1, max_size=8)


@st.composite
def _mount_line(draw):
    f = dict(
        mount_id=draw(st.integers(0, 2**31)), parent_id=draw(st.integers(0, 2**31)),
        major=draw(st.integers(0, 4095)), minor=draw(st.integers(0, 2**20)),
        root=draw(_path), mount_point=draw(_path),
        options=tuple(draw(st.lists(_word, min_size=1, max_size=3))),
        optional_fields=tuple(draw(st.lists(_word.map(lambda w: "shared:" + w), max_size=3))),
        fstype=draw(st.sampled_from(["cgroup", "cgroup2", "tmpfs", "fuse.sshfs"])),
        source=draw(st.text(_path_char, min_size=1, max_size=8)),
        super_options=tuple(draw(st.lists(_opt, min_size=1, max_size=4))),
    )
    line = " ".join([
        str(f["mount_id"]), str(f["parent_id"]), f"{f['major']}:{f['minor']}",
        _escape(f["root"]), _escape(f["mount_point"]), ",".join(f["options"]),
        *f["optional_fields"], "-", f["fstype"], _escape(f["source"]),
        ",".join(_escape(o).replace(",", "\\054") for o in f["super_options"]),
    ])
    return f, line


@given(st.lists(_mount_line(), max_size=6))
@settings(deadline=None)
def test_parse_round_trip(items):
    text = "".join(line + "\n" for _, line in items)
    parsed = parse_mountinfo(text)
    assert [attrs_dict(m) for m in parsed] == [f for f, _ in items]


def attrs_dict(m):
    import attrs
    return attrs.asdict(m, recurse=False)


@given(st.text(max_size=200))
@settings(max_examples=300)
def test_parse_never_crashes(text):
    try:
        parse_mountinfo(text)
    except ParseError:
        pass


# Lines seen on real hosts outside proc.rst's grammar: older cifs printed its prefixpath=
# (and other options) with raw spaces in the super options; plus plain garbage.
CIFS_RAW_SPACES = ("120 27 0:55 / /mnt/share rw,relatime shared:60 - cifs //srv/My\\040Share "
                   "rw,vers=1.0,prefixpath=My Documents/Q3 Plans,uid=0,noperm")
NOT_MOUNTINFO = ["garbage", "1 2 3", "x 31 0:37 / /x rw - tmpfs tmpfs rw",
                 "41 31 0:38 / /mnt rw - fuse"]


def test_odd_line_of_another_filesystem_is_parsed_or_skipped():
    text = HYBRID + CIFS_RAW_SPACES + "\n" + "\n".join(NOT_MOUNTINFO) + "\n"
    skipped = []
    mounts = parse_mountinfo(text, skipped=skipped)
    assert [lineno for lineno, _ in skipped] == [10, 11, 12, 13]
    cifs = mounts[-1]
    assert (cifs.fstype, cifs.mount_point, cifs.source) == ("cifs", "/mnt/share", "//srv/My Share")
    # the super options are the rest of the line, raw spaces and all
    assert cifs.super_options == ("rw", "vers=1.0", "prefixpath=My Documents/Q3 Plans", "uid=0",
                                  "noperm")
    h = _hierarchy_from(mounts, len(skipped))
    assert (h.mode, h.skipped_lines) == ("hybrid", 4)
    assert h == attrs.evolve(_h(HYBRID), skipped_lines=4)


def test_hierarchy_reads_a_file_with_odd_lines(tmp_path):
    f = tmp_path / "mountinfo"
    f.write_text(CIFS_RAW_SPACES + "\n" + LEGACY + "garbage\n")
    h = hierarchy(str(f))
    assert (h.mode, h.skipped_lines) == ("legacy", 1)
    assert h.v1_mount("cpu").mount_point == "/sys/fs/cgroup/cpu"


_junk_char = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\0")


@st.composite
def _junk_line(draw):
    """A line no cgroup mount could be: free text, or a well-formed line of another
    filesystem whose super options hold raw spaces."""
    if draw(st.booleans()):
        text = draw(st.text(_junk_char, min_size=1, max_size=60))
        assume(not {"cgroup", "cgroup2"} & set(text.split(" ")))
        return text
    f, line = draw(_mount_line())
    assume(f["fstype"] not in ("cgroup", "cgroup2"))
    return line + " " + draw(st.text(_junk_char.filter(lambda c: c != " "), min_size=1, max_size=10))


@given(st.lists(_mount_line(), max_size=6), st.lists(st.tuples(st.integers(0, 6), _junk_line()),
                                                     max_size=4))
@settings(deadline=None)
def test_junk_lines_never_change_the_cgroup_mounts(items, junk):
    lines = [line for _, line in items]
    for pos, j in sorted(junk, reverse=True):
        lines.insert(min(pos, len(lines)), j)
    skipped = []
    parsed = parse_mountinfo("".join(line + "\n" for line in lines), skipped=skipped)
    cgroups = [attrs_dict(m) for m in parsed if m.fstype in ("cgroup", "cgroup2")]
    assert cgroups == [f for f, _ in items if f["fstype"] in ("cgroup", "cgroup2")]
    assert len(parsed) + len(skipped) == len(lines)


# ---------------------------------------------------------------- mode detection


def _h(text):
    return _hierarchy_from(parse_mountinfo(text))


def test_mode_hybrid_with_comounted_cpu():
    h = _h(HYBRID)
    assert h.mode == "hybrid"
    cpu = h.v1_mount("cpu")
    assert cpu == h.v1_mount("cpuacct")
    assert (cpu.mount_point, cpu.root, cpu.version, cpu.controllers) == (
        "/sys/fs/cgroup/cpu,cpuacct", "/", 1, ("cpu", "cpuacct"))
    assert cpu.device == os.makedev(0, 29)
    assert h.v1_mount("name=systemd").controllers == ("name=systemd",)
    assert h.v1_mount("pids") is None
    assert (h.v2.mount_point, h.v2.version, h.v2.controllers) == ("/sys/fs/cgroup/unified", 2, ())


def test_mode_unified():
    h = _h(UNIFIED)
    assert (h.mode, h.v1, h.v2.mount_point) == ("unified", (), "/sys/fs/cgroup")


def test_mode_legacy_and_flags_are_not_controllers():
    h = _h(LEGACY)
    assert h.mode == "legacy" and h.v2 is None
    assert h.v1_mount("cpu").controllers == ("cpu",)
    assert sorted(c for m in h.v1 for c in m.controllers) == ["cpu", "cpuacct", "name=systemd"]


def test_named_only_v1_does_not_count():
    # a unified host that also mounts name=systemd v1 for old containers
    text = UNIFIED + "50 30 0:40 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n"
    h = _h(text)
    assert h.mode == "unified"
    assert h.v1_mount("name=systemd") is not None
    with pytest.raises(Unsupported):
        _h("27 1 254:0 / / rw - ext4 /dev/vda rw\n"
           "34 27 0:31 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n")
    with pytest.raises(Unsupported):
        _h("27 1 254:0 / / rw - ext4 /dev/vda rw\n")


def test_cgroup2_over_tmpfs_hides_v1_mounts_beneath():
    # what run_unified does: cgroup2 mounted on top of the /sys/fs/cgroup tmpfs
    text = HYBRID + "63 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n"
    h = _h(text)
    assert h.mode == "unified"
    assert h.v1 == () and h.v2.mount_point == "/sys/fs/cgroup"
    # a mount made later *on top of* the new cgroup2 is not hidden by it
    h2 = _h(text + "64 63 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
    assert h2.mode == "hybrid" and h2.v1_mount("cpu").mount_point == "/sys/fs/cgroup/cpu"


def test_duplicates_prefer_root_slash():
    sub = "50 27 0:29 /docker/abc /mnt/cpu rw - cgroup cgroup rw,cpu,cpuacct\n"
    sub2 = "51 27 0:38 /kubepods /mnt/v2 rw - cgroup2 cgroup2 rw\n"
    h = _h(sub + sub2 + HYBRID)  # subtree mounts listed first
    assert h.v1_mount("cpu").root == "/" and h.v1_mount("cpu").mount_point == "/sys/fs/cgroup/cpu,cpuacct"
    assert h.v2.root == "/" and h.v2.mount_point == "/sys/fs/cgroup/unified"
    assert len([m for m in h.v1 if "cpu" in m.controllers]) == 1
    assert {m.mount_point for m in h.mounts} >= {"/mnt/cpu", "/mnt/v2"}
    # only a subtree mounted (a container without cgroupns): its root is kept
    h = _h("31 27 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n" +
           "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
    assert (h.mode, h.v1_mount("cpu").root) == ("legacy", "/docker/abc")


def test_nonstandard_mount_points():
    h = _h("27 1 254:0 / / rw - ext4 /dev/vda rw\n"
           "40 27 0:38 / /run/my\\040cgroups rw - cgroup2 none rw\n"
           "41 27 0:29 / /cg/cpu rw - cgroup none rw,cpu\n")
    assert h.mode == "hybrid"
    assert h.v2.mount_point == "/run/my cgroups"
    assert h.v1_mount("cpu").mount_point == "/cg/cpu"


_CTRLS = ["cpu", "cpuacct", "memory", "pids", "blkio", "devices", "freezer"]


@given(st.lists(st.lists(st.sampled_from(_CTRLS), min_size=1, max_size=3, unique=True), max_size=4),
       st.booleans(), st.booleans(), st.integers(0, 300))
@settings(deadline=None, max_examples=60)
def test_mode_of_generated_tables(groups, with_v2, with_named, pods):
    """Mode follows the mounted controllers; hundreds of unrelated mounts change nothing."""
    used = set()
    lines = ["27 1 254:0 / / rw - ext4 /dev/vda rw", "31 27 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw"]
    mid = 100
    for ctrls in groups:
        ctrls = [c for c in ctrls if c not in used]   # a controller binds to one hierarchy
        if not ctrls:
            continue
        used.update(ctrls)
        mid += 1
        lines.append(f"{mid} 31 0:{mid} / /sys/fs/cgroup/{','.join(ctrls)} rw - cgroup cgroup "
                     f"rw,{','.join(ctrls)}")
    if with_named:
        lines.append("90 31 0:90 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd")
    if with_v2:
        lines.append("91 31 0:91 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw")
    lines += [f"{1000 + i} 27 0:{1000 + i} / /var/lib/kubelet/pods/p{i}/vol rw - tmpfs tmpfs rw"
              for i in range(pods)]
    text = "\n".join(lines) + "\n"
    if not used and not with_v2:
        with pytest.raises(Unsupported):
            _h(text)
        return
    h = _h(text)
    assert h.mode == {(True, True): "hybrid", (True, False): "legacy", (False, True): "unified"}[
        (bool(used), with_v2)]
    for c in used:
        assert c in h.v1_mount(c).controllers
    assert (h.v1_mount("name=systemd") is not None) == with_named
    # remounting sysfs on /sys hides every cgroup mount below it
    hidden = text + "5000 27 0:5000 / /sys rw - sysfs sysfs rw\n"
    with pytest.raises(Unsupported):
        _h(hidden)


# ---------------------------------------------------------------- this host


def _fs_magic(path):
    """statfs(2) f_type, read through libc (os.statvfs does not expose it)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64
    if libc.statfs(os.fsencode(path), buf) != 0:
        raise OSError(ctypes.get_errno(), path)
    return ctypes.c_long.from_buffer(buf).value  # f_type: first field, a long on x86_64/arm64


def _require_hybrid_host():
    require_kernel(os.path.ismount("/sys/fs/cgroup/cpu") and os.path.ismount("/sys/fs/cgroup/unified"),
                   "needs the hybrid layout of the development machine (/sys/fs/cgroup/{cpu,unified})")


@pytest.mark.kernel
def test_this_host_is_hybrid_and_agrees_with_statfs():
    _require_hybrid_host()
    h = hierarchy()
    assert h.mode == "hybrid"
    assert h.v1_mount("cpu").mount_point == "/sys/fs/cgroup/cpu"
    assert h.v2.mount_point == "/sys/fs/cgroup/unified"
    for m in h.mounts:
        want = CGROUP_SUPER_MAGIC if m.version == 1 else CGROUP2_SUPER_MAGIC
        assert _fs_magic(m.mount_point) == want, m
        assert os.stat(m.mount_point).st_dev == m.device, m


@pytest.mark.kernel
def test_unified_namespace_is_unified(testbed):
    code = """
import json, os
from cgshim.kernel.mounts import hierarchy, resolve
from tests.support.testbed import Testbed
h = hierarchy()
with Testbed() as bed:
    d = bed.cgroup(2)
    r = resolve("/" + os.path.basename(d), h)
    print(json.dumps([h.mode, len(h.v1), h.v2.mount_point, d, r.path, r.version, r.name]))
"""
    proc = run_unified(code)
    assert proc.returncode == 0, proc.stderr
    mode, nv1, v2mp, d, path, version, name = json.loads(proc.stdout)
    assert (mode, nv1, v2mp) == ("unified", 0, "/sys/fs/cgroup")
    assert (path, version, name) == (d, 2, "/" + os.path.basename(d))
    # the namespace's cgroup2 is the host's: the test bed removed its cgroup there too
    assert not os.path.exists(os.path.join(testbed.root(2), os.path.basename(d)))


@pytest.mark.kernel
def test_odd_mountinfo_line_on_the_real_host(testbed, tmp_path):
    """The whole public path on the real kernel with one odd line in /proc/self/mountinfo:
    a child in a private mount namespace sees the host's mountinfo plus a cifs line with raw
    spaces and a garbage line (tests.support.unified_ns.run_with_mountinfo), and
    cgshim.hierarchy(), Reader(), get_cpu_load and the probe still answer for real cgroups."""
    v1 = testbed.cgroup(1)
    v2 = testbed.cgroup(2)
    testbed.spawn(busy=True, cgroups=(v1, v2))
    fake = tmp_path / "mountinfo"
    code = f"""
import json, cgshim
h = cgshim.hierarchy()
with cgshim.Reader() as r:
    a = r.cpu_load({v1!r})
b = cgshim.get_cpu_load({v2!r})
from cgshim.app.cli import probe
p = probe()
print(json.dumps([h.mode, h.skipped_lines, a.source, a.nr_running, b.source, b.nr_running,
                  p["cgroup"]["skipped_lines"], p["readings"] > 0]))
"""
    with open("/proc/self/mountinfo") as f:
        fake.write_text(f.read() + CIFS_RAW_SPACES + "\ngarbage\n")
    proc = run_with_mountinfo(code, str(fake))
    assert proc.returncode == 0, proc.stderr
    assert CIFS_RAW_SPACES in fake.read_text()
    got = json.loads(proc.stdout)
    assert got[4] in ("bpf", "scan")  # v2's backends, bpf where its pass loads
    assert got[:4] + got[5:] == ["hybrid", 1, "netlink", 1, 1, 1, True]


@pytest.mark.kernel
def test_bind_mounted_subtree_has_its_root(testbed, tmp_path):
    """A real bind mount of a v1 subtree (in a private mount namespace): mountinfo's root is
    the subtree, names from paths under it include that root, and the full mount is preferred."""
    top = testbed.cgroup(1)
    child = testbed.cgroup(1, parent=top, name="child")
    mnt = tmp_path / "bound"
    mnt.mkdir()
    code = f"""
import json
from cgshim.kernel.mounts import hierarchy, resolve
h = hierarchy()
bound = [m for m in h.mounts if m.mount_point == {str(mnt)!r}]
r = resolve({str(mnt)!r} + "/child", h)
n = resolve("/" + {os.path.basename(top)!r} + "/child", h)
print(json.dumps([bound[0].root, h.v1_mount("cpu").root, r.path, r.name, r.version, n.path]))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount --bind "$2" "$3" && exec "$0" -c "$1"', sys.executable, code, top, str(mnt)],
        env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    root, cpu_root, path, name, version, npath = json.loads(proc.stdout)
    name_top = "/" + os.path.basename(top)
    assert root == name_top
    assert cpu_root == "/"
    assert (path, name, version) == (str(mnt / "child"), name_top + "/child", 1)
    assert npath == child


# ---------------------------------------------------------------- resolve


@pytest.fixture
def host():
    require_root()
    _require_hybrid_host()
    return hierarchy()


@pytest.mark.kernel
def test_resolve_absolute_dirs(testbed, host):
    d1 = testbed.cgroup(1)
    d2 = testbed.cgroup(2)
    sub = testbed.cgroup(1, parent=d1, name="sub")
    r1, r2, rs = resolve(d1, host), resolve(d2 + "/", host), resolve(sub, host)
    assert (r1.path, r1.version, r1.name, r1.mount) == (d1, 1, "/" + os.path.basename(d1), host.v1_mount("cpu"))
    assert (r2.path, r2.version, r2.name, r2.mount) == (d2, 2, "/" + os.path.basename(d2), host.v2)
    assert (rs.path, rs.name) == (sub, "/" + os.path.basename(d1) + "/sub")
    # a redundant ".." that stays inside the mount is fine
    assert resolve(sub + "/../sub/.", host).path == sub
    # without a Hierarchy, resolve reads mountinfo itself
    assert resolve(d1) == r1


@pytest.mark.kernel
def test_resolve_names(testbed, host):
    assert resolve("/", host).path == "/sys/fs/cgroup/cpu"
    assert resolve("/", host).name == "/"
    d1 = testbed.cgroup(1)
    name = os.path.basename(d1)
    d2 = testbed.cgroup(2, name=name)            # the same name in cgroup2
    only2 = testbed.cgroup(2)
    r = resolve("/" + name, host)
    assert (r.path, r.version, r.name) == (d1, 1, "/" + name)   # v1 cpu wins on hybrid
    assert resolve("//" + name + "/./", host) == r
    r2 = resolve("/" + os.path.basename(only2), host)
    assert (r2.path, r2.version) == (only2, 2)
    assert twin_v2(r, host) == d2
    assert twin_v2(r2, host) is None
    assert twin_v2(resolve(testbed.cgroup(1), host), host) is None


@pytest.mark.kernel
def test_resolve_dotdot_and_symlink_escapes(testbed, host, tmp_path):
    d1 = testbed.cgroup(1)
    cpu = host.v1_mount("cpu").mount_point
    with pytest.raises(NotACgroup, match="leaves the cgroup mount"):
        resolve(cpu + "/..", host)
    with pytest.raises(NotACgroup):
        resolve(d1 + "/../../memory", host)
    # symlinks live in a tmp dir; the path reaches them by ".." out of the cgroup mount
    (tmp_path / "in").symlink_to(d1)
    (tmp_path / "out").symlink_to(tmp_path)
    (tmp_path / "other").symlink_to(host.v1_mount("memory").mount_point)
    up = cpu + "/.." * len(cpu.strip("/").split("/"))
    assert resolve(f"{up}{tmp_path}/in", host).path == d1       # lands back inside: fine
    with pytest.raises(NotACgroup):
        resolve(f"{up}{tmp_path}/out", host)
    with pytest.raises(NotACgroup):
        resolve(f"{up}{tmp_path}/other", host)                   # another cgroup mount
    # a symlink outside every cgroup mount is a filesystem path, not a cgroup name
    with pytest.raises(NotACgroup, match="outside every cgroup mount"):
        resolve(str(tmp_path / "in"), host)
    with pytest.raises(NotACgroup):
        resolve("/" + os.path.basename(d1) + "/../x", host)     # ".." in a name


@pytest.mark.kernel
def test_resolve_errors(testbed, host):
    d1 = testbed.cgroup(1)
    with pytest.raises(NotACgroup, match="file"):
        resolve(d1 + "/cpu.shares", host)
    with pytest.raises(NotACgroup, match="file"):
        resolve("/" + os.path.basename(d1) + "/cgroup.procs", host)
    with pytest.raises(NotACgroup, match="absolute"):
        resolve(os.path.basename(d1), host)
    with pytest.raises(NotACgroup, match="absolute"):
        resolve("", host)
    gone = testbed.cgroup(1)
    os.rmdir(gone)
    with pytest.raises(CgroupNotFound):
        resolve(gone, host)
    with pytest.raises(CgroupNotFound, match="/sys/fs/cgroup/unified"):
        resolve("/" + os.path.basename(gone), host)
    with pytest.raises(CgroupNotFound):
        resolve(d1 + "/\udcff\udcfe", host)                      # non-UTF-8 name: just absent
    with pytest.raises(NotACgroup):
        resolve("/\ud800", host)                                 # not encodable at all
    with pytest.raises(NotACgroup):
        resolve(d1 + "/a\0b", host)
    with pytest.raises(NotACgroup):
        resolve(d1 + "/" + "x" * 300, host)                      # ENAMETOOLONG
    with pytest.raises(NotACgroup):
        resolve("/" + "y" * 5000, host)
    assert resolve(os.fsencode(d1), host).path == d1


def test_resolve_relative_needs_no_kernel():
    h = Hierarchy(mode="unified", v1=(), v2=Mount("/nonexistent-cg", "/", 2))
    with pytest.raises(NotACgroup, match="absolute"):
        resolve("kubepods/x", h)
    with pytest.raises(NotACgroup):
        resolve("/a/../b", h)
    with pytest.raises(CgroupNotFound, match="/nonexistent-cg/a/b"):
        resolve("/a/b", h)


@pytest.mark.kernel
def test_resolve_name_respects_mount_root(testbed, host):
    """A cpu Mount whose root is a subtree (as a bind mount or cgroupns shows it)."""
    top = testbed.cgroup(1)
    child = testbed.cgroup(1, parent=top, name="c")
    root = "/" + os.path.basename(top)
    m = Mount(top, root, 1, ("cpu",), os.stat(top).st_dev)
    h = Hierarchy(mode="hybrid", v1=(m,), v2=host.v2, mounts=(m, host.v2))
    r = resolve(root + "/c", h)
    assert (r.path, r.name) == (child, root + "/c")
    assert resolve(child, h).name == root + "/c"
    assert resolve(top, h).name == root
    # a name outside that root is not in this mount: cgroup2 is tried next
    with pytest.raises(CgroupNotFound, match="not under the root"):
        resolve("/elsewhere", h)
