"""The tiny guest's /init, and the small protocol between it and ``vnix run`` over the console.

The host passes one command on the kernel command line and reads its result back from the
serial console. Lines the guest prints (each on its own line, after the kernel's boot log)::

    vnix-guest: ready (kernel 6.1.0-56-amd64, 2 cpus, 3920 MiB)     READY_PREFIX ...
    vnix-guest: begin                                               BEGIN_MARKER
    <the command's stdout and stderr>
    vnix-guest: end status=7                                        END_MARKER + status

Before the ready line /init configures the network and the power button:

* ``vnix.ip=ADDR/PREFIX[,gw=GW]`` (:func:`ip_param`): static address on eth0 (and a default
  route through GW), lo up; ``vnix.dhcp=1``: busybox ``udhcpc`` on eth0 with a small script
  (:data:`UDHCPC_SCRIPT`) that sets the address, the default route and /etc/resolv.conf.
  Either way the guest then prints ``vnix-guest: eth0 198.19.80.10/24`` (ADDRESS_PREFIX).
* busybox ``acpid`` listens on /dev/input/event* (the ``button`` and ``evdev`` modules: Debian
  builds both as modules); the power button's event (``button/power PWRF 00000080``) runs
  /etc/acpi/PWRF/00000080 (:data:`POWER_SCRIPT`): every process is asked to stop, the disks
  are synced and remounted read-only, and the guest powers off. That is what QEMU's
  ``system_powerdown`` (the agent's graceful stop) presses.

When the kernel has vsock (/dev/vsock: the ``vsock`` module loaded) and the image carries
/sbin/vnix-identity (vnix/images/guest/vnix_identity.c, x86_64 images), /init starts it in the
background before the ready line, and only once it listens does the ready line end with
``; waiting for identity on port 5000`` (IDENTITY_NOTE; what vnix.node.snapshots.IDENTITY
looks for): a golden snapshot of the image then records identity_port 5000, and each clone is
told its name, address and a seed over vsock (the agent prints
``vnix-guest: identity NAME ADDR`` for each)::

    vnix-guest: ready (kernel 6.1.0-56-amd64, 1 cpus, 3920 MiB, root initramfs); waiting for identity on port 5000

The command travels as ``vnix.cmd=<base64 of a shell string>`` (:func:`encode_command`):
base64 keeps spaces, quotes and newlines out of the kernel's own parsing of its command line
(Documentation/admin-guide/kernel-parameters.rst: parameters are split on spaces, a dotted
name is kept for modules and not passed to init, so /init reads it from /proc/cmdline).
x86's and arm64's command lines hold at most 2048 bytes (COMMAND_LINE_SIZE), which bounds the
command.
"""
from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Sequence

from vnix.errors import UsageError

READY_PREFIX = "vnix-guest: ready"
BEGIN_MARKER = "vnix-guest: begin"
END_MARKER = "vnix-guest: end status="
CMD_PARAM = "vnix.cmd"
HOSTNAME_PARAM = "vnix.hostname"
IP_PARAM = "vnix.ip"
DHCP_PARAM = "vnix.dhcp"
ADDRESS_PREFIX = "vnix-guest: eth0 "
IDENTITY_PORT = 5000  # the vsock port /sbin/vnix-identity listens on (vnix_identity.c's default)
IDENTITY_NOTE = "; waiting for identity on port "  # the ready line's tail when it listens
COMMAND_LINE_SIZE = 2048  # arch/x86/include/asm/setup.h, arch/arm64/include/uapi/asm/setup.h

_END_RE = re.compile(re.escape(END_MARKER) + r"(\d+)")


class CommandTooLongError(UsageError):
    """The command does not fit on the kernel command line."""


