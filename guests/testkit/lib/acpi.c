/* ACPI: RSDP -> XSDT (or RSDT) -> MADT ("APIC"). ACPI 6.4, sections 5.2.5, 5.2.7-8, 5.2.12. */
#include "testkit.h"

struct sdt_header {
	char sig[4];
	uint32_t length;
	uint8_t revision, checksum;
	char oem[6], oem_table[8];
	uint32_t oem_rev, creator, creator_rev;
} __attribute__((packed));

struct rsdp {
	char sig[8];
	uint8_t checksum;
	char oem[6];
	uint8_t revision;
	uint32_t rsdt;
	uint32_t length;	/* revision >= 2 */
	uint64_t xsdt;
	uint8_t xchecksum, res[3];
} __attribute__((packed));

static bool sum_ok(const void *p, size_t n)
{
	uint8_t s = 0;
	for (size_t i = 0; i < n; i++) s += ((const uint8_t *)p)[i];
	return s == 0;
}

static uint64_t scan(uint64_t from, uint64_t to)
{
	for (uint64_t a = from; a < to; a += 16)
		if (!strncmp((const char *)a, "RSD PTR ", 8) && sum_ok((const void *)a, 20))
			return a;
	return 0;
}

/* start_info.rsdp_paddr first; else the legacy places (5.2.5.1): EBDA's first KiB, E0000-FFFFF. */
uint64_t acpi_find_rsdp(void)
{
	if (boot.rsdp) return boot.rsdp;
	uint64_t ebda = (uint64_t)*(volatile uint16_t *)0x40e << 4;
	uint64_t r = ebda ? scan(ebda, ebda + 1024) : 0;
	return r ? r : scan(0xe0000, 0x100000);
}

static const struct sdt_header *find_table(const struct rsdp *rp, const char *sig, bool *ok)
{
	bool x = rp->revision >= 2 && rp->xsdt;
	const struct sdt_header *root = (const void *)(x ? rp->xsdt : (uint64_t)rp->rsdt);
	if (!sum_ok(root, root->length)) *ok = false;
	size_t esz = x ? 8 : 4, n = (root->length - sizeof *root) / esz;
	const uint8_t *ents = (const uint8_t *)(root + 1);
	for (size_t i = 0; i < n; i++) {
		uint64_t a = 0;
		memcpy(&a, ents + i * esz, esz);
		const struct sdt_header *t = (const void *)a;
		if (!strncmp(t->sig, sig, 4)) {
			if (!sum_ok(t, t->length)) *ok = false;
			return t;
		}
	}
	return NULL;
}

bool acpi_parse_madt(struct madt_info *m)
{
	memset(m, 0, sizeof *m);
	m->irq0_gsi = 0;
	m->irq4_gsi = 4;
	uint64_t rp = acpi_find_rsdp();
	if (!rp) return false;
	m->checksums_ok = true;
	const struct rsdp *r = (const void *)rp;
	if (r->revision >= 2 && !sum_ok(r, r->length)) m->checksums_ok = false;
	const struct sdt_header *t = find_table(r, "APIC", &m->checksums_ok);
	if (!t) return false;
	m->found = true;
	const uint8_t *p = (const uint8_t *)t + sizeof *t + 8, *end = (const uint8_t *)t + t->length;
	for (; p + 2 <= end && p[1] >= 2; p += p[1]) {
		uint32_t flags, id, gsi;
		switch (p[0]) {
		case 0:	/* Processor Local APIC: uid, apic id, flags (bit 0 enabled, 1 online capable) */
			memcpy(&flags, p + 4, 4);
			if ((flags & 3) && m->ncpus < MAX_CPUS) m->apic_ids[m->ncpus++] = p[3];
			break;
		case 1: m->nioapics++; break;
		case 2:	/* Interrupt Source Override: bus, source, gsi, flags */
			memcpy(&gsi, p + 4, 4);
			if (p[3] == 0) { m->irq0_gsi = gsi; m->irq0_override = true; }
			if (p[3] == 4) m->irq4_gsi = gsi;
			break;
		case 9:	/* Processor Local x2APIC: res, x2apic id, flags, uid */
			memcpy(&id, p + 4, 4);
			memcpy(&flags, p + 8, 4);
			if ((flags & 3) && m->ncpus < MAX_CPUS) m->apic_ids[m->ncpus++] = id;
			break;
		}
	}
	return true;
}
