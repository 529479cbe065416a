"""``vnix vmm ...``: talk to one native VMM process through its control API.

    vnix vmm state    --api-sock /tmp/vm.sock          (or a VM name: vnix vmm state web1)
    vnix vmm pause|resume TARGET
    vnix vmm stop TARGET [--force] [--timeout 30]
    vnix vmm stats TARGET
    vnix vmm balloon TARGET [SIZE]            SIZE: the balloon's size (what the guest gives back)
    vnix vmm snapshot TARGET PATH [--diff] [--stay-paused]

TARGET is ``--api-sock PATH`` (a VMM started with ``vnix run --api-sock PATH`` or
``python -m vnix.vmm --api-sock PATH``) or the name of a native VM of the local agent (its
socket is ``<data-dir>/run/native/<name>/qmp.sock``). ``--json`` prints the API's answer.
Exit status: 2 for bad input or a request the VM's state refuses, 1 when the VMM cannot be
reached (the reason is printed).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from vnix.cli.client import out_console, print_json
from vnix.cli.main import app
from vnix.errors import UsageError

vmm_app = typer.Typer(help="One native VMM process, through its control API.", no_args_is_help=True)
app.add_typer(vmm_app, name="vmm")

NAME = typer.Argument(None, help="A native VM of the local agent (instead of --api-sock).", show_default=False)
SOCK = typer.Option(None, "--api-sock", help="The VMM's control socket.")
DATA_DIR = typer.Option(None, "--data-dir", help="The agent's data directory (default $VNIX_HOME/agent).")
JSON = typer.Option(False, "--json", help="Print the API's JSON answer.")


class VmmUsageError(UsageError):
    exit_code = 2


def _split(args: list[str] | None, api_sock: str | None, extra: int, what: str) -> tuple[str | None, list[str]]:
    """(VM name or None, the other positional arguments): with --api-sock there is no name."""
    args = list(args or [])
    want = extra if api_sock is not None else extra + 1
    if len(args) != want:
        target = "--api-sock PATH" if api_sock is not None else "NAME (or --api-sock PATH)"
        raise VmmUsageError(f"expected {target}{' ' + what if what else ''}")
    return (None, args) if api_sock is not None else (args[0], args[1:])


def _client(name: str | None, api_sock: str | None, data_dir: Path | None) -> Any:
    from vnix.vmm.api.client import VmmClient

    if (name is None) == (api_sock is None):
        raise VmmUsageError("give either a VM name or --api-sock PATH")
    if api_sock is not None:
        return VmmClient(api_sock)
    assert name is not None
    if not name or "/" in name or name.startswith("."):
        raise VmmUsageError(f"{name!r} is not a VM name")
    if data_dir is None:
        from vnix.images.store import vnix_home

        data_dir = vnix_home() / "agent"
    run = data_dir / "run" / "native" / name
    if not (run / "spec.json").is_file():
        raise VmmUsageError(f"no native VM named {name!r} under {data_dir / 'run' / 'native'}")
    return VmmClient(str(run / "qmp.sock"))


def _kv(rows: list[tuple[str, Any]]) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, "-" if value is None else str(value))
    out_console.print(table)


def _mib(n: Any) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


@vmm_app.command()
def state(name: str = NAME, api_sock: str = SOCK, data_dir: Path = DATA_DIR, as_json: bool = JSON) -> None:
    """The VM's state, uptime and configuration."""
    vm = _client(name, api_sock, data_dir).vm()
    if as_json:
        return print_json(vm)
    cfg = vm.get("config", {})
    _kv([("state", vm["state"]), ("uptime", f"{vm['uptime_s']:.1f} s"), ("pid", vm.get("pid")),
         ("kernel", cfg.get("kernel")), ("cpus", cfg.get("cpus")), ("memory", f"{cfg.get('memory_mib')} MiB")])


@vmm_app.command()
def pause(name: str = NAME, api_sock: str = SOCK, data_dir: Path = DATA_DIR, as_json: bool = JSON) -> None:
    """Pause every vCPU."""
    out = _client(name, api_sock, data_dir).pause()
    print_json(out) if as_json else print(out["state"])


@vmm_app.command()
def resume(name: str = NAME, api_sock: str = SOCK, data_dir: Path = DATA_DIR, as_json: bool = JSON) -> None:
    """Resume a paused VM."""
    out = _client(name, api_sock, data_dir).resume()
    print_json(out) if as_json else print(out["state"])


