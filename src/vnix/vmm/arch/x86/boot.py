"""Load a kernel into guest memory and describe the boot vCPU: ``load_kernel``.

Three kinds of kernel, told apart by their first bytes:

1. **bzImage** (``HdrS`` at 0x202; Documentation/arch/x86/boot.rst). vnix needs boot protocol
   2.06+ (cmdline_size) and the 64-bit entry (2.12+, xloadflags XLF_KERNEL_64). The
   protected-mode part goes to 1 MiB, boot_params is filled from the kernel's own setup
   header, and the vCPU starts in long mode at 1 MiB + 0x200 with rsi = boot_params
   ("64-bit BOOT PROTOCOL": identity-mapped paging, __BOOT_CS 0x10, __BOOT_DS 0x18,
   interrupts off). With ``unpack_on_host`` (software-nested hosts, where the guest's own
   decompressor would be emulated for hours) the payload (0x248/0x24c; xz or gzip) is
   decompressed here and the vmlinux inside is loaded as in 3., with the bzImage's header.
2. **ELF with a Xen PVH note** (XEN_ELFNOTE_PHYS32_ENTRY): PT_LOAD segments at their physical
   addresses, hvm_start_info in ebx, 32-bit protected mode, paging off, flat 4 GiB CS/DS
   (xen docs/misc/pvh.pandoc) — what QEMU ``-M microvm -kernel guest.elf`` does.
3. **64-bit vmlinux ELF** without that note: segments loaded, entered at e_entry in long mode
   with rsi = a synthetic boot_params (as Firecracker does).

All kinds also get the ACPI tables (RSDP at 0xE0000) and the MP table (0x9fc00). Every failure
is a :class:`vnix.vmm.BootError` with one line naming the file and what is wrong.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from vnix.vmm import BootError, GuestMemoryError
from vnix.vmm.arch.x86 import elf
from vnix.vmm.arch.x86.acpi import AcpiMmioDevice, write_acpi_tables
from vnix.vmm.arch.x86.cpu_state import BootCpuState
from vnix.vmm.arch.x86.gdt import write_long_mode_gdt, write_protected_mode_gdt
from vnix.vmm.arch.x86.layout import (
    BOOT_STACK_POINTER,
    CMDLINE_ADDR,
    CMDLINE_MAX_SIZE,
    FIRST_ADDR_PAST_32BITS,
    HIMEM_START,
    KERNEL_LOAD_ADDR,
    MiB,
    ZERO_PAGE_ADDR,
    e820_map,
    initrd_address,
    low_ram_top,
    ram_regions,
)
from vnix.vmm.arch.x86.mptable import write_mptable
from vnix.vmm.arch.x86.paging import (
    CR0_ET,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    write_identity_map,
)
from vnix.vmm.arch.x86.pvh import write_start_info
from vnix.vmm.memory import GuestMemory

TYPE_CHECKING = False  # mypy reads this name as True
if TYPE_CHECKING:
    from vnix.vmm.arch.x86 import bootparams as bp

# ``bootparams`` (the Linux zero page) is imported by the Linux loaders only: a PVH guest's start
# does not pay for it.

LINUX_COMMAND_LINE_SIZE = 2048  # arch/x86/include/asm/setup.h, for a vmlinux without a header
BZIMAGE_64BIT_ENTRY_OFFSET = 0x200  # boot.rst: 64-bit entry = load address + 0x200
MIN_BZIMAGE_SIZE = 0x270  # through init_size in the setup header


def _read(path: str, label: str, limit: int) -> bytes:
    try:
        size = os.stat(path).st_size
        if size > limit:
            raise BootError(f"{label} {path} is {size // MiB} MiB, more than the guest's "
                            f"{limit // MiB} MiB of RAM")
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BootError(f"{label} {path} does not exist") from None
    except IsADirectoryError:
        raise BootError(f"{label} {path} is a directory, not a file") from None
    except OSError as exc:
        raise BootError(f"cannot read {label} {path}: {exc.strerror}") from None
    if not data:
        raise BootError(f"{label} {path} is empty")
    return data


def _cmdline_bytes(cmdline: str, limit: int, who: str) -> bytes:
    try:
        raw = cmdline.encode("utf-8")
    except UnicodeEncodeError:
        raise BootError("the kernel command line is not valid text") from None
    if b"\0" in raw:
        raise BootError("the kernel command line contains a NUL byte")
    if len(raw) > limit:
        raise BootError(f"the kernel command line is {len(raw)} bytes; {who} accepts at most "
                        f"{limit}")
    return raw + b"\0"


def with_options(cmdline: str, options: Sequence[str]) -> str:
    """``cmdline`` plus each of ``options`` it does not already carry (compared by the part
    before ``=``, so a user's own ``clearcpuid=...`` wins)."""
    have = {word.split("=", 1)[0] for word in cmdline.split()}
    extra = [o for o in options if o.split("=", 1)[0] not in have]
    return " ".join([cmdline.strip(), *extra]).strip() if extra else cmdline


def load_kernel(mem: GuestMemory, kernel_path: str, initrd_path: str | None, cmdline: str,
                nr_vcpus: int, *, acpi_devices: Sequence[AcpiMmioDevice] = (),
                i8042: bool = False, linux_cmdline_extra: Sequence[str] = (),
                unpack_on_host: bool = False) -> BootCpuState:
    """Load kernel (+ initrd, cmdline) and firmware tables; return the boot vCPU's state.

    ``acpi_devices`` are virtio-mmio windows to list in the DSDT; ``i8042`` sets the FADT's
    "8042 present" boot flag. ``linux_cmdline_extra`` (the host's workarounds,
    ``hostcpu.linux_cmdline_workarounds``) is added to a Linux kernel's command line (bzImage or
    vmlinux, never a PVH guest's: that may be anything). The returned state's ``cmdline`` is
    what the kernel was given. ``unpack_on_host``: decompress a bzImage's payload (xz or gzip)
    here and load the vmlinux inside by its ELF segments, instead of running the kernel's own
    decompressor in the guest (which a host that emulates guest kernel code runs for hours).
    """
    layout = [(r.guest_addr, r.size) for r in mem]
    if layout != ram_regions(mem.size):
        raise ValueError("guest memory was not built from layout.ram_regions()")
    data = _read(kernel_path, "kernel", mem.size)
    initrd = _read(initrd_path, "initrd", mem.size) if initrd_path is not None else None

    rsdp = write_acpi_tables(mem, nr_vcpus, devices=acpi_devices, i8042=i8042)
    write_mptable(mem, nr_vcpus)
    if elf.is_elf(data):
        try:
            image = elf.parse(data)
        except elf.ElfError as exc:
            raise BootError(f"kernel {kernel_path}: {exc}") from None
        if image.pvh_entry is not None:
            state = _load_pvh(mem, kernel_path, data, image, initrd_path, initrd, cmdline, rsdp)
            state.cmdline = cmdline
            return state
        cmdline = with_options(cmdline, linux_cmdline_extra)
        state = _load_vmlinux(mem, kernel_path, data, image, initrd_path, initrd, cmdline, rsdp)
        state.cmdline = cmdline
        return state
    from vnix.vmm.arch.x86.bootparams import has_setup_header

    if has_setup_header(data):
        cmdline = with_options(cmdline, linux_cmdline_extra)
        state = _load_bzimage(mem, kernel_path, data, initrd_path, initrd, cmdline, rsdp,
                              unpack_on_host=unpack_on_host)
        state.cmdline = cmdline
        return state
    raise BootError(f"kernel {kernel_path} is neither a bzImage (no 'HdrS' setup header) nor "
                    f"an ELF file")


# -- bzImage ----------------------------------------------------------------------------------

def _load_bzimage(mem: GuestMemory, path: str, data: bytes, initrd_path: str | None,
                  initrd: bytes | None, cmdline: str, rsdp: int, *,
                  unpack_on_host: bool = False) -> BootCpuState:
    from vnix.vmm.arch.x86 import bootparams as bp

    if len(data) < MIN_BZIMAGE_SIZE:
        raise BootError(f"kernel {path} is truncated: {len(data)} bytes, shorter than a setup "
                        f"header")
    hdr = bp.read_setup_header(data)
    version = bp.version_str(hdr.version)
    if hdr.version < bp.MIN_PROTOCOL:
        raise BootError(f"kernel {path} uses boot protocol {version}; vnix needs 2.06 or newer")
    if not hdr.loadflags & bp.LOADED_HIGH:
        raise BootError(f"kernel {path} is a zImage (loaded low); vnix loads only bzImages")
    if hdr.version < bp.MIN_PROTOCOL_64BIT or not hdr.xloadflags & bp.XLF_KERNEL_64:
        raise BootError(f"kernel {path} is a 32-bit-only kernel (boot protocol {version}, no "
                        f"XLF_KERNEL_64): vnix needs a 64-bit entry, protocol 2.12 or newer")
    if hdr.setup_size >= len(data):
        raise BootError(f"kernel {path} is truncated: {len(data)} bytes, but its setup code "
                        f"alone is {hdr.setup_size}")
    payload = data[hdr.setup_size:]
    if hdr.syssize * 16 > len(payload) + 15:
        raise BootError(f"kernel {path} is truncated: its header says {hdr.syssize * 16} bytes "
                        f"of 32/64-bit code, the file has {len(payload)}")
    vmlinux = unpack_payload(data, hdr.setup_size) if unpack_on_host else None
    if vmlinux is not None:
        try:
            image = elf.parse(vmlinux)
        except elf.ElfError as exc:
            raise BootError(f"kernel {path}: the vmlinux in its payload: {exc}") from None
        params = bp.BootParams.from_kernel(data, hdr)
        params.set_loader(cmdline_addr=CMDLINE_ADDR, heap=True)
        return _load_vmlinux(mem, path, vmlinux, image, initrd_path, initrd, cmdline, rsdp,
                             params=params, cmdline_limit=min(hdr.cmdline_size, CMDLINE_MAX_SIZE - 1))
    # The decompressor (arch/x86/boot/compressed/head_64.S) unpacks at the load address
    # rounded up to kernel_alignment but never below LOAD_PHYSICAL_ADDR (= pref_address), and
    # needs init_size bytes there: that whole range must be RAM and stay clear of the initrd.
    runs_at = max(KERNEL_LOAD_ADDR, hdr.pref_address)
    kernel_end = max(KERNEL_LOAD_ADDR + len(payload), runs_at + hdr.init_size)
    top = low_ram_top(mem.size)
    if kernel_end > top:
        raise BootError(f"kernel {path} needs {-(-kernel_end // MiB)} MiB of RAM to unpack "
                        f"(pref_address {runs_at:#x} + init_size {hdr.init_size:#x}); the "
                        f"guest has {top // MiB} MiB")
    mem.write(KERNEL_LOAD_ADDR, payload)

    raw_cmdline = _cmdline_bytes(cmdline, min(hdr.cmdline_size, CMDLINE_MAX_SIZE - 1),
                                 f"kernel {path} (cmdline_size in its setup header)")
    mem.write(CMDLINE_ADDR, raw_cmdline)

    params = bp.BootParams.from_kernel(data, hdr)
    params.set_loader(cmdline_addr=CMDLINE_ADDR, heap=True)
    if initrd is not None:
        addr = _place_initrd(mem, initrd_path or "", initrd, hdr.initrd_addr_max, kernel_end)
        params.set_ramdisk(addr, len(initrd))
    params.set_e820(e820_map(mem.size))
    if hdr.version >= bp.PROTOCOL_ACPI_RSDP:
        params.set_acpi_rsdp(rsdp)
    mem.write(ZERO_PAGE_ADDR, bytes(params))
    return _long_mode_state(mem, KERNEL_LOAD_ADDR + BZIMAGE_64BIT_ENTRY_OFFSET)


def _place_initrd(mem: GuestMemory, path: str, initrd: bytes, addr_max: int,
                  kernel_end: int) -> int:
    addr = initrd_address(mem.size, len(initrd), addr_max, kernel_end)
    if addr is None:
        top = min(low_ram_top(mem.size), FIRST_ADDR_PAST_32BITS, addr_max + 1)
        room = max(0, top - kernel_end)
        raise BootError(f"initrd {path} ({len(initrd)} bytes) does not fit: {room} bytes free "
                        f"between the kernel's end {kernel_end:#x} and {top:#x} (the limit "
                        f"from RAM size and initrd_addr_max {addr_max:#x})")
    mem.write(addr, initrd)
    return addr


def unpack_payload(data: bytes, setup_size: int) -> bytes | None:
    """The vmlinux ELF inside a bzImage (boot.rst: ``payload_offset`` at 0x248 and
    ``payload_length`` at 0x24c, relative to the protected-mode code), decompressed on the host:
    xz (what Debian uses; the kernel's xz carries the x86 BCJ filter, which liblzma knows) or
    gzip. None for another format (zstd, lz4, ...) or a payload that does not unpack."""
    if len(data) < 0x250:
        return None
    offset, length = int.from_bytes(data[0x248:0x24C], "little"), int.from_bytes(data[0x24C:0x250], "little")
    payload = data[setup_size + offset : setup_size + offset + length]
    if len(payload) != length or length == 0:
        return None
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            import lzma

            # The kernel appends the uncompressed size (4 bytes) after the xz stream.
            return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
        if payload.startswith(b"\x1f\x8b"):
            import zlib

            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    except (ValueError, EOFError, OSError):  # lzma.LZMAError and zlib.error are both these
        return None
    return None


# -- ELF kernels ------------------------------------------------------------------------------

def _load_segments(mem: GuestMemory, path: str, data: bytes, image: elf.ElfImage) -> int:
    """Copy PT_LOAD segments to their physical addresses; return the end of the highest."""
    end = 0
    for i, seg in enumerate(image.segments):
        if seg.memsz == 0:
            continue
        if seg.paddr < HIMEM_START:
            raise BootError(f"kernel {path}: segment {i} at {seg.paddr:#x} overlaps the boot "
                            f"area below 1 MiB")
        if not mem.is_valid(seg.paddr, seg.memsz):
            raise BootError(f"kernel {path}: segment {i} ({seg.paddr:#x}+{seg.memsz:#x}) lies "
                            f"outside the guest's {mem.size // MiB} MiB of RAM")
        try:
            mem.write(seg.paddr, data[seg.offset : seg.offset + seg.filesz])
            mem.fill(seg.paddr + seg.filesz, seg.memsz - seg.filesz)
        except GuestMemoryError as exc:  # checked above; kept as a last line of defence
            raise BootError(f"kernel {path}: {exc}") from None
        end = max(end, seg.paddr + seg.memsz)
    if end == 0:
        raise BootError(f"kernel {path}: its ELF segments are all empty")
    return end


def _entry_paddr(path: str, image: elf.ElfImage, entry: int) -> int:
    """The physical entry: ``entry`` if it is inside a segment's physical range, else the
    translation of a virtual entry through the segment holding it."""
    for seg in image.segments:
        if seg.paddr <= entry < seg.paddr + seg.memsz:
            return entry
    for seg in image.segments:
        if seg.vaddr <= entry < seg.vaddr + seg.memsz:
            return entry - seg.vaddr + seg.paddr
    raise BootError(f"kernel {path}: entry point {entry:#x} is not inside any loaded segment")


def _load_pvh(mem: GuestMemory, path: str, data: bytes, image: elf.ElfImage,
              initrd_path: str | None, initrd: bytes | None, cmdline: str,
              rsdp: int) -> BootCpuState:
    assert image.pvh_entry is not None
    entry = _entry_paddr(path, image, image.pvh_entry)
    if entry >= FIRST_ADDR_PAST_32BITS:
        raise BootError(f"kernel {path}: PVH entry {entry:#x} is above 4 GiB")
    kernel_end = _load_segments(mem, path, data, image)
    mem.write(CMDLINE_ADDR, _cmdline_bytes(cmdline, CMDLINE_MAX_SIZE - 1, "a PVH guest"))
    module = None
    if initrd is not None:
        addr = _place_initrd(mem, initrd_path or "", initrd, FIRST_ADDR_PAST_32BITS - 1,
                             kernel_end)
        module = (addr, len(initrd))
    info = write_start_info(mem, cmdline_addr=CMDLINE_ADDR, initrd=module,
                            memmap=e820_map(mem.size), rsdp_addr=rsdp)
    segs = write_protected_mode_gdt(mem)
    # pvh.pandoc: CR0.PE set, other writeable bits clear (ET is hardwired to 1); CR4 = 0;
    # EFLAGS.IF/TF/VM clear; ebx = start_info; CS flat 32-bit code, DS/ES flat data; TR a
    # 32-bit TSS base 0 limit 0x67. The stack is unspecified: the guest sets its own.
    return BootCpuState(
        rip=entry, rbx=info, rflags=0x2, cr0=CR0_PE | CR0_ET, cr4=0, efer=0,
        cs=segs.code, ds=segs.data, es=segs.data, fs=segs.data, gs=segs.data, ss=segs.data,
        tr=segs.tss, ldt=segs.ldt, gdt=segs.gdt, idt=segs.idt,
    )


def _load_vmlinux(mem: GuestMemory, path: str, data: bytes, image: elf.ElfImage,
                  initrd_path: str | None, initrd: bytes | None, cmdline: str,
                  rsdp: int, *, params: bp.BootParams | None = None,
                  cmdline_limit: int = LINUX_COMMAND_LINE_SIZE - 1) -> BootCpuState:
    """A 64-bit vmlinux by its segments, entered at e_entry with boot_params; ``params`` is
    the bzImage's own header when the vmlinux came out of one, else a synthetic one."""
    from vnix.vmm.arch.x86 import bootparams as bp

    if not image.is_64bit or image.machine != elf.EM_X86_64:
        raise BootError(f"kernel {path} is a 32-bit ELF without a PVH entry note "
                        f"(XEN_ELFNOTE_PHYS32_ENTRY); vnix cannot start it")
    entry = _entry_paddr(path, image, image.entry)
    kernel_end = _load_segments(mem, path, data, image)
    mem.write(CMDLINE_ADDR, _cmdline_bytes(cmdline, cmdline_limit,
                                           f"kernel {path} (its command-line limit)"))
    if params is None:
        params = bp.BootParams.synthetic(LINUX_COMMAND_LINE_SIZE - 1)
        params.set_loader(cmdline_addr=CMDLINE_ADDR, heap=False)
    if initrd is not None:
        addr = _place_initrd(mem, initrd_path or "", initrd, bp.X86_64_INITRD_ADDR_MAX,
                             kernel_end)
        params.set_ramdisk(addr, len(initrd))
    params.set_e820(e820_map(mem.size))
    params.set_acpi_rsdp(rsdp)
    mem.write(ZERO_PAGE_ADDR, bytes(params))
    return _long_mode_state(mem, entry)


# -- the 64-bit entry state -------------------------------------------------------------------

def _long_mode_state(mem: GuestMemory, entry: int) -> BootCpuState:
    """boot.rst "64-bit BOOT PROTOCOL": long mode, identity-mapped paging, a flat GDT with
    __BOOT_CS (0x10) and __BOOT_DS (0x18), interrupts disabled, rsi = boot_params."""
    segs = write_long_mode_gdt(mem)
    cr3 = write_identity_map(mem)
    return BootCpuState(
        rip=entry, rsp=BOOT_STACK_POINTER, rsi=ZERO_PAGE_ADDR, rflags=0x2,
        cr0=CR0_PE | CR0_ET | CR0_PG, cr3=cr3, cr4=CR4_PAE, efer=EFER_LME | EFER_LMA,
        cs=segs.code, ds=segs.data, es=segs.data, fs=segs.data, gs=segs.data, ss=segs.data,
        tr=segs.tss, ldt=segs.ldt, gdt=segs.gdt, idt=segs.idt,
    )
