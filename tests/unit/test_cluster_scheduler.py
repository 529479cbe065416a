"""The scheduler: fits, overcommit, anti-affinity, pinned hosts, and refusals that say why."""
from __future__ import annotations

import pytest

from vnix.cluster.errors import NoCapacity
from vnix.cluster.scheduler import HostLoad, Overcommit, Request, place

NO_OC = Overcommit(cpu_ratio=1.0, memory_ratio=1.0)


def hosts() -> list[HostLoad]:
    return [HostLoad("h1", True, 16, 2048, {"tiny"}), HostLoad("h2", True, 16, 8192, {"tiny"})]


def test_the_host_with_most_free_memory_wins_and_its_load_grows() -> None:
    hs = hosts()
    picked = [place(Request(1, 1024, "tiny"), hs, NO_OC).name for _ in range(8)]
    # h2 takes VMs until it has no more free memory than h1, then they alternate
    assert picked == ["h2"] * 6 + ["h1", "h2"]
    assert (hs[0].used_memory_mib, hs[1].used_memory_mib) == (1024, 7168)


def test_refusal_names_every_host_and_why() -> None:
    hs = hosts() + [HostLoad("h3", False, 64, 65536, {"tiny"})]
    with pytest.raises(NoCapacity) as e:
        place(Request(1, 4096 * 3, "tiny"), hs, NO_OC)
    assert str(e.value) == ("no host can take 12288 MiB and 1 vCPU: h1 has 2048 MiB free, "
                            "h2 has 8192 MiB free, h3 is down")


def test_cpus_and_images_are_checked_too() -> None:
    hs = [HostLoad("a", True, 2, 8192, {"tiny"}), HostLoad("b", True, 8, 8192, {"other"})]
    with pytest.raises(NoCapacity, match=r"a has 2 vCPUs free, b has no image 'tiny'"):
        place(Request(4, 256, "tiny"), hs, NO_OC)


def test_overcommit_ratios_stretch_capacity() -> None:
    h = [HostLoad("h", True, 2, 1000, {"tiny"})]
    oc = Overcommit(cpu_ratio=4, memory_ratio=1.5)
    for _ in range(3):
        place(Request(2, 500, "tiny"), h, oc)  # 6 vCPUs on 2 CPUs, 1500 MiB on 1000
    assert (h[0].used_cpus, h[0].used_memory_mib) == (6, 1500)
    with pytest.raises(NoCapacity, match="h has 0 MiB free"):
        place(Request(1, 1, "tiny"), h, oc)
    with pytest.raises(NoCapacity, match="h has 1000 MiB free"):
        place(Request(1, 1001, "tiny"), [HostLoad("h", True, 2, 1000, {"tiny"})], NO_OC)


def test_anti_affinity_puts_a_group_on_different_hosts() -> None:
    hs = [HostLoad(f"h{i}", True, 8, 8192, {"tiny"}) for i in range(3)]
    placed = {place(Request(1, 256, "tiny", group="c/web"), hs, NO_OC).name for _ in range(3)}
    assert placed == {"h0", "h1", "h2"}
    with pytest.raises(NoCapacity, match="h0 already holds a VM of group 'c/web'"):
        place(Request(1, 256, "tiny", group="c/web"), hs, NO_OC)
    # another group, or no group, still fits
    assert place(Request(1, 256, "tiny", group="c/db"), hs, NO_OC).name == "h0"
    assert place(Request(1, 256, "tiny"), hs, NO_OC).name == "h1"


def test_a_pinned_host_is_still_checked() -> None:
    hs = hosts()
    assert place(Request(1, 512, "tiny", host="h1"), hs, NO_OC).name == "h1"
    with pytest.raises(NoCapacity, match="host h1 cannot take 4096 MiB and 1 vCPU: h1 has"):
        place(Request(1, 4096, "tiny", host="h1"), hs, NO_OC)
    with pytest.raises(NoCapacity, match="there is no host 'nope'"):
        place(Request(1, 1, "tiny", host="nope"), hs, NO_OC)
    with pytest.raises(NoCapacity, match="no hosts are registered"):
        place(Request(1, 1), [], NO_OC)


def test_a_clone_needs_the_native_driver_and_a_host_with_its_snapshot() -> None:
    hs = [HostLoad("a", True, 8, 8192, {"tiny"}, drivers={"qemu"}, snapshots={"gold"}),
          HostLoad("b", True, 8, 8192, {"tiny"}, drivers={"native"}),
          HostLoad("c", True, 8, 1024, {"tiny"}, drivers={"native"}, snapshots={"gold"})]
    with pytest.raises(NoCapacity) as exc:
        place(Request(1, 2048, "tiny", snapshot="gold", clone=True), hs, NO_OC)
    assert str(exc.value) == ("no host can take 2048 MiB and 1 vCPU: a cannot make clones (its "
                              "agent has no native driver), b has no snapshot 'gold', c has "
                              "1024 MiB free")
    assert place(Request(1, 512, "tiny", snapshot="gold", clone=True), hs, NO_OC).name == "c"
    # a host that may make the snapshot itself needs only the image and the native driver
    assert place(Request(1, 2048, "tiny", clone=True), hs, NO_OC).name == "b"