def encode_command(argv: Sequence[str]) -> str:
    """argv -> the ``vnix.cmd=...`` kernel parameter.

    A single word containing a space or shell syntax is taken as a shell string as typed
    (``vnix run -- 'echo $HOME'``); otherwise the words are quoted so the guest's shell runs
    exactly that argv."""
    if not argv:
        raise UsageError("no command given after --")
    if len(argv) == 1 and re.search(r"[\s;&|<>$`'\"()*?]", argv[0]):
        script = argv[0]
    else:
        script = shlex.join(argv)
    token = base64.b64encode(script.encode()).decode()
    return f"{CMD_PARAM}={token}"


def decode_command(param: str) -> str:
    """The inverse of :func:`encode_command` (what the guest's /init does with base64 -d)."""
    _, _, token = param.partition("=")
    return base64.b64decode(token).decode()


def ip_param(address: str, gateway: str | None = None) -> str:
    """``198.19.80.10/24`` (+ gateway) -> ``vnix.ip=198.19.80.10/24,gw=198.19.80.1``."""
    if "/" not in address or any(c in address for c in " ,="):
        raise UsageError(f"vnix.ip needs ADDRESS/PREFIX, got {address!r}")
    return f"{IP_PARAM}={address}" + (f",gw={gateway}" if gateway else "")


def with_network(cmdline: str, address: str | None, gateway: str | None = None,
                 dhcp: bool = False) -> str:
    """``cmdline`` plus the network parameter for eth0 (static ``address`` or ``dhcp``),
    unless it already carries one (the caller's choice wins)."""
    words = cmdline.split()
    if any(w.startswith((f"{IP_PARAM}=", f"{DHCP_PARAM}=")) for w in words):
        return cmdline
    if address:
        return " ".join([*words, ip_param(address, gateway)])
    if dhcp:
        return " ".join([*words, f"{DHCP_PARAM}=1"])
    return cmdline


def check_cmdline(cmdline: str) -> None:
    if len(cmdline.encode()) >= COMMAND_LINE_SIZE:
        raise CommandTooLongError(
            f"kernel command line is {len(cmdline.encode())} bytes; Linux takes at most "
            f"{COMMAND_LINE_SIZE - 1} (shorten the command or put it in a script on a disk)"
        )


def parse_end_marker(line: str) -> int | None:
    """``vnix-guest: end status=7`` -> 7; anything else -> None."""
    m = _END_RE.search(line)
    return int(m.group(1)) if m else None


# Run by udhcpc on its events ($1; the lease in $ip, $mask (prefix length), $router, $dns,
# $domain), as busybox's examples/udhcp/simple.script does, with ip(8) instead of ifconfig.
UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
        while ip route del default dev "$interface" 2>/dev/null; do :; done
        for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    fi
    : > /etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done ;;
esac
exit 0
"""

# Run by acpid for the power button: stop everything else, sync, remount read-only, power off
# (PID 1 is a shell that ignores poweroff's signal, so the script powers off itself).
POWER_SCRIPT = r"""#!/bin/sh
echo "vnix-guest: power button: powering off" > /dev/console
kill -TERM -1 2>/dev/null; sleep 1; kill -KILL -1 2>/dev/null
sync
mount -o remount,ro / 2>/dev/null
poweroff -f
"""

# The script is the same in the initramfs (/init) and on the root disk (/sbin/init). Stage 1
# (PID 1 in the initramfs) mounts the kernel filesystems and loads the modules listed in
# /lib/modules/load-order, then switches to /dev/vda if it carries /sbin/init; stage 2 (or stage 1
# when there is no disk) announces readiness and runs the command or a console shell.
# An image built for another architecture carries only /bin/busybox and /bin/sh (the builder
# cannot run a foreign busybox to ask for its applets), so the first line makes the links.
INIT_SCRIPT = r"""#!/bin/sh
# vnix tiny guest init (generated by vnix.images; see vnix/images/guest_init.py)
[ -e /bin/mount ] || /bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TERM=linux
[ -e /proc/self ] || mount -t proc proc /proc
mounted() { grep -q "^[^ ]* $1 " /proc/mounts; }
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /run
mounted /dev/pts || mount -t devpts devpts /dev/pts
CMDLINE=$(cat /proc/cmdline)
param() { for w in $CMDLINE; do case "$w" in "$1="*) echo "${w#*=}"; return;; esac; done; }

