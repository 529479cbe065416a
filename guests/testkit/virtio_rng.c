/* virtio_rng: the first virtio entropy device (1af4:1044), polled: 4 requests of 64 bytes;
 * the bytes must not be all equal and two requests must differ. */
#include "virtio.h"

const char testkit_name[] = "virtio_rng";

static struct virtq vq __attribute__((aligned(4096)));
static uint8_t buf[2][64] __attribute__((aligned(64)));
static struct virtio_dev dev;

void testkit_main(void)
{
	pic_mask_all();
	bool found = virtio_open(&dev, 0x1044, 0);
	report("virtio_rng_found", "%s", yesno(found));
	if (!check("virtio-rng device", found, "no 1af4:1044"))
		return;
	bool fok = virtio_negotiate(&dev, 1ull << 32);
	report("features_ok", "%s", yesno(fok));
	bool qok = virtio_queue_setup(&dev, &vq, 0, 0xffff);
	if (!check("queue 0 set up", fok && qok, "features_ok %d queue %d", fok, qok))
		return;
	virtio_driver_ok(&dev);
	uint32_t got = 0, distinct = 0;
	bool ok = true;
	for (int r = 0; r < 4; r++) {
		uint64_t a = (uint64_t)buf[r & 1];
		uint32_t l = sizeof(buf[0]), used = 0;
		bool w = true;
		memset(buf[r & 1], 0, sizeof(buf[0]));
		virtq_post(&vq, 1, &a, &l, &w);
		ok &= virtq_wait(&vq, &used, 5000);
		got += used;
	}
	for (int i = 1; i < 64; i++)
		distinct += buf[0][i] != buf[0][0];
	bool differ = false;
	for (int i = 0; i < 64; i++)
		differ |= buf[0][i] != buf[1][i];
	report("requests_completed", "%s", yesno(ok));
	report("bytes_received", "%s", yesno(got > 0));
	report("bytes_vary", "%s", yesno(distinct > 32));
	report("requests_differ", "%s", yesno(differ));
	check("entropy arrives", ok && got > 0 && distinct > 32 && differ, "got %u bytes", got);
	virtio_reset(&dev);
}
