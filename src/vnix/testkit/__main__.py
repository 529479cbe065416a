"""``python -m vnix.testkit [GUEST...|all] [--vmm qemu|vnix] [--compare]``: run test-kit guests.

Prints each guest's report (or, with --compare, runs QEMU and vnix and prints the lines that
differ). Exit status 0 when every run passed (and, with --compare, every report matched), 1
otherwise, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import sys

from vnix.errors import VnixError
from vnix.testkit.runner import GUESTS, GuestRun, run_guest

#: what each guest needs from the machine when the user does not say
DEFAULTS: dict[str, dict[str, object]] = {
    "smp": {"cpus": 2},
    "serial": {"stdin": b"hello from the testkit\n"},
}


def _run(name: str, vmm: str, args: argparse.Namespace) -> GuestRun:
    kw: dict[str, object] = dict(DEFAULTS.get(name, {}))
    if args.cpus is not None:
        kw["cpus"] = args.cpus
    if args.memory is not None:
        kw["memory_mib"] = args.memory
    if args.cmdline is not None:
        kw["cmdline"] = args.cmdline
    if args.stdin is not None:
        kw["stdin"] = args.stdin.encode() + b"\n"
    return run_guest(name, vmm=vmm, timeout=args.timeout, **kw)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vnix.testkit", description=__doc__.splitlines()[0])
    p.add_argument("guests", nargs="*", default=["all"], help=f"guests: all or {', '.join(GUESTS)}")
    p.add_argument("--vmm", choices=("qemu", "vnix"), default="qemu")
    p.add_argument("--compare", action="store_true", help="run under QEMU and vnix, diff reports")
    p.add_argument("--cpus", type=int)
    p.add_argument("--memory", type=int, metavar="MIB")
    p.add_argument("--cmdline")
    p.add_argument("--stdin", metavar="LINE", help="a line sent to the serial input")
    p.add_argument("--timeout", type=float, default=60)
    args = p.parse_args(argv)
    names = list(GUESTS) if args.guests == ["all"] else args.guests
    ok = True
    try:
        for name in names:
            if not args.compare:
                run = _run(name, args.vmm, args)
                print(run.output.rstrip("\n"))
                print(f"# {run.summary()}; {'passed' if run.passed else 'FAILED'} in {run.wall_s:.3f} s")
                ok &= run.passed
                continue
            ref, got = _run(name, "qemu", args), _run(name, "vnix", args)
            same = ref.lines == got.lines and ref.status == got.status and ref.report.complete
            ok &= same and ref.passed
            print(f"{name}: {'same' if same else 'DIFFERENT'} (qemu {ref.wall_s:.3f} s, "
                  f"vnix {got.wall_s:.3f} s)")
            if not same:
                width = max((len(x) for x in ref.lines), default=10)
                for i in range(max(len(ref.lines), len(got.lines))):
                    a = ref.lines[i] if i < len(ref.lines) else "<missing>"
                    b = got.lines[i] if i < len(got.lines) else "<missing>"
                    if a != b:
                        print(f"  qemu: {a:<{width}}  vnix: {b}")
                print(f"  {ref.summary()}\n  {got.summary()}")
    except VnixError as exc:
        print(f"vnix.testkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
