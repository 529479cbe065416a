/* Local APIC (SDM 3A ch. 11), I/O APIC (82093AA data sheet), 8254 PIT, TSC frequency. */
#include "testkit.h"

uint32_t lapic_read(uint32_t reg) { return mmio_read32(LAPIC_BASE + reg); }
void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(LAPIC_BASE + reg, v); }
uint32_t lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }
void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }

void lapic_enable(void)
{
	/* Spurious-interrupt vector register: bit 8 = APIC software enable, vector 0xff. */
	lapic_write(LAPIC_SVR, 0x1ff);
}

void lapic_send_ipi(uint32_t apic_id, uint32_t icr_lo)
{
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, icr_lo);
	while (lapic_read(LAPIC_ICR_LO) & (1u << 12))	/* delivery status: send pending */
		cpu_relax();
}

/* I/O APIC: IOREGSEL at +0x00, IOWIN at +0x10; redirection entry n at registers 0x10+2n. */
static void ioapic_write(uint32_t reg, uint32_t v)
{
	mmio_write32(IOAPIC_BASE, reg);
	mmio_write32(IOAPIC_BASE + 0x10, v);
}

void ioapic_route(uint32_t pin, uint8_t vector, uint32_t dest_apic, bool level, bool active_low)
{
	uint32_t lo = vector | (active_low ? 1u << 13 : 0) | (level ? 1u << 15 : 0); /* fixed, physical */
	ioapic_write(0x11 + 2 * pin, dest_apic << 24);
	ioapic_write(0x10 + 2 * pin, lo);
}

void ioapic_mask(uint32_t pin) { ioapic_write(0x10 + 2 * pin, 1u << 16); }

void pic_mask_all(void)
{
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
}

#define PIT_HZ 1193182u

void pit_periodic(uint32_t hz)
{
	uint32_t div = PIT_HZ / hz;
	outb(0x43, 0x34);	/* channel 0, lobyte/hibyte, mode 2 (rate generator), binary */
	outb(0x40, (uint8_t)div);
	outb(0x40, (uint8_t)(div >> 8));
}

uint64_t tsc_khz_cpuid(void)
{
	uint32_t r[4];
	cpuid(0, 0, r);
	if (r[0] >= 0x15) {
		uint32_t t[4];
		cpuid(0x15, 0, t);	/* TSC/crystal ratio ebx/eax, crystal Hz in ecx */
		if (t[0] && t[1] && t[2])
			return (uint64_t)t[2] * t[1] / t[0] / 1000;
	}
	cpuid(1, 0, r);
	if (r[2] & (1u << 31)) {
		cpuid(0x40000000, 0, r);
		if (r[0] >= 0x40000010) {
			cpuid(0x40000010, 0, r);	/* VMware/KVM timing leaf: eax = TSC kHz */
			if (r[0]) return r[0];
		}
	}
	return 0;
}

/* Timeouts only need a bound: without a CPUID-announced frequency assume a fast 4 GHz TSC
 * (waits then last at most 4x longer on a slower one). No PIT channel 2 calibration: QEMU's
 * microvm has no port 0x61, and calibrating through it changed how the in-kernel PIT behaved
 * afterwards under vnix, so the guests' behaviour would depend on the VMM's speaker port. */
uint64_t tsc_khz(void)
{
	static uint64_t khz;
	if (!khz) khz = tsc_khz_cpuid();
	if (!khz) khz = 4000000;
	return khz;
}

uint64_t deadline_ms(uint64_t ms) { return rdtsc() + ms * tsc_khz(); }
bool past(uint64_t deadline) { return (int64_t)(rdtsc() - deadline) >= 0; }

void delay_us(uint64_t us)
{
	uint64_t end = rdtsc() + us * tsc_khz() / 1000;
	while (!past(end)) cpu_relax();
}
