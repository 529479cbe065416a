"""The command encoding between `vnix run` and the guest's /init, and module ordering."""
from __future__ import annotations

import shlex
import struct
import subprocess
from pathlib import Path

import pytest

from vnix.images import ImageError
from vnix.images.guest_init import (
    COMMAND_LINE_SIZE, CommandTooLongError, check_cmdline, decode_command, encode_command,
    parse_end_marker,
)
from vnix.images.kmod import ModuleTree, modinfo


@pytest.mark.parametrize("argv", [
    ["nproc"],
    ["sh", "-c", "exit 7"],
    ["echo", "it's", "a \"quoted\"  arg", "$HOME", "new\nline"],
])
def test_argv_round_trips_through_a_shell(argv: list[str]) -> None:
    param = encode_command(argv)
    assert param.startswith("vnix.cmd=") and " " not in param
    script = decode_command(param)
    assert shlex.split(script) == argv


def test_single_shell_string_is_kept_as_typed() -> None:
    assert decode_command(encode_command(["echo a | tr a b"])) == "echo a | tr a b"


def test_guest_shell_runs_the_decoded_argv() -> None:
    # what /init does: base64 -d, then sh -c
    argv = ["printf", "%s|", "a b", "it's"]
    token = encode_command(argv).split("=", 1)[1]
    out = subprocess.run(["sh", "-c", 'sh -c "$(echo "$1" | base64 -d)"', "-", token],
                         capture_output=True, text=True, check=True).stdout
    assert out == "a b|it's|"


def test_end_marker_and_cmdline_limit() -> None:
    assert parse_end_marker("vnix-guest: end status=7") == 7
    assert parse_end_marker("vnix-guest: end status=0\r") == 0
    assert parse_end_marker("hello") is None
    check_cmdline("console=ttyS0 " + encode_command(["true"]))
    with pytest.raises(CommandTooLongError):
        check_cmdline("x" * COMMAND_LINE_SIZE)


def _elf_with_modinfo(info: list[str]) -> bytes:
    """A minimal ELF64 with a section header table: null, .shstrtab, .modinfo."""
    shstrtab = b"\0.shstrtab\0.modinfo\0"
    modinfo_data = b"".join(s.encode() + b"\0" for s in info)
    data_off = 64
    strtab_off = data_off
    mod_off = strtab_off + len(shstrtab)
    shoff = (mod_off + len(modinfo_data) + 7) & ~7
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 1)
    body = bytearray(header) + shstrtab + modinfo_data
    body += b"\0" * (shoff - len(body))

    def sh(name: int, off: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, off, size, 0, 0, 1, 0)

    body += bytes(64) + sh(1, strtab_off, len(shstrtab)) + sh(11, mod_off, len(modinfo_data))
    return bytes(body)


def test_modinfo_reads_the_section() -> None:
    elf = _elf_with_modinfo(["name=virtio_blk", "depends=virtio,virtio_ring", "alias=a", "alias=b"])
    info = modinfo(elf)
    assert info["depends"] == ["virtio,virtio_ring"]
    assert info["alias"] == ["a", "b"]
    with pytest.raises(ImageError):
        modinfo(b"not an elf")


def test_load_order_puts_dependencies_first_and_follows_softdeps(tmp_path: Path) -> None:
    mods = {
        "virtio_ring": [], "virtio": ["depends=virtio_ring"],
        "virtio-blk": ["depends=virtio,virtio_ring"],
        "ext4": ["depends=jbd2", "softdep=pre: crc32c"], "jbd2": [], "crc32c_generic": [],
    }
    for name, info in mods.items():
        (tmp_path / f"{name}.ko").write_bytes(_elf_with_modinfo(info))
    (tmp_path / "modules.builtin").write_text("kernel/lib/builtin_thing.ko\n")
    tree = ModuleTree.scan(tmp_path)
    order = tree.load_order(["virtio_blk", "ext4", "builtin_thing"])
    assert order.index("virtio_ring") < order.index("virtio") < order.index("virtio_blk")
    assert order.index("jbd2") < order.index("ext4")
    assert order.index("crc32c_generic") < order.index("ext4")
    assert "builtin_thing" not in order and len(order) == len(set(order)) == 6
    with pytest.raises(ImageError, match="nosuch"):
        tree.load_order(["nosuch"])
