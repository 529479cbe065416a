/* virtio-pci modern transport (virtio 1.2, 4.1.4): find the capabilities, negotiate, set up a
 * split queue (2.7), post chains and poll the used ring. */
#include "virtio.h"

/* struct virtio_pci_common_cfg offsets (4.1.4.3) */
#define C_DFSELECT 0x00
#define C_DF 0x04
#define C_GFSELECT 0x08
#define C_GF 0x0c
#define C_MSIX 0x10
#define C_STATUS 0x14
#define C_QSELECT 0x16
#define C_QSIZE 0x18
#define C_QMSIX 0x1a
#define C_QENABLE 0x1c
#define C_QNOFF 0x1e
#define C_QDESC 0x20
#define C_QAVAIL 0x28
#define C_QUSED 0x30

bool virtio_open(struct virtio_dev *d, uint16_t pci_device_id, int nth)
{
	memset(d, 0, sizeof(*d));
	d->slot = pci_find(0x1af4, pci_device_id, nth);
	if (d->slot < 0)
		return false;
	uint64_t bars[6] = {0};
	uint8_t cap = pci_read8(d->slot, 0x34);
	for (int guard = 0; cap && guard < 48; guard++, cap = pci_read8(d->slot, cap + 1)) {
		uint8_t id = pci_read8(d->slot, cap);
		if (id == 0x11) {	/* MSI-X: table offset/BIR at +4 */
			uint32_t t = pci_read32(d->slot, cap + 4);
			int bir = t & 7;
			if (!bars[bir])
				bars[bir] = pci_assign_bar(d->slot, bir);
			d->msix_table = bars[bir] + (t & ~7u);
			d->msix_cap = cap;
			continue;
		}
		if (id != 0x09)
			continue;
		uint8_t type = pci_read8(d->slot, cap + 3), bar = pci_read8(d->slot, cap + 4);
		uint32_t off = pci_read32(d->slot, cap + 8);
		if (type < 1 || type > 4 || bar > 5)
			continue;
		if (!bars[bar])
			bars[bar] = pci_assign_bar(d->slot, bar);
		uint64_t at = bars[bar] + off;
		if (type == 1 && !d->common) d->common = at;
		if (type == 2 && !d->notify_base) { d->notify_base = at; d->notify_mult = pci_read32(d->slot, cap + 16); }
		if (type == 3 && !d->isr) d->isr = at;
		if (type == 4 && !d->device) d->device = at;
	}
	return d->common && d->notify_base && d->isr;
}

uint8_t virtio_status(struct virtio_dev *d) { return mmio_read8(d->common + C_STATUS); }

void virtio_reset(struct virtio_dev *d)
{
	mmio_write8(d->common + C_STATUS, 0);
	while (mmio_read8(d->common + C_STATUS) != 0)	/* 4.1.4.3.2: wait for the reset */
		cpu_relax();
}

bool virtio_negotiate(struct virtio_dev *d, uint64_t wanted)
{
	virtio_reset(d);
	mmio_write8(d->common + C_STATUS, VIRTIO_STATUS_ACK);
	mmio_write8(d->common + C_STATUS, VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER);
	mmio_write32(d->common + C_DFSELECT, 0);
	d->features = mmio_read32(d->common + C_DF);
	mmio_write32(d->common + C_DFSELECT, 1);
	d->features |= (uint64_t)mmio_read32(d->common + C_DF) << 32;
	uint64_t take = d->features & wanted;
	mmio_write32(d->common + C_GFSELECT, 0);
	mmio_write32(d->common + C_GF, (uint32_t)take);
	mmio_write32(d->common + C_GFSELECT, 1);
	mmio_write32(d->common + C_GF, (uint32_t)(take >> 32));
	mmio_write8(d->common + C_STATUS, VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	return virtio_status(d) & VIRTIO_STATUS_FEATURES_OK;
}

static void write64(uint64_t a, uint64_t v) { mmio_write32(a, (uint32_t)v); mmio_write32(a + 4, (uint32_t)(v >> 32)); }

bool virtio_queue_setup(struct virtio_dev *d, struct virtq *q, uint16_t index, uint16_t msix_vector)
{
	return virtio_queue_setup_size(d, q, index, msix_vector, VQ_SIZE);
}

bool virtio_queue_setup_size(struct virtio_dev *d, struct virtq *q, uint16_t index, uint16_t msix_vector,
			     uint16_t want)
{
	memset(q, 0, sizeof(*q));
	mmio_write16(d->common + C_QSELECT, index);
	d->max_queue_size = mmio_read16(d->common + C_QSIZE);
	if (d->max_queue_size < 2)
		return false;
	if (want > VQ_MAX)
		want = VQ_MAX;
	q->size = d->max_queue_size < want ? d->max_queue_size : want;
	mmio_write16(d->common + C_QSIZE, q->size);
	mmio_write16(d->common + C_QMSIX, msix_vector);
	if (mmio_read16(d->common + C_QMSIX) != msix_vector)
		return false;
	write64(d->common + C_QDESC, (uint64_t)q->desc);
	write64(d->common + C_QAVAIL, (uint64_t)&q->avail);
	write64(d->common + C_QUSED, (uint64_t)&q->used);
	q->notify = d->notify_base + (uint64_t)mmio_read16(d->common + C_QNOFF) * d->notify_mult;
	q->index = index;
	mmio_write16(d->common + C_QENABLE, 1);
	return true;
}

void virtio_driver_ok(struct virtio_dev *d)
{
	mmio_write8(d->common + C_STATUS, VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER |
		    VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
}

void virtio_msix_enable(struct virtio_dev *d, uint16_t vector, uint8_t cpu_vector)
{
	uint64_t e = d->msix_table + 16ull * vector;
	mmio_write32(e + 0, 0xfee00000u | (lapic_id() << 12));	/* fixed delivery to this CPU */
	mmio_write32(e + 4, 0);
	mmio_write32(e + 8, cpu_vector);
	mmio_write32(e + 12, 0);	/* unmask */
	mmio_write16(d->common + C_MSIX, 0);	/* configuration changes on vector 0 */
	uint16_t ctrl = pci_read16(d->slot, d->msix_cap + 2);
	pci_write16(d->slot, d->msix_cap + 2, (ctrl | 0x8000) & ~0x4000);	/* enable, unmask all */
}

uint16_t virtq_post(struct virtq *q, int n, const uint64_t *addr, const uint32_t *len, const bool *wr)
{
	uint16_t head = q->free_head;
	for (int i = 0; i < n; i++) {
		uint16_t at = (head + i) % q->size;
		q->desc[at].addr = addr[i];
		q->desc[at].len = len[i];
		q->desc[at].flags = (wr[i] ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
		q->desc[at].next = (at + 1) % q->size;
	}
	q->free_head = (head + n) % q->size;
	q->avail.ring[q->avail.idx % q->size] = head;
	barrier();
	q->avail.idx++;
	barrier();
	mmio_write16(q->notify, q->index);
	return head;
}

bool virtq_wait(struct virtq *q, uint32_t *len, uint64_t ms)
{
	uint64_t dl = deadline_ms(ms);
	while (*(volatile uint16_t *)&q->used.idx == q->last_used) {
		if (past(dl))
			return false;
		cpu_relax();
	}
	barrier();
	if (len)
		*len = q->used.ring[q->last_used % q->size].len;
	q->last_used++;
	return true;
}
