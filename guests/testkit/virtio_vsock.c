/* virtio_vsock: a polling virtio-vsock driver (1af4:1053, virtio 1.2 section 5.10).
 *
 * cmdline: connect=P  connect to host port P (CID 2), say "hello from the guest\n", expect
 *                     "hello from the host\n", then SHUTDOWN and expect the device's RST;
 *          listen=L   accept one connection on port L and echo every byte until the host ends
 *                     the stream (SHUTDOWN), answering it with RST; credit updates as we go.
 *          serve=L    the same, stream after stream, until conns=N (default 1) streams were
 *                     echoed to their end; made to be snapshotted with a stream open.
 * Event queue (5.10.6.7): four buffers stay posted. On VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (sent
 * by the VMM after a snapshot restore) the guest prints "vsock: transport reset, guest_cid N"
 * (the CID read again from config space: a clone's is new), drops its stream as Linux does
 * (counted in serve_streams_reset) and goes on accepting new ones.
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
#define OP_TRANSPORT_RESET 0xffff	/* next_pkt's own op: an event dropped every stream */

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
static uint32_t serve_conns = 1;
static struct { uint32_t accepted, echoed_streams, reset_streams, transport_resets; } sv;

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

/* Events the device returned (their buffers posted again); true if one was a transport reset:
 * then every stream is gone (s cleared) and the CID is read again (5.10.6.7). Ring 3: no port
 * I/O here (it raises #GP under kvm_pvm), ring 0 prints the line. */
static bool transport_reset(void)
{
	bool reset = false;
	for (int64_t e; (e = vsock_event_next(&evq)) != VSOCK_EVENT_NONE;) {
		if (e == VSOCK_EVENT_TRANSPORT_RESET) reset = true;
		else r.bad++;
	}
	if (!reset) return false;
	memset(&s, 0, sizeof s);
	cid = vsock_read_cid(&dev);
	sv.transport_resets++;
	return true;
}

/* The next packet from the device into *h / data (copied out); false after ms without one.
 * A transport reset comes first (before packets already in the rx ring): h->op is then
 * OP_TRANSPORT_RESET. */
static uint8_t rxdata[PAYLOAD];
static bool next_pkt(struct hdr *h, uint64_t ms)
{
	uint64_t dl = deadline_ms(ms);
	for (;;) {
		if (transport_reset()) { memset(h, 0, sizeof *h); h->op = OP_TRANSPORT_RESET; return true; }
		if (*(volatile uint16_t *)&rxq.used.idx != rxq.last_used) break;
		if (past(dl)) return false;
	}
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

/* Wait up to ms for a REQUEST to port and answer it (s is the new stream): 0; 1 none came, 5 a
 * transport reset came first. Packets of streams we do not know are answered with RST (5.10.6.6). */
static int accept_on(uint32_t port, uint64_t ms)
{
	struct hdr h;
	memset(&s, 0, sizeof s);
	s.port = port;
	listening = port;
	while (next_pkt(&h, ms)) {
		if (h.op == OP_REQUEST && h.dst_port == port) {
			s.port = port;	/* a transport reset may have cleared s meanwhile */
			s.peer_port = h.src_port;
			s.peer_buf_alloc = h.buf_alloc;
			s.peer_fwd_cnt = h.fwd_cnt;
			send_pkt(OP_RESPONSE, 0, 0, 0);
			return 0;
		}
		if (h.op == OP_TRANSPORT_RESET) return 5;
		if (h.op && h.op != OP_RST)
			send_to(h.dst_port, h.src_port, OP_RST, 0, 0, 0);
	}
	return 1;
}

/* Echo stream s until it ends: 0 the host's SHUTDOWN (answered with RST), 2 the host's RST,
 * 3 no credit from the host for 5 s, 4 nothing for ms, 5 a transport reset dropped it. */
static int echo_stream(uint64_t ms)
{
	struct hdr h;
	static uint8_t echo[PAYLOAD];
	while (next_pkt(&h, ms)) {
		if (h.op == OP_TRANSPORT_RESET) return 5;
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
			if (c.op == OP_TRANSPORT_RESET) return 5;
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

static uint64_t listen_echo(uint64_t port)
{
	if (accept_on((uint32_t)port, 30000)) return 1;
	r.in_request = true;
	return (uint64_t)echo_stream(30000);
}

/* serve=L: stream after stream until serve_conns were echoed to their end; a stream a transport
 * reset dropped does not count (its host end went with the VMM that was snapshotted). Returns
 * 5 at a transport reset (ring 0 reports it and calls again), 0 when done, else echo_stream's
 * or accept_on's code. */
static uint64_t serve(uint64_t port)
{
	while (sv.echoed_streams < serve_conns) {
		int code = accept_on((uint32_t)port, 120000);
		if (code) return (uint64_t)code;
		sv.accepted++;
		code = echo_stream(120000);
		if (code == 0) sv.echoed_streams++;
		else if (code == 5) { sv.reset_streams++; return 5; }
		else return (uint64_t)code;
	}
	return 0;
}

static uint32_t parse_uint(const char *v) { uint32_t x = 0; for (; v && *v >= '0' && *v <= '9'; v++) x = x * 10 + (uint32_t)(*v - '0'); return x; }

void testkit_main(void)
{
	pic_mask_all();
	uint32_t connect_port = parse_uint(cmdline_value("connect")), listen_port = parse_uint(cmdline_value("listen"));
	uint32_t serve_port = parse_uint(cmdline_value("serve"));
	if (cmdline_value("conns")) serve_conns = parse_uint(cmdline_value("conns"));
	bool found = virtio_open(&dev, 0x1053, 0);
	report("virtio_vsock_found", "%s", yesno(found));
	if (!check("virtio-vsock device and capabilities", found, "no 1af4:1053"))
		return;
	bool fok = virtio_negotiate(&dev, 1ull << F_VERSION_1);
	report("features_ok", "%s", yesno(fok));
	cid = vsock_read_cid(&dev);
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
	for (int i = 0; i < 4; i++)	/* event buffers: the device keeps them for events */
		vsock_event_post(&evq, evbuf[i], sizeof evbuf[i]);
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
	if (serve_port) {
		printf("vsock: serving port %u\n", serve_port);
		int code;
		while ((code = (int)run_user(serve, serve_port)) == 5)
			printf("vsock: transport reset, guest_cid %lu\n", cid);
		report("serve_streams_accepted", "%u", sv.accepted);
		report("serve_streams_echoed", "%u", sv.echoed_streams);
		report("serve_streams_reset", "%u", sv.reset_streams);
		report("transport_resets", "%u", sv.transport_resets);
		report("guest_cid_now", "%lu", cid);
		check("streams served", sv.echoed_streams == serve_conns, "code %d, %u of %u streams echoed", code,
		      sv.echoed_streams, serve_conns);
	}
	report("bad_packets", "%lu", r.bad);
}

void testkit_after_end(void)
{
	printf("echoed_bytes: %lu\n", r.echoed);
}
