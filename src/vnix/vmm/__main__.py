"""The VMM process: ``python -m vnix.vmm --kernel F [--initrd F] [--cmdline S] [--memory 256M]
[--cpus N] [--debug-exit] [--stats] [--stats-json PATH] [--api-sock PATH] [--serial unix:PATH]`` or
``--config machine.json``.

``--api-sock PATH`` serves the control API (:mod:`vnix.vmm.api`: pause, resume, stop, stats,
balloon, snapshot) on a Unix socket; ``--serial unix:PATH`` also serves the serial port on one
(:mod:`vnix.vmm.console`; standard input and output stay connected to it too).

Flags given next to ``--config`` override the file's fields. ``--flat`` loads the kernel file as a
raw 32-bit image at 1 MiB (for hand-made test guests). The exit status says how the VM ended
(table in :mod:`vnix.vmm.exitcodes`). This process imports only the standard library, vnix.kvm
and vnix.vmm so that it starts fast and stays small.
"""
from __future__ import annotations

import time

T0 = time.monotonic()  # before any vnix import: the start of the VMM's own work

import gc  # noqa: E402

# Start-up allocates tens of thousands of objects that live as long as the VM (modules, classes,
# device models); collecting them while the VM is being built only costs time. The collector is
# back on before the vCPUs run.
gc.disable()

import os  # noqa: E402
import sys  # noqa: E402

from vnix.errors import UsageError, VnixError  # noqa: E402
from vnix.vmm import ConfigError  # noqa: E402
from vnix.vmm.config import MachineConfig, parse_size_mib  # noqa: E402
from vnix.vmm.exitcodes import BAD_CONFIG, VMM_FAILURE  # noqa: E402
from vnix.vmm.finish import finish  # noqa: E402
from vnix.vmm.finish import say as _say  # noqa: E402

TYPE_CHECKING = False  # typing is not imported at VMM start-up (mypy reads this name as True)
if TYPE_CHECKING:
    from collections.abc import Sequence

USAGE = (
    "usage: python -m vnix.vmm (--kernel FILE | --config FILE) [--initrd FILE] [--cmdline S]\n"
    "       [--memory SIZE] [--cpus N] [--debug-exit] [--flat] [--stats] [--stats-json PATH]\n"
    "       [--disk PATH[,format=raw|qcow2][,readonly=on]]... [--net tap[,name=T][,bridge=B][,mac=M]]...\n"
    "       [--balloon SIZE|off] [--rng on|off] [--vsock cid=N,uds=PATH] [--api-sock PATH]\n"
    "       [--serial unix:PATH]\n"
    "       python -m vnix.vmm --restore SNAPSHOT [--memory-backing copy|private-mmap] [--disk ...]...\n"
    "       [--net ...]... [--vsock cid=N,uds=PATH] [--api-sock PATH] [--serial unix:PATH] [--stats-json PATH]\n"
)
_LIST_FLAGS = ("--disk", "--net")  # repeatable; added to the config's disks / nets (issue 3)
_VALUE_FLAGS = ("--config", "--kernel", "--initrd", "--cmdline", "--memory", "--cpus", "--stats-json",
                "--balloon", "--vsock", "--api-sock", "--serial", "--rng", "--restore", "--memory-backing")
_BOOL_FLAGS = ("--debug-exit", "--flat", "--stats")


class Args:
    """The parsed command line (argparse is not used: with its helpers it costs ~8 ms of start-up)."""

    def __init__(self) -> None:
        self.config: str | None = None
        self.kernel: str | None = None
        self.initrd: str | None = None
        self.cmdline: str | None = None
        self.memory: str | None = None
        self.cpus: int | None = None
        self.stats_json: str | None = None
        self.debug_exit = False
        self.flat = False
        self.stats = False
        self.help = False
        self.disk: list[str] = []
        self.net: list[str] = []
        self.balloon: str | None = None
        self.vsock: str | None = None
        self.rng: str | None = None
        self.api_sock: str | None = None
        self.restore: str | None = None  # --restore PATH: start from a snapshot (vnix.vmm.snapshot.process)
        self.memory_backing: str | None = None
        self.serial: str | None = None


def parse_args(argv: Sequence[str]) -> Args:
    """``--flag VALUE``, ``--flag=VALUE`` and boolean flags; anything else is a ConfigError."""
    args = Args()
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        i += 1
        name, eq, value = item.partition("=")
        if name in ("-h", "--help"):
            args.help = True
        elif name in _BOOL_FLAGS and not eq:
            setattr(args, name[2:].replace("-", "_"), True)
        elif name in _LIST_FLAGS:
            if not eq:
                if i >= len(items):
                    raise ConfigError(f"{name} needs a value")
                value = items[i]
                i += 1
            getattr(args, name[2:]).append(value)
        elif name in _VALUE_FLAGS:
            if not eq:
                if i >= len(items):
                    raise ConfigError(f"{name} needs a value")
                value = items[i]
                i += 1
            if name == "--cpus":
                try:
                    args.cpus = int(value)
                except ValueError:
                    raise ConfigError(f"--cpus must be a whole number, not {value!r}") from None
            else:
                setattr(args, name[2:].replace("-", "_"), value)
        else:
            raise ConfigError(f"unrecognized argument {item!r} (see --help)")
    return args


