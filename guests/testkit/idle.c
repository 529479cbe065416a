/* idle: a long-running guest for the control API and the node agent. It sleeps in hlt between
 * interrupts and
 *  - prints "tick N" twice a second (PIT channel 0 at 20 Hz, IRQ 0 through the I/O APIC), so a
 *    test sees output stop while the VM is paused and continue after resume;
 *  - echoes each line typed on the serial port as "echo: LINE" (IRQ 4); the line "poweroff"
 *    then powers off through ACPI S5 (the guest ending by itself, status 0) and "triple-fault"
 *    loads an empty IDT and executes ud2 (#UD -> #GP -> #DF -> triple fault, status 12);
 *  - on Ctrl-Alt-Del from the i8042 (IRQ 1; scan code set 1 or 2) prints "ctrl-alt-del" and
 *    powers off through ACPI S5 (SLP_TYP 5 | SLP_EN at port 0x600, vnix's hardware-reduced sleep
 *    register); with "cad=ignore" on the cmdline it prints "ignoring ctrl-alt-del" and runs on
 *    (what a guest that does not listen looks like).
 * It never ends by itself: not in runner.GUESTS (no report to compare). */
#include "testkit.h"

const char testkit_name[] = "idle";

#define PIT_VECTOR 0x20
#define KBD_VECTOR 0x21
#define RX_VECTOR 0x24
#define PIT_HZ_WANTED 20
#define TICK_EVERY 10	/* PIT interrupts a printed tick: 0.5 s */
#define UART_IER 1
#define UART_LSR 5
#define LSR_DR 0x01
#define KBD_DATA 0x60
#define KBD_STATUS 0x64
#define ACPI_SLEEP_CONTROL 0x600
#define SLP_S5 ((5 << 2) | (1 << 5))

static volatile uint32_t pit_irqs;
static char line[128];
static volatile uint32_t len;
static volatile bool line_ready;
static volatile bool ctrl, alt, cad;
static bool e0, brk;	/* keyboard decoder state: E0 prefix, set-2 F0 break prefix */

static void pit_irq(struct irq_frame *f) { pit_irqs++; lapic_eoi(); }

static void power_off(void)
{
	printf("power off\n");
	outb(ACPI_SLEEP_CONTROL, SLP_S5);
	for (;;) sti_hlt();
}

static void triple_fault(void)
{
	struct { uint16_t limit; uint64_t base; } __attribute__((packed)) none = { 0, 0 };
	cli();
	__asm__ volatile("lidt %0; ud2" :: "m"(none));
	for (;;) cpu_relax();
}

static void rx_irq(struct irq_frame *f)
{
	while (inb(COM1 + UART_LSR) & LSR_DR) {
		char c = (char)inb(COM1);
		if (line_ready) continue;	/* the main loop has not printed the last one yet */
		if (c == '\n' || c == '\r') {
			if (len) line_ready = true;
		} else if (len < sizeof line - 1) {
			line[len++] = c;
		}
	}
	lapic_eoi();
}

/* Set 1: make code, break = make | 0x80. Set 2: make code, break = F0 make. Del is E0-prefixed
 * in both (set 1: 53, set 2: 71); Ctrl is 1D / 14, Alt 38 / 11. */
static void key(uint8_t b)
{
	if (b == 0xe0) { e0 = true; return; }
	if (b == 0xf0) { brk = true; return; }
	bool up = brk || (b & 0x80);
	uint8_t code = brk ? b : (uint8_t)(b & 0x7f);
	bool ext = e0;
	e0 = brk = false;
	if (code == 0x1d || code == 0x14) ctrl = !up;
	else if (code == 0x38 || code == 0x11) alt = !up;
	else if (ext && (code == 0x53 || code == 0x71) && !up && ctrl && alt) cad = true;
}

static void kbd_irq(struct irq_frame *f)
{
	if (inb(KBD_STATUS) & 0x01)
		key(inb(KBD_DATA));
	lapic_eoi();
}

void testkit_main(void)
{
	struct madt_info m;
	bool madt = acpi_parse_madt(&m);
	uint32_t pit_gsi = madt && m.irq0_override ? m.irq0_gsi : 2;
	const char *mode = cmdline_value("cad");
	bool ignore_cad = mode && !strncmp(mode, "ignore", 7);
	lapic_enable();
	pic_mask_all();
	irq_set_handler(PIT_VECTOR, pit_irq);
	irq_set_handler(KBD_VECTOR, kbd_irq);
	irq_set_handler(RX_VECTOR, rx_irq);
	ioapic_route(pit_gsi, PIT_VECTOR, lapic_id(), false, false);
	ioapic_route(1, KBD_VECTOR, lapic_id(), false, false);
	ioapic_route(m.irq4_gsi, RX_VECTOR, lapic_id(), false, false);
	outb(COM1 + UART_IER, 0x01);
	pit_periodic(PIT_HZ_WANTED);
	uint32_t printed = 0, ticks = 0;
	for (;;) {
		sti_hlt();
		if (pit_irqs - printed >= TICK_EVERY) {
			printed = pit_irqs;
			printf("tick %u\n", ++ticks);
		}
		if (line_ready) {
			line[len] = 0;
			printf("echo: %s\n", line);
			if (!strncmp(line, "poweroff", sizeof "poweroff")) power_off();
			if (!strncmp(line, "triple-fault", sizeof "triple-fault")) {
				printf("triple fault\n");
				triple_fault();
			}
			len = 0;
			line_ready = false;
		}
		if (cad) {
			cad = false;
			printf("ctrl-alt-del\n");
			if (ignore_cad) {
				printf("ignoring ctrl-alt-del\n");
				continue;
			}
			power_off();
		}
	}
}
