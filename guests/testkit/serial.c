/* serial: read one line from the 16550 with its receive interrupt (IRQ 4 through the I/O APIC)
 * and echo it reversed. The runner sends the line on the VMM's standard input. */
#include "testkit.h"

const char testkit_name[] = "serial";

#define RX_VECTOR 0x24
#define UART_IER 1
#define UART_LSR 5
#define LSR_DR 0x01

static char line[128];
static volatile uint32_t len, rx_irqs;
static volatile bool done;

static void rx_irq(struct irq_frame *f)
{
	rx_irqs++;
	while (inb(COM1 + UART_LSR) & LSR_DR) {
		char c = (char)inb(COM1);
		if (done) continue;
		if (c == '\n' || c == '\r') {
			if (len || c == '\n') done = true;
		} else if (len < sizeof line - 1) {
			line[len++] = c;
		}
	}
	lapic_eoi();
}

void testkit_main(void)
{
	struct madt_info m;
	acpi_parse_madt(&m);	/* irq4_gsi defaults to 4 without an override */
	lapic_enable();
	pic_mask_all();
	irq_set_handler(RX_VECTOR, rx_irq);
	ioapic_route(m.irq4_gsi, RX_VECTOR, lapic_id(), false, false);	/* ISA: edge, active high */
	outb(COM1 + UART_IER, 0x01);	/* received-data-available interrupt */
	uint64_t dl = deadline_ms(20000);
	sti();
	while (!done && !past(dl)) cpu_relax();
	cli();
	outb(COM1 + UART_IER, 0x00);
	ioapic_mask(m.irq4_gsi);
	line[len] = 0;
	char rev[sizeof line];
	for (uint32_t i = 0; i < len; i++) rev[i] = line[len - 1 - i];
	rev[len] = 0;
	report("line", "%s", line);
	report("reversed", "%s", rev);
	report("rx_irq", "%s", yesno(rx_irqs > 0));
	check("line received", done, "timed out after %u bytes", len);
	check("receive interrupt", rx_irqs > 0, "no IRQ 4");
}
