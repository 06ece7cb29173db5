"""Kubernetes cgroup names: spelled-out kubelet/runtime examples, round trips both ways,
the names that are not pods or containers, and discover() on real cgroups from the test bed."""
import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from cgshim.errors import CgroupNotFound, NotACgroup
from cgshim.k8s import (DRIVERS, QOS_CLASSES, RUNTIMES, K8sCgroup, container_cgroup, discover,
                        parse_cgroup, pod_cgroup)
from cgshim.reader import Reader
from tests.support.unified_ns import run_with_mountinfo, v2_mountinfo_at

UID = "1c2b3a4d-5e6f-4a0b-9c8d-7e6f5a4b3c2d"
UID_ = "1c2b3a4d_5e6f_4a0b_9c8d_7e6f5a4b3c2d"
STATIC_UID = "6f6e3b5b0b8bd1a2f8d6e7e0f3a5c8d9"  # a static pod: md5 hex, no dashes
CID = "0123456789abcdef" * 4
CID2 = "fedcba9876543210" * 4

# (qos, driver, runtime) -> the name kubelet and the runtime give that container (spelled out).
SPELLED = {
    ("burstable", "systemd", "containerd"):
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope",
    ("besteffort", "systemd", "crio"):
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"crio-{CID}.scope",
    ("guaranteed", "systemd", "docker"):
        f"/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope",
    ("guaranteed", "cgroupfs", "containerd"): f"/kubepods/pod{UID}/{CID}",
    ("burstable", "cgroupfs", "docker"): f"/kubepods/burstable/pod{UID}/{CID}",
    ("besteffort", "cgroupfs", "crio"): f"/kubepods/besteffort/pod{UID}/crio-{CID}",
}


@pytest.mark.parametrize("key, name", SPELLED.items(), ids=["-".join(k) for k in SPELLED])
def test_spelled_out_container_names(key, name):
    qos, driver, runtime = key
    assert container_cgroup(UID, qos, CID, driver=driver, runtime=runtime) == name
    runtime_seen = runtime if (driver == "systemd" or runtime == "crio") else None
    assert parse_cgroup(name) == K8sCgroup(qos=qos, pod_uid=UID, container_id=CID,
                                           runtime=runtime_seen, driver=driver)


@pytest.mark.parametrize("qos, driver, name", [
    ("guaranteed", "systemd", f"/kubepods.slice/kubepods-pod{UID_}.slice"),
    ("burstable", "systemd", f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
    ("besteffort", "systemd",
     f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"),
    ("guaranteed", "cgroupfs", f"/kubepods/pod{UID}"),
    ("burstable", "cgroupfs", f"/kubepods/burstable/pod{UID}"),
    ("besteffort", "cgroupfs", f"/kubepods/besteffort/pod{UID}"),
])
def test_spelled_out_pod_names(qos, driver, name):
    assert pod_cgroup(UID, qos, driver=driver) == name
    assert parse_cgroup(name) == K8sCgroup(qos=qos, pod_uid=UID, container_id=None, runtime=None,
                                           driver=driver)


def test_static_pod_uid():
    name = pod_cgroup(STATIC_UID, "burstable", driver="systemd")
    assert name.endswith(f"kubepods-burstable-pod{STATIC_UID}.slice")
    assert parse_cgroup(name).pod_uid == STATIC_UID


def test_leading_and_trailing_slashes_are_tolerated():
    name = SPELLED[("burstable", "systemd", "containerd")]
    assert name.startswith("/")
    want = parse_cgroup(name)
    assert want is not None
    assert parse_cgroup(name.lstrip("/")) == want  # as discover() gives it, relative to a root
    assert parse_cgroup(name + "/") == want
    assert parse_cgroup(name.lstrip("/") + "/") == want


uids = st.one_of(st.uuids().map(str), st.binary(min_size=16, max_size=16).map(bytes.hex))
ids = st.binary(min_size=32, max_size=32).map(bytes.hex)


@settings(max_examples=300)
@given(uid=uids, cid=ids, qos=st.sampled_from(QOS_CLASSES), driver=st.sampled_from(DRIVERS),
       runtime=st.sampled_from(RUNTIMES))
def test_round_trip_names_to_fields_to_names(uid, cid, qos, driver, runtime):
    pod = pod_cgroup(uid, qos, driver=driver)
    assert pod.startswith("/kubepods") and not pod.endswith("/")  # kubelet's cgroup name
    assert parse_cgroup(pod) == K8sCgroup(qos, uid, None, None, driver)
    name = container_cgroup(uid, qos, cid, driver=driver, runtime=runtime)
    assert name.startswith(pod + "/") and name.count("/") == pod.count("/") + 1
    parsed = parse_cgroup(name)
    known = driver == "systemd" or runtime == "crio"
    assert parsed == K8sCgroup(qos, uid, cid, runtime if known else None, driver)
    # and back: the parsed fields rebuild the same name (bare-id runtimes look alike)
    again = container_cgroup(parsed.pod_uid, parsed.qos, parsed.container_id,
                             driver=parsed.driver, runtime=parsed.runtime or "containerd")
    assert again == name
    if driver == "systemd":
        assert "-" not in name.rsplit("pod", 1)[1].split(".slice")[0]  # uid escaped to "_"
    else:
        assert f"pod{uid}" in name


@settings(max_examples=500)
@given(st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from([
        "kubepods", "kubepods.slice", "burstable", "besteffort", "guaranteed",
        "kubepods-burstable.slice", "kubepods-besteffort.slice", f"pod{UID}", f"pod{UID_}",
        f"kubepods-pod{UID_}.slice", f"kubepods-burstable-pod{UID_}.slice",
        f"kubepods-besteffort-pod{UID_}.slice", f"kubepods-pod{UID}.slice", CID, f"crio-{CID}",
        f"cri-containerd-{CID}.scope", f"crio-conmon-{CID}.scope", "init.scope", "", ".."]),
        max_size=6).map("/".join),
))
def test_parse_never_raises_and_what_it_accepts_rebuilds(name):
    parsed = parse_cgroup(name)
    if parsed is None:
        return
    if parsed.container_id is None:
        rebuilt = pod_cgroup(parsed.pod_uid, parsed.qos, driver=parsed.driver)
    else:
        rebuilt = container_cgroup(parsed.pod_uid, parsed.qos, parsed.container_id,
                                   driver=parsed.driver, runtime=parsed.runtime or "containerd")
    assert rebuilt == "/" + name.strip("/")


