"""The host side of virtio-net: a TAP device (Documentation/networking/tuntap.rst).

Opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR: every frame read from or written to the fd
starts with a ``struct virtio_net_hdr``; TUNSETVNETHDRSZ makes that header 12 bytes, the
virtio 1.x size with ``num_buffers`` (virtio 1.2, 5.1.6: "the header ... is 12 bytes when
VIRTIO_F_VERSION_1 is negotiated"), so a transmitted chain goes to the tap as it is. No
TUNSETOFFLOAD: the kernel hands us only whole, checksummed frames (no GSO), which is what a
guest that negotiated no offloads expects.

A ``name`` that exists as a persistent tap (the node agent makes them, ``vnt<n>``) is attached;
otherwise the kernel creates a tap that disappears when the VMM closes it. ``bridge`` enslaves
the tap to that bridge (created through pyroute2, as the agent does, if it does not exist).
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct

from vnix.vmm.devices.virtio import DeviceSetupError

log = logging.getLogger(__name__)

# include/uapi/linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
VNET_HDR_SIZE = 12
IFNAMSIZ = 16
# include/uapi/linux/sockios.h, include/uapi/linux/if.h
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCGIFINDEX, SIOCBRADDIF = 0x8913, 0x8914, 0x8933, 0x89A2
IFF_UP = 0x1


def _ifreq(name: str) -> bytes:
    return struct.pack(f"{IFNAMSIZ}s24x", name.encode())


def _ifindex(s: socket.socket, name: str) -> int:
    return struct.unpack_from("i", fcntl.ioctl(s, SIOCGIFINDEX, _ifreq(name)), IFNAMSIZ)[0]


def _create_bridge(name: str) -> None:
    """A bridge that does not exist yet: made and brought up through netlink (pyroute2)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=name, kind="bridge")
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
    except (NetlinkError, IndexError) as exc:
        raise OSError(f"cannot create bridge {name}: {exc}") from None


class Tap:
    """One TAP fd, non-blocking."""

    def __init__(self, name: str | None = None, *, bridge: str | None = None) -> None:
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise DeviceSetupError(f"cannot open /dev/net/tun: {exc.strerror}") from None
        try:
            ifr = struct.pack(f"{IFNAMSIZ}sH22x", (name or "").encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            out = fcntl.ioctl(self.fd, TUNSETIFF, ifr)
            self.name = out[:IFNAMSIZ].rstrip(b"\0").decode()
            fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
        except OSError as exc:
            os.close(self.fd)
            raise DeviceSetupError(f"cannot set up tap {name or '(new)'}: {exc.strerror}") from None
        self.bridge = bridge
        try:
            self._link_up(bridge)
        except DeviceSetupError:
            self.close()
            raise

    def _link_up(self, bridge: str | None) -> None:
        """Bring the tap up and put it on ``bridge``: ioctls on a socket (SIOCSIFFLAGS,
        SIOCBRADDIF), so the VMM's start-up stays standard-library only; a missing bridge is
        created through pyroute2, as the agent creates its bridges."""
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                if bridge:
                    try:
                        _ifindex(s, bridge)
                    except OSError:
                        _create_bridge(bridge)
                    # net/bridge/br_ioctl.c: ifr_name is the bridge, ifr_ifindex the new port
                    fcntl.ioctl(s, SIOCBRADDIF, struct.pack(f"{IFNAMSIZ}si20x", bridge.encode(), _ifindex(s, self.name)))
                flags = struct.unpack_from("H", fcntl.ioctl(s, SIOCGIFFLAGS, _ifreq(self.name)), IFNAMSIZ)[0]
                fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(f"{IFNAMSIZ}sH22x", self.name.encode(), flags | IFF_UP))
        except OSError as exc:
            raise DeviceSetupError(f"tap {self.name}: cannot bring it up"
                                   + (f" on bridge {bridge}" if bridge else "") + f": {exc.strerror or exc}") from None

    def readv(self, buffers: list[bytearray] | list[memoryview]) -> int | None:
        """One frame (header + packet) into ``buffers``; None if none is waiting."""
        try:
            return os.readv(self.fd, buffers)
        except BlockingIOError:
            return None

    def writev(self, buffers: list[bytes | memoryview]) -> bool:
        """Send one frame; False if the kernel would block or refused it (the frame is dropped,
        as a NIC drops when its queue is full)."""
        try:
            os.writev(self.fd, buffers)
            return True
        except BlockingIOError:
            return False
        except OSError as exc:  # EINVAL (bad header), EIO (link down): drop this frame
            log.debug("tap %s: write failed: %s", self.name, exc)
            return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class NullTap(Tap):
    """A backend with no network behind it (NetConfig kind ``none``): one end of a datagram
    socketpair, so the device's thread has an fd to wait on; frames the guest sends are
    dropped, none arrive. A clone server's idle child restores its rehearsal machine with it
    (:func:`vnix.vmm.snapshot.restore.rehearse`) rather than attach a tap another VM may own."""

    def __init__(self) -> None:  # noqa: D107 - no tap, no bridge
        ours, self._peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)
        self.fd = ours.detach()
        self.name, self.bridge = "", None

    def close(self) -> None:
        super().close()
        self._peer.close()

