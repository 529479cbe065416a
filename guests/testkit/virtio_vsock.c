/* virtio_vsock: a polling virtio-vsock driver (1af4:1053, virtio 1.2 section 5.10).
 *
 * cmdline: connect=P  connect to host port P (CID 2), say "hello from the guest\n", expect
 *                     "hello from the host\n", then SHUTDOWN and expect the device's RST;
 *          listen=L   accept one connection on port L and echo every byte until the host ends
 *                     the stream (SHUTDOWN), answering it with RST; credit updates as we go.
 * There is no QEMU reference (no vhost-vsock here): the host side of the test checks the bytes.
 * Everything after setup runs in ring 3 (rings and BAR0 are user-accessible). */
#include "virtio.h"
#include "vsock.h"

const char testkit_name[] = "virtio_vsock";

#define F_VERSION_1 32
#define RXQ VSOCK_RXQ
#define TXQ VSOCK_TXQ
#define EVQ VSOCK_EVQ
#define NRX 32
#define PAYLOAD 4096
#define BUF_ALLOC (64u * 1024)

static struct virtio_dev dev;
static struct virtq rxq __attribute__((aligned(4096))), txq __attribute__((aligned(4096))),
	evq __attribute__((aligned(4096)));
static uint8_t rxbuf[NRX][sizeof(struct hdr) + PAYLOAD] __attribute__((aligned(64)));
static uint8_t evbuf[4][8];
static struct hdr txh;
static uint8_t txdata[PAYLOAD];
static uint64_t cid;

/* one stream at a time */
static struct {
	uint32_t port, peer_port;
	uint32_t fwd_cnt, fwd_announced, tx_cnt, peer_buf_alloc, peer_fwd_cnt;
} s;

static struct {
	bool out_response, out_reply_ok, out_rst, in_request, in_shutdown;
	uint64_t echoed, bad;
	int out_code, in_code;
} r;

static uint32_t listening;	/* the port listen_echo accepts on, 0 while not listening */

static void send_to(uint32_t port, uint32_t peer_port, uint16_t op, uint32_t flags, const void *data, uint32_t n)
{
	txh.src_cid = cid; txh.dst_cid = 2;
	txh.src_port = port; txh.dst_port = peer_port;
	txh.len = n; txh.type = 1; txh.op = op; txh.flags = flags;
	txh.buf_alloc = BUF_ALLOC; txh.fwd_cnt = s.fwd_cnt;
	s.fwd_announced = s.fwd_cnt;
	if (n) memcpy(txdata, data, n);
	uint64_t a[2] = {(uint64_t)&txh, (uint64_t)txdata};
	uint32_t l[2] = {sizeof txh, n};
	bool w[2] = {false, false};
	virtq_post(&txq, n ? 2 : 1, a, l, w);
	virtq_wait(&txq, 0, 2000);
	if (op == OP_RW) s.tx_cnt += n;
}