POD_SD = f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"


@pytest.mark.parametrize("name", [
    "", "/", "kubepods", "kubepods/", "kubepods.slice", "/kubepods.slice/",
    "kubepods/burstable", "kubepods/besteffort", "kubepods.slice/kubepods-burstable.slice",
    "kubepods.slice/kubepods-besteffort.slice",
    f"kubepods/guaranteed/pod{UID}",                     # no guaranteed level exists
    f"kubepods//pod{UID}", f"kubepods/./pod{UID}", f"kubepods/../kubepods/pod{UID}",
    f"kubepods/pod{UID_}",                               # cgroupfs keeps the dashes
    f"kubepods/pod{UID.upper()}",
    f"kubepods/pod{UID}x", f"kubepods/pod{UID[:-1]}", "kubepods/pod", "kubepods/podfoo",
    f"kubepods/burstable/pod{UID}/crio-conmon-{CID}",
    f"kubepods/burstable/pod{UID}/{CID.upper()}",
    f"kubepods/burstable/pod{UID}/{CID[:-1]}",
    f"kubepods/burstable/pod{UID}/{CID}/nested",
    f"kubepods/burstable/pod{UID}/cri-containerd-{CID}.scope",  # systemd leaf, cgroupfs tree
    f"{POD_SD}/crio-conmon-{CID}.scope",
    f"{POD_SD}/{CID}",                                   # sandbox/pause without a scope
    f"{POD_SD}/var-lib-kubelet.mount",
    f"{POD_SD}/cri-containerd-{CID}.scope/init.scope",   # nested inside a container
    f"{POD_SD}/cri-containerd-{CID}",                    # scope suffix missing
    f"{POD_SD}/podman-{CID}.scope",                      # unknown runtime prefix
    f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice",  # raw dashes
    f"kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{UID_}.slice",
    f"kubepods.slice/kubepods-burstable-pod{UID_}.slice",  # level skipped
    f"kubepods.slice/kubepods-pod{UID_}.slice/kubepods-pod{UID_}.slice",
    f"system.slice/docker-{CID}.scope",
    f"kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice",
    f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice.extra",
])
def test_not_a_pod_or_container(name):
    assert parse_cgroup(name) is None


@pytest.mark.parametrize("not_text", [None, 42, b"kubepods"])
def test_parse_of_non_text_is_none(not_text):
    assert parse_cgroup(not_text) is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(pod_uid=UID_, qos="burstable", driver="systemd"), "pod uid"),
    (dict(pod_uid=UID.upper(), qos="burstable", driver="systemd"), "pod uid"),
    (dict(pod_uid="pod" + UID, qos="burstable", driver="systemd"), "pod uid"),
    (dict(pod_uid=UID, qos="Guaranteed", driver="systemd"), "qos"),
    (dict(pod_uid=UID, qos="", driver="cgroupfs"), "qos"),
    (dict(pod_uid=UID, qos="burstable", driver="kubepods.slice"), "driver"),
])
def test_pod_cgroup_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pod_cgroup(**kwargs)


@pytest.mark.parametrize("cid, runtime, match", [
    ("containerd://" + CID, "containerd", "container id"),
    (CID[:-1], "containerd", "container id"),
    (CID.upper(), "crio", "container id"),
    (CID + "0", "docker", "container id"),
    (CID, "cri-o", "runtime"),
    (CID, "cri-containerd", "runtime"),
])
def test_container_cgroup_validates(cid, runtime, match):
    with pytest.raises(ValueError, match=match):
        container_cgroup(UID, "burstable", cid, driver="systemd", runtime=runtime)


# --- discover() on real cgroups ----------------------------------------------------------------

