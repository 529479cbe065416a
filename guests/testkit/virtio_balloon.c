/* virtio_balloon: a polling virtio-balloon driver (1af4:1045, virtio 1.2 section 5.5).
 *
 * 1. gives the device a statistics buffer (statsq) and checks the device keeps it (5.5.6.3);
 * 2. waits for the host's target (num_pages in config space), touches that many pages, then
 *    inflates them (PFN arrays of 256 on inflateq) and writes `actual`: the host may now take
 *    the pages back; checks they read as zeros afterwards; deflates them all;
 * 3. touches 16 MiB more and reports it free (reporting_vq, 5.5.6.7); checks it reads zero.
 * Between steps it prints "balloon_phase: <name>" and waits for one byte on the serial port,
 * so the host can measure the VMM's resident memory at each point (the test does). */
#include "virtio.h"

const char testkit_name[] = "virtio_balloon";

#define F_STATS_VQ 1
#define F_PAGE_REPORTING 5
#define F_VERSION_1 32
#define PFNS 256
#define REGION (96ull << 20)	/* balloon pages come from here up */
#define FREE_REGION (112ull << 20)
#define FREE_BYTES (16ull << 20)

static struct virtio_dev dev;
static struct virtq q[4] __attribute__((aligned(4096)));
static uint32_t pfns[PFNS] __attribute__((aligned(64)));
static struct { uint16_t tag; uint64_t val; } __attribute__((packed)) stats[2];

static void wait_serial_byte(void)
{
	while (!(inb(COM1 + 5) & 1))	/* LSR data ready */
		cpu_relax();
	(void)inb(COM1);
}

static void phase(const char *name)
{
	report("balloon_phase", "%s", name);
	wait_serial_byte();
}

static uint64_t touch(uint64_t arg)	/* ring 3: one write a page, value from its address */
{
	uint64_t start = arg >> 32 << 20, bytes = (arg & 0xffffffff) << 20;
	for (uint64_t a = start; a < start + bytes; a += 4096)
		*(volatile uint64_t *)a = a | 1;
	return 0;
}

static uint64_t zero_pages(uint64_t arg)	/* ring 3: pages whose first word is not zero */
{
	uint64_t start = arg >> 32 << 20, bytes = (arg & 0xffffffff) << 20, bad = 0;
	for (uint64_t a = start; a < start + bytes; a += 4096)
		bad += *(volatile uint64_t *)a != 0;
	return bad;
}

static bool send_pfns(int queue, uint64_t first, uint32_t count)
{
	for (uint32_t i = 0; i < count; i++)
		pfns[i] = (uint32_t)(first + i);
	uint64_t a = (uint64_t)pfns;
	uint32_t l = count * 4;
	bool w = false;
	virtq_post(&q[queue], 1, &a, &l, &w);
	return virtq_wait(&q[queue], 0, 5000);
}

static bool balloon_pages(int queue, uint64_t first, uint64_t count)
{
	for (uint64_t done = 0; done < count; done += PFNS)
		if (!send_pfns(queue, first + done, (uint32_t)(count - done < PFNS ? count - done : PFNS)))
			return false;
	return true;
}

void testkit_main(void)
{
	pic_mask_all();
	bool found = virtio_open(&dev, 0x1045, 0);
	report("virtio_balloon_found", "%s", yesno(found));
	if (!check("virtio-balloon device and capabilities", found, "no 1af4:1045"))
		return;
	bool fok = virtio_negotiate(&dev, 1ull << F_VERSION_1 | 1ull << F_STATS_VQ | 1ull << F_PAGE_REPORTING);
	report("offers_stats_vq", "%s", yesno(dev.features >> F_STATS_VQ & 1));
	report("offers_page_reporting", "%s", yesno(dev.features >> F_PAGE_REPORTING & 1));
	report("features_ok", "%s", yesno(fok));
	bool qok = fok;
	for (int i = 0; i < 4 && qok; i++)
		qok = virtio_queue_setup(&dev, &q[i], (uint16_t)i, VIRTIO_MSI_NO_VECTOR);
	if (!check("inflate, deflate, stats and reporting queues set up", qok, "features_ok %d", fok))
		return;
	virtio_driver_ok(&dev);
	report("status_after_driver_ok", "0x%x", virtio_status(&dev));

	/* 5.5.6.3: the driver gives one stats buffer; the device keeps it until it wants more */
	stats[0].tag = 4; stats[0].val = 64ull << 20;	/* VIRTIO_BALLOON_S_MEMFREE */
	stats[1].tag = 5; stats[1].val = 128ull << 20;	/* VIRTIO_BALLOON_S_MEMTOT */
	uint64_t sa = (uint64_t)stats;
	uint32_t sl = sizeof stats;
	bool sw = false;
	virtq_post(&q[2], 1, &sa, &sl, &sw);
	report("stats_buffer_held", "%s", yesno(!virtq_wait(&q[2], 0, 300)));

	uint32_t target = 0;
	uint64_t dl = deadline_ms(20000);
	while (!(target = mmio_read32(dev.device)) && !past(dl))
		delay_us(1000);
	report("target_mib", "%u", target >> 8);
	if (!check("the host sets a target", target > 0 && target <= (16u << 8), "num_pages %u", target))
		return;
	uint64_t first = REGION >> 12, mib = target >> 8;
	run_user(touch, (REGION >> 20) << 32 | mib);
	phase("touched");
	bool inflated = balloon_pages(0, first, target);
	mmio_write32(dev.device + 4, target);	/* actual */
	report("inflated_mib", "%lu", inflated ? mib : 0);
	report("actual_mib", "%u", mmio_read32(dev.device + 4) >> 8);
	check("inflate requests completed", inflated, "an inflate request timed out");
	phase("inflated");
	uint64_t nonzero = run_user(zero_pages, (REGION >> 20) << 32 | mib);
	report("inflated_pages_read_zero", "%s", yesno(nonzero == 0));
	check("ballooned pages were given back to the host", nonzero == 0, "%lu pages kept their data", nonzero);
	bool deflated = balloon_pages(1, first, target);
	mmio_write32(dev.device + 4, 0);
	report("deflated", "%s", yesno(deflated));

	run_user(touch, (FREE_REGION >> 20) << 32 | (FREE_BYTES >> 20));
	phase("touched_free");
	uint64_t fa[4];
	uint32_t fl[4];
	bool fw[4];
	for (int i = 0; i < 4; i++) {
		fa[i] = FREE_REGION + i * (FREE_BYTES / 4);
		fl[i] = FREE_BYTES / 4;
		fw[i] = true;
	}
	virtq_post(&q[3], 4, fa, fl, fw);
	bool reported = virtq_wait(&q[3], 0, 5000);
	report("free_page_report_used", "%s", yesno(reported));
	phase("reported");
	nonzero = run_user(zero_pages, (FREE_REGION >> 20) << 32 | (FREE_BYTES >> 20));
	report("reported_pages_read_zero", "%s", yesno(nonzero == 0));
	check("reported free pages were discarded", reported && nonzero == 0, "used %d, %lu pages kept", reported, nonzero);
}
