"""``vnix run --image tiny`` gives the guest the image's root file system on virtio-blk, as a
throwaway qcow2 overlay over the raw rootfs, with the native driver as with QEMU: the argv the
native VMM gets carries ``--disk OVERLAY,format=qcow2`` first, the VMM's own parser turns it into
the first virtio-blk disk, and the overlay's backing file is the image's rootfs.

(On this host a Linux boot on the native VMM only reaches console start-up — kvm_pvm emulates
guest kernel code — so the boot itself with root on virtio-blk is left to a hardware-assisted
host; here the argv and the config are checked.)"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import pytest
from typer.testing import CliRunner

import vnix.cli.run as run_mod
import vnix.console.session as session
from vnix.cli.main import app
from vnix.console.session import SessionResult

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


@pytest.fixture
def tiny_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in 'tiny' image under $VNIX_HOME: a kernel file, an initrd, a 4 MiB raw rootfs."""
    d = tmp_path / "home" / "images" / "tiny"
    d.mkdir(parents=True)
    (d / "vmlinuz").write_bytes(b"\0" * 4096)
    (d / "initrd.cpio").write_bytes(b"\0" * 4096)
    (d / "rootfs.ext4").write_bytes(b"\0" * (4 << 20))
    (d / "manifest.json").write_text(json.dumps({
        "name": "tiny", "arch": "x86_64", "cmdline": "console=ttyS0 panic=-1",
        "files": {"kernel": "vmlinuz", "initrd": "initrd.cpio", "rootfs": "rootfs.ext4"}}))
    monkeypatch.setenv("VNIX_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(run_mod, "kernel_format", lambda path: "bzImage")
    return d


def launch(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> dict[str, object]:
    """Run ``vnix run ARGS`` with the console session replaced by one that looks at what would
    be started (while the run's temporary directory still exists)."""
    seen: dict[str, object] = {}

    def fake_attach(argv: Sequence[str], *, watch: bool = False) -> SessionResult:
        argv = list(argv)
        seen["argv"] = argv
        if "--config" in argv:
            from vnix.vmm.__main__ import config_from_args, parse_args

            vmm_args = argv[argv.index("--config"):]
            seen["config"] = config_from_args(parse_args(vmm_args))
        disks = [a for i, a in enumerate(argv) if i and argv[i - 1] in ("--disk", "-drive")]
        if disks:
            first = disks[0].split(",")[0].removeprefix("file=")
            info = subprocess.run(["qemu-img", "info", "--output=json", first], capture_output=True,
                                  text=True, check=True)
            seen["overlay_info"] = json.loads(info.stdout)
        return SessionResult(0, None, None, session.Timings())

    monkeypatch.setattr(session, "attach", fake_attach)
    result = CliRunner().invoke(app, ["run", *args])
    seen["exit_code"] = result.exit_code
    seen["output"] = result.output
    return seen


def test_native_driver_gets_the_root_disk_as_a_qcow2_overlay(tiny_image: Path, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    extra = tmp_path / "data.raw"
    extra.write_bytes(b"\0" * 65536)
    seen = launch(monkeypatch, ["--driver", "native", "--image", "tiny", "--disk", str(extra)])
    assert seen["exit_code"] == 0, seen["output"]
    argv = seen["argv"]
    assert isinstance(argv, list)
    disks = [argv[i + 1] for i, a in enumerate(argv) if a == "--disk"]
    assert len(disks) == 2
    root, data = disks
    assert root.endswith("/rootfs.qcow2,format=qcow2")
    assert data == f"{extra},format=raw"
    info = seen["overlay_info"]
    assert isinstance(info, dict)
    assert info["format"] == "qcow2"
    assert Path(info["backing-filename"]) == tiny_image / "rootfs.ext4"
    config = seen["config"]  # what the VMM itself makes of the argv
    assert [(d.path, d.format, d.readonly) for d in config.disks] == [  # type: ignore[attr-defined]
        (root.split(",")[0], "qcow2", False), (str(extra), "raw", False)]
    # the image's rootfs stays pristine, the overlay went away with the run
    assert (tiny_image / "rootfs.ext4").read_bytes() == b"\0" * (4 << 20)
    assert not Path(root.split(",")[0]).exists()


def test_own_kernel_gets_no_root_disk(tiny_image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--kernel replaces the image's boot: its root disk is not attached behind its back."""
    seen = launch(monkeypatch, ["--driver", "native", "--image", "tiny", "--kernel", str(tiny_image / "vmlinuz")])
    assert seen["exit_code"] == 0, seen["output"]
    assert "--disk" not in seen["argv"]  # type: ignore[operator]
    assert seen["config"].disks == []  # type: ignore[attr-defined]
