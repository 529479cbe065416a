/* virtio-vsock on the wire (virtio 1.2, section 5.10): queue numbers, packet header and
 * operations, the event queue's events, shared by the test-kit guests that speak vsock
 * (virtio_vsock, clone_identity). */
#ifndef TESTKIT_VSOCK_H
#define TESTKIT_VSOCK_H

#include <stdint.h>

#define VSOCK_RXQ 0
#define VSOCK_TXQ 1
#define VSOCK_EVQ 2

#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7

/* struct virtio_vsock_hdr (5.10.6): little-endian, packed; type 1 = VIRTIO_VSOCK_TYPE_STREAM */
struct hdr {
	uint64_t src_cid, dst_cid;
	uint32_t src_port, dst_port, len;
	uint16_t type, op;
	uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

/* The event queue (5.10.6.7): the driver keeps device-writable buffers posted there; the device
 * writes struct virtio_vsock_event { le32 id; } into one. id 0, TRANSPORT_RESET: every stream is
 * gone (the VM was restored from a snapshot) and guest_cid may have changed (a clone): drop the
 * connections and read the CID from config space again. */
#define VSOCK_EVENT_TRANSPORT_RESET 0
#define VSOCK_EVENT_NONE (-1)	/* vsock_event_next: nothing new */
#define VSOCK_EVENT_BAD (-2)	/* vsock_event_next: a used entry we cannot read */

#ifdef TESTKIT_VIRTIO_H
static inline void vsock_event_post(struct virtq *evq, void *buf, uint32_t len)
{
	uint64_t a = (uint64_t)buf;
	bool w = true;
	virtq_post(evq, 1, &a, &len, &w);
}

/* The next event the device returned: its id, VSOCK_EVENT_NONE or VSOCK_EVENT_BAD. The buffer
 * is posted again (the device keeps it for the next event). */
static inline int64_t vsock_event_next(struct virtq *evq)
{
	if (*(volatile uint16_t *)&evq->used.idx == evq->last_used)
		return VSOCK_EVENT_NONE;
	barrier();
	uint16_t slot = evq->last_used % evq->size;
	uint32_t id = evq->used.ring[slot].id, len = evq->used.ring[slot].len;
	evq->last_used++;
	if (id >= evq->size)
		return VSOCK_EVENT_BAD;
	void *buf = (void *)evq->desc[id].addr;
	uint32_t size = evq->desc[id].len;
	int64_t ev = len >= 4 && size >= 4 ? (int64_t)*(volatile uint32_t *)buf : VSOCK_EVENT_BAD;
	vsock_event_post(evq, buf, size);
	return ev;
}

static inline uint64_t vsock_read_cid(struct virtio_dev *d)	/* 5.10.4: le64 guest_cid */
{
	return mmio_read32(d->device) | (uint64_t)mmio_read32(d->device + 4) << 32;
}
#endif

#endif
