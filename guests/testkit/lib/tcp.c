/* A minimal TCP for test guests: see tcp.h for what it does and does not do. Section numbers
 * are RFC 9293's; "3.10.7.4" is the segment-arrival processing for synchronized states. */
#include "tcp.h"

#define FIN 0x01
#define SYN 0x02
#define RST 0x04
#define PSH 0x08
#define ACK 0x10

struct tcp_hdr {
	uint16_t sport, dport;
	uint32_t seq, ack;
	uint8_t off, flags;	/* data offset in the high nibble of off */
	uint16_t wnd, csum, urg;
} __attribute__((packed));

struct tcp_stats tcp_stats;
static struct tcp_conn conns[TCP_MAX_CONNS];
static uint16_t listening[TCP_MAX_LISTEN];
static uint32_t my_ip;
static const struct tcp_ops *ops;
static uint16_t next_ephemeral = 49152;

static uint16_t be16(uint16_t v) { return (uint16_t)(v << 8 | v >> 8); }
static uint32_t be32(uint32_t v) { return (uint32_t)be16((uint16_t)v) << 16 | be16((uint16_t)(v >> 16)); }
/* Sequence-number comparisons modulo 2^32 (3.4). */
static bool lt(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static bool le(uint32_t a, uint32_t b) { return (int32_t)(a - b) <= 0; }
static uint32_t min32(uint32_t a, uint32_t b) { return a < b ? a : b; }

/* The Internet checksum (RFC 1071): 16-bit big-endian words summed into 64 bits. */
static uint64_t csum_partial(uint64_t s, const void *p, uint32_t n)
{
	const uint8_t *b = p;
	while (n >= 8) {	/* four words at a time, each byte-swapped into host order */
		uint64_t w;
		memcpy(&w, b, 8);
		s += (w >> 8 & 0xff) | (w & 0xff) << 8;
		s += (w >> 24 & 0xff) | (w >> 16 & 0xff) << 8;
		s += (w >> 40 & 0xff) | (w >> 32 & 0xff) << 8;
		s += (w >> 56 & 0xff) | (w >> 48 & 0xff) << 8;
		b += 8;
		n -= 8;
	}
	for (; n >= 2; b += 2, n -= 2) s += (uint32_t)b[0] << 8 | b[1];
	if (n) s += (uint32_t)b[0] << 8;
	return s;
}

static uint16_t csum_fold(uint64_t s)
{
	while (s >> 16) s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

uint16_t inet_csum_add(uint32_t sum, const void *p, uint32_t n) { return csum_fold(csum_partial(sum, p, n)); }

/* The pseudo header (3.1): source, destination, zero, protocol 6, TCP length. */
static uint64_t pseudo(uint32_t src, uint32_t dst, uint32_t len)
{
	return (uint64_t)(src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + 6 + len;
}

void tcp_init(uint32_t local_ip, const struct tcp_ops *o)
{
	my_ip = local_ip;
	ops = o;
}

bool tcp_listen(uint16_t port)
{
	for (int i = 0; i < TCP_MAX_LISTEN; i++)
		if (!listening[i] || listening[i] == port) { listening[i] = port; return true; }
	return false;
}

void tcp_buffers(int slot, uint8_t *sbuf, uint32_t ssize, uint8_t *rbuf, uint32_t rsize)
{
	struct tcp_conn *c = &conns[slot];
	c->sbuf = sbuf; c->ssize = ssize; c->rbuf = rbuf; c->rsize = rsize;
}

struct tcp_conn *tcp_conn(int slot) { return &conns[slot]; }

/* ---- output ---- */

static uint32_t rcv_wnd(const struct tcp_conn *c) { return min32(c->rsize - c->rlen, 65535); }

/* One segment: header (with an MSS option on SYNs), payload from the send buffer at sequence
 * number seq (len bytes), checksummed over the pseudo header. */
static bool emit(struct tcp_conn *c, uint32_t seq, uint8_t flags, uint32_t len)
{
	uint32_t opt = flags & SYN ? 4 : 0, n = 20 + opt + len;
	uint8_t *p = ops->seg_alloc(c->remote_ip, n);
	if (!p) return false;
	struct tcp_hdr *h = (void *)p;
	uint32_t wnd = rcv_wnd(c);
	h->sport = be16(c->local_port); h->dport = be16(c->remote_port);
	h->seq = be32(seq); h->ack = flags & ACK ? be32(c->rcv_nxt) : 0;
	h->off = (uint8_t)((20 + opt) / 4 << 4); h->flags = flags;
	h->wnd = be16((uint16_t)wnd); h->csum = 0; h->urg = 0;
	if (opt) {	/* kind 2, length 4, our MSS */
		p[20] = 2; p[21] = 4; p[22] = TCP_MSS >> 8; p[23] = TCP_MSS & 0xff;
	}
	if (len) {	/* the send buffer holds stream byte k at k % ssize, k = seq - (iss + 1) */
		uint32_t off = (seq - c->iss - 1) & (c->ssize - 1), first = min32(len, c->ssize - off);
		memcpy(p + 20 + opt, c->sbuf + off, first);
		if (first < len) memcpy(p + 20 + opt + first, c->sbuf, len - first);
	}
	h->csum = be16(csum_fold(csum_partial(pseudo(my_ip, c->remote_ip, n), p, n)));
	ops->seg_send(n);
	tcp_stats.segs_out++;
	if (flags & ACK) {
		c->ack_now = false;
		c->rcv_adv = c->rcv_nxt + wnd;
	}
	return true;
}

/* A reset for a segment no connection takes (3.10.7.1), from its own header fields. */
static void send_rst(uint32_t dst, const struct tcp_hdr *in, uint32_t seg_len)
{
	struct tcp_conn t = {0};
	t.remote_ip = dst;
	t.local_port = be16(in->dport);
	t.remote_port = be16(in->sport);
	tcp_stats.rst_sent++;
	if (in->flags & ACK) {
		emit(&t, be32(in->ack), RST, 0);	/* <SEQ=SEG.ACK><CTL=RST> */
	} else {
		t.rcv_nxt = be32(in->seq) + seg_len;	/* <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK> */
		emit(&t, 0, RST | ACK, 0);
	}
}

static void timer_start(struct tcp_conn *c)
{
	c->timer_on = true;
	c->rto_at = deadline_ms(c->rto_ms);
}

static uint32_t fin_seq(const struct tcp_conn *c) { return c->snd_end; }

/* Send what the state, the window and the send buffer allow; then an ACK if one is owed. */
static void output(struct tcp_conn *c, bool probe)
{
	switch (c->state) {
	case TCP_SYN_SENT:
	case TCP_SYN_RCVD:
		if (c->snd_nxt == c->iss) {
			emit(c, c->iss, c->state == TCP_SYN_SENT ? SYN : SYN | ACK, 0);
			c->snd_nxt = c->snd_max = c->iss + 1;
			if (!c->timer_on) timer_start(c);
		} else if (c->ack_now && c->state == TCP_SYN_RCVD) {	/* the peer's SYN again */
			emit(c, c->iss, SYN | ACK, 0);
		}
		return;
	case TCP_ESTABLISHED: case TCP_CLOSE_WAIT: case TCP_FIN_WAIT_1: case TCP_CLOSING: case TCP_LAST_ACK:
		break;
	default:
		if (c->ack_now && c->state != TCP_CLOSED) emit(c, c->snd_nxt, ACK, 0);
		return;
	}
	uint32_t wnd = c->snd_wnd ? c->snd_wnd : (probe ? 1 : 0);
	while (lt(c->snd_nxt, c->snd_end)) {	/* data */
		uint32_t in_flight = c->snd_nxt - c->snd_una;
		if (in_flight >= wnd) break;
		uint32_t len = min32(min32(c->mss, c->snd_end - c->snd_nxt), wnd - in_flight);
		bool last = c->snd_nxt + len == c->snd_end;
		uint8_t flags = ACK | (last ? PSH : 0) | (last && c->fin_queued ? FIN : 0);
		if (!emit(c, c->snd_nxt, flags, len)) { c->ack_now = false; break; }
		c->snd_nxt += len + (flags & FIN ? 1 : 0);
		c->bytes_out += len;
	}
	if (c->fin_queued && c->snd_nxt == fin_seq(c) && emit(c, c->snd_nxt, FIN | ACK, 0))
		c->snd_nxt++;	/* FIN after the data */
	if (lt(c->snd_max, c->snd_nxt)) c->snd_max = c->snd_nxt;
	if (c->ack_now) emit(c, c->snd_nxt, ACK, 0);
	if (c->snd_nxt != c->snd_una && !c->timer_on) timer_start(c);
	if (!c->snd_wnd && lt(c->snd_nxt, c->snd_end) && !c->timer_on) timer_start(c); /* persist */
}

static void set_closed(struct tcp_conn *c, enum tcp_error e)
{
	c->state = TCP_CLOSED;
	c->error = e;
	c->timer_on = false;
}

/* ---- the retransmission timer ---- */

static void on_timeout(struct tcp_conn *c)
{
	c->timer_on = false;
	if (++c->retries > TCP_MAX_RETRIES) {
		if (c->state != TCP_SYN_SENT) {	/* tell the peer, then give up */
			tcp_stats.rst_sent++;
			emit(c, c->snd_nxt, RST, 0);
		}
		set_closed(c, TCP_ERR_TIMEOUT);
		return;
	}
	c->rto_ms = min32(c->rto_ms * 2, TCP_RTO_MAX_MS);
	if (c->snd_nxt != c->snd_una) c->retransmits++;
	c->snd_nxt = c->snd_una;	/* go back N: everything unacknowledged again */
	output(c, true);
	if (!c->timer_on) timer_start(c);
}

void tcp_poll(void)
{
	for (int i = 0; i < TCP_MAX_CONNS; i++) {
		struct tcp_conn *c = &conns[i];
		if (c->state == TCP_CLOSED) continue;
		if (c->state == TCP_TIME_WAIT) {
			if (c->ack_now) emit(c, c->snd_nxt, ACK, 0);
			if (past(c->tw_at)) set_closed(c, TCP_OK);
			continue;
		}
		if (c->timer_on && past(c->rto_at)) on_timeout(c);
		else output(c, false);
	}
}

/* ---- connections ---- */

static struct tcp_conn *new_conn(uint32_t ip, uint16_t lport, uint16_t rport)
{
	static unsigned next;
	for (int k = 0; k < TCP_MAX_CONNS; k++) {
		struct tcp_conn *c = &conns[(next + k) % TCP_MAX_CONNS];
		if (c->state != TCP_CLOSED || !c->sbuf) continue;
		next += k + 1;
		uint8_t *sb = c->sbuf, *rb = c->rbuf;
		uint32_t ss = c->ssize, rs = c->rsize;
		memset(c, 0, sizeof *c);
		c->sbuf = sb; c->rbuf = rb; c->ssize = ss; c->rsize = rs;
		c->remote_ip = ip; c->local_port = lport; c->remote_port = rport;
		c->iss = (uint32_t)(rdtsc() >> 4);	/* 3.4.1: a clock-driven initial sequence number */
		c->snd_una = c->snd_nxt = c->snd_max = c->iss;
		c->snd_end = c->iss + 1;
		c->mss = 536;	/* the default without an MSS option (3.7.1) */
		c->rto_ms = TCP_RTO_MS;
		return c;
	}
	return 0;
}

struct tcp_conn *tcp_connect(uint32_t ip, uint16_t port)
{
	struct tcp_conn *c = new_conn(ip, next_ephemeral++, port);
	if (!c) return 0;
	if (next_ephemeral == 0) next_ephemeral = 49152;
	c->state = TCP_SYN_SENT;
	output(c, false);
	return c;
}

uint32_t tcp_write_room(const struct tcp_conn *c)
{
	if (c->fin_queued || (c->state != TCP_ESTABLISHED && c->state != TCP_CLOSE_WAIT &&
			      c->state != TCP_SYN_SENT && c->state != TCP_SYN_RCVD))
		return 0;
	uint32_t base = lt(c->snd_una, c->iss + 1) ? c->iss + 1 : c->snd_una;
	return c->ssize - (c->snd_end - base);
}

uint32_t tcp_write(struct tcp_conn *c, const void *data, uint32_t n)
{
	n = min32(n, tcp_write_room(c));
	uint32_t off = (c->snd_end - c->iss - 1) & (c->ssize - 1), first = min32(n, c->ssize - off);
	memcpy(c->sbuf + off, data, first);
	if (first < n) memcpy(c->sbuf, (const uint8_t *)data + first, n - first);
	c->snd_end += n;
	return n;
}

uint32_t tcp_read(struct tcp_conn *c, void *data, uint32_t n)
{
	n = min32(n, c->rlen);
	uint32_t first = min32(n, c->rsize - c->rhead);
	memcpy(data, c->rbuf + c->rhead, first);
	if (first < n) memcpy((uint8_t *)data + first, c->rbuf, n - first);
	c->rhead = (c->rhead + n) & (c->rsize - 1);
	c->rlen -= n;
	/* a window update once the window has grown by enough to matter (receiver SWS, 3.8.6.2.2) */
	uint32_t right = c->rcv_nxt + rcv_wnd(c);
	if (n && (int32_t)(right - c->rcv_adv) >= (int32_t)min32(c->rsize / 2, 2u * c->mss)) c->ack_now = true;
	return n;
}

void tcp_close(struct tcp_conn *c)
{
	switch (c->state) {
	case TCP_SYN_SENT:
		set_closed(c, TCP_OK);
		break;
	case TCP_SYN_RCVD: case TCP_ESTABLISHED:
		c->fin_queued = true;
		c->state = TCP_FIN_WAIT_1;
		break;
	case TCP_CLOSE_WAIT:
		c->fin_queued = true;
		c->state = TCP_LAST_ACK;
		break;
	default:
		break;
	}
}

/* ---- input (3.10.7) ---- */

static uint16_t parse_mss(const uint8_t *opt, uint32_t n)
{
	for (uint32_t i = 0; i < n;) {
		if (opt[i] == 0) break;			/* end of options */
		if (opt[i] == 1) { i++; continue; }	/* no-op */
		if (i + 1 >= n || opt[i + 1] < 2 || i + opt[i + 1] > n) break;
		if (opt[i] == 2 && opt[i + 1] == 4) return (uint16_t)(opt[i + 2] << 8 | opt[i + 3]);
		i += opt[i + 1];
	}
	return 536;
}

static void our_fin_acked(struct tcp_conn *c)
{
	if (!c->fin_queued || c->snd_una != c->snd_end + 1) return;
	if (c->state == TCP_FIN_WAIT_1) c->state = TCP_FIN_WAIT_2;
	else if (c->state == TCP_CLOSING) { c->state = TCP_TIME_WAIT; c->tw_at = deadline_ms(TCP_TIME_WAIT_MS); }
	else if (c->state == TCP_LAST_ACK) set_closed(c, TCP_OK);
}

static void take_data(struct tcp_conn *c, uint32_t seq, const uint8_t *d, uint32_t n, bool fin)
{
	if (lt(c->rcv_nxt, seq)) {	/* a gap before it: drop, ask again with a duplicate ACK */
		c->ack_now = true;
		c->dup_acks_sent++;
		return;
	}
	uint32_t skip = c->rcv_nxt - seq;	/* already have the front of a retransmission */
	if (skip > n) skip = n;
	d += skip;
	n -= skip;
	uint32_t take = min32(n, c->rsize - c->rlen);	/* what does not fit comes again */
	uint32_t tail = (c->rhead + c->rlen) & (c->rsize - 1), first = min32(take, c->rsize - tail);
	memcpy(c->rbuf + tail, d, first);
	if (first < take) memcpy(c->rbuf, d + first, take - first);
	c->rlen += take;
	c->rcv_nxt += take;
	c->bytes_in += take;
	if (take || n) c->ack_now = true;
	if (fin && take == n && !c->fin_received) {	/* the FIN follows the last byte we took */
		c->fin_received = true;
		c->rcv_nxt++;
		c->ack_now = true;
		switch (c->state) {
		case TCP_SYN_RCVD: case TCP_ESTABLISHED: c->state = TCP_CLOSE_WAIT; break;
		case TCP_FIN_WAIT_1: c->state = TCP_CLOSING; break;
		case TCP_FIN_WAIT_2:
			c->state = TCP_TIME_WAIT;
			c->tw_at = deadline_ms(TCP_TIME_WAIT_MS);
			break;
		default: break;
		}
	}
}

static void established_input(struct tcp_conn *c, const struct tcp_hdr *h, const uint8_t *d, uint32_t dlen)
{
	uint32_t seq = be32(h->seq), ack = be32(h->ack), wnd = be16(h->wnd);
	uint32_t seg_len = dlen + (h->flags & SYN ? 1 : 0) + (h->flags & FIN ? 1 : 0);
	/* first: is the segment in the window? (3.10.7.4, the four cases) */
	uint32_t rw = c->rcv_adv - c->rcv_nxt;
	if ((int32_t)rw < 0) rw = 0;
	if (rw < rcv_wnd(c)) rw = rcv_wnd(c);
	bool ok;
	if (!seg_len) ok = rw ? le(c->rcv_nxt, seq) && lt(seq, c->rcv_nxt + rw) : seq == c->rcv_nxt;
	else ok = rw && ((le(c->rcv_nxt, seq) && lt(seq, c->rcv_nxt + rw)) ||
			 (le(c->rcv_nxt, seq + seg_len - 1) && lt(seq + seg_len - 1, c->rcv_nxt + rw)));
	if (c->state == TCP_TIME_WAIT && (h->flags & FIN) && seq + seg_len == c->rcv_nxt) {
		c->ack_now = true;	/* our ACK of the FIN was lost: ACK again, restart the wait */
		c->tw_at = deadline_ms(TCP_TIME_WAIT_MS);
		return;
	}
	if (!ok) {
		if (!(h->flags & RST)) c->ack_now = true;
		tcp_stats.dropped++;
		return;
	}
	/* second: RST (RFC 5961 3.2: only an exact match resets, else a challenge ACK) */
	if (h->flags & RST) {
		if (seq == c->rcv_nxt) { tcp_stats.rst_received++; set_closed(c, TCP_ERR_RESET); }
		else c->ack_now = true;
		return;
	}
	/* fourth: a SYN in a synchronized state gets a challenge ACK (RFC 5961 4.2) */
	if (h->flags & SYN) {
		c->ack_now = true;
		return;
	}
	/* fifth: the ACK field */
	if (!(h->flags & ACK)) return;
	if (c->state == TCP_SYN_RCVD) {
		if (!(lt(c->snd_una, ack) && le(ack, c->snd_nxt))) {
			send_rst(c->remote_ip, h, seg_len);
			return;
		}
		c->state = TCP_ESTABLISHED;
		c->snd_wnd = wnd; c->snd_wl1 = seq; c->snd_wl2 = ack;
	}
	if (lt(c->snd_max, ack)) {	/* acknowledges something never sent */
		c->ack_now = true;
		return;
	}
	if (lt(c->snd_una, ack)) {
		c->snd_una = ack;
		if (lt(c->snd_nxt, ack)) c->snd_nxt = ack;	/* after a go-back-N, acked anyway */
		c->retries = 0;
		c->rto_ms = TCP_RTO_MS;
		c->timer_on = false;
		if (c->snd_una != c->snd_nxt) timer_start(c);
	}
	if (le(c->snd_una, ack) && (lt(c->snd_wl1, seq) || (c->snd_wl1 == seq && le(c->snd_wl2, ack)))) {
		c->snd_wnd = wnd; c->snd_wl1 = seq; c->snd_wl2 = ack;	/* window update */
	}
	our_fin_acked(c);
	if (c->state == TCP_CLOSED) return;
	/* seventh: the data, eighth: FIN */
	switch (c->state) {
	case TCP_ESTABLISHED: case TCP_FIN_WAIT_1: case TCP_FIN_WAIT_2:
		if (dlen || (h->flags & FIN)) take_data(c, seq, d, dlen, h->flags & FIN);
		break;
	default:	/* CLOSE-WAIT, CLOSING, LAST-ACK, TIME-WAIT: the peer's FIN is in; ignore data */
		if (dlen || (h->flags & FIN)) c->ack_now = true;
		break;
	}
}

static void syn_sent_input(struct tcp_conn *c, const struct tcp_hdr *h, uint32_t seg_len, uint16_t mss)
{
	uint32_t seq = be32(h->seq), ack = be32(h->ack);
	bool acceptable = (h->flags & ACK) && lt(c->iss, ack) && le(ack, c->snd_nxt);
	if ((h->flags & ACK) && !acceptable) {
		if (!(h->flags & RST)) send_rst(c->remote_ip, h, seg_len);
		return;
	}
	if (h->flags & RST) {
		if (acceptable) { tcp_stats.rst_received++; set_closed(c, TCP_ERR_RESET); }	/* refused */
		return;
	}
	if (!(h->flags & SYN)) return;
	c->irs = seq;
	c->rcv_nxt = seq + 1;
	c->mss = min32(mss, TCP_MSS);
	if (acceptable) {
		c->snd_una = ack;
		c->retries = 0;
		c->rto_ms = TCP_RTO_MS;
		c->timer_on = false;
		c->state = TCP_ESTABLISHED;
		c->snd_wnd = be16(h->wnd); c->snd_wl1 = seq; c->snd_wl2 = ack;
		c->ack_now = true;
	} else {	/* simultaneous open: SYN-ACK from SYN-RECEIVED */
		c->state = TCP_SYN_RCVD;
		c->snd_nxt = c->iss;
	}
}

void tcp_input(uint32_t src, uint32_t dst, const uint8_t *seg, uint32_t len)
{
	tcp_stats.segs_in++;
	if (len < 20 || dst != my_ip) { tcp_stats.dropped++; return; }
	if (csum_fold(csum_partial(pseudo(src, dst, len), seg, len)) != 0) { tcp_stats.bad_checksum++; return; }
	const struct tcp_hdr *h = (const void *)seg;
	uint32_t hl = (uint32_t)(h->off >> 4) * 4;
	if (hl < 20 || hl > len) { tcp_stats.dropped++; return; }
	const uint8_t *d = seg + hl;
	uint32_t dlen = len - hl, seg_len = dlen + (h->flags & SYN ? 1 : 0) + (h->flags & FIN ? 1 : 0);
	uint16_t sport = be16(h->sport), dport = be16(h->dport);
	for (int i = 0; i < TCP_MAX_CONNS; i++) {
		struct tcp_conn *c = &conns[i];
		if (c->state == TCP_CLOSED || c->remote_ip != src || c->remote_port != sport || c->local_port != dport)
			continue;
		if (c->state == TCP_SYN_SENT) syn_sent_input(c, h, seg_len, parse_mss(seg + 20, hl - 20));
		else established_input(c, h, d, dlen);
		return;
	}
	/* no connection: a listener takes a SYN (3.10.7.2), everything else but a RST gets one */
	if (h->flags & RST) return;
	bool listener = false;
	for (int i = 0; i < TCP_MAX_LISTEN; i++) listener |= listening[i] && listening[i] == dport;
	if (listener && !(h->flags & ACK) && (h->flags & SYN)) {
		struct tcp_conn *c = new_conn(src, dport, sport);
		if (!c) { tcp_stats.dropped++; return; }	/* no free slot: the peer retries */
		c->irs = be32(h->seq);
		c->rcv_nxt = c->irs + 1;
		c->mss = min32(parse_mss(seg + 20, hl - 20), TCP_MSS);
		c->snd_wnd = be16(h->wnd); c->snd_wl1 = c->irs;
		c->state = TCP_SYN_RCVD;
		c->ack_now = true;
		output(c, false);
		return;
	}
	send_rst(src, h, seg_len);
}
