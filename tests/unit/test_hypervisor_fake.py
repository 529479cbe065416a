"""The driver interface through the fake driver: lifecycle, guards, information, migration."""
from __future__ import annotations

from pathlib import Path

import pytest

from vnix.hypervisor import (
    InvalidState,
    NoSuchVm,
    NicSpec,
    VmExists,
    VmSpec,
    VmState,
    get_driver,
)
from vnix.hypervisor.fake import FakeHypervisor
from vnix.hypervisor.registry import UnknownDriver
from vnix.hypervisor.state import TRANSITIONS, transition
from vnix.vmm.config import DiskConfig, MachineConfig


def _spec(tmp_path: Path, name: str = "vm1") -> VmSpec:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"d")
    cfg = MachineConfig(kernel=str(kernel), memory_mib=128, cpus=2,
                        disks=[DiskConfig(str(disk), format="qcow2")])
    return VmSpec(name=name, config=cfg, nics=[NicSpec("net0", "52:54:00:00:00:01")])


def test_registry_picks_driver_by_name(tmp_path: Path) -> None:
    assert isinstance(get_driver("fake", tmp_path), FakeHypervisor)
    with pytest.raises(UnknownDriver, match="unknown hypervisor driver 'xen'"):
        get_driver("xen", tmp_path)


def test_lifecycle_and_guards(tmp_path: Path) -> None:
    hv = FakeHypervisor()
    hv.define(_spec(tmp_path))
    with pytest.raises(VmExists):
        hv.define(_spec(tmp_path))
    assert hv.list() == ["vm1"] and hv.state("vm1") == VmState.DEFINED
    with pytest.raises(InvalidState, match="cannot pause VM 'vm1': it is defined, needs running"):
        hv.pause("vm1")
    hv.start("vm1")
    hv.pause("vm1")
    assert hv.state("vm1") == VmState.PAUSED
    with pytest.raises(InvalidState, match="it is paused"):
        hv.start("vm1")
    hv.resume("vm1")
    assert hv.stop("vm1") is True and hv.state("vm1") == VmState.STOPPED
    hv.start("vm1")
    hv.force_stop("vm1")
    assert hv.state("vm1") == VmState.STOPPED
    hv.destroy("vm1")
    with pytest.raises(NoSuchVm):
        hv.info("vm1")


def test_suspend_to_disk_keeps_console_and_balloon(tmp_path: Path) -> None:
    hv = FakeHypervisor()
    hv.define(_spec(tmp_path))
    hv.start("vm1")
    hv.set_balloon("vm1", 64)
    hv.console_write("vm1", b"echo hi\r")
    hv.suspend("vm1")
    assert hv.state("vm1") == VmState.SUSPENDED and hv.info("vm1").pid is None
    hv.resume_from_disk("vm1")
    info = hv.info("vm1")
    assert info.state == VmState.RUNNING and info.balloon_mib == 64
    assert "echo hi" in hv.console_lines("vm1", 10)[-2]


def test_info_reports_config_disks_nics(tmp_path: Path) -> None:
    hv = FakeHypervisor()
    hv.define(_spec(tmp_path))
    hv.start("vm1")
    info = hv.info("vm1")
    assert (info.memory_mib, info.cpus, info.pid is not None) == (128, 2, True)
    assert info.disks[0].device == "vda" and info.disks[0].format == "qcow2"
    assert info.nics[0].mac == "52:54:00:00:00:01"


def test_crash_keeps_last_console_lines(tmp_path: Path) -> None:
    hv = FakeHypervisor()
    hv.define(_spec(tmp_path))
    hv.start("vm1")
    hv.crash("vm1", "Kernel panic - not syncing")
    assert hv.state("vm1") == VmState.CRASHED
    assert hv.console_lines("vm1", 1) == ["Kernel panic - not syncing"]
    hv.start("vm1")  # a crashed VM can be started again
    assert hv.state("vm1") == VmState.RUNNING


def test_snapshot_and_revert(tmp_path: Path) -> None:
    hv = FakeHypervisor()
    hv.define(_spec(tmp_path))
    hv.start("vm1")
    hv.snapshot("vm1", "s1")
    hv.console_write("vm1", b"after\r")
    hv.revert("vm1", "s1")
    assert not any("after" in line for line in hv.console_lines("vm1", 100))
    assert [s.tag for s in hv.snapshots("vm1")] == ["s1"]


def test_migration_between_two_fakes(tmp_path: Path) -> None:
    src, dst = FakeHypervisor(), FakeHypervisor()
    spec = _spec(tmp_path)
    src.define(spec)
    src.start("vm1")
    src.set_balloon("vm1", 100)
    target = dst.migrate_prepare_target(spec)
    assert dst.state("vm1") == VmState.INCOMING
    src.migrate_send("vm1", target)
    assert src.migrate_status("vm1").status == "completed"
    dst.migrate_finalize_target("vm1", True)
    src.migrate_finalize_source("vm1", True)
    assert dst.state("vm1") == VmState.RUNNING and src.state("vm1") == VmState.STOPPED
    assert dst.info("vm1").balloon_mib == 100


def test_failed_migration_leaves_source_running(tmp_path: Path) -> None:
    src, dst = FakeHypervisor(), FakeHypervisor()
    spec = _spec(tmp_path)
    src.define(spec)
    src.start("vm1")
    target = dst.migrate_prepare_target(spec)
    dst.migrate_finalize_target("vm1", False)  # the target gave up before the stream came
    src.migrate_send("vm1", target)
    assert src.migrate_status("vm1").status == "failed"
    assert src.state("vm1") == VmState.RUNNING
    assert dst.list() == []


def test_transition_table_refuses_illegal_moves() -> None:
    assert (VmState.SUSPENDED, VmState.PAUSED) not in TRANSITIONS
    with pytest.raises(InvalidState, match="it is suspended"):
        transition("vm", VmState.SUSPENDED, VmState.PAUSED)
