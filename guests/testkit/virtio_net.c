/* virtio_net: a polling virtio-net driver (1af4:1041, virtio 1.2 section 5.1) and the smallest
 * IPv4 stack that lets the host talk to the guest: ARP, ICMP echo, UDP echo (port 7), and TCP
 * (lib/tcp.c) with three services: echo (port 7), discard (9, checks the stream pattern) and a
 * source (19, sends tcp_bench MiB of the pattern and closes). The pattern: stream byte k is
 * k % 251.
 *
 * cmdline: ip=A.B.C.D (ours)  host=A.B.C.D (the host's, on the tap or bridge)  udp=PORT (a UDP
 * echo server on the host)  pings=N (serve until the host's N echo requests are answered)
 * peer=A.B.C.D (another VM on the bridge: ping it)  serve_ms=MS (how long to serve at most)
 * bench=MIB (after END: send MIB MiB of UDP to host:udp+1 from ring 3, as fast as the ring
 * allows; the host measures what arrives).
 * tcp_echo=N (serve until one TCP connection to port 7 has echoed N bytes and closed both ways)
 * tcp_client=N (connect to peer's port 7, or the host's without peer=, send N bytes of the
 * pattern, check the echo byte for byte, close)
 * tcp_drop=N (fault injection: lose every Nth TCP data segment received and sent, first
 * transmissions only, so that retransmission on timeout, duplicate ACKs and the in-order rule
 * do their work)
 * tcp_bench=MIB (after END, and after the UDP bench: print "tcp_bench: listening", then serve
 * one source connection (port 19, MIB MiB to the host) and one discard connection (port 9)).
 *
 * Ring 0 does only PCI configuration (port I/O #GPs from ring 3 on this host) and printing;
 * every frame is built, sent, received and answered in ring 3 (native speed here), through the
 * user-accessible identity map of BAR0 (notify by MMIO) and of the rings. */
#include "virtio.h"
#include "tcp.h"

const char testkit_name[] = "virtio_net";

#define F_MAC 5
#define F_MRG_RXBUF 15
#define F_STATUS 16
#define F_VERSION_1 32
#define HDR 12			/* struct virtio_net_hdr with num_buffers (5.1.6) */
#define BUF 2048
#define RXQ 0
#define TXQ 1
#define NRX 128
#define NTX 256

static struct virtio_dev dev;
static struct virtq rxq __attribute__((aligned(4096))), txq __attribute__((aligned(4096)));
static uint8_t rxbuf[NRX][BUF] __attribute__((aligned(4096)));
static uint8_t txbuf[NTX][BUF] __attribute__((aligned(4096)));
static uint16_t tx_used_seen, tx_inflight;
static bool tx_unkicked;	/* frames queued since the last notify */

static uint8_t mac[6], host_mac[6], peer_mac[6];
static uint32_t my_ip, host_ip, peer_ip;
static uint16_t udp_port;
static uint32_t tcp_drop, tcp_in_count, tcp_out_count;	/* tcp_drop=N fault injection */
static uint32_t tcp_in_top, tcp_out_top;	/* right edges of the segments seen: retransmissions pass */


/* what ring 3 found, printed by ring 0 */
static struct {
	bool host_arp, host_ping, host_ping_payload, udp_echo, peer_arp, peer_ping;
	bool echo_done, echo_clean, client_done, client_clean, client_data_ok;
	uint64_t echo_bytes, client_bytes_back;
	bool src_done, src_clean, dis_done, dis_clean, dis_data_ok;
	uint64_t src_bytes, src_cycles, dis_bytes, dis_cycles;
	uint32_t tcp_retransmits, tcp_dup_acks;
	uint32_t arp_answered, pings_answered, udp_answered, rx_frames, bad_num_buffers, tx_frames;
	uint64_t bench_bytes, bench_frames, bench_cycles;
} st;

static uint16_t be16(uint16_t v) { return (uint16_t)(v << 8 | v >> 8); }
static uint32_t be32(uint32_t v) { return be16(v & 0xffff) << 16 | be16(v >> 16); }

/* tcp_drop: every Nth first transmission is lost (a retransmission always passes, or the
 * peers' backed-off timers, not the stack, would set the test's pace). */
