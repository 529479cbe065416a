"""Numbers from the virtio 1.2 specification (section numbers in the comments)."""
from __future__ import annotations

# 2.1 Device Status Field
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_DEVICE_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80

# 6 Reserved Feature Bits
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29
F_VERSION_1 = 32
F_ACCESS_PLATFORM = 33
F_RING_PACKED = 34

# 5 Device Types
ID_NET = 1
ID_BLOCK = 2
ID_BALLOON = 5
ID_RNG = 4
ID_VSOCK = 19

# 2.7.5 The Virtqueue Descriptor Table
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
DESC_SIZE = 16  # le64 addr, le32 len, le16 flags, le16 next

# 2.7.6 The Virtqueue Available Ring / 2.7.8 The Virtqueue Used Ring
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1
USED_ELEM_SIZE = 8  # le32 id, le32 len

# 2.7 Split Virtqueues: "Queue Size ... is always a power of 2. The maximum Queue Size value is 32768."
MAX_QUEUE_SIZE = 32768

# 4.1.4.3 Common configuration: "no vector" for MSI-X
VIRTIO_MSI_NO_VECTOR = 0xFFFF


def bit(n: int) -> int:
    return 1 << n