static void send_pkt(uint16_t op, uint32_t flags, const void *data, uint32_t n)
{
	send_to(s.port, s.peer_port, op, flags, data, n);
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

/* The next packet from the device into *h / data (copied out); false after ms without one. */
static uint8_t rxdata[PAYLOAD];
static bool next_pkt(struct hdr *h, uint64_t ms)
{
	uint64_t dl = deadline_ms(ms);
	while (*(volatile uint16_t *)&rxq.used.idx == rxq.last_used)
		if (past(dl)) return false;
	barrier();
	uint16_t slot = rxq.last_used % rxq.size;
	uint32_t id = rxq.used.ring[slot].id, len = rxq.used.ring[slot].len;
	rxq.last_used++;
	if (id >= rxq.size || len < sizeof *h) { r.bad++; memset(h, 0, sizeof *h); return true; }
	memcpy(h, rxbuf[id], sizeof *h);
	if (h->len > PAYLOAD || sizeof *h + h->len > len) { r.bad++; h->len = 0; }
	memcpy(rxdata, rxbuf[id] + sizeof *h, h->len);
	rx_post((uint16_t)id);
	barrier();
	mmio_write16(rxq.notify, RXQ);
	if (h->op == OP_REQUEST && h->dst_port != listening) {	/* nobody listens there: refuse */
		send_to(h->dst_port, h->src_port, OP_RST, 0, 0, 0);
		h->op = 0;
		return true;
	}
	if (h->src_port == s.peer_port && h->dst_port == s.port) {
		s.peer_buf_alloc = h->buf_alloc;
		s.peer_fwd_cnt = h->fwd_cnt;
	}
	return true;
}

static uint32_t credit(void) { return s.peer_buf_alloc - (s.tx_cnt - s.peer_fwd_cnt); }

static const char hello_guest[] = "hello from the guest\n", hello_host[] = "hello from the host\n";

static uint64_t connect_out(uint64_t port)
{
	struct hdr h;
	s.port = 2000; s.peer_port = (uint32_t)port;
	send_pkt(OP_REQUEST, 0, 0, 0);
	while (next_pkt(&h, 15000)) {
		if (h.op == OP_RESPONSE) { r.out_response = true; break; }
		if (h.op == OP_RST) return 1;
	}
	if (!r.out_response) return 2;
	send_pkt(OP_RW, 0, hello_guest, sizeof hello_guest - 1);
	uint32_t got = 0;
	char buf[64];
	while (got < sizeof hello_host - 1 && next_pkt(&h, 15000)) {
		if (h.op != OP_RW) continue;
		for (uint32_t i = 0; i < h.len && got < sizeof buf; i++) buf[got++] = (char)rxdata[i];
		s.fwd_cnt += h.len;
	}
	r.out_reply_ok = got == sizeof hello_host - 1 && !strncmp(buf, hello_host, got);
	send_pkt(OP_SHUTDOWN, 3, 0, 0);	/* RCV | SEND: we are done both ways */
	while (next_pkt(&h, 15000))
		if (h.op == OP_RST) { r.out_rst = true; break; }
	return 0;
}

static uint64_t listen_echo(uint64_t port)
{
	struct hdr h;
	memset(&s, 0, sizeof s);
	s.port = (uint32_t)port;
	listening = (uint32_t)port;
	while (next_pkt(&h, 30000)) {
		if (h.op == OP_REQUEST && h.dst_port == port) {
			s.peer_port = h.src_port;
			s.peer_buf_alloc = h.buf_alloc;
			s.peer_fwd_cnt = h.fwd_cnt;
			r.in_request = true;
			break;
		}
	}
	if (!r.in_request) return 1;
	send_pkt(OP_RESPONSE, 0, 0, 0);
	static uint8_t echo[PAYLOAD];
	while (next_pkt(&h, 30000)) {
		if (h.src_port != s.peer_port || h.dst_port != s.port) continue;
		if (h.op == OP_SHUTDOWN) { r.in_shutdown = true; send_pkt(OP_RST, 0, 0, 0); return 0; }
		if (h.op == OP_RST) return 2;
		if (h.op == OP_CREDIT_REQUEST) send_pkt(OP_CREDIT_UPDATE, 0, 0, 0);
		if (h.op != OP_RW || !h.len) continue;
		uint32_t n = h.len;
		memcpy(echo, rxdata, n);
		/* wait for the host's credit before echoing */
		while (credit() < n) {
			struct hdr c;
			if (!next_pkt(&c, 5000)) return 3;
			if (c.op != OP_CREDIT_UPDATE && c.op != OP_RW) continue;
			if (c.op == OP_RW) { r.bad++; }
		}
		send_pkt(OP_RW, 0, echo, n);
		s.fwd_cnt += n;
		r.echoed += n;
		if (s.fwd_cnt - s.fwd_announced >= BUF_ALLOC / 4)
			send_pkt(OP_CREDIT_UPDATE, 0, 0, 0);
	}
	return 4;
}

static uint32_t parse_uint(const char *v) { uint32_t x = 0; for (; v && *v >= '0' && *v <= '9'; v++) x = x * 10 + (uint32_t)(*v - '0'); return x; }

void testkit_main(void)
{
	pic_mask_all();
	uint32_t connect_port = parse_uint(cmdline_value("connect")), listen_port = parse_uint(cmdline_value("listen"));
	bool found = virtio_open(&dev, 0x1053, 0);
	report("virtio_vsock_found", "%s", yesno(found));
	if (!check("virtio-vsock device and capabilities", found, "no 1af4:1053"))
		return;
	bool fok = virtio_negotiate(&dev, 1ull << F_VERSION_1);
	report("features_ok", "%s", yesno(fok));
	cid = mmio_read32(dev.device) | (uint64_t)mmio_read32(dev.device + 4) << 32;
	report("guest_cid", "%lu", cid);
	bool qok = fok && virtio_queue_setup_size(&dev, &rxq, RXQ, VIRTIO_MSI_NO_VECTOR, NRX) &&
		   virtio_queue_setup(&dev, &txq, TXQ, VIRTIO_MSI_NO_VECTOR) &&
		   virtio_queue_setup(&dev, &evq, EVQ, VIRTIO_MSI_NO_VECTOR);
	if (!check("rx, tx and event queues set up", qok, "features_ok %d", fok))
		return;
	for (uint16_t i = 0; i < rxq.size; i++)
		rx_post(i);
	virtio_driver_ok(&dev);
	report("status_after_driver_ok", "0x%x", virtio_status(&dev));
	mmio_write16(rxq.notify, RXQ);
	for (int i = 0; i < 4; i++) {	/* event buffers: the device keeps them for events */
		uint64_t a = (uint64_t)evbuf[i];
		uint32_t l = sizeof evbuf[i];
		bool w = true;
		virtq_post(&evq, 1, &a, &l, &w);
	}
	if (connect_port) {
		r.out_code = (int)run_user(connect_out, connect_port);
		report("connect_out_response", "%s", yesno(r.out_response));
		report("connect_out_reply", "%s", yesno(r.out_reply_ok));
		report("connect_out_rst_after_shutdown", "%s", yesno(r.out_rst));
		check("guest -> host stream", r.out_response && r.out_reply_ok && r.out_rst, "code %d", r.out_code);
	}
	if (listen_port) {
		r.in_code = (int)run_user(listen_echo, listen_port);
		report("listen_request", "%s", yesno(r.in_request));
		report("listen_shutdown_seen", "%s", yesno(r.in_shutdown));
		check("host -> guest stream echoed", r.in_request && r.in_shutdown && r.echoed > 0,
		      "code %d echoed %lu", r.in_code, r.echoed);
	}
	report("bad_packets", "%lu", r.bad);
}

void testkit_after_end(void)
{
	printf("echoed_bytes: %lu\n", r.echoed);
}