static bool tcp_lose(const uint8_t *seg, uint32_t len, uint32_t *count, uint32_t *top)
{
	uint32_t seq = be32(*(const uint32_t *)(seg + 4)), hl = (uint32_t)(seg[12] >> 4) * 4;
	if (len <= hl) return false;	/* no data: never lost (lost ACKs would test nothing new) */
	uint32_t end = seq + (len - hl);
	if (*count && (int32_t)(end - *top) <= 0) return false;	/* a retransmission */
	*top = end;
	return ++*count % tcp_drop == 0;
}

static uint32_t parse_ip(const char *s)
{
	uint32_t ip = 0, part = 0;
	int dots = 0;
	for (; s && *s; s++) {
		if (*s == '.') { ip = ip << 8 | part; part = 0; dots++; }
		else if (*s >= '0' && *s <= '9') part = part * 10 + (uint32_t)(*s - '0');
		else break;
	}
	return dots == 3 ? (ip << 8 | part) : 0;
}

static uint32_t parse_uint(const char *s, uint32_t dflt)
{
	if (!s) return dflt;
	uint32_t v = 0;
	for (; *s >= '0' && *s <= '9'; s++) v = v * 10 + (uint32_t)(*s - '0');
	return v;
}

/* ---- frames (network byte order), built in place after the 12-byte virtio header ---- */
struct eth { uint8_t dst[6], src[6]; uint16_t type; } __attribute__((packed));
struct arp { uint16_t htype, ptype; uint8_t hlen, plen; uint16_t op; uint8_t sha[6]; uint32_t spa;
	     uint8_t tha[6]; uint32_t tpa; } __attribute__((packed));
struct ip4 { uint8_t vihl, tos; uint16_t len, id, frag; uint8_t ttl, proto; uint16_t csum;
	     uint32_t src, dst; } __attribute__((packed));
struct icmp { uint8_t type, code; uint16_t csum, id, seq; } __attribute__((packed));
struct udp { uint16_t sport, dport, len, csum; } __attribute__((packed));

static uint16_t csum(const void *p, uint32_t n)
{
	const uint8_t *b = p;
	uint32_t s = 0;
	for (uint32_t i = 0; i + 1 < n; i += 2) s += (uint32_t)b[i] << 8 | b[i + 1];
	if (n & 1) s += (uint32_t)b[n - 1] << 8;
	while (s >> 16) s = (s & 0xffff) + (s >> 16);
	return be16((uint16_t)~s);
}

/* ---- the queues (ring 3 from here on: no port I/O, no printf) ---- */
static void rx_post(uint16_t id)
{
	rxq.avail.ring[rxq.avail.idx % rxq.size] = id;
	barrier();
	rxq.avail.idx++;
}

static void tx_reclaim(void)
{
	uint16_t idx = *(volatile uint16_t *)&txq.used.idx;
	tx_inflight -= (uint16_t)(idx - tx_used_seen);
	tx_used_seen = idx;
}

/* A free tx buffer (its frame starts after the virtio header), waiting for one if all are out. */
static uint8_t *tx_slot(void)
{
	uint64_t dl = deadline_ms(1000);
	while (tx_inflight >= txq.size) {
		tx_reclaim();
		if (past(dl)) return 0;
	}
	return txbuf[txq.avail.idx % txq.size] + HDR;
}

static void tx_queue(uint32_t len, bool kick)
{
	uint16_t slot = txq.avail.idx % txq.size;
	memset(txbuf[slot], 0, HDR);
	txq.desc[slot].len = HDR + len;
	txq.avail.ring[slot] = slot;
	barrier();
	txq.avail.idx++;
	tx_inflight++;
	st.tx_frames++;
	if (kick) {
		barrier();
		mmio_write16(txq.notify, TXQ);
		tx_unkicked = false;
	} else {
		tx_unkicked = true;
	}
}

static void tx_flush(void)
{
	if (tx_unkicked) {
		barrier();
		mmio_write16(txq.notify, TXQ);
		tx_unkicked = false;
	}
}

/* ---- neighbours: IPv4 -> MAC, learnt from ARP and from received IPv4 frames ---- */
#define NARP 8
static struct { uint32_t ip; uint8_t mac[6]; } arp_cache[NARP];
static uint64_t arp_asked_at;

static void arp_learn(uint32_t ip, const uint8_t *m)
{
	int slot = (int)(ip % NARP);
	for (int i = 0; i < NARP; i++)
		if (arp_cache[i].ip == ip || !arp_cache[i].ip) { slot = i; break; }
	arp_cache[slot].ip = ip;
	memcpy(arp_cache[slot].mac, m, 6);
}

