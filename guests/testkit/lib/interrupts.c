/* IDT, TSS and interrupt dispatch. Gate and TSS layouts: Intel SDM vol. 3A, 6.14.1 and 8.7. */
#include "testkit.h"

struct idt_gate {
	uint16_t off0, sel;
	uint8_t ist, type;
	uint16_t off1;
	uint32_t off2, zero;
} __attribute__((packed));

struct tss64 {
	uint32_t res0;
	uint64_t rsp[3];
	uint64_t res1;
	uint64_t ist[7];
	uint64_t res2;
	uint16_t res3, iomap;
} __attribute__((packed));

extern char isr_stubs[];
extern uint64_t gdt_tss[2];
extern char user_exit_point[];
void user_return(uint64_t value) __attribute__((noreturn));

static struct idt_gate idt[256] __attribute__((aligned(16)));
static irq_handler_t handlers[256];
static struct tss64 tss __attribute__((aligned(16)));
static uint8_t irq_stack[16384] __attribute__((aligned(16)));

#define SPURIOUS 0xff

static const char *const exc_names[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP",
	"#SS", "#GP", "#PF", "?15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
};

void idt_load(void)
{
	struct { uint16_t limit; uint64_t base; } __attribute__((packed)) p = { sizeof idt - 1, (uint64_t)idt };
	__asm__ volatile("lidt %0" :: "m"(p));
}

void idt_init(void)
{
	for (int v = 0; v < 256; v++) {
		uint64_t a = (uint64_t)isr_stubs + 16 * (uint64_t)v;
		/* 0x8e: present 64-bit interrupt gate, DPL 0. */
		idt[v] = (struct idt_gate){ (uint16_t)a, 0x08, 0, 0x8e,
					    (uint16_t)(a >> 16), (uint32_t)(a >> 32), 0 };
	}
	idt_load();
	/* TSS: rsp0 is the stack for interrupts taken in ring 3. */
	tss.rsp[0] = (uint64_t)(irq_stack + sizeof irq_stack);
	tss.iomap = sizeof tss;
	uint64_t b = (uint64_t)&tss, lim = sizeof tss - 1;
	gdt_tss[0] = (lim & 0xffff) | ((b & 0xffffff) << 16) | (0x89ull << 40) | ((lim >> 16 & 0xf) << 48) |
		     ((b >> 24 & 0xff) << 56);
	gdt_tss[1] = b >> 32;
	__asm__ volatile("ltr %w0" :: "r"(0x30));
}

void irq_set_handler(uint8_t vector, irq_handler_t h) { handlers[vector] = h; }

void isr_dispatch(struct irq_frame *f)
{
	uint8_t v = (uint8_t)f->vector;
	if (handlers[v]) {
		handlers[v](f);
		return;
	}
	if (v == 6 && (f->cs & 3) == 3 && f->rip == (uint64_t)user_exit_point)
		user_return(f->rdi);	/* a ring-3 function finished (entry.S, user_trampoline) */
	if (v == SPURIOUS)
		return;
	uint64_t cr2;
	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	if (v < 32)
		fail("exception %s (vector %u) error 0x%lx at rip 0x%lx cpl %lu cr2 0x%lx",
		     exc_names[v] ? exc_names[v] : "?", v, f->error, f->rip, f->cs & 3, cr2);
	fail("unexpected interrupt vector 0x%x at rip 0x%lx", v, f->rip);
}
