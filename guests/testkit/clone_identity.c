/* clone_identity: a guest to be snapshotted and cloned (issue 4, clones). It sets up its
 * virtio-vsock device (1af4:1053, virtio 1.2 section 5.10) with an MSI-X interrupt on the rx
 * queue, draws one number from its PRNG (the state every clone inherits), prints
 * "waiting for identity on port P" and sleeps in hlt. The host snapshots it there.
 *
 * After each restore the host CONNECTs to port P (cmdline listen=P, default 5000) and sends one
 * line "name=NAME addr=ADDR seed=N\n". The guest reseeds its PRNG from N, answers on the stream
 * "identity NAME RANDOM\n", and prints
 *     identity: name=NAME addr=ADDR cid=CID mac=MAC random=RANDOM
 * on serial (MAC: a virtio-net device's, read from its config space after the restore, or "none");
 * then it sleeps again (an idle clone costs no CPU) and takes the next connection.
 * Each restore also brings VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue (5.10.6.7; no
 * interrupt: it is read on the next wake-up): the guest prints "vsock: transport reset,
 * guest_cid N", forgets its stream and posts the event buffer again.
 * The packet work runs in ring 3 (fast on this KVM); only waiting happens in ring 0. */
#include "virtio.h"
#include "vsock.h"

const char testkit_name[] = "clone_identity";

#define F_VERSION_1 32
#define RXQ VSOCK_RXQ
#define TXQ VSOCK_TXQ
#define EVQ VSOCK_EVQ
#define NRX 16
#define PAYLOAD 512
#define BUF_ALLOC (64u * 1024)
#define RX_VECTOR 0x42

static struct virtio_dev dev, net;
static bool has_net;
static char mac[18];
static struct virtq rxq __attribute__((aligned(4096))), txq __attribute__((aligned(4096))),
	evq __attribute__((aligned(4096)));
static uint8_t rxbuf[NRX][sizeof(struct hdr) + PAYLOAD] __attribute__((aligned(64)));
static uint8_t evbuf[4][8];
static struct hdr txh;
static uint8_t txdata[PAYLOAD];
static uint64_t cid;
static uint32_t listen_port, port, peer_port, fwd_cnt;
static volatile uint32_t irqs;

static uint64_t rng = 0x9E3779B97F4A7C15ull;	/* xorshift64*: what every clone inherits */
static uint64_t rng_next(void)
{
	rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
	return rng * 0x2545F4914F6CDD1Dull;
}

static char line[256], name[64], addr[64];
static uint64_t seed, random;
static bool got_identity;

static void rx_irq(struct irq_frame *f) { irqs++; lapic_eoi(); }

static void send_pkt(uint16_t op, const void *data, uint32_t n)
{
	txh.src_cid = cid; txh.dst_cid = 2;
	txh.src_port = port; txh.dst_port = peer_port;
	txh.len = n; txh.type = 1; txh.op = op; txh.flags = 0;
	txh.buf_alloc = BUF_ALLOC; txh.fwd_cnt = fwd_cnt;
	if (n) memcpy(txdata, data, n);
	uint64_t a[2] = {(uint64_t)&txh, (uint64_t)txdata};
	uint32_t l[2] = {sizeof txh, n};
	bool w[2] = {false, false};
	virtq_post(&txq, n ? 2 : 1, a, l, w);
	virtq_wait(&txq, 0, 2000);
}

static void rx_post(uint16_t i)
{
	rxq.desc[i].addr = (uint64_t)rxbuf[i];
	rxq.desc[i].len = sizeof rxbuf[i];
	rxq.desc[i].flags = VIRTQ_DESC_F_WRITE;
	rxq.avail.ring[rxq.avail.idx % rxq.size] = i;
	barrier();
	rxq.avail.idx++;
}

static bool rx_pending(void) { return *(volatile uint16_t *)&rxq.used.idx != rxq.last_used; }

/* The next packet into *h and data[] (copied out, the buffer posted again); false after ms. */
static uint8_t data[PAYLOAD];
static bool next_pkt(struct hdr *h, uint64_t ms)
{
	uint64_t dl = deadline_ms(ms);
	while (!rx_pending())
		if (past(dl)) return false;
	barrier();
	uint16_t slot = rxq.last_used % rxq.size;
	uint32_t id = rxq.used.ring[slot].id, len = rxq.used.ring[slot].len;
	rxq.last_used++;
	if (id >= rxq.size || len < sizeof *h) { memset(h, 0, sizeof *h); return true; }
	memcpy(h, rxbuf[id], sizeof *h);
	if (h->len > PAYLOAD || sizeof *h + h->len > len) h->len = 0;
	memcpy(data, rxbuf[id] + sizeof *h, h->len);
	rx_post((uint16_t)id);
	barrier();
	mmio_write16(rxq.notify, RXQ);
	return true;
}

static const char *field(const char *key, char *out, uint32_t size)
{
	const char *v = strstr_(line, key);
	uint32_t n = 0;
	if (v)
		for (v += strlen(key); *v && *v != ' ' && *v != '\n' && n + 1 < size; v++) out[n++] = *v;
	out[n] = 0;
	return v;
}

