/* virtio_blk: a polling virtio-pci driver for the first virtio-blk device (1af4:1042).
 * cmdline: phase=write (write a pattern, flush, read it back), phase=read (only check the
 * pattern: run after a "reboot" on the same disk), default both. bench=N adds, after END,
 * ring-3 polled sequential/random read and write timings (see testkit_after_end). */
#include "virtio.h"

const char testkit_name[] = "virtio_blk";

#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define F_SEG_MAX 2
#define F_BLK_SIZE 6
#define F_FLUSH 9
#define F_VERSION_1 32
#define CPU_VECTOR 0x41
#define PATTERN_SECTOR 8
#define PATTERN_BYTES 4096

static volatile uint32_t irqs;
static void blk_irq(struct irq_frame *f) { irqs++; lapic_eoi(); }

static struct virtq vq __attribute__((aligned(4096)));
static struct { uint32_t type, reserved; uint64_t sector; } hdr __attribute__((aligned(16)));
static volatile uint8_t status_byte __attribute__((aligned(16)));
static uint8_t buf[PATTERN_BYTES] __attribute__((aligned(4096)));
static struct virtio_dev dev;

/* One request: header, optional data, status. Returns the status byte, or -1 on timeout. */
static int blk_rq(uint32_t type, uint64_t sector, void *data, uint32_t len, bool device_writes, uint32_t *used)
{
	hdr.type = type;
	hdr.reserved = 0;
	hdr.sector = sector;
	status_byte = 0xff;
	uint64_t a[3] = {(uint64_t)&hdr, (uint64_t)data, (uint64_t)&status_byte};
	uint32_t l[3] = {sizeof(hdr), len, 1};
	bool w[3] = {false, device_writes, true};
	if (len)
		virtq_post(&vq, 3, a, l, w);
	else {
		a[1] = a[2]; l[1] = 1; w[1] = true;
		virtq_post(&vq, 2, a, l, w);
	}
	if (!virtq_wait(&vq, used, 5000))
		return -1;
	return status_byte;
}

/* ---- bench=MIB (after END): ring-3 polled throughput, DEPTH requests in flight a batch ---- */
#define DEPTH 16
#define SEQ_BYTES (128u << 10)
#define RAND_BYTES 4096u
static struct { uint32_t type, reserved; uint64_t sector; } bhdr[DEPTH] __attribute__((aligned(16)));
static volatile uint8_t bstatus[DEPTH];
static uint8_t bbuf[DEPTH][SEQ_BYTES] __attribute__((aligned(4096)));
static uint64_t bench_mib, bench_capacity, bench_errors;

static uint64_t xorshift(uint64_t *x) { *x ^= *x << 13; *x ^= *x >> 7; *x ^= *x << 17; return *x; }

/* One pass: `total` bytes in requests of `size`, sequential or random sectors; returns cycles. */
static uint64_t bench_pass(uint32_t type, uint32_t size, bool random, uint64_t total)
{
	uint64_t seed = 0x9e3779b97f4a7c15ull, done = 0, next = 0, span = bench_mib << 20, t0 = rdtsc();
	if (span > bench_capacity * 512) span = bench_capacity * 512;
	while (done < total) {
		int n = 0;
		for (; n < DEPTH && done + (uint64_t)n * size < total; n++) {
			uint64_t off = random ? (xorshift(&seed) % (span / size)) * size : next;
			next = (next + size) % span;
			bhdr[n].type = type; bhdr[n].reserved = 0; bhdr[n].sector = off / 512;
			bstatus[n] = 0xff;
			uint16_t h = (uint16_t)(vq.free_head);
			for (int k = 0; k < 3; k++) {
				uint16_t at = (uint16_t)((h + k) % vq.size);
				vq.desc[at].next = (uint16_t)((at + 1) % vq.size);
				vq.desc[at].flags = (uint16_t)(k < 2 ? VIRTQ_DESC_F_NEXT : 0);
			}
			vq.desc[h].addr = (uint64_t)&bhdr[n]; vq.desc[h].len = sizeof bhdr[n];
			vq.desc[(h + 1) % vq.size].addr = (uint64_t)bbuf[n];
			vq.desc[(h + 1) % vq.size].len = size;
			vq.desc[(h + 1) % vq.size].flags |= type == BLK_T_IN ? VIRTQ_DESC_F_WRITE : 0;
			vq.desc[(h + 2) % vq.size].addr = (uint64_t)&bstatus[n];
			vq.desc[(h + 2) % vq.size].len = 1;
			vq.desc[(h + 2) % vq.size].flags = VIRTQ_DESC_F_WRITE;
			vq.free_head = (uint16_t)((h + 3) % vq.size);
			vq.avail.ring[vq.avail.idx % vq.size] = h;
			barrier();
			vq.avail.idx++;
		}
		barrier();
		mmio_write16(vq.notify, 0);
		uint64_t dl = deadline_ms(10000);
		while ((uint16_t)(*(volatile uint16_t *)&vq.used.idx - vq.last_used) < n)
			if (past(dl)) { bench_errors++; return rdtsc() - t0; }
		vq.last_used = (uint16_t)(vq.last_used + n);
		for (int k = 0; k < n; k++) bench_errors += bstatus[k] != 0;
		done += (uint64_t)n * size;
	}
	return rdtsc() - t0;
}

static uint64_t bench_results[4];
static uint64_t bench_all(uint64_t unused)
{
	uint64_t total = bench_mib << 20;
	bench_results[0] = bench_pass(BLK_T_OUT, SEQ_BYTES, false, total);	/* write first: reads see data */
	bench_results[1] = bench_pass(BLK_T_IN, SEQ_BYTES, false, total);
	bench_results[2] = bench_pass(BLK_T_OUT, RAND_BYTES, true, total / 8);
	bench_results[3] = bench_pass(BLK_T_IN, RAND_BYTES, true, total / 8);
	return 0;
}

