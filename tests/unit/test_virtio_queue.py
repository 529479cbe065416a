"""The split virtqueue, status machine and feature negotiation, driven by the mock driver."""
from __future__ import annotations

import pytest

from vnix.vmm.devices.virtio import QueueError
from vnix.vmm.devices.virtio.constants import (
    F_INDIRECT_DESC,
    F_VERSION_1,
    STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    bit,
)
from vnix.vmm.devices.virtio.control import VirtioControl
from vnix.vmm.devices.virtio.mock import MockDriver
from vnix.vmm.devices.virtio.queue import BadChain, Queue
from vnix.vmm.devices.virtio.status import next_status
from vnix.vmm.memory import GuestMemory

from vnix.vmm.devices.virtio.mock import RecordingInterrupt

MEM_SIZE = 1 << 20
from vnix.vmm.devices.virtio.rng import VirtioRng


@pytest.fixture()
def mem() -> GuestMemory:
    m = GuestMemory([(0, MEM_SIZE)])
    yield m
    m.close()


def queue_with_driver(mem: GuestMemory, size: int = 8, indirect: bool = False) -> tuple[Queue, MockDriver]:
    q = Queue(size)
    drv = MockDriver(mem, size, 0x1000, 0x40000)
    drv.configure(q)
    q.indirect = indirect
    q.check_layout(mem)
    return q, drv


def test_chain_round_trip(mem: GuestMemory) -> None:
    q, drv = queue_with_driver(mem)
    head, bufs = drv.add_chain([(b"hello", False), (b"world!", False), (16, True)])
    chain = q.pop(mem)
    assert chain is not None and chain.head == head
    assert [(d.addr, d.length, d.writable) for d in chain.descriptors] == [
        (b.addr, b.length, b.writable) for b in bufs
    ]
    assert q.pop(mem) is None
    q.add_used(mem, head, 7)
    assert drv.used() == [(head, 7)]


def test_indirect_chain(mem: GuestMemory) -> None:
    q, drv = queue_with_driver(mem, indirect=True)
    drv.add_chain([(b"abc", False), (8, True)], indirect=True)
    chain = q.pop(mem)
    assert chain is not None and [d.length for d in chain.descriptors] == [3, 8]


def test_indirect_refused_without_feature(mem: GuestMemory) -> None:
    q, drv = queue_with_driver(mem, indirect=False)
    head, _ = drv.add_chain([(b"abc", False)], indirect=True)
    with pytest.raises(BadChain) as info:
        q.pop(mem)
    assert info.value.head == head


@pytest.mark.parametrize(
    "descs, why",
    [
        ([(0x100, 4, VIRTQ_DESC_F_NEXT, 0)], "loop"),  # descriptor 0 -> 0 -> ...
        ([(0x100, 4, VIRTQ_DESC_F_NEXT, 9)], "past the table"),
        ([(MEM_SIZE - 2, 4, 0, 0)], "outside guest RAM"),
        ([(1 << 60, 1, 0, 0)], "outside guest RAM"),
        ([(0x100, 4, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1), (0x200, 4, 0, 0)], "readable descriptor after"),
        ([(0x3000, 15, VIRTQ_DESC_F_INDIRECT, 0)], "indirect table length"),
        ([(0x3000, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1)], "NEXT"),
    ],
)
def test_malformed_chains_are_refused(mem: GuestMemory, descs: list[tuple[int, int, int, int]], why: str) -> None:
    q, drv = queue_with_driver(mem, indirect=True)
    for i, d in enumerate(descs):
        drv.write_desc(i, *d)
    drv.publish(0)
    with pytest.raises(BadChain, match=why):
        q.pop(mem)
    assert q.pop(mem) is None  # the bad chain was taken; the queue goes on


def test_nested_indirect_refused(mem: GuestMemory) -> None:
    q, drv = queue_with_driver(mem, indirect=True)
    table = drv.alloc(32, 16)
    drv.write_desc(0, table, 16, VIRTQ_DESC_F_INDIRECT, 0, table)
    drv.write_desc(0, table, 16, VIRTQ_DESC_F_INDIRECT, 0)
    drv.publish(0)
    with pytest.raises(BadChain, match="inside an indirect"):
        q.pop(mem)


