/* A small polling virtio-pci (modern, virtio 1.2 section 4.1) driver for test guests:
 * PCI configuration mechanism 1, BAR assignment, the virtio capabilities, one split queue. */
#ifndef TESTKIT_VIRTIO_H
#define TESTKIT_VIRTIO_H
#include "testkit.h"

static inline uint8_t mmio_read8(uint64_t a) { return *(volatile uint8_t *)a; }
static inline uint16_t mmio_read16(uint64_t a) { return *(volatile uint16_t *)a; }
static inline void mmio_write8(uint64_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static inline void mmio_write16(uint64_t a, uint16_t v) { *(volatile uint16_t *)a = v; }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

/* ---- PCI (lib/pci.c) ---- */
uint32_t pci_read32(uint8_t dev, uint8_t reg);
uint16_t pci_read16(uint8_t dev, uint8_t reg);
uint8_t pci_read8(uint8_t dev, uint8_t reg);
void pci_write32(uint8_t dev, uint8_t reg, uint32_t v);
void pci_write16(uint8_t dev, uint8_t reg, uint16_t v);
int pci_find(uint16_t vendor, uint16_t device, int nth);	/* slot on bus 0, or -1 */
uint64_t pci_assign_bar(uint8_t dev, int bar);	/* size it, place it at the next free address */
#define PCI_BAR_WINDOW 0xe0000000ull	/* where the test kit places BARs (inside every PC's hole) */

/* ---- virtio-pci (lib/virtio.c) ---- */
#define VIRTIO_STATUS_ACK 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VQ_SIZE 16	/* the size virtio_queue_setup asks for */
#define VQ_MAX 256	/* the rings' room: virtio_queue_setup_size may ask for up to this */
#define VIRTIO_MSI_NO_VECTOR 0xffff

struct virtq_desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct virtq {
	struct virtq_desc desc[VQ_MAX] __attribute__((aligned(16)));
	struct { uint16_t flags, idx, ring[VQ_MAX], used_event; } avail __attribute__((aligned(2)));
	struct { uint16_t flags, idx; struct { uint32_t id, len; } ring[VQ_MAX]; uint16_t avail_event; }
		used __attribute__((aligned(4)));
	uint16_t last_used, free_head, index, size;	/* size: min(VQ_SIZE, device maximum) */
	uint64_t notify;	/* the address to write the queue index to */
};

struct virtio_dev {
	int slot;
	uint64_t common, isr, device, notify_base;
	uint32_t notify_mult;
	uint64_t msix_table;
	uint8_t msix_cap;
	uint64_t features;	/* offered */
	uint32_t max_queue_size;
};

bool virtio_open(struct virtio_dev *d, uint16_t pci_device_id, int nth);
bool virtio_negotiate(struct virtio_dev *d, uint64_t wanted);	/* through FEATURES_OK */
bool virtio_queue_setup(struct virtio_dev *d, struct virtq *q, uint16_t index, uint16_t msix_vector);
/* The same with a queue of min(want, device maximum, VQ_MAX) entries (a power of two). */
bool virtio_queue_setup_size(struct virtio_dev *d, struct virtq *q, uint16_t index, uint16_t msix_vector,
			     uint16_t want);
void virtio_driver_ok(struct virtio_dev *d);
uint8_t virtio_status(struct virtio_dev *d);
void virtio_reset(struct virtio_dev *d);
void virtio_msix_enable(struct virtio_dev *d, uint16_t vector, uint8_t cpu_vector);
/* Post a chain of n buffers (addr, len, device-writable) and kick; returns the head. */
uint16_t virtq_post(struct virtq *q, int n, const uint64_t *addr, const uint32_t *len, const bool *wr);
/* Poll the used ring until the request completes or ms pass; returns false on timeout. */
bool virtq_wait(struct virtq *q, uint32_t *len, uint64_t ms);
#endif