@vmm_app.command()
def stop(name: str = NAME, api_sock: str = SOCK, data_dir: Path = DATA_DIR, as_json: bool = JSON,
         force: bool = typer.Option(False, "--force", help="Stop now instead of asking the guest."),
         timeout: float = typer.Option(30.0, "--timeout", help="Seconds the guest gets before a forced stop."),
         ) -> None:
    """Ask the guest to stop (Ctrl-Alt-Del; forced after --timeout), or stop it now (--force)."""
    if not force and not 0 < timeout <= 3600:
        raise VmmUsageError(f"--timeout must be in (0, 3600] seconds, not {timeout:g}")
    out = _client(name, api_sock, data_dir).stop(graceful=not force, timeout=timeout)
    if as_json:
        return print_json(out)
    print("stopping now" if force else
          f"sent Ctrl-Alt-Del; forced stop in {timeout:g} s if the guest does not stop")


@vmm_app.command()
def stats(name: str = NAME, api_sock: str = SOCK, data_dir: Path = DATA_DIR, as_json: bool = JSON) -> None:
    """VM exits by reason, memory, devices, timings."""
    st = _client(name, api_sock, data_dir).stats()
    if as_json:
        return print_json(st)
    mem = st["memory"]
    rows: list[tuple[str, Any]] = [("state", st["state"]), ("uptime", f"{st['uptime_s']:.1f} s"),
                                   ("exits total", st["exits_total"])]
    rows += [(f"  exits {k}", v) for k, v in sorted(st["exits"].items())]
    rows += [("guest RAM", _mib(mem["guest_ram_bytes"])), ("guest resident", _mib(mem["guest_resident_bytes"])),
             ("VMM RSS", _mib(mem["rss_bytes"])), ("VMM overhead", _mib(mem["vmm_overhead_bytes"]))]
    if mem.get("balloon"):
        rows.append(("balloon", f"target {mem['balloon']['target_mib']:g} MiB, "
                                f"actual {mem['balloon']['actual_mib']:g} MiB"))
    for dev, m in sorted(st["devices"].items()):
        rows.append((f"device {dev}", f"requests {m.get('requests', 0)}, notifications {m.get('notifications', 0)}, "
                                      f"bad chains {m.get('bad_chains', 0)}"))
    rows += [(f"timing {k}", f"{v:.1f} ms") for k, v in st.get("timings_ms", {}).items()]
    _kv(rows)


@vmm_app.command()
def balloon(args: list[str] = typer.Argument(None, help="[NAME] [SIZE]: the balloon's size (e.g. 64M); "
                                             "without SIZE, show it.", show_default=False),
            api_sock: str = SOCK, data_dir: Path = DATA_DIR, as_json: bool = JSON) -> None:
    """Show the balloon, or set its size (the memory the guest gives back)."""
    given = len(args or []) - (0 if api_sock is not None else 1)
    name, rest = _split(args, api_sock, 1 if given >= 1 else 0, "[SIZE]")
    client = _client(name, api_sock, data_dir)
    if not rest:
        out = client.balloon()
    else:
        from vnix.vmm.config import parse_size_mib

        out = client.set_balloon(parse_size_mib(rest[0]))
    if as_json:
        return print_json(out)
    _kv([("target", f"{out['target_mib']:g} MiB"), ("actual", f"{out['actual_mib']:g} MiB"),
         ("driver active", out["driver_active"])] + [(f"guest {k}", v) for k, v in out["guest_stats"].items()])


@vmm_app.command()
def snapshot(args: list[str] = typer.Argument(None, help="[NAME] PATH: the snapshot file.", show_default=False),
             diff: bool = typer.Option(False, "--diff", help="Only memory changed since the last snapshot."),
             stay_paused: bool = typer.Option(False, "--stay-paused", help="Do not resume after saving."),
             api_sock: str = SOCK, data_dir: Path = DATA_DIR, as_json: bool = JSON) -> None:
    """Pause, save the whole machine to PATH, resume."""
    name, (path,) = _split(args, api_sock, 1, "PATH")
    out = _client(name, api_sock, data_dir).snapshot(os.path.abspath(path), "diff" if diff else "full",
                                                     resume=not stay_paused)
    if as_json:
        return print_json(out)
    print(f"saved {out['path']} ({_mib(out.get('size_bytes'))}, {out['took_ms']:.1f} ms); VM {out['state']}")
