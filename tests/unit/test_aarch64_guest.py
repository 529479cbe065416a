"""aarch64 guests: the QEMU command line, the accelerator choice, kernel formats, the built image.

The built-image tests read ``$VNIX_HOME/images/tiny-arm64`` (``vnix image build tiny-arm64``)
and are skipped when it is not there."""
from __future__ import annotations

import gzip
import json
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from vnix.hypervisor.accel import choose_accel, host_isa
from vnix.hypervisor.errors import DriverUnavailable
from vnix.hypervisor.qemu_cmdline import qemu_argv
from vnix.hypervisor.spec import VmSpec
from vnix.images import ImageError, UnknownImageError
from vnix.images.arches import AARCH64, IMAGES, get_arch
from vnix.images.bootkernel import arm64_image, kernel_kind
from vnix.images.debian import Apt
from vnix.images.store import KNOWN_IMAGES, GuestImage, load_image
from vnix.node.images import check_kernel
from vnix.vmm import ConfigError
from vnix.vmm.config import DiskConfig, MachineConfig, NetConfig

pytestmark = pytest.mark.skipif(host_isa() != "x86_64", reason="written for an x86_64 host")


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def _arm_config(**kw: object) -> MachineConfig:
    return MachineConfig(kernel="/k/Image", initrd="/k/initrd", arch="aarch64",
                         cmdline="console=ttyAMA0", **kw)  # type: ignore[arg-type]


# -- the QEMU command line ------------------------------------------------------------------
def test_aarch64_runs_on_the_virt_board_with_a_cortex_a57_under_tcg() -> None:
    cfg = _arm_config(memory_mib=512, cpus=2, disks=[DiskConfig("/d/root.qcow2", format="qcow2")],
                      nets=[NetConfig(kind="tap", name="tap0", mac="52:54:00:00:00:01")])
    argv = qemu_argv(cfg, accel="tcg")
    assert argv[0] == "qemu-system-aarch64"
    assert _opt(argv, "-machine") == ["virt"]
    assert _opt(argv, "-cpu") == ["cortex-a57"]
    assert _opt(argv, "-accel") == ["tcg"]
    assert _opt(argv, "-kernel") == ["/k/Image"] and _opt(argv, "-append") == ["console=ttyAMA0"]
    devices = _opt(argv, "-device")
    # virt has a PCIe host bridge: the same virtio-pci devices as on x86
    assert "virtio-blk-pci,drive=disk0" in devices
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01" in devices
    assert "virtio-balloon-pci" in devices and "virtio-rng-pci,rng=rng0" in devices
    assert not any(d.startswith("isa-") for d in devices)


def test_x86_defaults_unchanged_and_explicit_overrides_win() -> None:
    x86 = qemu_argv(MachineConfig(kernel="/k"), accel="tcg")
    assert x86[0] == "qemu-system-x86_64" and _opt(x86, "-machine") == ["pc"]
    assert "-cpu" not in x86
    arm = qemu_argv(_arm_config(), accel="kvm", machine="virt,gic-version=3", binary="/opt/q")
    assert arm[0] == "/opt/q" and _opt(arm, "-machine") == ["virt,gic-version=3"]
    assert _opt(arm, "-cpu") == ["host"]


def test_debug_exit_and_unknown_arch_are_refused() -> None:
    with pytest.raises(ConfigError, match="isa-debug-exit"):
        qemu_argv(_arm_config(debug_exit=True), accel="tcg")
    with pytest.raises(ConfigError, match="riscv64"):
        qemu_argv(MachineConfig(kernel="/k", arch="riscv64"), accel="tcg")


def test_machine_config_carries_the_arch_through_json(tmp_path: Path) -> None:
    kernel = tmp_path / "Image"
    kernel.write_bytes(b"x")
    cfg = MachineConfig(kernel=str(kernel), arch="aarch64")
    cfg.validate()
    assert MachineConfig.from_json(cfg.to_json()).arch == "aarch64"
    spec = VmSpec("a", cfg)
    assert VmSpec.from_json(spec.to_json()).config.arch == "aarch64"
    # a spec written before the field existed is an x86_64 guest
    raw = json.loads(cfg.to_json())
    del raw["arch"]
    assert MachineConfig.from_json(json.dumps(raw)).arch == "x86_64"
    with pytest.raises(ConfigError, match="unknown guest architecture"):
        MachineConfig(kernel=str(kernel), arch="sparc").validate()


def test_a_foreign_guest_gets_tcg_and_kvm_is_refused() -> None:
    assert choose_accel("auto", "aarch64") == "tcg"
    assert choose_accel("tcg", "aarch64") == "tcg"
    with pytest.raises(DriverUnavailable, match="aarch64 guest needs accel tcg"):
        choose_accel("kvm", "aarch64")


