"""Test helpers that ship with the drivers: a tiny PVH guest QEMU boots in milliseconds.

:func:`build_idle_guest` assembles (GNU ``as`` + ``ld``) a freestanding 32-bit ELF with a Xen PVH
entry note (ELF note type 18, XEN_ELFNOTE_PHYS32_ENTRY: QEMU's ``-kernel`` enters it in 32-bit
protected mode, paging off). The guest

1. prints ``vnix-idle-guest: ready`` on COM1 (port 0x3f8),
2. enables the ACPI power-button event (PM1a_EN bit 8, ACPI spec 4.8.4.1; SeaBIOS puts the PIIX4
   PM block at I/O 0x600: PM1a_STS 0x600, PM1a_EN 0x602, PM1a_CNT 0x604),
3. sleeps in ``hlt`` with interrupts on (the BIOS's 18.2 Hz PIT tick on IRQ0 and COM1's receive
   interrupt on IRQ4 wake it; the handler only acknowledges the PICs), so an idle guest costs
   almost no host CPU,
4. echoes every byte typed on COM1 back (FIFO enabled, drained on every wake-up), and
5. on the power button (PM1a_STS bit 8) prints ``vnix-idle-guest: power off`` and enters S5
   (SLP_TYP 0 with SLP_EN, bit 13, in PM1a_CNT: QEMU's PIIX4 powers off), which is what a
   graceful stop through ``system_powerdown`` needs.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

READY_LINE = "vnix-idle-guest: ready"
POWEROFF_LINE = "vnix-idle-guest: power off"

_SOURCE = r"""
    .code32
    .section .note.Xen, "a", @note
    .align 4
    .long 4, 4, 18          /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .align 4
    .long _start

    .text
    .globl _start
_start:
    cli
    mov $0x80000, %esp
    lgdt gdtr
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    /* IDT: 256 interrupt gates to isr */
    mov $idt, %edi
    mov $256, %ecx
2:  mov $isr, %eax
    mov %ax, (%edi)
    movw $0x08, 2(%edi)
    movw $0x8e00, 4(%edi)
    shr $16, %eax
    mov %ax, 6(%edi)
    add $8, %edi
    loop 2b
    lidt idtr
    mov $ready, %esi
    call puts
    /* COM1: FIFO on (FCR), receive interrupt (IER, MCR OUT2), IRQ4 unmasked at the PIC */
    mov $0x3fa, %dx
    mov $0x07, %al
    out %al, %dx
    mov $0x3f9, %dx
    mov $0x01, %al
    out %al, %dx
    mov $0x3fc, %dx
    mov $0x0b, %al
    out %al, %dx
    in $0x21, %al
    and $0xef, %al
    out %al, $0x21
    mov $0x602, %dx          /* PM1a_EN: power button enable */
    mov $0x0100, %ax
    out %ax, %dx
    sti
idle:
    hlt
7:  mov $0x3fd, %dx          /* COM1 LSR: data ready? */
    in %dx, %al
    test $1, %al
    jz 3f
    mov $0x3f8, %dx
    in %dx, %al
    out %al, %dx             /* echo */
    jmp 7b
3:  mov $0x600, %dx          /* PM1a_STS: power button pressed? */
    in %dx, %ax
    test $0x0100, %ax
    jz idle
    mov $off, %esi
    call puts
    mov $0x604, %dx          /* PM1a_CNT: SLP_TYP=0 (S5 on QEMU's PIIX4), SLP_EN */
    mov $0x2000, %ax
    out %ax, %dx
    cli
4:  hlt
    jmp 4b

puts:                          /* esi: NUL-terminated string */
    mov $0x3f8, %dx
5:  lodsb
    test %al, %al
    jz 6f
    out %al, %dx
    jmp 5b
6:  ret

isr:
    push %eax
    mov $0x20, %al
    out %al, $0xa0
    out %al, $0x20
    pop %eax
    iret

    .data
    .align 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff   /* 0x08: flat 32-bit code */
    .quad 0x00cf92000000ffff   /* 0x10: flat 32-bit data */
gdtr:
    .word 23
    .long gdt
idtr:
    .word 256*8-1
    .long idt
ready: .asciz "READY\n"
off:   .asciz "OFF\n"
    .bss
    .align 8
idt: .space 256*8
"""


# Everything from 1 MiB up, in one place: the image stays small and inside any guest's RAM.
_LINKER_SCRIPT = """
SECTIONS {
    . = 0x100000;
    .text : { *(.text) }
    .note.Xen : { *(.note.Xen) }
    .data : { *(.data) }
    .bss : { *(.bss) }
}
"""


def toolchain_available() -> bool:
    return shutil.which("as") is not None and shutil.which("ld") is not None


def build_idle_guest(dest: Path) -> Path:
    """Assemble and link the idle guest to ``dest`` (an ELF); returns ``dest``."""
    src = _SOURCE.replace("READY", READY_LINE).replace("OFF", POWEROFF_LINE)
    with tempfile.TemporaryDirectory() as tmp:
        s, o, lds = Path(tmp, "guest.S"), Path(tmp, "guest.o"), Path(tmp, "guest.lds")
        s.write_text(src)
        lds.write_text(_LINKER_SCRIPT)
        subprocess.run(["as", "--32", "-o", str(o), str(s)], check=True, capture_output=True)
        subprocess.run(
            ["ld", "-m", "elf_i386", "-T", str(lds), "-e", "_start", "-o", str(dest), str(o)],
            check=True, capture_output=True,
        )
    return dest