/* Ring 3: take packets until a stream's identity line is in, answer it, close the stream. */
static uint64_t serve_identity(uint64_t unused)
{
	struct hdr h;
	uint32_t got = 0;
	got_identity = false;
	while (next_pkt(&h, 5000)) {
		if (h.op == OP_REQUEST && h.dst_port == listen_port) {
			port = listen_port; peer_port = h.src_port; fwd_cnt = 0; got = 0;
			send_pkt(OP_RESPONSE, 0, 0);
		} else if (h.op == OP_REQUEST) {	/* nobody listens there */
			uint32_t p = port, pp = peer_port;
			port = h.dst_port; peer_port = h.src_port;
			send_pkt(OP_RST, 0, 0);
			port = p; peer_port = pp;
		} else if (h.op == OP_RW && h.src_port == peer_port && h.dst_port == port) {
			for (uint32_t i = 0; i < h.len && got + 1 < sizeof line; i++) line[got++] = (char)data[i];
			line[got] = 0;
			fwd_cnt += h.len;
			if (got && line[got - 1] == '\n') {
				field("name=", name, sizeof name);
				field("addr=", addr, sizeof addr);
				char num[24];
				field("seed=", num, sizeof num);
				seed = 0;
				for (const char *c = num; *c >= '0' && *c <= '9'; c++) seed = seed * 10 + (uint64_t)(*c - '0');
				rng = seed ^ 0x9E3779B97F4A7C15ull ^ rdtsc();	/* reseed: host seed, then this CPU's clock */
				if (!rng) rng = 1;
				random = rng_next();
				got_identity = true;
				char out[128];
				int n = snprintf(out, sizeof out, "identity %s %lu\n", name, random);
				send_pkt(OP_RW, out, (uint32_t)n);
			}
		} else if ((h.op == OP_SHUTDOWN || h.op == OP_RST) && h.src_port == peer_port) {
			if (h.op == OP_SHUTDOWN) send_pkt(OP_RST, 0, 0);
			port = peer_port = 0;	/* the stream is over: back to hlt (not 5 s of polling) */
			return got_identity ? 0 : 2;
		} else if (h.op == OP_CREDIT_REQUEST) {
			send_pkt(OP_CREDIT_UPDATE, 0, 0);
		}
		if (got_identity && !rx_pending()) return 0;	/* answered; the close comes later */
	}
	return got_identity ? 0 : 1;
}

void testkit_main(void)
{
	pic_mask_all();
	lapic_enable();
	irq_set_handler(RX_VECTOR, rx_irq);
	const char *lp = cmdline_value("listen");
	listen_port = 0;
	for (; lp && *lp >= '0' && *lp <= '9'; lp++) listen_port = listen_port * 10 + (uint32_t)(*lp - '0');
	if (!listen_port) listen_port = 5000;
	has_net = virtio_open(&net, 0x1041, 0) && net.device;	/* optional: only its MAC is read */
	bool found = virtio_open(&dev, 0x1053, 0);
	if (!check("virtio-vsock device", found, "no 1af4:1053"))
		return;
	bool fok = virtio_negotiate(&dev, 1ull << F_VERSION_1);
	cid = vsock_read_cid(&dev);
	virtio_msix_enable(&dev, 1, RX_VECTOR);
	bool qok = fok && virtio_queue_setup_size(&dev, &rxq, RXQ, 1, NRX) &&
		   virtio_queue_setup(&dev, &txq, TXQ, VIRTIO_MSI_NO_VECTOR) &&
		   virtio_queue_setup(&dev, &evq, EVQ, VIRTIO_MSI_NO_VECTOR);
	if (!check("vsock queues set up", qok, "features_ok %d", fok))
		return;
	for (uint16_t i = 0; i < rxq.size; i++)
		rx_post(i);
	virtio_driver_ok(&dev);
	mmio_write16(rxq.notify, RXQ);
	for (int i = 0; i < 4; i++)	/* event buffers: a restore's transport reset lands in one */
		vsock_event_post(&evq, evbuf[i], sizeof evbuf[i]);
	printf("inherited random=%lu cid=%lu\n", rng_next(), cid);
	printf("waiting for identity on port %u\n", listen_port);
	for (;;) {
		cli();
		while (!rx_pending())
			sti_hlt();	/* the rx interrupt (MSI-X) wakes us */
		/* a clone has another CID than the VM that was snapshotted: read it again (what a
		 * guest does on VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, 5.10.6.7) */
		cid = vsock_read_cid(&dev);
		bool reset = false;
		for (int64_t e; (e = vsock_event_next(&evq)) != VSOCK_EVENT_NONE;)
			reset |= e == VSOCK_EVENT_TRANSPORT_RESET;
		if (reset) {	/* every stream is gone: forget ours */
			port = peer_port = fwd_cnt = 0;
			printf("vsock: transport reset, guest_cid %lu\n", cid);
		}
		if (has_net) {	/* virtio-net's config starts with the MAC (5.1.4), a clone's own */
			uint8_t m[6];
			for (int i = 0; i < 6; i++) m[i] = mmio_read8(net.device + (uint64_t)i);
			snprintf(mac, sizeof mac, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
		}
		uint64_t code = run_user(serve_identity, 0);
		if (!code)
			printf("identity: name=%s addr=%s cid=%lu mac=%s random=%lu\n", name, addr, cid,
			       has_net ? mac : "none", random);
	}
}
