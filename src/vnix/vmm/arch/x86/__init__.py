"""x86-64 boot facts in one place (no KVM calls here; ``vnix.vmm.machine`` applies them).

Public surface, by module:

* ``layout``: every guest-physical address; ``ram_regions(mem_bytes)``, ``e820_map(mem_bytes)``,
  ``initrd_address(...)``, ``ioapic_pin_for_isa_irq(irq)`` (ISA IRQ 0 -> IOAPIC pin 2).
* ``boot``: ``load_kernel(mem, kernel_path, initrd_path, cmdline, nr_vcpus, *, acpi_devices=(),
  i8042=False) -> BootCpuState`` for bzImage, PVH ELF and vmlinux ELF kernels.
* ``acpi`` (+ ``aml``): ``write_acpi_tables(mem, nr_vcpus, *, devices=(), i8042=False)``,
  ``AcpiMmioDevice``; ``mptable``: ``write_mptable(mem, nr_vcpus)``.
* ``gdt`` / ``paging``: descriptor encoding, boot GDTs, the 4 GiB identity map.
* ``cpuid``: ``guest_cpuid(supported, vcpu_id, nr_vcpus, ...)``, ``describe_features``,
  ``HostCpu``, ``host_is_software_nested``, ``linux_cmdline_workarounds``.
* ``msrs``: ``boot_msrs()``; ``cpu_state``: the dataclasses all of these return.
* ``testing``: synthetic bzImage / ELF builders for tests.
"""
from __future__ import annotations