static const uint8_t *arp_lookup(uint32_t ip)
{
	for (int i = 0; i < NARP; i++)
		if (arp_cache[i].ip == ip) return arp_cache[i].mac;
	return 0;
}

static void eth_fill(struct eth *e, const uint8_t *dst, uint16_t type)
{
	memcpy(e->dst, dst, 6);
	memcpy(e->src, mac, 6);
	e->type = be16(type);
}

static void send_arp(uint16_t op, const uint8_t *tha, uint32_t tpa)
{
	static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	uint8_t *f = tx_slot();
	if (!f) return;
	struct eth *e = (void *)f;
	struct arp *a = (void *)(e + 1);
	eth_fill(e, op == 1 ? bcast : tha, 0x0806);
	a->htype = be16(1); a->ptype = be16(0x0800); a->hlen = 6; a->plen = 4; a->op = be16(op);
	memcpy(a->sha, mac, 6); a->spa = be32(my_ip);
	memcpy(a->tha, op == 1 ? (const uint8_t *)"\0\0\0\0\0\0" : tha, 6); a->tpa = be32(tpa);
	tx_queue(60, true);	/* 42 bytes padded to the Ethernet minimum */
}

static uint8_t *ip_start(const uint8_t *dmac, uint32_t dst, uint8_t proto, uint32_t payload, struct ip4 **ipo)
{
	uint8_t *f = tx_slot();
	if (!f) return 0;
	struct eth *e = (void *)f;
	struct ip4 *ip = (void *)(e + 1);
	eth_fill(e, dmac, 0x0800);
	ip->vihl = 0x45; ip->tos = 0; ip->len = be16((uint16_t)(20 + payload)); ip->id = 0; ip->frag = be16(0x4000);
	ip->ttl = 64; ip->proto = proto; ip->csum = 0; ip->src = be32(my_ip); ip->dst = be32(dst);
	ip->csum = csum(ip, 20);
	*ipo = ip;
	return (uint8_t *)(ip + 1);
}

static void send_ip(uint32_t payload)
{
	uint32_t n = 14 + 20 + payload;
	tx_queue(n < 60 ? 60 : n, true);
}

static void send_ping(const uint8_t *dmac, uint32_t dst, uint16_t seq)
{
	struct ip4 *ip;
	uint8_t *p = ip_start(dmac, dst, 1, 8 + 32, &ip);
	if (!p) return;
	struct icmp *ic = (void *)p;
	ic->type = 8; ic->code = 0; ic->csum = 0; ic->id = be16(0x7e57); ic->seq = be16(seq);
	for (int i = 0; i < 32; i++) p[8 + i] = (uint8_t)('a' + i % 26);
	ic->csum = csum(ic, 8 + 32);
	send_ip(8 + 32);
}

static void send_udp(const uint8_t *dmac, uint32_t dst, uint16_t sport, uint16_t dport, const void *data, uint32_t n)
{
	struct ip4 *ip;
	uint8_t *p = ip_start(dmac, dst, 17, 8 + n, &ip);
	if (!p) return;
	struct udp *u = (void *)p;
	u->sport = be16(sport); u->dport = be16(dport); u->len = be16((uint16_t)(8 + n)); u->csum = 0;
	memcpy(u + 1, data, n);
	send_ip(8 + n);
}

static const char udp_probe[] = "vnix-virtio-net-udp-probe";

