/* The test kit's library: what a guest file may use. See README.md. */
#ifndef TESTKIT_H
#define TESTKIT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* ---- each guest defines these ---- */
extern const char testkit_name[];
void testkit_main(void);
void testkit_after_end(void) __attribute__((weak)); /* output after END (benchmarks) */

/* ---- port and MMIO access ---- */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t mmio_read32(uint64_t addr) { return *(volatile uint32_t *)addr; }
static inline void mmio_write32(uint64_t addr, uint32_t v) { *(volatile uint32_t *)addr = v; }
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((uint64_t)hi << 32) | lo; }
static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
	__asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
/* sti; hlt is atomic with respect to interrupts (the STI shadow), so no wake-up is lost. */
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt; cli" ::: "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

/* ---- string and formatting (printf.c) ---- */
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);
const char *strstr_(const char *h, const char *n);
void *memcpy(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- serial: 16550 at 0x3f8, polled output (serial.c) ---- */
#define COM1 0x3f8
#define COM1_IRQ 4
void serial_init(void);
void serial_putc(char c);
void serial_write(const char *s, size_t n);

/* ---- report (report.c): framing, checks, exit through isa-debug-exit ---- */
#define DEBUG_EXIT_PORT 0x501
void report(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool check(const char *what, bool ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
const char *yesno(bool b);
void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void debug_exit(uint8_t value) __attribute__((noreturn));

/* ---- PVH start info (xen/include/public/arch-x86/hvm/start_info.h) ---- */
#define HVM_START_MAGIC 0x336ec578u
struct hvm_start_info {
	uint32_t magic, version, flags, nr_modules;
	uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr;
	uint64_t memmap_paddr;	/* version >= 1 */
	uint32_t memmap_entries, reserved;
} __attribute__((packed));
struct hvm_memmap_entry { uint64_t addr, size; uint32_t type, reserved; } __attribute__((packed));
#define E820_RAM 1
#define MAX_MEMMAP 32

struct boot_info {
	uint32_t entry_eflags, entry_cr0, entry_cr4;
	const struct hvm_start_info *si;	/* as the loader gave it */
	char cmdline[256];
	struct hvm_memmap_entry memmap[MAX_MEMMAP];
	uint32_t memmap_entries;
	uint64_t rsdp;
};
extern struct boot_info boot;
extern char _start_image[], _end[];
const char *cmdline_value(const char *key); /* "key=value" in the cmdline -> value or NULL */

/* ---- interrupts (interrupts.c) ---- */
struct irq_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error, rip, cs, rflags, rsp, ss;
};
typedef void (*irq_handler_t)(struct irq_frame *f);
void idt_init(void);	/* exceptions report and exit; also loads the TSS */
void idt_load(void);	/* on an AP */
void irq_set_handler(uint8_t vector, irq_handler_t h);

/* ---- LAPIC / IOAPIC / PIT / TSC (apic.c) ---- */
#define LAPIC_BASE 0xfee00000ull
#define IOAPIC_BASE 0xfec00000ull
#define LAPIC_ID 0x20
#define LAPIC_EOI 0xb0
#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR 0x390
#define LAPIC_TIMER_DIV 0x3e0
uint32_t lapic_read(uint32_t reg);
void lapic_write(uint32_t reg, uint32_t v);
void lapic_enable(void);
void lapic_eoi(void);
uint32_t lapic_id(void);
void lapic_send_ipi(uint32_t apic_id, uint32_t icr_lo);
void ioapic_route(uint32_t pin, uint8_t vector, uint32_t dest_apic, bool level, bool active_low);
void ioapic_mask(uint32_t pin);
void pic_mask_all(void);
void pit_periodic(uint32_t hz);
uint64_t tsc_khz(void);		/* CPUID 0x15 / 0x40000010, else 4 GHz (a bound for timeouts) */
uint64_t tsc_khz_cpuid(void);	/* CPUID only, 0 if not announced */
void delay_us(uint64_t us);
uint64_t deadline_ms(uint64_t ms);	/* a TSC value ms from now */
bool past(uint64_t deadline);

/* ---- ACPI (acpi.c): RSDP -> XSDT/RSDT -> MADT ---- */
#define MAX_CPUS 8
struct madt_info {
	bool found, checksums_ok;
	uint32_t ncpus;
	uint32_t apic_ids[MAX_CPUS];
	uint32_t nioapics;
	uint32_t irq0_gsi;	/* after interrupt source overrides */
	uint32_t irq4_gsi;
	bool irq0_override;
};
uint64_t acpi_find_rsdp(void);
bool acpi_parse_madt(struct madt_info *out);

/* ---- ring 3 (user.c) ---- */
uint64_t run_user(uint64_t (*fn)(uint64_t), uint64_t arg);

#endif
