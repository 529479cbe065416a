"""``vnix host check``: can this host run vnix's VMs, and how (in the spirit of virt-host-validate).

Each check gives one :class:`Check` (``ok``/``warn``/``fail``, a name, a detail saying what was
found or what to do). Pure parsing helpers take text so they can be tested without the host.
:func:`recommended_driver` decides which driver ``vnix run`` uses by default:

* hardware-assisted KVM (vmx/svm in /proc/cpuinfo, kvm_intel or kvm_amd loaded) -> ``native``;
* software-nested KVM (``/sys/module/kvm_pvm``: guest kernel code is emulated instruction by
  instruction, see notes/kvm-on-these-machines.md) -> ``qemu-tcg``;
* no usable /dev/kvm -> ``qemu-tcg``.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Status = Literal["ok", "warn", "fail"]
KvmKind = Literal["hardware", "software-nested", "none"]

CAP_NET_ADMIN = 12  # include/uapi/linux/capability.h
SYS_userfaultfd = 323  # arch/x86/entry/syscalls/syscall_64.tbl
KVM_API_VERSION = 12


@dataclass(frozen=True)
class Check:
    status: Status
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<22}  {self.detail}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# -- parsing (pure) ------------------------------------------------------------------------------
def cpu_flags(cpuinfo: str) -> set[str]:
    """The ``flags`` of the first processor in /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def kvm_kind(cpuinfo: str, loaded_modules: set[str], dev_kvm: bool) -> tuple[KvmKind, str]:
    """How this host's KVM runs guests, with the evidence for it."""
    if not dev_kvm:
        return "none", "/dev/kvm is not available"
    if "kvm_pvm" in loaded_modules:
        return "software-nested", "this host's KVM is software-nested (kvm_pvm)"
    flags = cpu_flags(cpuinfo)
    for flag, module in (("vmx", "kvm_intel"), ("svm", "kvm_amd")):
        if flag in flags and module in loaded_modules:
            return "hardware", f"this host's KVM is hardware-assisted ({module})"
    return "software-nested", "/dev/kvm exists but the CPU shows no vmx/svm and no kvm_intel/kvm_amd"


def parse_qemu_version(text: str) -> str | None:
    """``QEMU emulator version 7.2.22 (Debian ...)`` -> ``7.2.22``."""
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else None


def has_capability(status_text: str, cap: int) -> bool:
    """Is capability bit ``cap`` in the effective set (``CapEff`` of /proc/PID/status)?"""
    m = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", status_text, re.MULTILINE)
    return bool(m and int(m.group(1), 16) >> cap & 1)


# -- probes ---------------------------------------------------------------------------------------
def _loaded_modules() -> set[str]:
    try:
        return {p.name for p in Path("/sys/module").iterdir()}
    except OSError:
        return set()


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _dev_kvm_usable() -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist (load kvm_intel/kvm_amd, or enable nested virtualization)"
    try:
        from vnix.kvm import Kvm, KvmError
    except ImportError:  # pragma: no cover - vnix.kvm is part of the package
        return os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm"
    try:
        with Kvm() as kvm:
            return True, f"/dev/kvm opens, KVM_GET_API_VERSION = {kvm.api_version()}"
    except KvmError as exc:
        return False, f"{exc} (add yourself to the kvm group?)"


def kvm_status() -> tuple[KvmKind, str]:
    usable, _ = _dev_kvm_usable()
    return kvm_kind(_read("/proc/cpuinfo"), _loaded_modules(), usable)


def recommended_driver() -> tuple[str, str]:
    """(driver, reason) for ``vnix run``: ``native`` on hardware KVM, ``qemu-tcg`` otherwise."""
    kind, why = kvm_status()
    if kind == "hardware":
        return "native", why
    if kind == "software-nested":
        return "qemu-tcg", f"{why} and would emulate the guest kernel"
    return "qemu-tcg", why


def _cpu_features_check() -> Check:
    try:
        from vnix.kvm import Kvm

        with Kvm() as kvm:
            entries = kvm.get_supported_cpuid()
    except Exception as exc:  # any failure here is a finding, not a crash
        return Check("warn", "guest CPU features", f"KVM_GET_SUPPORTED_CPUID failed: {exc}")
    # What the guest will see is KVM's set after the VMM's CPUID policy (which, for example, hides
    # CX16 and PCID on software-nested hosts), so describe that, not the raw supported set.
    from vnix.vmm.arch.x86.cpu_state import CpuidEntry
    from vnix.vmm.arch.x86.cpuid import describe_features, guest_cpuid

    supported = [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in entries]
    guest = guest_cpuid(supported, 0, 1)
    names = list(describe_features(guest))
    return Check("ok", "guest CPU features", f"{len(guest)} CPUID leaves; " + " ".join(names))


