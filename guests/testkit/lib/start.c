/* First C code on the BSP: copy what the PVH loader gave us, then run the guest. */
#include "testkit.h"

extern uint32_t entry_eflags, entry_cr0, entry_cr4, start_info_paddr;
void report_finish(void);
struct boot_info boot;

static void copy_start_info(void)
{
	const struct hvm_start_info *si = (const void *)(uint64_t)start_info_paddr;
	boot.entry_eflags = entry_eflags;
	boot.entry_cr0 = entry_cr0;
	boot.entry_cr4 = entry_cr4;
	boot.si = si;
	if (!si || si->magic != HVM_START_MAGIC) return;
	if (si->cmdline_paddr) {
		const char *c = (const char *)si->cmdline_paddr;
		size_t i = 0;
		for (; c[i] && i < sizeof boot.cmdline - 1; i++) boot.cmdline[i] = c[i];
		boot.cmdline[i] = 0;
	}
	boot.rsdp = si->rsdp_paddr;
	if (si->version >= 1 && si->memmap_paddr) {
		const struct hvm_memmap_entry *m = (const void *)si->memmap_paddr;
		uint32_t n = si->memmap_entries < MAX_MEMMAP ? si->memmap_entries : MAX_MEMMAP;
		for (uint32_t i = 0; i < n; i++) boot.memmap[i] = m[i];
		boot.memmap_entries = n;
	}
}

const char *cmdline_value(const char *key)
{
	static char val[64];
	size_t lk = strlen(key);
	for (const char *p = boot.cmdline; *p; p++) {
		if ((p == boot.cmdline || p[-1] == ' ') && !strncmp(p, key, lk) && p[lk] == '=') {
			size_t i = 0;
			p += lk + 1;
			while (p[i] && p[i] != ' ' && i < sizeof val - 1) { val[i] = p[i]; i++; }
			val[i] = 0;
			return val;
		}
	}
	return NULL;
}

void testkit_start(void)
{
	serial_init();
	/* The benchmark's readiness mark: as early as possible, identical in every guest. */
	printf("TESTKIT BEGIN %s\nready: %s\n", testkit_name, testkit_name);
	copy_start_info();
	idt_init();
	testkit_main();
	report_finish();
}

/* An AP that a guest did not ask for parks itself (smp.c overrides this). */
__attribute__((weak)) void ap_main(void)
{
	for (;;) __asm__ volatile("cli; hlt");
}
