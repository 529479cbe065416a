/* smp: count CPUs in the MADT, start each AP with INIT-SIPI-SIPI (SDM 3A 9.4.4.1, "Typical
 * AP Initialization Sequence"), each AP reports its APIC ID once; report the sorted list. */
#include "testkit.h"

const char testkit_name[] = "smp";

#define AP_TRAMPOLINE 0x8000ull	/* below 1 MiB, page aligned: SIPI vector 0x08 */
#define ICR_INIT 0x4500		/* INIT, level assert, edge */
#define ICR_SIPI 0x4600		/* start-up; low byte = vector (page number) */

extern char ap_tramp_start[], ap_tramp_end[];
static volatile uint32_t ap_ids[MAX_CPUS];
static volatile uint32_t ap_count;

void ap_main(void)
{
	idt_load();
	uint32_t id = lapic_id();
	uint32_t i = __atomic_fetch_add(&ap_count, 1, __ATOMIC_SEQ_CST);
	if (i < MAX_CPUS) ap_ids[i] = id;
	for (;;) __asm__ volatile("cli; hlt");
}

static bool wait_count(uint32_t n, uint64_t ms)
{
	uint64_t dl = deadline_ms(ms);
	while (ap_count < n && !past(dl)) cpu_relax();
	return ap_count >= n;
}

void testkit_main(void)
{
	struct madt_info m;
	bool found = acpi_parse_madt(&m);
	report("madt_found", "%s", yesno(found));
	if (!check("madt", found, "no RSDP or no MADT")) return;
	check("acpi checksums", m.checksums_ok, "a table's bytes do not sum to 0");
	report("madt_cpus", "%u", m.ncpus);
	uint32_t bsp = lapic_id();
	memcpy((void *)AP_TRAMPOLINE, ap_tramp_start, (size_t)(ap_tramp_end - ap_tramp_start));
	lapic_enable();
	uint32_t expected = 0;
	for (uint32_t i = 0; i < m.ncpus; i++) {
		if (m.apic_ids[i] == bsp) continue;
		expected++;
		lapic_send_ipi(m.apic_ids[i], ICR_INIT);
		delay_us(10000);
		for (int sipi = 0; sipi < 2 && ap_count < expected; sipi++) {
			lapic_send_ipi(m.apic_ids[i], ICR_SIPI | (uint32_t)(AP_TRAMPOLINE >> 12));
			wait_count(expected, sipi ? 1000 : 200);
		}
	}
	wait_count(expected, 100);
	uint32_t n = ap_count < MAX_CPUS ? ap_count : MAX_CPUS;
	uint32_t ids[MAX_CPUS + 1];
	ids[0] = bsp;
	for (uint32_t i = 0; i < n; i++) ids[i + 1] = ap_ids[i];
	for (uint32_t i = 1; i <= n; i++)	/* insertion sort */
		for (uint32_t j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
			uint32_t t = ids[j]; ids[j] = ids[j - 1]; ids[j - 1] = t;
		}
	char list[64] = "";
	size_t pos = 0;
	bool unique = true;
	for (uint32_t i = 0; i <= n; i++) {
		pos += (size_t)snprintf(list + pos, sizeof list - pos, i ? ",%u" : "%u", ids[i]);
		if (i && ids[i] == ids[i - 1]) unique = false;
	}
	report("aps_started", "%u", ap_count);
	report("apic_ids", "%s", list);
	check("every AP started", ap_count == expected, "%u of %u", ap_count, expected);
	check("each APIC ID once", unique, "ids %s", list);
	bool match = true;
	for (uint32_t i = 0; i < m.ncpus; i++) {
		bool seen = false;
		for (uint32_t j = 0; j <= n; j++) seen |= ids[j] == m.apic_ids[i];
		match &= seen;
	}
	check("started CPUs are the MADT's", match && n + 1 == m.ncpus, "madt %u cpus, running %u",
	      m.ncpus, n + 1);
}
