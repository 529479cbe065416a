/* boot: the PVH start state (docs/misc/pvh.pandoc) and what the loader handed over. */
#include "testkit.h"

const char testkit_name[] = "boot";

static uint64_t round_mib(uint64_t bytes) { return (bytes + (1u << 19)) >> 20; }

void testkit_main(void)
{
	const struct hvm_start_info *si = boot.si;
	/* pvh.pandoc: cr0.PE set, other writable bits clear; cr4 all clear; eflags IF, TF, VM clear. */
	report("entry_cr0_pe", "%u", boot.entry_cr0 & 1);
	report("entry_cr0_pg", "%u", boot.entry_cr0 >> 31);
	report("entry_cr4", "0x%x", boot.entry_cr4);
	report("entry_eflags_if", "%u", (boot.entry_eflags >> 9) & 1);
	report("entry_eflags_tf", "%u", (boot.entry_eflags >> 8) & 1);
	report("entry_eflags_vm", "%u", (boot.entry_eflags >> 17) & 1);
	check("protected mode, paging off", (boot.entry_cr0 & 0x80000001) == 1, "cr0 0x%x", boot.entry_cr0);
	check("cr4 clear", boot.entry_cr4 == 0, "cr4 0x%x", boot.entry_cr4);
	check("IF TF VM clear", !(boot.entry_eflags & 0x20300), "eflags 0x%x", boot.entry_eflags);
	bool magic = si && si->magic == HVM_START_MAGIC;
	report("start_info_magic", "0x%x", si ? si->magic : 0);
	if (!check("start_info magic", magic, "start_info at %p", (const void *)si))
		return;
	report("start_info_version", "%u", si->version);
	report("nr_modules", "%u", si->nr_modules);
	report("cmdline", "%s", boot.cmdline);
	check("memmap present", si->version >= 1 && boot.memmap_entries > 0, "version %u, %u entries",
	      si->version, boot.memmap_entries);
	uint64_t usable = 0, top = 0;
	bool low = false, high = false;
	for (uint32_t i = 0; i < boot.memmap_entries; i++) {
		const struct hvm_memmap_entry *e = &boot.memmap[i];
		if (e->type != E820_RAM) continue;
		usable += e->size;
		if (e->addr + e->size > top) top = e->addr + e->size;
		if (e->addr == 0 && e->size >= 0x80000) low = true;	/* conventional memory at 0 */
		if (e->addr <= 0x100000 && e->addr + e->size > 0x100000) high = true;
	}
	report("usable_ram_mib", "%lu", round_mib(usable));
	report("ram_top_mib", "%lu", round_mib(top));
	report("ram_below_1mib", "%s", yesno(low));
	report("ram_from_1mib", "%s", yesno(high));
	check("image inside RAM", high && top >= (uint64_t)_end, "image ends at %p", _end);
	report("rsdp_given", "%s", yesno(si->rsdp_paddr != 0));
}