def test_ring_errors_are_queue_errors(mem: GuestMemory) -> None:
    q, drv = queue_with_driver(mem)
    drv.set_avail_idx(9)  # 9 entries ahead on a queue of 8
    with pytest.raises(QueueError, match="ahead"):
        q.pop(mem)
    q2, drv2 = queue_with_driver(mem)
    drv2.publish(8)  # head index == size
    with pytest.raises(QueueError, match="names descriptor 8"):
        q2.pop(mem)


@pytest.mark.parametrize("field, value, why", [
    ("size", 6, "power of two"), ("size", 16, "power of two"), ("desc_table", 0x1008, "aligned"),
    ("used_ring", MEM_SIZE - 8, "outside"), ("avail_ring", 1 << 40, "outside"),
])
def test_layout_checks(mem: GuestMemory, field: str, value: int, why: str) -> None:
    q, _ = queue_with_driver(mem)
    setattr(q, field, value)
    with pytest.raises(QueueError, match=why):
        q.check_layout(mem)


def test_avail_index_wraps(mem: GuestMemory) -> None:
    q, drv = queue_with_driver(mem, size=4)
    drv.set_avail_idx(0xFFFE)
    q.next_avail = 0xFFFE
    for _ in range(3):
        head, _ = drv.add_chain([(b"x", False)])
        chain = q.pop(mem)
        assert chain is not None and chain.head == head
        q.add_used(mem, head, 0)
        assert drv.used() == [(head, 0)]
    assert q.next_avail == 1


def test_save_restore_keeps_positions(mem: GuestMemory) -> None:
    q, drv = queue_with_driver(mem)
    drv.add_chain([(b"a", False)])
    drv.add_chain([(b"b", False)])
    first = q.pop(mem)
    assert first is not None
    q2 = Queue.restore(q.save())
    second = q2.pop(mem)
    assert second is not None and second.head != first.head
    assert q2.save() == Queue.restore(q2.save()).save()


def test_status_table() -> None:
    assert next_status(0, STATUS_ACKNOWLEDGE) == STATUS_ACKNOWLEDGE
    assert next_status(0, STATUS_ACKNOWLEDGE | STATUS_DRIVER) is None  # no skipping
    assert next_status(STATUS_ACKNOWLEDGE, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK) is None


def test_feature_negotiation_refuses_unoffered_and_legacy(mem: GuestMemory) -> None:
    ctl = VirtioControl(VirtioRng(), mem, RecordingInterrupt())
    ctl.write_status(STATUS_ACKNOWLEDGE)
    ctl.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)
    ctl.driver_feature_select = 0
    ctl.write_driver_features_word(1 << 5)  # not offered
    ctl.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
    assert not ctl.status & STATUS_FEATURES_OK
    ctl.write_driver_features_word(0)
    ctl.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
    assert not ctl.status & STATUS_FEATURES_OK  # VERSION_1 missing: legacy drivers refused
    ctl.driver_feature_select = 1
    ctl.write_driver_features_word(bit(F_VERSION_1) >> 32)
    ctl.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
    assert ctl.status & STATUS_FEATURES_OK
    ctl.driver_feature_select = 0
    ctl.write_driver_features_word(bit(F_INDIRECT_DESC))  # too late: after FEATURES_OK
    assert ctl.driver_features == bit(F_VERSION_1)


def test_bad_layout_at_driver_ok_sets_needs_reset(mem: GuestMemory) -> None:
    irq = RecordingInterrupt()
    ctl = VirtioControl(VirtioRng(), mem, irq)
    ctl.write_status(STATUS_ACKNOWLEDGE)
    ctl.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)
    ctl.driver_feature_select = 1
    ctl.write_driver_features_word(1)
    ctl.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
    q = ctl.queues[0]
    q.desc_table, q.avail_ring, q.used_ring, q.ready = MEM_SIZE - 16, 0x2000, 0x3000, True
    ctl.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    assert ctl.status & STATUS_DEVICE_NEEDS_RESET and irq.configs == 1
    assert not ctl.device.active
    ctl.write_status(0)
    assert ctl.status == 0 and ctl.queues[0].desc_table == 0 and not ctl.queues[0].ready