def build(testbed, version, parent, names):
    """Create each relative name (parents first) as a cgroup below ``parent``."""
    made = {"": parent}
    for name in names:
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            rel = "/".join(parts[:i])
            if rel not in made:
                made[rel] = testbed.cgroup(version, parent=made["/".join(parts[:i - 1])],
                                           name=parts[i - 1])
    return made


UID2 = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
UID2_ = UID2.replace("-", "_")


@pytest.mark.kernel
@pytest.mark.parametrize("version", [1, 2])
def test_discover_on_a_fake_node(testbed, version):
    root = testbed.cgroup(version)  # stands in for the cgroup mount
    sd_pod = POD_SD
    sd_gpod = f"kubepods.slice/kubepods-pod{UID2_}.slice"
    fs_pod = f"kubepods/besteffort/pod{UID2}"
    wanted = {
        sd_pod: K8sCgroup("burstable", UID, None, None, "systemd"),
        f"{sd_pod}/cri-containerd-{CID}.scope": K8sCgroup("burstable", UID, CID, "containerd", "systemd"),
        f"{sd_pod}/cri-containerd-{CID2}.scope": K8sCgroup("burstable", UID, CID2, "containerd", "systemd"),
        sd_gpod: K8sCgroup("guaranteed", UID2, None, None, "systemd"),
        f"{sd_gpod}/crio-{CID}.scope": K8sCgroup("guaranteed", UID2, CID, "crio", "systemd"),
        fs_pod: K8sCgroup("besteffort", UID2, None, None, "cgroupfs"),
        f"{fs_pod}/{CID2}": K8sCgroup("besteffort", UID2, CID2, None, "cgroupfs"),
    }
    noise = [
        "kubepods.slice", "kubepods.slice/kubepods-burstable.slice",
        "kubepods.slice/kubepods-besteffort.slice",   # empty QoS slice
        f"{sd_gpod}/crio-conmon-{CID}.scope", f"{sd_pod}/{CID2}x", f"{sd_pod}/var-lib-foo.mount",
        f"{sd_pod}/cri-containerd-{CID}.scope/init.scope",
        f"{sd_pod}/cri-containerd-{CID}.scope/init.scope/{CID}",  # not descended into
        "kubepods", "kubepods/besteffort", "kubepods/burstable",
        f"system.slice/docker-{CID}.scope", f"elsewhere/kubepods/pod{UID}",
    ]
    build(testbed, version, root, list(wanted) + noise)

    found = discover(root)
    assert [name for name, _ in found] == sorted(wanted)
    assert dict(found) == wanted
    for name, _ in found:
        assert os.path.isdir(os.path.join(root, name))
    assert discover(root + "/") == found


@pytest.mark.kernel
def test_discover_without_kubepods_and_bad_roots(testbed):
    empty = testbed.cgroup(2)
    testbed.cgroup(2, parent=empty, name="system.slice")
    assert discover(empty) == []
    with pytest.raises(CgroupNotFound, match="does not exist"):
        discover(os.path.join(empty, "no-such-cgroup"))
    with pytest.raises(NotACgroup, match="not a directory"):
        discover(os.path.join(empty, "cgroup.procs"))


@pytest.mark.kernel
def test_discover_default_root_is_consistent():
    # The host's own tree: whatever is there must parse as what it claims to be.
    for name, parsed in discover():
        assert parse_cgroup(name) == parsed


@pytest.mark.kernel
@pytest.mark.parametrize("driver, runtime", [("systemd", "containerd"), ("cgroupfs", "crio")])
def test_names_are_accepted_by_get_cpu_load(testbed, tmp_path, driver, runtime):
    """The names pod_cgroup / container_cgroup give are cgroup names get_cpu_load and
    Reader.cpu_load take, resolved by cgshim's own resolver. Real cgroups at those names are
    made under a test-bed cgroup that stands for the hierarchy root (a mountinfo moving
    cgroup2's mount there): the host's own kubepods, if any, is never touched."""
    top = testbed.cgroup(2)
    pod = pod_cgroup(UID, "burstable", driver=driver)
    name = container_cgroup(UID, "burstable", CID, driver=driver, runtime=runtime)
    parent = top
    for part in name.strip("/").split("/"):
        parent = testbed.cgroup(2, parent=parent, name=part)
    testbed.spawn(busy=True, pipe=1, cgroups=[parent])
    mountinfo = v2_mountinfo_at(tmp_path / "mountinfo", top)

    with Reader(mountinfo=mountinfo) as reader:
        own = reader.cpu_load(name)
        whole = reader.cpu_load(pod, recursive=True)
    assert own.path == parent and (own.nr_running, own.nr_sleeping) == (1, 1)
    assert (whole.nr_running, whole.nr_sleeping) == (1, 1)

    proc = run_with_mountinfo(
        f"import cgshim, json; l = cgshim.get_cpu_load({name!r}); "
        "print(json.dumps([l.path, l.source, l.nr_running]))", mountinfo)
    assert proc.returncode == 0, proc.stderr
    path, source, running = json.loads(proc.stdout)
    assert (path, running) == (parent, 1) and source in ("bpf", "scan")  # v2's backends
