"""VM lifecycle on one node: requests in, driver calls out, images and NICs wired in between.

The agent keeps no VM state in memory: each driver finds its VMs in its run directory
(``<data_dir>/run/<driver>/``), so a restarted agent manages the VMs it left running. Overlays
live in ``<data_dir>/overlays/<vm>/<image>.qcow2`` (which is also how an image's users are
found).
"""
from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from vnix.errors import VnixError
from vnix.hypervisor import Hypervisor, NoSuchVm, VmExists, get_driver
from vnix.hypervisor.spec import DriverOptions, NicSpec, VmInfo, VmSpec
from vnix.hypervisor.state import VmState
from vnix.images.guest_init import with_network
from vnix.node.errors import BadRequest, UnknownImage
from vnix.node.images import ImageStore, qcow2_overlay
from vnix.node.models import CreateVm, DiskOut, NicOut, VmOut
from vnix.node.networks import NetworkStore
from vnix.node.snapshots import GoldenStore
from vnix.vmm.config import DiskConfig, MachineConfig, NetConfig, parse_size_mib

log = logging.getLogger(__name__)
CONSOLE_TAIL = 20


class VmService:
    def __init__(self, data_dir: Path, drivers: list[str], default_driver: str) -> None:
        self.data_dir = data_dir
        self.images = ImageStore(data_dir / "images")
        self.networks = NetworkStore(data_dir / "networks")
        self.snapshots = GoldenStore(data_dir / "snapshots", self.images)
        self.overlays = data_dir / "overlays"
        self.drivers: dict[str, Hypervisor] = {
            n: get_driver(n, data_dir / "run" / n) for n in drivers
        }
        if default_driver not in self.drivers:
            raise BadRequest(f"default driver {default_driver!r} is not among {drivers}")
        self.default_driver = default_driver

    # -- lookup ---------------------------------------------------------------------------
    def driver_of(self, name: str) -> Hypervisor:
        for drv in self.drivers.values():
            if name in drv.list():
                return drv
        raise NoSuchVm(name)

    def names(self) -> list[str]:
        return sorted(n for d in self.drivers.values() for n in d.list())

    def image_users(self, image: str) -> list[str]:
        users = set()
        for drv in self.drivers.values():
            for vm in drv.list():
                if drv.spec(vm).image == image or (self.overlays / vm / f"{image}.qcow2").exists():
                    users.add(vm)
        return sorted(users)

    def snapshot_users(self, snapshot: str) -> list[str]:
        """The clones of golden snapshot ``snapshot`` (their run dirs' clone.json name it)."""
        path = str(self.snapshots.root / snapshot / "golden.snap")
        users = []
        for drv in self.drivers.values():
            root = getattr(drv, "root", None)
            for vm in drv.list() if root is not None else []:
                try:
                    if json.loads((root / vm / "clone.json").read_text())["snapshot"] == path:
                        users.append(vm)
                except (OSError, ValueError, KeyError):
                    continue
        return sorted(users)

    def network_users(self, network: str) -> list[str]:
        return sorted(vm for d in self.drivers.values() for vm in d.list()
                      if any(n.network == network for n in d.spec(vm).nics))

    # -- create ---------------------------------------------------------------------------
    def _attach_nics(self, req: CreateVm, config: MachineConfig,
                     undo: list[tuple[str, Callable[[], None]]]) -> list[NicSpec]:
        """A TAP on its network for each NIC asked for, in ``config``; each one's removal in ``undo``."""
        nics: list[NicSpec] = []
        for nreq in req.nics:
            nic = self.networks.attach(nreq.network, nreq.ip)
            nics.append(nic)
            undo.append((f"remove TAP {nic.tap}", lambda n=nic: self.networks.detach(n)))
            config.nets.append(NetConfig(kind="tap", name=nic.tap, mac=nic.mac))
        return nics

    def create(self, req: CreateVm) -> VmOut:
        if req.snapshot:
            return self.clone(req)
        drv = self.drivers.get(req.driver or self.default_driver)
        if drv is None:
            raise BadRequest(f"driver {req.driver!r} is not enabled on this agent "
                             f"(enabled: {', '.join(self.drivers)})")
        if req.name in self.names():
            raise VmExists(req.name)
        image = self.images.get(req.image)
        if not image.kernel:
            raise BadRequest(f"image {req.image!r} is a disk without a kernel: give a kernel "
                             "image as 'image' and this one as 'disk_image'")
        disk_image = self.images.get(req.disk_image) if req.disk_image else None
        if disk_image and not disk_image.disk:
            raise UnknownImage(f"image {req.disk_image!r} has no disk")
        config = MachineConfig(
            kernel=image.kernel, initrd=image.initrd,
            cmdline=req.cmdline if req.cmdline is not None else image.cmdline,
            memory_mib=parse_size_mib(req.memory), cpus=req.cpus, arch=image.arch,
        )
        config.validate()  # impossible sizes -> ConfigError (400) before anything is made

        undo: list[tuple[str, Callable[[], None]]] = []
        try:
            vm_dir = self.overlays / req.name
            undo.append(("remove overlays", lambda: shutil.rmtree(vm_dir, ignore_errors=True)))
            for img in (i for i in (image, disk_image) if i is not None and i.disk):
                path = self.images.make_overlay(img, vm_dir / f"{img.name}.qcow2")
                config.disks.append(DiskConfig(str(path), format="qcow2"))
            nics = self._attach_nics(req, config, undo)
            if nics:  # the tiny guest's /init configures eth0 from vnix.ip= / vnix.dhcp=1
                rec = self.networks.get(nics[0].network)
                config.cmdline = with_network(config.cmdline, nics[0].ip, rec.gateway,
                                              dhcp=rec.dhcp)
            spec = VmSpec(req.name, config, image=image.name, nics=nics,
                          options=DriverOptions(accel=req.accel, vnc=req.vnc))
            drv.define(spec)
            undo.append(("undefine", lambda: drv.destroy(req.name)))
            if req.start:
                drv.start(req.name)
        except Exception:
            _rollback(req.name, undo)
            raise
        return self.out(req.name)

    def clone(self, req: CreateVm) -> VmOut:
        """A VM cloned from golden snapshot ``req.snapshot`` of ``req.image`` (made first if
        this node has none): restored by the snapshot's clone server, RAM shared
        copy-on-write with the file, its own overlay of the snapshot's disk, taps, MACs and
        vsock CID; told its identity over vsock when the guest waits for one."""
        from vnix.hypervisor.native import NativeHypervisor

        assert req.snapshot
        drv = self.drivers.get(req.driver or "native")
        if not isinstance(drv, NativeHypervisor):
            raise BadRequest(f"VMs from a snapshot need the native driver "
                             f"({'not enabled on this agent' if drv is None else req.driver})")
        if req.name in self.names():
            raise VmExists(req.name)
        gold = self.snapshots.ensure(req.snapshot, req.image, parse_size_mib(req.memory),
                                     req.cpus)
        image = self.images.get(gold.image)
        config = MachineConfig(kernel=image.kernel or "", initrd=image.initrd,
                               cmdline=gold.cmdline, memory_mib=gold.memory_mib,
                               cpus=gold.cpus, arch=image.arch)
        undo: list[tuple[str, Callable[[], None]]] = []
        try:
            vm_dir = self.overlays / req.name
            undo.append(("remove overlays", lambda: shutil.rmtree(vm_dir, ignore_errors=True)))
            overlays: list[tuple[str, str]] = []
            if gold.disk:
                overlay = qcow2_overlay(gold.disk, "qcow2", vm_dir / f"{image.name}.qcow2")
                config.disks.append(DiskConfig(str(overlay), format="qcow2"))
                overlays.append((str(overlay), gold.disk))
            nics = self._attach_nics(req, config, undo)
            spec = VmSpec(req.name, config, image=image.name, nics=nics)
            undo.append(("undefine", lambda: drv.destroy(req.name)))
            got = drv.clone(spec, Path(gold.path), self.snapshots.server(gold.name),
                            vsock=gold.vsock, overlays=overlays)
            if gold.identity_port is not None and got.get("vsock_uds"):
                answer = self.snapshots.send_identity(gold, req.name, str(got["vsock_uds"]),
                                                      nics[0].ip if nics else None)
                log.info("clone %s: identity answered %r", req.name, answer)
            if not req.start:
                drv.force_stop(req.name)
        except Exception:
            _rollback(req.name, undo)
            raise
        return self.out(req.name)

    # -- actions --------------------------------------------------------------------------
    def act(self, name: str, action: str) -> VmOut:
        drv = self.driver_of(name)
        match action:
            case "start": drv.start(name)
            case "force-stop": drv.force_stop(name)
            case "pause": drv.pause(name)
            case "resume": drv.resume(name)
            case "suspend": drv.suspend(name)
            case "resume-from-disk": drv.resume_from_disk(name)
            case _: raise BadRequest(f"unknown action {action!r}")
        return self.out(name)

    def stop(self, name: str, timeout: float, force_after: bool) -> VmOut:
        drv = self.driver_of(name)
        if not drv.stop(name, timeout) and force_after:
            drv.force_stop(name)
        return self.out(name)

    def destroy(self, name: str) -> None:
        drv = self.driver_of(name)
        spec = drv.spec(name)
        drv.destroy(name)
        steps: list[tuple[str, Callable[[], None]]] = [
            (f"remove TAP {n.tap}", lambda n=n: self.networks.detach(n)) for n in spec.nics
        ]
        steps.append(("remove overlays",
                      lambda: shutil.rmtree(self.overlays / name, ignore_errors=True)))
        _rollback(name, steps)

    # -- information ----------------------------------------------------------------------
    def out(self, name: str) -> VmOut:
        drv = self.driver_of(name)
        info = drv.info(name)
        return to_out(info, drv.spec(name).image, drv.console_lines(name, CONSOLE_TAIL))

    def list(self) -> list[VmOut]:
        out = []
        for name in self.names():
            try:
                out.append(self.out(name))
            except NoSuchVm:  # destroyed meanwhile
                continue
        return out

    def infos(self) -> list[VmInfo]:
        res = []
        for drv in self.drivers.values():
            for name in drv.list():
                try:
                    res.append(drv.info(name))
                except VnixError as exc:
                    log.warning("info %s: %s", name, exc)
        return res

    def reconcile(self) -> dict[str, VmState]:
        """Look at every VM (pid alive? QMP answers?) and record what is true; at agent start
        this is how VMs that ran on are found again and dead ones are marked crashed."""
        states = {}
        for drv in self.drivers.values():
            for name in drv.list():
                try:
                    states[name] = drv.state(name)
                except VnixError as exc:
                    log.warning("reconcile %s: %s", name, exc)
        return states


