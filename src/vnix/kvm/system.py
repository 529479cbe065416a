"""The ``/dev/kvm`` handle: API version, capabilities, supported CPUID and MSRs, VM creation."""
from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from vnix.kvm import KvmError, MissingCapability
from vnix.kvm import ioctls as k
from vnix.kvm import structs as s
from vnix.kvm._ioctl import ioctl, ioctl_obj
from vnix.kvm.vm import Vm

# What vnix.vmm relies on; checked once at start so a missing one is named, not met mid-boot.
REQUIRED_CAPABILITIES: tuple[int, ...] = (
    k.KVM_CAP_IRQCHIP,
    k.KVM_CAP_PIT2,
    k.KVM_CAP_USER_MEMORY,
    k.KVM_CAP_SET_TSS_ADDR,
    k.KVM_CAP_SET_IDENTITY_MAP_ADDR,
    k.KVM_CAP_EXT_CPUID,
    k.KVM_CAP_MP_STATE,
    k.KVM_CAP_IMMEDIATE_EXIT,
    k.KVM_CAP_IRQ_ROUTING,
    k.KVM_CAP_IRQFD,
    k.KVM_CAP_IOEVENTFD,
)


class Kvm:
    """An open ``/dev/kvm``."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise KvmError(f"open {path}", exc.errno or 0) from None
        version = self.api_version()
        if version != k.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmError("KVM_GET_API_VERSION", 0, f"version {version}, vnix needs {k.KVM_API_VERSION}")
        self._mmap_size: int | None = None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries --------------------------------------------------------------------------------
    def api_version(self) -> int:
        return ioctl(self.fd, k.KVM_GET_API_VERSION, op="KVM_GET_API_VERSION")

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, k.KVM_CHECK_EXTENSION, cap, op="KVM_CHECK_EXTENSION")

    def require(self, caps: Iterable[int] = REQUIRED_CAPABILITIES) -> None:
        """Raise :class:`MissingCapability` naming the first capability KVM lacks."""
        for cap in caps:
            if self.check_extension(cap) <= 0:
                raise MissingCapability(k.CAPABILITY_NAMES.get(cap, f"capability {cap}"))

    def vcpu_mmap_size(self) -> int:
        if self._mmap_size is None:
            self._mmap_size = ioctl(self.fd, k.KVM_GET_VCPU_MMAP_SIZE, op="KVM_GET_VCPU_MMAP_SIZE")
        return self._mmap_size

    def get_supported_cpuid(self) -> list[s.kvm_cpuid_entry2]:
        """Every CPUID leaf KVM can present to a guest (copies, safe to edit)."""
        n = k.KVM_MAX_CPUID_ENTRIES
        while True:
            buf = s.cpuid2_with(n)()
            buf.nent = n
            try:
                ioctl_obj(self.fd, k.KVM_GET_SUPPORTED_CPUID, buf, op="KVM_GET_SUPPORTED_CPUID")
            except KvmError as exc:
                if exc.errno == errno.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise
            return [s.kvm_cpuid_entry2.from_buffer_copy(e) for e in buf.entries[: buf.nent]]

    def get_msr_index_list(self) -> list[int]:
        """The MSRs KVM saves and restores for a vCPU (KVM_GET_MSR_INDEX_LIST)."""
        probe = s.kvm_msr_list(nmsrs=0)
        try:
            ioctl_obj(self.fd, k.KVM_GET_MSR_INDEX_LIST, probe, op="KVM_GET_MSR_INDEX_LIST")
        except KvmError as exc:
            if exc.errno != errno.E2BIG:
                raise
        buf = s.msr_list_with(probe.nmsrs)()
        buf.nmsrs = probe.nmsrs
        ioctl_obj(self.fd, k.KVM_GET_MSR_INDEX_LIST, buf, op="KVM_GET_MSR_INDEX_LIST")
        return list(buf.indices[: buf.nmsrs])

    # -- children -------------------------------------------------------------------------------
    def create_vm(self) -> Vm:
        fd = ioctl(self.fd, k.KVM_CREATE_VM, 0, op="KVM_CREATE_VM")
        return Vm(fd, self.vcpu_mmap_size())

