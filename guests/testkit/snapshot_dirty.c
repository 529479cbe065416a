/* snapshot_dirty: writes known pages on command, for the exactness of diff snapshots.
 *
 * The guest waits on the serial port (a PIT tick at 100 Hz wakes it to look). For each digit n
 * it receives it writes one byte into each page of the set S(n) of its 256-page buffer
 * (S(0) is empty; S(n) = {n, 2n+7, 100+3n, 255-n}), has the virtio-blk device read sector 0
 * into its DMA page (a page only the VMM writes), and prints
 *   "wrote n: <address> ..."  "dma: <address>"  "done n"
 * so the host can compare a diff snapshot taken after each command with exactly those pages.
 * 'f' fills every usable page above the image (ring 3, one word a page; for benchmarks)
 * and prints "filled <MiB>". 'q' ends the guest. */
#include "virtio.h"

const char testkit_name[] = "snapshot_dirty";

#define PIT_VECTOR 0x20
#define F_VERSION_1 32
#define BLK_T_IN 0

static uint8_t pages[256][4096] __attribute__((aligned(4096)));
static uint8_t dma_page[4096] __attribute__((aligned(4096)));
static struct virtq vq __attribute__((aligned(4096)));
static struct { uint32_t type, reserved; uint64_t sector; } hdr __attribute__((aligned(16)));
static volatile uint8_t status_byte __attribute__((aligned(16)));
static struct virtio_dev dev;
static volatile uint32_t ticks;

static void pit_irq(struct irq_frame *f) { ticks++; lapic_eoi(); }

static int wait_byte(void)
{
	for (;;) {
		if (inb(0x3f8 + 5) & 1)
			return inb(0x3f8);
		sti();
		__asm__ volatile("hlt" ::: "memory");
		cli();
	}
}

static bool dma_read(void)
{
	uint32_t used;
	hdr.type = BLK_T_IN; hdr.reserved = 0; hdr.sector = 0;
	status_byte = 0xff;
	uint64_t a[3] = {(uint64_t)&hdr, (uint64_t)dma_page, (uint64_t)&status_byte};
	uint32_t l[3] = {sizeof hdr, sizeof dma_page, 1};
	bool w[3] = {false, true, true};
	virtq_post(&vq, 3, a, l, w);
	return virtq_wait(&vq, &used, 5000) && status_byte == 0;
}

static uint64_t fill_job(uint64_t seed)
{
	uint64_t pages = 0, image_end = ((uint64_t)_end + 4095) & ~4095ull;
	for (uint32_t i = 0; i < boot.memmap_entries; i++) {
		const struct hvm_memmap_entry *e = &boot.memmap[i];
		if (e->type != E820_RAM) continue;
		uint64_t s = e->addr > image_end ? e->addr : image_end, end = (e->addr + e->size) & ~4095ull;
		for (uint64_t a = (s + 4095) & ~4095ull; a < end && a < (1ull << 32); a += 4096, pages++)
			*(volatile uint64_t *)a = a ^ seed;
	}
	return pages;
}

void testkit_main(void)
{
	struct madt_info m;
	uint32_t gsi = acpi_parse_madt(&m) && m.irq0_override ? m.irq0_gsi : 2;
	pic_mask_all();
	lapic_enable();
	irq_set_handler(PIT_VECTOR, pit_irq);
	ioapic_route(gsi, PIT_VECTOR, lapic_id(), false, false);
	pit_periodic(100);
	bool ok = virtio_open(&dev, 0x1042, 0) && virtio_negotiate(&dev, 1ull << F_VERSION_1) &&
		  virtio_queue_setup(&dev, &vq, 0, VIRTIO_MSI_NO_VECTOR);
	if (!check("virtio-blk ready", ok, "no disk"))
		return;
	virtio_driver_ok(&dev);
	bool dma_ok = true;
	printf("waiting\n");
	for (;;) {
		int c = wait_byte();
		if (c == 'q')
			break;
		if (c == 'f') {
			uint64_t n = run_user(fill_job, 0x5eed);
			printf("filled %lu\n", n / 256);
			continue;
		}
		if (c < '0' || c > '9')
			continue;
		uint32_t n = (uint32_t)(c - '0');
		uint32_t set[4] = {n, 2 * n + 7, 100 + 3 * n, 255 - n};
		printf("wrote %u:", n);
		for (int i = 0; n && i < 4; i++) {
			pages[set[i]][(n * 64) % 4096] = (uint8_t)(0xA0 + n);
			printf(" %lx", (uint64_t)pages[set[i]]);
		}
		dma_ok &= dma_read();
		printf("\ndma: %lx\ndone %u\n", (uint64_t)dma_page, n);
	}
	check("device reads into the DMA page", dma_ok, "a virtio-blk read failed");
}