/* One received frame (after the virtio header). */
static void handle(uint8_t *f, uint32_t n)
{
	struct eth *e = (void *)f;
	if (n < 14) return;
	if (e->type == be16(0x0806) && n >= 14 + sizeof(struct arp)) {
		struct arp *a = (void *)(e + 1);
		uint32_t spa = be32(a->spa), tpa = be32(a->tpa);
		if (tpa == my_ip && spa) arp_learn(spa, a->sha);
		if (a->op == be16(1) && tpa == my_ip) {
			send_arp(2, a->sha, spa);
			st.arp_answered++;
		} else if (a->op == be16(2) && tpa == my_ip) {
			if (spa == host_ip) { memcpy(host_mac, a->sha, 6); st.host_arp = true; }
			if (peer_ip && spa == peer_ip) { memcpy(peer_mac, a->sha, 6); st.peer_arp = true; }
		}
		return;
	}
	if (e->type != be16(0x0800) || n < 14 + 20) return;
	struct ip4 *ip = (void *)(e + 1);
	uint32_t ihl = (ip->vihl & 15) * 4u, len = be16(ip->len);
	if (be32(ip->dst) != my_ip || ihl < 20 || len < ihl || 14 + len > n) return;
	uint8_t *p = (uint8_t *)ip + ihl;
	uint32_t pn = len - ihl, src = be32(ip->src);
	if (ip->proto == 6 && !(ip->frag & be16(0x3fff))) {	/* TCP, not a fragment */
		if (tcp_drop && pn >= 20 && tcp_lose(p, pn, &tcp_in_count, &tcp_in_top)) return;
		if (!arp_lookup(src)) arp_learn(src, e->src);
		tcp_input(src, my_ip, p, pn);
		return;
	}
	if (ip->proto == 1 && pn >= 8) {
		struct icmp *ic = (void *)p;
		if (ic->type == 8) {	/* echo request: answer with the same id, seq and data */
			struct ip4 *rip;
			uint8_t *r = ip_start(e->src, src, 1, pn, &rip);
			if (!r) return;
			memcpy(r, p, pn);
			((struct icmp *)r)->type = 0;
			((struct icmp *)r)->csum = 0;
			((struct icmp *)r)->csum = csum(r, pn);
			send_ip(pn);
			st.pings_answered++;
		} else if (ic->type == 0 && ic->id == be16(0x7e57)) {
			bool data_ok = pn == 8 + 32;
			for (uint32_t i = 0; data_ok && i < 32; i++) data_ok = p[8 + i] == (uint8_t)('a' + i % 26);
			if (src == host_ip) { st.host_ping = true; st.host_ping_payload = data_ok; }
			if (peer_ip && src == peer_ip) st.peer_ping = true;
		}
	} else if (ip->proto == 17 && pn >= 8) {
		struct udp *u = (void *)p;
		uint32_t dn = be16(u->len) - 8u;
		if (be16(u->len) < 8 || dn > pn - 8) return;
		if (u->dport == be16(7)) {	/* echo (RFC 862) */
			send_udp(e->src, src, 7, be16(u->sport), u + 1, dn);
			st.udp_answered++;
		} else if (u->dport == be16(udp_port) && src == host_ip && dn == sizeof udp_probe - 1 &&
			   !strncmp((const char *)(u + 1), udp_probe, dn)) {
			st.udp_echo = true;
		}
	}
}

static void poll_rx(void)
{
	bool posted = false;
	while (*(volatile uint16_t *)&rxq.used.idx != rxq.last_used) {
		barrier();
		uint16_t slot = rxq.last_used % rxq.size;
		uint32_t id = rxq.used.ring[slot].id, len = rxq.used.ring[slot].len;
		rxq.last_used++;
		if (id >= NRX) continue;
		st.rx_frames++;
		if (*(uint16_t *)(rxbuf[id] + 10) != 1) st.bad_num_buffers++;
		if (len > HDR && len <= BUF) handle(rxbuf[id] + HDR, len - HDR);
		rx_post((uint16_t)id);
		posted = true;
	}
	if (posted) {
		barrier();
		mmio_write16(rxq.notify, RXQ);
	}
	tx_reclaim();
}

/* ---- TCP: lib/tcp.c's segments in and out of our frames, and the services ---- */
static uint8_t *seg_alloc(uint32_t dst, uint32_t len)
{
	const uint8_t *m = arp_lookup(dst);
	struct ip4 *ip;
	if (m) return ip_start(m, dst, 6, len, &ip);
	if (past(arp_asked_at)) {	/* the segment is lost; retransmission finds the MAC known */
		send_arp(1, 0, dst);
		arp_asked_at = deadline_ms(100);
	}
	return 0;
}

static void seg_send(uint32_t len)
{
	uint32_t n = 14 + 20 + len;
	if (tcp_drop && tcp_lose(txbuf[txq.avail.idx % txq.size] + HDR + 14 + 20, len, &tcp_out_count, &tcp_out_top))
		return;	/* "lost" (its tx slot is reused): only our retransmission timer brings it back */
	tx_queue(n < 60 ? 60 : n, false);	/* kicked once a round, in net_step */
}

static const struct tcp_ops tcp_ops = { seg_alloc, seg_send };
#define TCP_BUF (1u << 16)
static uint8_t tcp_sbuf[TCP_MAX_CONNS][TCP_BUF] __attribute__((aligned(4096)));
static uint8_t tcp_rbuf[TCP_MAX_CONNS][TCP_BUF] __attribute__((aligned(4096)));
static uint8_t pattern[TCP_BUF + 256];	/* pattern[i] = i % 251, filled in ring 3 */
static uint64_t echo_wanted, client_total, tcp_bench_mib;

