/* memory: from ring 3, write a pattern over every usable byte above the guest's image and
 * read it back (address-derived pattern, then its complement). Run with -m 64M and -m 256M. */
#include "testkit.h"

const char testkit_name[] = "memory";

struct range { uint64_t start, end; };
static struct range ranges[MAX_MEMMAP];
static uint32_t nranges;

static uint64_t pattern(uint64_t a, uint64_t pass) { return (a * 0x9e3779b97f4a7c15ull) ^ (pass ? ~0ull : 0); }

static uint64_t test_job(uint64_t unused)
{
	uint64_t errors = 0;
	for (uint64_t pass = 0; pass < 2; pass++) {
		for (uint32_t r = 0; r < nranges; r++)
			for (uint64_t a = ranges[r].start; a < ranges[r].end; a += 8)
				*(volatile uint64_t *)a = pattern(a, pass);
		for (uint32_t r = 0; r < nranges; r++)
			for (uint64_t a = ranges[r].start; a < ranges[r].end; a += 8)
				errors += *(volatile uint64_t *)a != pattern(a, pass);
	}
	return errors;
}

void testkit_main(void)
{
	uint64_t image_end = (uint64_t)_end, bytes = 0, usable = 0;
	for (uint32_t i = 0; i < boot.memmap_entries; i++) {
		const struct hvm_memmap_entry *e = &boot.memmap[i];
		if (e->type != E820_RAM) continue;
		usable += e->size;
		uint64_t s = e->addr > image_end ? e->addr : image_end, end = e->addr + e->size;
		if (end > 4ull << 30) end = 4ull << 30;	/* the identity map covers 4 GiB */
		s = (s + 7) & ~7ull;
		end &= ~7ull;
		if (s >= end) continue;
		ranges[nranges++] = (struct range){ s, end };
		bytes += end - s;
	}
	report("usable_ram_mib", "%lu", (usable + (1u << 19)) >> 20);
	report("tested_mib", "%lu", (bytes + (1u << 19)) >> 20);
	check("something to test", bytes > 0, "no usable RAM above %p", _end);
	uint64_t errors = run_user(test_job, 0);
	report("errors", "%lu", errors);
	check("pattern read back", errors == 0, "%lu words differ", errors);
}
