/* A minimal TCP (RFC 9293 subset) for test guests, run from ring 3 by a polling network driver.
 *
 * What it does: passive open (listen on ports) and active open (connect), the three-way
 * handshake, in-order receive with cumulative ACKs and a real receive window (the free room of
 * the connection's receive buffer, at most 65535: no window scaling), send within the peer's
 * window in MSS-sized segments (MSS option both ways), retransmission on timeout (go-back-N
 * from SND.UNA, RTO doubling from TCP_RTO_MS, a 1-byte window probe when the peer's window is
 * 0), FIN both ways through every closing state, RST for segments no connection or listener
 * takes (3.10.7.1), RST handling with the RFC 5961 exact-sequence check, checksums (pseudo
 * header, 3.1) checked on input and generated on output.
 * What it does not: out-of-order queueing (later segments are dropped and a duplicate ACK
 * sent), fast retransmit, congestion control, options other than MSS, urgent data, IP
 * fragmentation. TIME-WAIT lasts TCP_TIME_WAIT_MS, not 2 MSL (a test guest lives seconds).
 *
 * The driver supplies two callbacks: where to write an outgoing segment (after its Ethernet
 * and IPv4 headers) and when it is written. Incoming segments go to tcp_input(); tcp_poll()
 * runs timers and sends what is due (ACKs are sent once per poll, not once per segment).
 * Every function is ring-3 safe (no port I/O, no printing). */
#ifndef TESTKIT_TCP_H
#define TESTKIT_TCP_H
#include "testkit.h"

#define TCP_MAX_CONNS 4
#define TCP_MAX_LISTEN 4
#define TCP_RTO_MS 250
#define TCP_RTO_MAX_MS 4000
#define TCP_MAX_RETRIES 8
#define TCP_TIME_WAIT_MS 500
#define TCP_MSS 1460

enum tcp_state {
	TCP_CLOSED, TCP_LISTEN, TCP_SYN_SENT, TCP_SYN_RCVD, TCP_ESTABLISHED, TCP_FIN_WAIT_1,
	TCP_FIN_WAIT_2, TCP_CLOSE_WAIT, TCP_CLOSING, TCP_LAST_ACK, TCP_TIME_WAIT,
};

enum tcp_error { TCP_OK, TCP_ERR_RESET, TCP_ERR_TIMEOUT };

struct tcp_conn {
	enum tcp_state state;
	enum tcp_error error;
	uint32_t remote_ip;
	uint16_t local_port, remote_port, mss;
	/* send sequence space (3.3.1) */
	uint32_t iss, snd_una, snd_nxt, snd_wnd, snd_wl1, snd_wl2;
	uint32_t snd_max;	/* the highest SND.NXT so far (a retransmission lowers SND.NXT) */
	uint32_t snd_end;	/* sequence number after the last byte the application wrote */
	bool fin_queued;	/* the application closed: FIN at snd_end */
	/* receive sequence space */
	uint32_t irs, rcv_nxt, rcv_adv;	/* rcv_adv: right edge of the window last advertised */
	bool fin_received, ack_now;
	/* buffers (sizes are powers of two), owned by the caller */
	uint8_t *sbuf, *rbuf;
	uint32_t ssize, rsize, rhead, rlen;
	/* the retransmission timer */
	uint64_t rto_at, tw_at;
	uint32_t rto_ms, retries;
	bool timer_on;
	/* counters */
	uint64_t bytes_in, bytes_out;
	uint32_t retransmits, dup_acks_sent;
};

struct tcp_stats {
	uint32_t segs_in, segs_out, bad_checksum, rst_sent, rst_received, dropped;
};

struct tcp_ops {
	/* Room for a segment of len bytes to dst (0 if none, e.g. no MAC known yet: the segment is
	 * lost and retransmission covers it). */
	uint8_t *(*seg_alloc)(uint32_t dst_ip, uint32_t len);
	/* The segment written at the last seg_alloc is complete. */
	void (*seg_send)(uint32_t len);
};

void tcp_init(uint32_t local_ip, const struct tcp_ops *ops);
bool tcp_listen(uint16_t port);
/* Buffers a new connection (passive or active) gets: a free slot's own (set with tcp_buffers). */
void tcp_buffers(int slot, uint8_t *sbuf, uint32_t ssize, uint8_t *rbuf, uint32_t rsize);
struct tcp_conn *tcp_connect(uint32_t ip, uint16_t port);
/* The slot's connection: CLOSED when unused, and again once closed (TIME-WAIT over, LAST-ACK
 * acknowledged, reset or timed out: see error); a new connection may then take the slot. */
struct tcp_conn *tcp_conn(int slot);
/* A segment arrived: src/dst from the IPv4 header, seg = TCP header + data. */
void tcp_input(uint32_t src, uint32_t dst, const uint8_t *seg, uint32_t len);
void tcp_poll(void);	/* timers, then send whatever is due on every connection */
/* Application side: bytes queued / copied out (possibly fewer than n); close = send FIN. */
uint32_t tcp_write(struct tcp_conn *c, const void *data, uint32_t n);
uint32_t tcp_write_room(const struct tcp_conn *c);
uint32_t tcp_read(struct tcp_conn *c, void *data, uint32_t n);
void tcp_close(struct tcp_conn *c);
extern struct tcp_stats tcp_stats;
uint16_t inet_csum_add(uint32_t sum, const void *p, uint32_t n); /* final one's complement */
#endif