def _capabilities_check() -> Check:
    try:
        from vnix.kvm import Kvm

        with Kvm() as kvm:
            kvm.require()
    except Exception as exc:
        return Check("fail", "KVM capabilities", f"{exc}")
    return Check("ok", "KVM capabilities", "all capabilities the native VMM needs are present")


def _userfaultfd_check() -> Check:
    if os.path.exists("/dev/userfaultfd") and os.access("/dev/userfaultfd", os.R_OK | os.W_OK):
        return Check("ok", "userfaultfd", "/dev/userfaultfd (lazy memory, post-copy migration)")
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(SYS_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK)
    if fd >= 0:
        os.close(fd)
        return Check("ok", "userfaultfd", "userfaultfd(2) works")
    return Check("warn", "userfaultfd", f"unavailable ({os.strerror(ctypes.get_errno())}): "
                 "lazy restore and post-copy migration are off; run as root or set "
                 "vm.unprivileged_userfaultfd=1")


def _tun_check() -> Check:
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR))
    except OSError as exc:
        return Check("warn", "/dev/net/tun", f"cannot open ({exc.strerror}): no tap networking; "
                     "modprobe tun")
    return Check("ok", "/dev/net/tun", "tap devices can be created")


def _bridge_check() -> Check:
    if not has_capability(_read("/proc/self/status"), CAP_NET_ADMIN):
        return Check("warn", "bridges", "no CAP_NET_ADMIN: bridged networking needs root")
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if not unshare or not ip:
        return Check("warn", "bridges", "unshare or ip (iproute2) missing: install util-linux, iproute2")
    # In a throwaway network namespace: nothing on the host is touched.
    proc = subprocess.run(
        [unshare, "--net", "sh", "-c", "ip link add vnixchk0 type bridge && ip link del vnixchk0"],
        capture_output=True, text=True, timeout=10, check=False)
    if proc.returncode != 0:
        return Check("warn", "bridges", f"cannot create a bridge: {proc.stderr.strip() or 'failed'}")
    return Check("ok", "bridges", "a bridge can be created (tested in a throwaway netns)")


def _dev_check(path: str, purpose: str, fix: str) -> Check:
    if os.path.exists(path):
        return Check("ok", path, purpose)
    return Check("warn", path, f"absent: {fix}")


def _binary_check(name: str, required: bool, purpose: str) -> Check:
    path = shutil.which(name)
    if not path:
        return Check("fail" if required else "warn", name, f"not found: {purpose}")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("warn", name, f"{path} does not run: {exc}")
    return Check("ok", name, f"{path} version {parse_qemu_version(out) or '?'}")


def run_checks() -> list[Check]:
    checks: list[Check] = []
    usable, kvm_detail = _dev_kvm_usable()
    checks.append(Check("ok" if usable else "warn", "/dev/kvm",
                        kvm_detail if usable else f"{kvm_detail}; the native VMM cannot run"))
    kind, why = kvm_kind(_read("/proc/cpuinfo"), _loaded_modules(), usable)
    if kind == "hardware":
        checks.append(Check("ok", "acceleration", why))
    elif kind == "software-nested":
        checks.append(Check("warn", "acceleration",
                            f"{why}: guest kernel code is emulated (~1000x slower); Linux guests "
                            "use QEMU TCG by default"))
    else:
        checks.append(Check("warn", "acceleration", "no KVM: guests use QEMU TCG"))
    if usable:
        checks.append(_capabilities_check())
        checks.append(_cpu_features_check())
    checks.append(_userfaultfd_check())
    checks.append(_tun_check())
    checks.append(_bridge_check())
    checks.append(_dev_check("/dev/vhost-net", "in-kernel virtio-net backend for QEMU",
                             "QEMU's virtio-net runs in user space (slower); modprobe vhost_net"))
    checks.append(_dev_check("/dev/vhost-vsock", "in-kernel vsock backend for QEMU",
                             "QEMU guests get no vhost-vsock; modprobe vhost_vsock"))
    driver, _ = recommended_driver() if usable else ("qemu-tcg", "")
    checks.append(_binary_check("qemu-system-x86_64", driver == "qemu-tcg",
                                "the QEMU driver needs it: apt-get install qemu-system-x86"))
    checks.append(_binary_check("qemu-system-aarch64", False,
                                "no ARM guests under TCG: apt-get install qemu-system-arm"))
    checks.append(_binary_check("qemu-img", False, "no qcow2 images: apt-get install qemu-utils"))
    for tool, pkg in (("mkfs.ext4", "e2fsprogs"), ("apt-get", "apt"), ("dpkg-deb", "dpkg")):
        if not shutil.which(tool):
            checks.append(Check("warn", "image builder", f"{tool} missing: install {pkg}"))
            break
    else:
        checks.append(Check("ok", "image builder", "apt-get, dpkg-deb, mkfs.ext4 present"))
    return checks