enum app_kind { APP_NONE, APP_ECHO, APP_DISCARD, APP_SOURCE, APP_CLIENT };
static struct app {
	enum app_kind kind;
	uint64_t out, in, total, t0;	/* stream bytes written / read (and checked), to write */
	bool bad, done;
} apps[TCP_MAX_CONNS];
static struct tcp_conn *client_conn;

static void pattern_init(void)
{
	for (uint32_t i = 0; i < sizeof pattern; i++) pattern[i] = (uint8_t)(i % 251);
}

/* Read what has arrived; check it against the pattern (check=true) or write it back (echo). */
static void app_read(struct tcp_conn *c, struct app *a, bool check, bool echo)
{
	static uint8_t tmp[4096];
	for (;;) {
		uint32_t n = c->rlen < sizeof tmp ? c->rlen : sizeof tmp;
		if (echo && tcp_write_room(c) < n) n = tcp_write_room(c);
		if (!n || !(n = tcp_read(c, tmp, n))) break;
		if (check) {
			const uint8_t *want = pattern + a->in % 251;
			for (uint32_t k = 0; k < n; k++) a->bad |= tmp[k] != want[k];
		}
		if (echo) tcp_write(c, tmp, n);
		a->in += n;
	}
}

static void app_write(struct tcp_conn *c, struct app *a)
{
	while (a->out < a->total) {
		uint32_t room = tcp_write_room(c), n = a->total - a->out < TCP_BUF ? (uint32_t)(a->total - a->out) : TCP_BUF;
		if (room < n) n = room;
		if (!n) break;
		a->out += tcp_write(c, pattern + a->out % 251, n);
	}
}

static void app_finish(struct tcp_conn *c, struct app *a)
{
	bool clean = c->error == TCP_OK;
	uint64_t cycles = rdtsc() - a->t0;
	a->done = true;
	st.tcp_retransmits += c->retransmits;
	st.tcp_dup_acks += c->dup_acks_sent;
	switch (a->kind) {
	case APP_ECHO:
		/* A connection that carried nothing is a connect attempt the host gave up on (its
		 * socket timed out before our SYN-ACK came, and it retried): keep serving the echo. */
		if (a->in == 0)
			break;
		st.echo_done = true; st.echo_clean = clean; st.echo_bytes = a->in;
		break;
	case APP_CLIENT:
		st.client_done = true; st.client_clean = clean; st.client_bytes_back = a->in;
		st.client_data_ok = !a->bad && a->in == a->total;
		break;
	case APP_SOURCE:
		st.src_done = true; st.src_clean = clean; st.src_bytes = c->bytes_out; st.src_cycles = cycles;
		break;
	case APP_DISCARD:
		st.dis_done = true; st.dis_clean = clean; st.dis_bytes = a->in; st.dis_data_ok = !a->bad;
		st.dis_cycles = cycles;
		break;
	default:
		break;
	}
}

/* One connection slot: a new connection gets its service by port (the client by being ours). */
static void app_step(int i)
{
	struct tcp_conn *c = tcp_conn(i);
	struct app *a = &apps[i];
	if (a->kind == APP_NONE) {
		if (c->state == TCP_CLOSED) return;
		memset(a, 0, sizeof *a);
		a->t0 = rdtsc();
		if (c == client_conn) { a->kind = APP_CLIENT; a->total = client_total; }
		else if (c->local_port == 7) a->kind = APP_ECHO;
		else if (c->local_port == 9) a->kind = APP_DISCARD;
		else if (c->local_port == 19) { a->kind = APP_SOURCE; a->total = tcp_bench_mib << 20; }
	}
	if (!a->done) {
		switch (a->kind) {
		case APP_ECHO: app_read(c, a, false, true); break;
		case APP_DISCARD: app_read(c, a, true, false); break;
		case APP_SOURCE: app_write(c, a); break;
		case APP_CLIENT: app_write(c, a); app_read(c, a, true, false); break;
		default: break;
		}
		/* close our side: the source and the client once all is sent (and, for the client,
		 * echoed back); echo and discard once the peer closed and all is read */
		bool sent = a->out >= a->total && (a->kind != APP_CLIENT || a->in >= a->total);
		if (((a->kind == APP_SOURCE || a->kind == APP_CLIENT) && sent) || c->state == TCP_CLOSE_WAIT) {
			if (c->rlen == 0 && (c->state == TCP_ESTABLISHED || c->state == TCP_CLOSE_WAIT))
				tcp_close(c);
		}
		if (c->state == TCP_TIME_WAIT || c->state == TCP_CLOSED) app_finish(c, a);
	}
	if (c->state == TCP_CLOSED) a->kind = APP_NONE;	/* the slot is free again */
}

