"""cgshim.kernel.cgroupfs: interface-file parsers and the cgroup tree on real cgroups."""
import errno
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cgshim.kernel import cgroupfs
from cgshim.errors import CgroupNotFound, NotACgroup, ParseError, Unsupported, translate

# ---------------------------------------------------------------- parsers


@given(st.lists(st.integers(1, 2**22)))
def test_thread_list_round_trip(ids):
    data = b"".join(b"%d\n" % i for i in ids)
    assert cgroupfs.parse_thread_list(data) == ids


def test_thread_list_without_final_newline_and_repeats():
    assert cgroupfs.parse_thread_list(b"5\n7\n5") == [5, 7, 5]
    assert cgroupfs.parse_thread_list(b"") == []


@pytest.mark.parametrize("data", [b"\n", b"1\n\n2\n", b" 1\n", b"+1\n", b"1 2\n", b"x\n",
                                  b"1\r\n", b"-3\n", b"\xd9\xa3\n", b"1_0\n", b"1\n\n"])
def test_thread_list_garbage(data):
    with pytest.raises(ParseError):
        cgroupfs.parse_thread_list(data)


@given(st.binary(max_size=40))
def test_thread_list_bytes_parse_or_raise(data):
    try:
        ids = cgroupfs.parse_thread_list(data)
    except ParseError:
        return
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    assert ids == [int(line) for line in lines]


_key = st.text(st.characters(whitelist_categories=("Ll", "Nd"), whitelist_characters="_",
                             max_codepoint=127), min_size=1, max_size=20)


@given(st.dictionaries(_key, st.integers(0, 2**64 - 1)))
def test_flat_keyed_round_trip(d):
    text = "".join(f"{k} {v}\n" for k, v in d.items())
    assert cgroupfs.parse_cgroup_stat(text) == d
    assert cgroupfs.parse_cpu_stat(text) == d


def test_cpu_stat_keeps_unknown_keys():
    text = ("usage_usec 100\nuser_usec 60\nsystem_usec 40\nnice_usec 0\n"
            "core_sched.force_idle_usec 0\nnr_periods 3\n")
    got = cgroupfs.parse_cpu_stat(text)
    assert got["usage_usec"] == 100 and got["core_sched.force_idle_usec"] == 0 and len(got) == 6


@pytest.mark.parametrize("text", ["nr_descendants\n", "nr_descendants 1 2\n", "nr_descendants x\n",
                                  "nr_descendants -1\n", " 1\n", "a 1\na 2\n", "a\t1\n",
                                  "nr_descendants 1.5\n", "a １\n"])
def test_flat_keyed_garbage(text):
    with pytest.raises(ParseError):
        cgroupfs.parse_cgroup_stat(text)


@given(st.text(max_size=80))
def test_flat_keyed_text_parses_or_raises(text):
    try:
        d = cgroupfs.parse_cpu_stat(text)
    except ParseError:
        return
    assert all(isinstance(v, int) and v >= 0 for v in d.values())


# ---------------------------------------------------------------- real cgroups


@pytest.fixture
def tree(testbed):
    """a/{b/{c}, d} in cgroup2."""
    a = testbed.cgroup(2)
    b = testbed.cgroup(2, parent=a, name="b")
    c = testbed.cgroup(2, parent=b, name="c")
    d = testbed.cgroup(2, parent=a, name="d")
    return a, b, c, d


@pytest.mark.kernel
def test_stat_files_of_a_v2_tree(tree):
    a, b, c, d = tree
    assert [cgroupfs.nr_descendants(x) for x in (a, b, c, d)] == [3, 1, 0, 0]
    st_a = cgroupfs.read_cgroup_stat(a)
    assert st_a["nr_descendants"] == 3 and "nr_dying_descendants" in st_a
    cpu = cgroupfs.read_cpu_stat(a)
    assert {"usage_usec", "user_usec", "system_usec"} <= set(cpu)


@pytest.mark.kernel
def test_children_and_walk(tree):
    a, b, c, d = tree
    assert cgroupfs.children(a) == [b, d]
    assert cgroupfs.children(c) == []
    assert list(cgroupfs.walk(a)) == [b, c, d]       # top-down, parents first
    assert list(cgroupfs.walk(c)) == []


@pytest.mark.kernel
def test_walk_tolerates_cgroups_vanishing(tree):
    a, b, c, d = tree
    it = cgroupfs.walk(a)
    assert next(it) == b
    os.rmdir(c)                                      # ours: made by the test bed
    os.rmdir(b)
    assert list(it) == [d]


@pytest.mark.kernel
def test_thread_lists_of_a_worker(testbed):
    d2, d1 = testbed.cgroup(2), testbed.cgroup(1)
    w = testbed.spawn(cgroups=[d2, d1], pipe=2, futex=1)
    assert sorted(cgroupfs.read_thread_list(d2)) == sorted(w.tids)
    assert cgroupfs.read_thread_list(d2, "cgroup.procs") == [w.pid]
    assert sorted(cgroupfs.read_thread_list(d1, "tasks")) == sorted(w.tids)


@pytest.mark.kernel
def test_threaded_cgroup_procs_is_unsupported(testbed):
    """cgroup.procs of a threaded cgroup answers EOPNOTSUPP; cgroup.threads works."""
    a = testbed.cgroup(2)
    b = testbed.cgroup(2, parent=a, name="t")
    with open(os.path.join(b, "cgroup.type"), "w") as f:
        f.write("threaded")
    with pytest.raises(Unsupported):
        cgroupfs.read_thread_list(b, "cgroup.procs")
    assert cgroupfs.read_thread_list(b) == []


@pytest.mark.kernel
def test_v1_and_removed_cgroups(testbed):
    d1 = testbed.cgroup(1)
    sub = testbed.cgroup(1, parent=d1, name="s")
    assert cgroupfs.nr_descendants(d1) is None
    with pytest.raises(Unsupported):
        cgroupfs.read_cgroup_stat(d1)
    assert "nr_throttled" in cgroupfs.read_cpu_stat(d1)
    assert list(cgroupfs.walk(d1)) == [sub]
    gone = testbed.cgroup(2)
    os.rmdir(gone)
    for call in (cgroupfs.read_cpu_stat, cgroupfs.read_cgroup_stat, cgroupfs.nr_descendants,
                 cgroupfs.children, lambda p: list(cgroupfs.walk(p)), cgroupfs.read_thread_list):
        with pytest.raises(CgroupNotFound):
            call(gone)
    with pytest.raises(NotACgroup):
        cgroupfs.children(os.path.join(d1, "tasks"))


@pytest.mark.kernel
def test_open_file_of_removed_cgroup_is_cgroup_not_found(testbed):
    """An fd kept across rmdir answers ENODEV: still CgroupNotFound, not a crash."""
    d2 = testbed.cgroup(2)
    fd = os.open(os.path.join(d2, "cgroup.stat"), os.O_RDONLY)
    try:
        os.rmdir(d2)
        with pytest.raises(OSError) as exc:
            os.pread(fd, 4096, 0)
        assert exc.value.errno == errno.ENODEV
        err = translate(exc.value, os.path.join(d2, "cgroup.stat"), cgroup=d2, optional=True)
        assert isinstance(err, CgroupNotFound) and err.errno == errno.ENODEV
    finally:
        os.close(fd)
