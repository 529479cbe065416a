"""An aarch64 guest on this x86_64 host: tiny-arm64 under qemu-system-aarch64 with TCG.

Measured on the 2-core build machine: readiness line ~2.4 s after QEMU starts, whole
`vnix run -- uname -m` ~3 s; the agent's VM is ready in a few seconds too. Well under the
~30 s that would make these `slow`.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vnix.console.session import run_command
from vnix.hypervisor.qemu_cmdline import qemu_argv
from vnix.images import UnknownImageError
from vnix.images.guest_init import READY_PREFIX, encode_command
from vnix.images.store import GuestImage, load_image
from vnix.vmm.config import MachineConfig

VNIX = [sys.executable, "-m", "vnix"]
BOOT_BUDGET_S = 30.0  # above this the tests would belong in `slow`

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None,
                       reason="needs qemu-system-aarch64 (qemu-system-arm)"),
]


@pytest.fixture(scope="module")
def image() -> GuestImage:
    try:
        return load_image("tiny-arm64")
    except UnknownImageError:
        pytest.skip("tiny-arm64 is not built (vnix image build tiny-arm64)")


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(VNIX + ["run", "--image", "tiny-arm64", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_readiness_line_from_the_arm64_kernel(image: GuestImage) -> None:
    config = MachineConfig(kernel=str(image.kernel), initrd=str(image.initrd), arch="aarch64",
                           cmdline=f"{image.cmdline} {encode_command(['true'])}")
    start = time.monotonic()
    result = run_command(qemu_argv(config, accel="tcg"), timeout=120)
    boot_s = time.monotonic() - start
    assert result.ready_line is not None, result.boot_tail
    assert result.ready_line.startswith(READY_PREFIX)
    m = re.search(r"kernel (\S+), 1 cpus, (\d+) MiB, root initramfs", result.ready_line)
    assert m, result.ready_line
    assert m.group(1) == image.manifest["kernel_release"] and m.group(1).endswith("-arm64")
    assert 200 <= int(m.group(2)) <= 256  # the default 256 MiB, less what the kernel keeps
    assert result.command_status == 0 and result.process_status == 0
    assert result.timings.ready is not None and result.timings.ready < BOOT_BUDGET_S
    print(f"aarch64 readiness line after {result.timings.ready:.2f} s (run {boot_s:.2f} s)")


def test_vnix_run_uname_exit_status_cpus_and_root_disk(image: GuestImage) -> None:
    script = "uname -m; nproc; grep ' / ' /proc/mounts; exit 7"
    proc = _run("--cpus", "2", "--stats", "--", script)
    assert proc.returncode == 7, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "aarch64"
    assert lines[1] == "2"
    assert lines[2].startswith("/dev/vda / ext4 rw")  # virtio-blk-pci on the virt board
    assert len(lines) == 3, proc.stdout
    assert "using QEMU with TCG: an aarch64 guest" in proc.stderr
    m = re.search(r"start -> readiness line\s+([\d.]+) s", proc.stderr)
    assert m and 0 < float(m.group(1)) < BOOT_BUDGET_S


def test_plain_uname_and_refusals(image: GuestImage) -> None:
    proc = _run("--", "uname", "-m")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "aarch64\n"
    for flags in (["--driver", "native"], ["--accel", "kvm"]):
        bad = _run(*flags, "--", "true", timeout=60)
        assert bad.returncode == 2
        assert "aarch64 guest cannot run on" in bad.stderr and "TCG" in bad.stderr


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[object]:
    sys.path.insert(0, str(Path(__file__).parent))
    from agent_process import Agent  # the agent as a user runs it (`vnix agent`)

    data = tmp_path / "d"
    data.mkdir()
    a = Agent(data, "qemu", "arm-token")
    a.start()
    try:
        yield a
    finally:
        for vm in a.http.get("/vms").json():
            a.http.delete(f"/vms/{vm['name']}")
        assert a.proc is not None
        a.proc.terminate()
        a.proc.wait(timeout=30)


def test_agent_runs_the_arm64_image_on_qemu(agent: object, image: GuestImage) -> None:
    http = agent.http  # type: ignore[attr-defined]
    r = http.post("/images", json={"name": "arm", "built": "tiny-arm64"})
    assert r.status_code == 201, r.text
    assert r.json()["arch"] == "aarch64" and r.json()["kind"] == "linux"
    r = http.post("/vms", json={"name": "a1", "image": "arm", "memory": "256M",
                                "driver": "qemu", "accel": "kvm"})
    assert r.status_code >= 400 and "tcg" in r.text  # KVM cannot run another ISA
    t0 = time.monotonic()
    r = http.post("/vms", json={"name": "a1", "image": "arm", "memory": "256M", "driver": "qemu"})
    assert r.status_code == 201, r.text
    assert r.json()["accel"] == "tcg" and r.json()["state"] == "running"
    agent.wait_console("a1", "vnix-guest: ready", timeout=120)  # type: ignore[attr-defined]
    boot_s = time.monotonic() - t0
    http.post("/vms/a1/console", json={"text": "echo isa-$(uname -m)\n"})
    agent.wait_console("a1", "isa-aarch64", timeout=60)  # type: ignore[attr-defined]
    argv = (agent.data_dir / "run/qemu/a1/argv").read_text()  # type: ignore[attr-defined]
    assert argv.startswith("qemu-system-aarch64 ") and "-machine virt" in argv
    # the guest powers itself off (PSCI SYSTEM_OFF on virt): the driver sees a clean stop
    http.post("/vms/a1/console", json={"text": "poweroff -f\n"})
    deadline = time.monotonic() + 30
    while http.get("/vms/a1").json()["state"] != "stopped":
        assert time.monotonic() < deadline, http.get("/vms/a1").json()
        time.sleep(0.2)
    assert boot_s < BOOT_BUDGET_S
    print(f"aarch64 guest ready through the agent after {boot_s:.1f}s")