def config_from_args(args: Args) -> MachineConfig:
    if args.config:
        try:
            with open(args.config) as f:
                config = MachineConfig.from_json(f.read())
        except OSError as exc:
            raise ConfigError(f"cannot read --config {args.config}: {exc.strerror}") from None
    else:
        if not args.kernel:
            raise ConfigError("--kernel (or --config) is required")
        config = MachineConfig(kernel=args.kernel)
    if args.kernel:
        config.kernel = args.kernel
    if args.initrd is not None:
        config.initrd = args.initrd
    if args.cmdline is not None:
        config.cmdline = args.cmdline
    if args.memory is not None:
        config.memory_mib = parse_size_mib(args.memory)
    if args.cpus is not None:
        config.cpus = args.cpus
    if args.debug_exit:
        config.debug_exit = True
    if args.disk or args.net:
        from vnix.vmm.config import parse_disk, parse_net

        config.disks += [parse_disk(d) for d in args.disk]
        config.nets += [parse_net(n) for n in args.net]
    if args.balloon == "off":
        config.balloon, config.balloon_mib = False, 0
    elif args.balloon is not None:
        config.balloon, config.balloon_mib = True, parse_size_mib(args.balloon)
    if args.rng is not None:
        if args.rng not in ("on", "off"):
            raise ConfigError(f"--rng must be on or off, not {args.rng!r}")
        config.rng = args.rng == "on"
    if args.vsock is not None:
        from vnix.vmm.config import parse_vsock

        config.vsock = parse_vsock(args.vsock)
    if not isinstance(config.memory_mib, int) or not isinstance(config.cpus, int):
        raise ConfigError("memory_mib and cpus must be whole numbers")
    config.validate()
    return config


MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path is 108 bytes with the NUL (unix(7))


def socket_paths(args: Args) -> tuple[str | None, str | None]:
    """(control API socket, serial socket) from ``--api-sock`` and ``--serial unix:PATH``."""
    serial = None
    if args.serial is not None and args.serial != "stdio":
        kind, colon, serial = args.serial.partition(":")
        if kind != "unix" or not colon or not serial:
            raise ConfigError(f"--serial {args.serial!r}: expected unix:PATH or stdio")
    for flag, path in (("--api-sock", args.api_sock), ("--serial", serial)):
        if path is None:
            continue
        if len(path.encode()) > MAX_SOCKET_PATH:
            raise ConfigError(f"{flag} {path}: longer than a Unix socket path may be ({MAX_SOCKET_PATH} bytes)")
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ConfigError(f"{flag} {path}: its directory does not exist")
    return args.api_sock, serial


def main(argv: Sequence[str] | None = None) -> int:
    from vnix.vmm.stats import Stats

    stats = Stats(T0)
    api_listener = None
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if args.help:
            sys.stdout.write(USAGE)
            return 0
        api_sock, serial_sock = socket_paths(args)
        if args.restore is not None:
            from vnix.vmm.snapshot.process import restore_from_args

            machine = restore_from_args(args, stats)
        else:
            config = config_from_args(args)
            from vnix.vmm.machine import Machine, flat_loader, linux_loader

            machine = Machine(config, stats, loader=flat_loader if args.flat else linux_loader)
            machine.build()
        try:
            if serial_sock is not None:
                machine.console.listen(serial_sock)
            if api_sock is not None:
                from vnix.vmm.api import listen

                api_listener = listen(api_sock)  # bound now, served once the guest runs
        except OSError as exc:
            raise ConfigError(f"cannot serve a Unix socket: {exc.strerror} ({exc.filename or api_sock})") from None
    except UsageError as exc:
        _say(f"error: {exc}")
        return BAD_CONFIG
    except VnixError as exc:
        _say(f"error: {exc}")
        return VMM_FAILURE
    except Exception as exc:  # a VMM bug: a traceback for us, a status no guest can produce
        import traceback

        traceback.print_exc()
        _say(f"internal error: {exc!r}")
        return VMM_FAILURE

    on_running = None
    if api_sock is not None and api_listener is not None:
        path, listener = api_sock, api_listener

        def on_running() -> None:
            """The control API's modules load after the boot vCPU's first KVM_RUN: off the
            start path. Clients that connected earlier are waiting in the listen backlog."""
            from vnix.vmm.api import serve

            serve(machine, path, listener)

    gc.freeze()  # what start-up built stays: later collections need not walk it
    gc.enable()
    stop = machine.run(on_running)
    finish(machine, stop, stats, stats_json=args.stats_json, api_listener=api_listener, api_sock=api_sock)
    if args.stats:
        stats.print()
    return stop.status


def entry() -> None:
    """Run :func:`main` and end the process with its status (what ``python -m vnix.vmm`` and
    the launcher in :mod:`vnix.vmm.launch` call)."""
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # vCPU threads may still sit in KVM_RUN (APs never started): don't wait


if __name__ == "__main__":
    entry()
