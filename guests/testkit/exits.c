/* exits: port and MMIO accesses that leave the guest, answered by the VMM's device model.
 * Cmdline `bench=N`: after the END line, time N `out`s with rdtsc (for the exit benchmark). */
#include "testkit.h"

const char testkit_name[] = "exits";

#define UNASSIGNED_PORT 0x6f0	/* nothing decodes it on microvm or vnix */
#define UNASSIGNED_MMIO 0xd0000000ull	/* in the 3-4 GiB hole, below the LAPIC/IOAPIC/virtio area */
#define CMOS_INDEX 0x70
#define CMOS_DATA 0x71
#define OUT_COUNT 1000

/* Plain `out` in ring 0: under kvm_pvm ring 3 ignores IOPL (port I/O there raises #GP), and
 * `rep outs` may be batched into one exit by KVM. */
static uint64_t outs(uint64_t n)
{
	uint64_t i;
	for (i = 0; i < n; i++)
		outb(UNASSIGNED_PORT, (uint8_t)i);
	return i;
}

void testkit_main(void)
{
	/* 16550 scratch register (offset 7) keeps what is written. */
	outb(COM1 + 7, 0x5a);
	uint8_t s1 = inb(COM1 + 7);
	outb(COM1 + 7, 0xa5);
	uint8_t s2 = inb(COM1 + 7);
	report("serial_scratch", "0x%02x 0x%02x", s1, s2);
	check("scratch round trip", s1 == 0x5a && s2 == 0xa5, "read 0x%02x 0x%02x", s1, s2);

	/* Unassigned ports float high on a PC bus: QEMU answers all ones. */
	report("port_read8", "0x%x", inb(UNASSIGNED_PORT));
	report("port_read16", "0x%x", inw(UNASSIGNED_PORT));
	report("port_read32", "0x%x", inl(UNASSIGNED_PORT));

	/* MC146818 status register D: bit 7 (VRT) = 1, battery good; the rest reads 0. */
	outb(CMOS_INDEX, 0x0d);
	uint8_t d = inb(CMOS_DATA);
	report("cmos_reg_d", "0x%02x", d);
	check("cmos valid ram bit", d & 0x80, "register D 0x%02x", d);

	uint32_t m1 = mmio_read32(UNASSIGNED_MMIO);
	mmio_write32(UNASSIGNED_MMIO, 0x12345678);
	uint32_t m2 = mmio_read32(UNASSIGNED_MMIO);
	report("mmio_unassigned_read", "0x%x", m1);
	report("mmio_write_ignored", "%s", yesno(m1 == m2));
	check("unassigned mmio keeps no data", m2 != 0x12345678, "read back 0x%x", m2);

	uint64_t n = outs(OUT_COUNT);
	report("outs_done", "%lu", n);
	check("all outs returned", n == OUT_COUNT, "%lu of %u", n, OUT_COUNT);
}

void testkit_after_end(void)
{
	const char *b = cmdline_value("bench");
	if (!b) return;
	uint64_t n = 0;
	for (; *b >= '0' && *b <= '9'; b++) n = n * 10 + (uint64_t)(*b - '0');
	if (!n) return;
	uint64_t t0 = rdtsc();
	outs(n);
	uint64_t t1 = rdtsc();
	printf("bench_out_n: %lu\n", n);
	printf("bench_out_total_cycles: %lu\n", t1 - t0);
	printf("bench_out_cycles: %lu\n", (t1 - t0) / n);
	printf("tsc_khz: %lu\n", tsc_khz_cpuid());
}