/* One round: frames in, services, TCP output and timers, one notify for what was queued. */
static void net_step(void)
{
	poll_rx();
	for (int i = 0; i < TCP_MAX_CONNS; i++) app_step(i);
	tcp_poll();
	tx_flush();
}

/* ---- ring-3 sessions ---- */
static uint64_t talk_to_host(uint64_t unused)
{
	uint64_t end = deadline_ms(15000), next = 0;
	uint16_t seq = 0;
	while (!past(end) && !(st.host_arp && st.host_ping && (!udp_port || st.udp_echo))) {
		if (past(next)) {	/* every 200 ms: ask again for whatever has not come back */
			if (!st.host_arp) send_arp(1, 0, host_ip);
			else {
				if (!st.host_ping) send_ping(host_mac, host_ip, ++seq);
				if (udp_port && !st.udp_echo)
					send_udp(host_mac, host_ip, udp_port, udp_port, udp_probe, sizeof udp_probe - 1);
			}
			next = deadline_ms(200);
		}
		net_step();
	}
	return 0;
}

static uint32_t pings_wanted;
static uint64_t serve_ms;

static uint64_t serve(uint64_t unused)
{
	uint64_t end = deadline_ms(serve_ms), next = 0;
	uint16_t seq = 0;
	pattern_init();
	if (client_total) client_conn = tcp_connect(peer_ip ? peer_ip : host_ip, 7);
	while (!past(end)) {
		bool peer_done = !peer_ip || st.peer_ping;
		bool tcp_done = (!echo_wanted || st.echo_done) && (!client_total || st.client_done);
		if (peer_ip && !st.peer_ping && past(next)) {
			if (!st.peer_arp) send_arp(1, 0, peer_ip);
			else send_ping(peer_mac, peer_ip, ++seq);
			next = deadline_ms(200);
		}
		/* after our own work, keep answering a little (the peer may still be pinging us) */
		if (peer_done && tcp_done && st.pings_answered >= pings_wanted) {
			uint64_t linger = deadline_ms(peer_ip ? 1000 : 0);
			while (!past(linger) && !past(end)) net_step();
			break;
		}
		net_step();
	}
	return 0;
}

/* UDP to host:udp+1 as fast as the ring allows; the host counts what arrives. */
static uint64_t bench_mib;

static uint64_t blast(uint64_t unused)
{
	const uint32_t payload = 1472;	/* a full 1500-byte IP packet */
	uint64_t total = bench_mib << 20, sent = 0, frames = 0;
	/* one template frame in every tx buffer, then only descriptors move */
	for (uint32_t i = 0; i < txq.size; i++) {
		uint8_t *f = txbuf[i] + HDR;
		struct eth *e = (void *)f;
		struct ip4 *ip = (void *)(e + 1);
		struct udp *u = (void *)(ip + 1);
		memset(txbuf[i], 0, HDR);
		eth_fill(e, host_mac, 0x0800);
		ip->vihl = 0x45; ip->tos = 0; ip->len = be16(20 + 8 + payload); ip->id = 0; ip->frag = be16(0x4000);
		ip->ttl = 64; ip->proto = 17; ip->csum = 0; ip->src = be32(my_ip); ip->dst = be32(host_ip);
		ip->csum = csum(ip, 20);
		u->sport = be16(udp_port + 1); u->dport = be16(udp_port + 1); u->len = be16(8 + payload); u->csum = 0;
		for (uint32_t k = 0; k < payload; k++) ((uint8_t *)(u + 1))[k] = (uint8_t)k;
		txq.desc[i].len = HDR + 14 + 20 + 8 + payload;
	}
	uint64_t t0 = rdtsc(), stall = deadline_ms(10000);
	while (sent < total && !past(stall)) {
		tx_reclaim();
		uint16_t room = (uint16_t)(txq.size - tx_inflight), batch = 0;
		while (room-- && sent < total) {
			uint16_t slot = txq.avail.idx % txq.size;
			txq.avail.ring[slot] = slot;
			txq.avail.idx++;
			tx_inflight++;
			sent += payload;
			frames++;
			batch++;
		}
		if (batch) {
			barrier();
			mmio_write16(txq.notify, TXQ);
			stall = deadline_ms(10000);
		}
		while (*(volatile uint16_t *)&rxq.used.idx != rxq.last_used)	/* drop what comes in */
			poll_rx();
		cpu_relax();
	}
	while (tx_inflight && !past(stall))
		tx_reclaim();
	st.bench_cycles = rdtsc() - t0;
	st.bench_bytes = sent;
	st.bench_frames = frames;
	return 0;
}

