"""The VMM process: ``python -m vnix.vmm --kernel F [--initrd F] [--cmdline S] [--memory 256M]
[--cpus N] [--debug-exit] [--stats] [--stats-json PATH]`` or ``--config machine.json``.

Flags given next to ``--config`` override the file's fields. ``--flat`` loads the kernel file as a
raw 32-bit image at 1 MiB (for hand-made test guests). The exit status says how the VM ended
(table in :mod:`vnix.vmm.exitcodes`). This process imports only the standard library, vnix.kvm
and vnix.vmm so that it starts fast and stays small.
"""
from __future__ import annotations

import time

T0 = time.monotonic()  # before any vnix import: the start of the VMM's own work

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import NoReturn, Sequence  # noqa: E402

from vnix.errors import UsageError, VnixError  # noqa: E402
from vnix.vmm import ConfigError  # noqa: E402
from vnix.vmm.config import MachineConfig, parse_size_mib  # noqa: E402
from vnix.vmm.exitcodes import BAD_CONFIG, VMM_FAILURE  # noqa: E402

PROG = "vnix-vmm"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2 (not argparse's usage dump)
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Run one VM on /dev/kvm.")
    p.add_argument("--config", metavar="FILE", help="a MachineConfig as JSON")
    p.add_argument("--kernel", metavar="FILE", help="bzImage, vmlinux or PVH ELF")
    p.add_argument("--initrd", metavar="FILE")
    p.add_argument("--cmdline", metavar="S")
    p.add_argument("--memory", metavar="SIZE", help="guest RAM, e.g. 256M or 1G")
    p.add_argument("--cpus", metavar="N", type=int)
    p.add_argument("--debug-exit", action="store_true", default=None, help="isa-debug-exit on port 0x501")
    p.add_argument("--flat", action="store_true", help="the kernel is a raw 32-bit image loaded at 1 MiB")
    p.add_argument("--stats", action="store_true", help="print exit counters and timings on stderr")
    p.add_argument("--stats-json", metavar="PATH", help="write exit counters and timings as JSON")
    return p


def config_from_args(args: argparse.Namespace) -> MachineConfig:
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
    if not isinstance(config.memory_mib, int) or not isinstance(config.cpus, int):
        raise ConfigError("memory_mib and cpus must be whole numbers")
    config.validate()
    return config


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from vnix.vmm.stats import Stats

    stats = Stats(T0)
    try:
        args = _parser().parse_args(argv)
        config = config_from_args(args)
        from vnix.vmm.machine import Machine, flat_loader, linux_loader

        machine = Machine(config, stats, loader=flat_loader if args.flat else linux_loader)
        machine.build()
    except UsageError as exc:
        _say(f"error: {exc}")
        return BAD_CONFIG
    except VnixError as exc:
        _say(f"error: {exc}")
        return VMM_FAILURE

    stop = machine.run()
    stats.finish(stop.status, stop.reason)
    if stop.report:
        _say(stop.reason)
    if args.stats_json:
        try:
            stats.write_json(args.stats_json)
        except OSError as exc:
            _say(f"cannot write --stats-json {args.stats_json}: {exc.strerror}")
    if args.stats:
        stats.print()
    return stop.status


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # vCPU threads may still sit in KVM_RUN (APs never started): don't wait
