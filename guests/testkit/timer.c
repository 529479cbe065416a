/* timer: PIT channel 0 periodic IRQ 0 through the I/O APIC, and a LAPIC timer one-shot. */
#include "testkit.h"

const char testkit_name[] = "timer";

#define PIT_VECTOR 0x20
#define LAPIC_TIMER_VECTOR 0x30
#define PIT_TICKS_WANTED 10

static volatile uint32_t pit_irqs, lapic_irqs;

static void pit_irq(struct irq_frame *f) { pit_irqs++; lapic_eoi(); }
static void lapic_irq(struct irq_frame *f) { lapic_irqs++; lapic_eoi(); }

void testkit_main(void)
{
	struct madt_info m;
	bool madt = acpi_parse_madt(&m);
	/* ISA IRQ 0 is GSI 2 on KVM's in-kernel I/O APIC; the MADT says so with an override. */
	uint32_t gsi = madt && m.irq0_override ? m.irq0_gsi : 2;
	lapic_enable();
	pic_mask_all();
	irq_set_handler(PIT_VECTOR, pit_irq);
	irq_set_handler(LAPIC_TIMER_VECTOR, lapic_irq);
	ioapic_route(gsi, PIT_VECTOR, lapic_id(), false, false);
	pit_periodic(1000);
	lapic_write(LAPIC_TIMER_DIV, 0x3);	/* divide by 16 */
	lapic_write(LAPIC_LVT_TIMER, LAPIC_TIMER_VECTOR);	/* one-shot, unmasked */
	lapic_write(LAPIC_TIMER_INIT, 100000);
	uint64_t dl = deadline_ms(5000);
	/* Interrupts stay enabled across the whole wait: a `sti; pause; cli` window is too short
	 * for emulators that check for interrupts only between translated blocks (QEMU TCG). */
	sti();
	while ((pit_irqs < PIT_TICKS_WANTED || !lapic_irqs) && !past(dl))
		cpu_relax();
	cli();
	ioapic_mask(gsi);
	uint32_t lapic_after = lapic_irqs;
	delay_us(20000);	/* a one-shot must not fire again */
	report("pit_irqs_seen", "%s", yesno(pit_irqs >= PIT_TICKS_WANTED));
	report("lapic_timer_fired", "%s", yesno(lapic_irqs > 0));
	report("lapic_timer_once", "%s", yesno(lapic_irqs == 1));
	report("lapic_timer_current", "%u", lapic_read(LAPIC_TIMER_CUR));
	check("pit periodic interrupts", pit_irqs >= PIT_TICKS_WANTED, "%u of %u", pit_irqs,
	      PIT_TICKS_WANTED);
	check("lapic one-shot", lapic_after == 1 && lapic_irqs == 1, "%u interrupts", lapic_irqs);
}