/* After END: one source connection (port 19) and one discard connection (port 9). */
static uint64_t tcp_bench_serve(uint64_t unused)
{
	pattern_init();
	uint64_t end = deadline_ms(180000);
	while (!past(end) && !(st.src_done && st.dis_done)) net_step();
	uint64_t linger = deadline_ms(300);	/* the last ACKs */
	while (!past(linger)) net_step();
	return 0;
}

void testkit_main(void)
{
	pic_mask_all();
	my_ip = parse_ip(cmdline_value("ip"));
	host_ip = parse_ip(cmdline_value("host"));
	peer_ip = parse_ip(cmdline_value("peer"));
	udp_port = (uint16_t)parse_uint(cmdline_value("udp"), 0);
	pings_wanted = parse_uint(cmdline_value("pings"), 0);
	serve_ms = parse_uint(cmdline_value("serve_ms"), 10000);
	bench_mib = parse_uint(cmdline_value("bench"), 0);
	echo_wanted = parse_uint(cmdline_value("tcp_echo"), 0);
	client_total = parse_uint(cmdline_value("tcp_client"), 0);
	tcp_bench_mib = parse_uint(cmdline_value("tcp_bench"), 0);
	tcp_drop = parse_uint(cmdline_value("tcp_drop"), 0);
	tcp_init(my_ip, &tcp_ops);
	for (int i = 0; i < TCP_MAX_CONNS; i++) tcp_buffers(i, tcp_sbuf[i], TCP_BUF, tcp_rbuf[i], TCP_BUF);
	tcp_listen(7);

	bool found = virtio_open(&dev, 0x1041, 0);
	report("virtio_net_found", "%s", yesno(found));
	if (!check("virtio-net device and capabilities", found, "no 1af4:1041 with common/notify/isr"))
		return;
	uint64_t want = 1ull << F_VERSION_1 | 1ull << F_MAC | 1ull << F_STATUS | 1ull << F_MRG_RXBUF;
	bool fok = virtio_negotiate(&dev, want);
	report("offers_version_1", "%s", yesno(dev.features >> F_VERSION_1 & 1));
	report("offers_mac", "%s", yesno(dev.features >> F_MAC & 1));
	report("offers_status", "%s", yesno(dev.features >> F_STATUS & 1));
	report("offers_mrg_rxbuf", "%s", yesno(dev.features >> F_MRG_RXBUF & 1));
	report("features_ok", "%s", yesno(fok));
	for (int i = 0; i < 6; i++) mac[i] = mmio_read8(dev.device + i);
	report("mac", "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	report("link_up", "%s", yesno(mmio_read16(dev.device + 6) & 1));
	bool qok = virtio_queue_setup_size(&dev, &rxq, RXQ, VIRTIO_MSI_NO_VECTOR, NRX) &&
		   virtio_queue_setup_size(&dev, &txq, TXQ, VIRTIO_MSI_NO_VECTOR, NTX);
	if (!check("rx and tx queues set up", fok && qok, "features_ok %d queues %d", fok, qok))
		return;
	for (uint16_t i = 0; i < rxq.size; i++) {
		rxq.desc[i].addr = (uint64_t)rxbuf[i];
		rxq.desc[i].len = BUF;
		rxq.desc[i].flags = VIRTQ_DESC_F_WRITE;
		rx_post(i);
	}
	for (uint16_t i = 0; i < txq.size; i++) {
		txq.desc[i].addr = (uint64_t)txbuf[i];
		txq.desc[i].flags = 0;
	}
	virtio_driver_ok(&dev);
	report("status_after_driver_ok", "0x%x", virtio_status(&dev));
	mmio_write16(rxq.notify, RXQ);

	if (host_ip) {
		run_user(talk_to_host, 0);
		report("host_arp_reply", "%s", yesno(st.host_arp));
		report("host_ping_reply", "%s", yesno(st.host_ping));
		report("host_ping_payload_ok", "%s", yesno(st.host_ping_payload));
		check("guest pings the host", st.host_arp && st.host_ping && st.host_ping_payload,
		      "arp %d ping %d payload %d", st.host_arp, st.host_ping, st.host_ping_payload);
		if (udp_port) {
			report("host_udp_echo", "%s", yesno(st.udp_echo));
			check("UDP to the host and back", st.udp_echo, "no echo from port %u", udp_port);
		}
	}
	if (pings_wanted || peer_ip || echo_wanted || client_total) {
		run_user(serve, 0);
		report("host_pings_answered", "%s", yesno(st.pings_answered >= pings_wanted));
		check("the host's echo requests answered", st.pings_answered >= pings_wanted,
		      "%u of %u", st.pings_answered, pings_wanted);
		if (peer_ip) {
			report("peer_ping_reply", "%s", yesno(st.peer_ping));
			check("the other VM answers a ping", st.peer_ping, "arp %d ping %d", st.peer_arp, st.peer_ping);
		}
		if (echo_wanted) {
			report("tcp_echo_bytes", "%lu", st.echo_bytes);
			report("tcp_echo_closed_cleanly", "%s", yesno(st.echo_done && st.echo_clean));
			check("TCP echo server: a connection echoed and closed both ways",
			      st.echo_done && st.echo_clean && st.echo_bytes == echo_wanted,
			      "done %d clean %d bytes %lu of %lu", st.echo_done, st.echo_clean, st.echo_bytes, echo_wanted);
			report("tcp_rst_sent", "%s", yesno(tcp_stats.rst_sent > 0));
		}
		if (client_total) {
			report("tcp_client_bytes_back", "%lu", st.client_bytes_back);
			report("tcp_client_data_ok", "%s", yesno(st.client_data_ok));
			report("tcp_client_closed_cleanly", "%s", yesno(st.client_done && st.client_clean));
			check("TCP client: connected, the echo equal byte for byte, closed both ways",
			      st.client_done && st.client_clean && st.client_data_ok,
			      "done %d clean %d data %d back %lu of %lu", st.client_done, st.client_clean,
			      st.client_data_ok, st.client_bytes_back, client_total);
		}
		report("tcp_bad_checksums", "%u", tcp_stats.bad_checksum);
	}
	report("rx_num_buffers_always_1", "%s", yesno(st.bad_num_buffers == 0));
	check("rx frames arrive whole (num_buffers 1)", st.bad_num_buffers == 0, "%u bad", st.bad_num_buffers);
}

void testkit_after_end(void)
{
	printf("rx_frames: %u\ntx_frames: %u\narp_answered: %u\npings_answered: %u\nudp_answered: %u\n",
	       st.rx_frames, st.tx_frames, st.arp_answered, st.pings_answered, st.udp_answered);
	if (bench_mib && st.host_arp) {
		run_user(blast, 0);
		printf("bench_bytes: %lu\nbench_frames: %lu\nbench_cycles: %lu\ntsc_khz: %lu\n",
		       st.bench_bytes, st.bench_frames, st.bench_cycles, tsc_khz());
	}
	if (tcp_bench_mib) {
		tcp_listen(9);
		tcp_listen(19);
		printf("tcp_bench: listening\n");
		run_user(tcp_bench_serve, 0);
		printf("tcp_source_bytes: %lu\ntcp_source_clean: %s\ntcp_source_cycles: %lu\n"
		       "tcp_discard_bytes: %lu\ntcp_discard_data_ok: %s\ntcp_discard_clean: %s\n"
		       "tcp_discard_cycles: %lu\n", st.src_bytes, yesno(st.src_done && st.src_clean), st.src_cycles,
		       st.dis_bytes, yesno(st.dis_done && st.dis_data_ok), yesno(st.dis_done && st.dis_clean),
		       st.dis_cycles);
	}
	printf("tcp_segs_in: %u\ntcp_segs_out: %u\ntcp_bad_checksum: %u\ntcp_rst_sent: %u\n"
	       "tcp_rst_received: %u\ntcp_dropped: %u\ntcp_retransmits: %u\ntcp_dup_acks: %u\n",
	       tcp_stats.segs_in, tcp_stats.segs_out, tcp_stats.bad_checksum, tcp_stats.rst_sent,
	       tcp_stats.rst_received, tcp_stats.dropped, st.tcp_retransmits, st.tcp_dup_acks);
}