# -- kernel formats -----------------------------------------------------------------------
def _arm64_image(size: int = 4096) -> bytes:
    """The 64-byte arm64 Image header (Documentation/arch/arm64/booting.rst) and a body."""
    head = struct.pack("<IIQQQQQQ4sI", 0x14000000, 0, 0, size, 0xA, 0, 0, 0, b"ARM\x64", 0)
    return head + bytes(range(256)) * ((size - len(head)) // 256 + 1)


def _zboot(payload: bytes, method: bytes) -> bytes:
    """An EFI zboot wrapper (drivers/firmware/efi/libstub/zboot-header.S) around ``payload``."""
    header = bytearray(0x200)
    header[0:2], header[4:8] = b"MZ", b"zimg"
    struct.pack_into("<II", header, 8, len(header), len(payload))
    header[0x18:0x18 + len(method)] = method
    return bytes(header) + payload


def test_kernel_kinds_and_arm64_unpacking() -> None:
    image = _arm64_image()
    assert kernel_kind(image[:0x206]) == "arm64-image"
    assert kernel_kind(b"\x7fELF" + bytes(600)) == "elf"
    bz = bytearray(0x206)
    bz[0x1FE:0x200], bz[0x202:0x206] = b"\x55\xaa", b"HdrS"
    assert kernel_kind(bytes(bz)) == "bzImage"
    assert kernel_kind(bytes(0x206)) is None
    assert arm64_image(image) == image
    assert arm64_image(gzip.compress(image)) == image
    assert arm64_image(_zboot(gzip.compress(image), b"gzip")) == image
    assert arm64_image(_zboot(lzma.compress(image), b"xz")) == image
    with pytest.raises(ImageError, match="zstd"):
        arm64_image(_zboot(b"\x28\xb5\x2f\xfd", b"zstd"))
    with pytest.raises(ImageError, match="not an arm64 Linux Image"):
        arm64_image(gzip.compress(b"hello" * 100))


def test_agent_image_store_records_the_kernel_arch(tmp_path: Path) -> None:
    (tmp_path / "Image").write_bytes(_arm64_image())
    assert check_kernel(tmp_path / "Image") == "aarch64"
    (tmp_path / "pvh.elf").write_bytes(b"\x7fELF" + bytes(600))
    assert check_kernel(tmp_path / "pvh.elf") == "x86_64"


# -- the image and its builder -------------------------------------------------------------
def test_image_names_and_private_apt_state(tmp_path: Path) -> None:
    assert set(KNOWN_IMAGES) == {"tiny", "tiny-arm64"}
    assert IMAGES["tiny-arm64"] is AARCH64 and AARCH64.kernel_meta == "linux-image-arm64"
    assert AARCH64.cmdline.startswith("console=ttyAMA0 ")
    with pytest.raises(UnknownImageError):
        get_arch("mips")
    apt = Apt.foreign("arm64", tmp_path)
    opts = dict(o.split("=", 1) for o in apt.options[1::2])
    assert opts["APT::Architecture"] == "arm64"
    assert opts["Dir::State::Lists"] == str(tmp_path / "lists")
    assert opts["Dir::State::status"] == str(tmp_path / "status")  # not the host's dpkg status
    assert not apt.lists_fresh()


def _built() -> GuestImage:
    try:
        return load_image("tiny-arm64")
    except UnknownImageError:
        pytest.skip("tiny-arm64 is not built (vnix image build tiny-arm64)")


def test_built_image_manifest_and_files() -> None:
    image = _built()
    m = image.manifest
    assert image.arch == "aarch64" and m["arch"] == "aarch64" and m["name"] == "tiny-arm64"
    kernel_pkg = m["inputs"]["kernel"][0]
    assert kernel_pkg.startswith("linux-image-") and kernel_pkg.endswith("-arm64")
    assert m["kernel_release"].endswith("-arm64")
    assert image.cmdline.startswith("console=ttyAMA0")
    assert {"virtio_pci", "virtio_blk", "ext4"} <= set(m["modules"])
    assert image.kernel.read_bytes()[0x38:0x3C] == b"ARM\x64"  # a plain Image QEMU boots
    assert m["sizes"]["kernel"] == image.kernel.stat().st_size


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs cpio")
def test_built_initramfs_has_an_arm64_busybox_and_the_pl011_console() -> None:
    image = _built()
    listing = subprocess.run(["cpio", "-itv", "--quiet"], stdin=image.initrd.open("rb"),
                             capture_output=True, text=True, check=True).stdout
    lines = {ln.split()[-1] if "->" not in ln else ln.split()[-3]: ln
             for ln in listing.splitlines()}
    assert lines["dev/ttyAMA0"].startswith("c") and "204," in lines["dev/ttyAMA0"]
    assert "-> /bin/busybox" in lines["bin/sh"]
    assert "lib/modules/virtio_pci.ko" in lines
    elf = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "bin/busybox"],
                         stdin=image.initrd.open("rb"), capture_output=True, check=True).stdout
    assert elf[:4] == b"\x7fELF" and struct.unpack_from("<H", elf, 18)[0] == 183  # EM_AARCH64
