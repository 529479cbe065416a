/* virtio-vsock on the wire (virtio 1.2, section 5.10): queue numbers, packet header and
 * operations, shared by the test-kit guests that speak vsock (virtio_vsock, clone_identity). */
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

#endif
