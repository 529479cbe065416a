"""``vnix host check``: one line per check, ``--json`` for machines; exit 1 if any check fails."""
from __future__ import annotations

import json
import sys

import typer

from vnix.cli.main import app

host_app = typer.Typer(help="Inspect this host.", no_args_is_help=True)
app.add_typer(host_app, name="host")


@host_app.command("check")
def check(as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON.")) -> None:
    """Check that this host can run vnix guests (KVM, CPU features, networking, QEMU)."""
    from vnix.host import recommended_driver, run_checks

    checks = run_checks()
    driver, reason = recommended_driver()
    if as_json:
        print(json.dumps({"checks": [c.to_dict() for c in checks],
                          "recommended_driver": {"driver": driver, "reason": reason}}, indent=2))
    else:
        for c in checks:
            print(c.line())
        print(f"{'info':<4}  {'default driver':<22}  {driver}: {reason}")
    if any(c.status == "fail" for c in checks):
        sys.exit(1)