if [ -z "$VNIX_STAGE2" ]; then
    if [ -f /lib/modules/load-order ]; then
        while read -r m; do
            insmod "/lib/modules/$m.ko" 2>/dev/null || echo "vnix-guest: cannot load $m" >&2
        done < /lib/modules/load-order
    fi
    if [ -b /dev/vda ]; then
        mkdir -p /newroot
        if mount -t ext4 /dev/vda /newroot 2>/dev/null; then
            if [ -x /newroot/sbin/init ]; then
                for d in proc sys dev; do
                    mkdir -p /newroot/$d; mount --move /$d /newroot/$d
                done
                export VNIX_STAGE2=1 VNIX_ROOT=/dev/vda
                exec switch_root /newroot /sbin/init
            fi
            mkdir -p /mnt/vda && mount --move /newroot /mnt/vda
        fi
    fi
fi

HOSTNAME=$(param vnix.hostname)
hostname "${HOSTNAME:-vnix}"
ip link set lo up 2>/dev/null
mkdir -p /etc/acpi/PWRF /var/log
cat > /etc/acpi/PWRF/00000080 <<'EOF_POWER'
@POWER_SCRIPT@EOF_POWER
cat > /etc/udhcpc.script <<'EOF_DHCP'
@UDHCPC_SCRIPT@EOF_DHCP
chmod 755 /etc/acpi/PWRF/00000080 /etc/udhcpc.script
[ -e /dev/input/event0 ] || sleep 0.2
acpid -c /etc/acpi -l /var/log/acpid.log 2>/dev/null
NETIP=$(param vnix.ip)
if [ -n "$NETIP" ]; then
    ip link set eth0 up && ip addr add "${NETIP%%,*}" dev eth0
    case "$NETIP" in *,gw=*) GW=${NETIP#*,gw=}; ip route add default via "${GW%%,*}";; esac
elif [ "$(param vnix.dhcp)" = 1 ]; then
    ip link set eth0 up && udhcpc -i eth0 -s /etc/udhcpc.script -t 5 -T 1 -b -x "hostname:$(hostname)" >/dev/null 2>&1
fi
if [ -n "$NETIP" ] || [ "$(param vnix.dhcp)" = 1 ]; then
    echo "vnix-guest: eth0 $(ip -4 -o addr show dev eth0 | awk '{print $4; exit}')"
fi
IDENTITY=
if [ -x /sbin/vnix-identity ] && [ -e /dev/vsock ] && /sbin/vnix-identity --daemon --port @IDENTITY_PORT@; then
    IDENTITY="@IDENTITY_NOTE@@IDENTITY_PORT@"
fi
MEM=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
echo "vnix-guest: ready (kernel $(uname -r), $(nproc) cpus, $MEM MiB, root ${VNIX_ROOT:-initramfs})$IDENTITY"

CMD=$(param vnix.cmd)
if [ -n "$CMD" ]; then
    SCRIPT=$(echo "$CMD" | base64 -d)
    echo "vnix-guest: begin"
    cd /root 2>/dev/null || cd /
    sh -c "$SCRIPT" </dev/null 2>&1
    STATUS=$?
    echo "vnix-guest: end status=$STATUS"
    sync
    poweroff -f
fi
while true; do
    setsid cttyhack sh -l
    echo "vnix-guest: shell exited; powering off"
    sync
    poweroff -f
done
""".replace("@POWER_SCRIPT@", POWER_SCRIPT).replace("@UDHCPC_SCRIPT@", UDHCPC_SCRIPT).replace(
    "@IDENTITY_NOTE@", IDENTITY_NOTE).replace("@IDENTITY_PORT@", str(IDENTITY_PORT))
