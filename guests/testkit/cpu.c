/* cpu: CPUID facts two correct VMMs on the same host agree on (SDM 2A, CPUID). */
#include "testkit.h"

const char testkit_name[] = "cpu";

void testkit_main(void)
{
	uint32_t r0[4], r1[4], x1[4], xb[4];
	cpuid(0, 0, r0);
	cpuid(1, 0, r1);
	cpuid(0x80000000, 0, x1);
	uint32_t max_ext = x1[0];
	cpuid(0x80000001, 0, x1);
	bool hyp = r1[2] >> 31 & 1, lm = max_ext >= 0x80000001 && (x1[3] >> 29 & 1);
	uint32_t initial_apic = r1[1] >> 24;
	report("hypervisor", "%s", yesno(hyp));
	report("long_mode", "%s", yesno(lm));
	report("max_basic_leaf_ge_0xb", "%s", yesno(r0[0] >= 0xb));
	report("tsc", "%s", yesno(r1[3] >> 4 & 1));
	report("apic", "%s", yesno(r1[3] >> 9 & 1));
	report("x2apic", "%s", yesno(r1[2] >> 21 & 1));
	report("boot_apic_id", "%u", initial_apic);
	if (r0[0] >= 0xb) {
		cpuid(0xb, 0, xb);	/* extended topology: edx = x2APIC ID of this CPU */
		report("x2apic_id", "%u", xb[3]);
	}
	report("lapic_id", "%u", lapic_id());
	check("hypervisor bit", hyp, "CPUID.1:ECX[31] clear");
	check("long mode", lm, "CPUID.80000001h:EDX[29] clear");
	check("boot cpu is apic 0", initial_apic == 0 && lapic_id() == 0, "cpuid %u lapic %u",
	      initial_apic, lapic_id());
	check("max basic leaf >= 0xb", r0[0] >= 0xb, "max leaf 0x%x", r0[0]);
	check("tsc", r1[3] >> 4 & 1, "CPUID.1:EDX[4] clear");
}