def _rollback(name: str, steps: list[tuple[str, Callable[[], None]]]) -> None:
    """Try every cleanup step, newest first; log each failure (STYLE.md #13)."""
    for what, step in reversed(steps):
        try:
            step()
        except Exception as exc:  # every step is tried whatever the others did
            log.error("cleaning up VM %s: %s failed: %s", name, what, exc)


def to_out(info: VmInfo, image: str | None, tail: list[str]) -> VmOut:
    return VmOut(
        name=info.name, uuid=info.uuid, driver=info.driver, state=info.state.value,
        image=image, pid=info.pid, cpus=info.cpus, cpu_time_s=info.cpu_time_s,
        memory_mib=info.memory_mib, balloon_mib=info.balloon_mib, rss_mib=info.rss_mib,
        disks=[DiskOut(device=d.device, path=d.path, format=d.format, readonly=d.readonly,
                       virtual_size=d.virtual_size) for d in info.disks],
        nics=[NicOut(network=n.network, mac=n.mac, tap=n.tap, ip=n.ip) for n in info.nics],
        exit_counters=info.exit_counters, vnc=info.vnc, accel=info.accel, detail=info.detail,
        console_tail=tail, **io_counters(info),
    )


def io_counters(info: VmInfo) -> dict[str, int | None]:
    """A VM's traffic seen from the host: its taps' byte counters (what a tap sends, the
    guest receives) and its process's block I/O (/proc/PID/io); None where not known."""
    out: dict[str, int | None] = {}
    taps = [Path("/sys/class/net") / n.tap / "statistics" for n in info.nics if n.tap]
    try:
        if taps:
            out["net_rx_bytes"] = sum(int((t / "tx_bytes").read_text()) for t in taps)
            out["net_tx_bytes"] = sum(int((t / "rx_bytes").read_text()) for t in taps)
    except (OSError, ValueError):
        out.pop("net_rx_bytes", None)
    if info.pid:
        try:
            fields = dict(line.split(": ") for line in
                          Path(f"/proc/{info.pid}/io").read_text().splitlines())
            out["disk_read_bytes"] = int(fields["read_bytes"])
            out["disk_write_bytes"] = int(fields["write_bytes"])
        except (OSError, ValueError, KeyError):
            pass
    return out