void testkit_after_end(void)
{
	if (!bench_mib || !vq.size) return;
	run_user(bench_all, 0);
	static const char *names[4] = {"seq_write", "seq_read", "rand_write", "rand_read"};
	uint64_t bytes[4] = {bench_mib << 20, bench_mib << 20, (bench_mib << 20) / 8, (bench_mib << 20) / 8};
	uint32_t sizes[4] = {SEQ_BYTES, SEQ_BYTES, RAND_BYTES, RAND_BYTES};
	for (int i = 0; i < 4; i++)
		printf("bench_%s: bytes=%lu cycles=%lu request=%u depth=%d\n", names[i], bytes[i], bench_results[i], sizes[i], DEPTH);
	printf("bench_errors: %lu\ntsc_khz: %lu\n", bench_errors, tsc_khz());
}

static uint8_t pattern(uint32_t i) { return (uint8_t)(i * 7 + (i >> 9) + 0x5a); }

void testkit_main(void)
{
	const char *bench = cmdline_value("bench");
	for (; bench && *bench >= '0' && *bench <= '9'; bench++) bench_mib = bench_mib * 10 + (uint64_t)(*bench - '0');
	const char *phase = cmdline_value("phase");
	bool do_write = !phase || !strncmp(phase, "write", 5);
	pic_mask_all();	/* firmware (SeaBIOS under -M pc) leaves the 8259 on vectors 8-15 */
	lapic_enable();
	irq_set_handler(CPU_VECTOR, blk_irq);

	bool found = virtio_open(&dev, 0x1042, 0);
	report("virtio_blk_found", "%s", yesno(found));
	if (!check("virtio-blk device and capabilities", found, "no 1af4:1042 with common/notify/isr"))
		return;
	report("has_device_config", "%s", yesno(dev.device != 0));
	report("has_msix", "%s", yesno(dev.msix_table != 0));
	bool fok = virtio_negotiate(&dev, 1ull << F_VERSION_1);
	report("offers_version_1", "%s", yesno(dev.features >> F_VERSION_1 & 1));
	report("offers_flush", "%s", yesno(dev.features >> F_FLUSH & 1));
	report("offers_seg_max", "%s", yesno(dev.features >> F_SEG_MAX & 1));
	report("offers_blk_size", "%s", yesno(dev.features >> F_BLK_SIZE & 1));
	report("features_ok", "%s", yesno(fok));
	uint64_t capacity = mmio_read32(dev.device) | (uint64_t)mmio_read32(dev.device + 4) << 32;
	report("capacity_sectors", "%lu", capacity);
	bench_capacity = capacity;
	report("blk_size", "%u", mmio_read32(dev.device + 20));
	virtio_msix_enable(&dev, 1, CPU_VECTOR);
	bool qok = virtio_queue_setup(&dev, &vq, 0, 1);
	report("queue_max_at_least_16", "%s", yesno(dev.max_queue_size >= VQ_SIZE));
	if (!check("queue 0 set up", fok && qok, "features_ok %d queue %d", fok, qok))
		return;
	virtio_driver_ok(&dev);
	report("status_after_driver_ok", "0x%x", virtio_status(&dev));

	uint32_t used = 0;
	int st;
	if (do_write) {
		for (uint32_t i = 0; i < PATTERN_BYTES; i++)
			buf[i] = pattern(i);
		st = blk_rq(BLK_T_OUT, PATTERN_SECTOR, buf, PATTERN_BYTES, false, &used);
		report("write_status", "%d", st);
		report("write_used_len", "%u", used);
		st = blk_rq(BLK_T_FLUSH, 0, 0, 0, false, &used);
		report("flush_status", "%d", st);
	}
	memset(buf, 0, PATTERN_BYTES);
	st = blk_rq(BLK_T_IN, PATTERN_SECTOR, buf, PATTERN_BYTES, true, &used);
	report("read_status", "%d", st);
	report("read_used_len", "%u", used);
	uint32_t bad = 0;
	for (uint32_t i = 0; i < PATTERN_BYTES; i++)
		bad += buf[i] != pattern(i);
	report("pattern_mismatches", "%u", bad);
	check("pattern reads back", st == 0 && bad == 0, "status %d, %u bytes differ", st, bad);

	st = blk_rq(BLK_T_IN, capacity, buf, 512, true, &used);
	report("read_past_end_status", "%d", st);
	st = blk_rq(BLK_T_IN, 0, buf, 100, true, &used);	/* not a multiple of 512 */
	report("odd_length_status", "%d", st);
	st = blk_rq(99, 0, 0, 0, false, &used);
	report("unknown_type_status", "%d", st);
	st = blk_rq(BLK_T_GET_ID, 0, buf, 20, true, &used);
	report("get_id_status", "%d", st);

	uint64_t dl = deadline_ms(2000);
	sti();
	while (!irqs && !past(dl))
		cpu_relax();
	cli();
	report("msix_interrupt_seen", "%s", yesno(irqs > 0));
	check("used-buffer interrupt through MSI-X", irqs > 0, "none in 2 s");
	if (bench_mib) {	/* the benchmark after END needs the queue again: set it up anew */
		virtio_reset(&dev);
		report("status_after_reset", "0x%x", virtio_status(&dev));
		virtio_negotiate(&dev, 1ull << F_VERSION_1);
		virtio_queue_setup_size(&dev, &vq, 0, VIRTIO_MSI_NO_VECTOR, 64);
		virtio_driver_ok(&dev);
		return;
	}
	virtio_reset(&dev);
	report("status_after_reset", "0x%x", virtio_status(&dev));
}
