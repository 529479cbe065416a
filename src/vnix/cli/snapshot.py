"""``vnix snapshot list|create|delete``: golden snapshots on the manager's hosts.

A golden snapshot is a booted VM of an image saved once on a host; ``vnix vm create NAME
--snapshot GOLD`` clones it in milliseconds (native driver). ``create`` builds the operation
the API takes (``vnix.cluster.ops_snapshot.CreateSnapshot``) and waits for its job with a
progress bar; making and deleting them is for admins, listing for anyone logged in.
"""
from __future__ import annotations

import time

import typer

from vnix.cli.client import ApiClient, err_console, mib, print_json, print_table
from vnix.cli.main import app
from vnix.cli.vm import JSON, NO_WAIT, CliUsageError, _job_done

snapshot_app = typer.Typer(help="Golden snapshots on the hosts, for fast clones (through the "
                           "manager).", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")


@snapshot_app.command("list")
def list_snapshots(host: str = typer.Option(None, help="only this host"),
                   as_json: bool = JSON) -> None:
    """Every host's golden snapshots, and the clones using each."""
    out = ApiClient().get("/snapshots", host=host)
    if as_json:
        return print_json(out)
    rows = out["snapshots"]
    for g in rows:
        g["mem"] = mib(g["memory_mib"])
        g["mb"] = f"{g['size'] / 2**20:.1f}M"
        g["when"] = str(g["created"])[:19].replace("T", " ")
        hidden = g["clones"] - len(g["used_by"])
        g["users"] = ",".join(g["used_by"] + ([f"+{hidden}"] if hidden else [])) or "-"
    print_table(rows, [("name", "NAME"), ("host", "HOST"), ("image", "IMAGE"),
                       ("mem", "MEMORY"), ("cpus", "CPUS"), ("mb", "SIZE"),
                       ("when", "CREATED"), ("clones", "CLONES"), ("users", "USED BY")],
                "no golden snapshots")
    for h in out["unanswered"]:
        err_console.print(f"vnix: warning: {h['host']} did not answer, its snapshots are not "
                          f"listed: {h['error']}", markup=False)


@snapshot_app.command("create")
def create(
    name: str = typer.Argument(..., help="the snapshot's name (clones name it: vnix vm create "
                               "NAME --snapshot SNAPSHOT)"),
    image: str = typer.Option("tiny", help="the image the template VM boots (vnix image list)"),
    memory: str = typer.Option("256M", help="the template's memory, so every clone's"),
    cpus: int = typer.Option(1, min=1, help="the template's vCPUs, so every clone's"),
    host: str = typer.Option(None, help="make it on this host, or on 'all' hosts with the "
                             "native driver (default: one the scheduler picks)"),
    ready: str = typer.Option(None, help="console text that says the template is ready to "
                              "save (default: the agent's readiness lines)"),
    vsock: bool = typer.Option(True, "--vsock/--no-vsock",
                               help="give the template (so each clone) a vsock"),
    no_wait: bool = NO_WAIT,
    as_json: bool = JSON,
) -> None:
    """Make a golden snapshot: a template VM boots the image (native driver) and is saved."""
    from vnix.cluster.ops_snapshot import CreateSnapshot  # the operation the API takes

    try:
        op = CreateSnapshot(name=name, image=image, memory=memory, cpus=cpus, host=host,
                            ready=ready, vsock=vsock)
    except ValueError as exc:
        first = exc.errors()[0] if hasattr(exc, "errors") else {"msg": str(exc), "loc": ()}
        raise CliUsageError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    client = ApiClient()
    t0 = time.monotonic()
    job = client.post("/snapshots", op.model_dump(exclude_none=True))
    job = _job_done(client, job, f"snapshot {name}", no_wait, as_json)
    if as_json or no_wait:
        return
    made = (job.get("result") or {}).get("hosts") or {}
    for h, r in sorted(made.items()):
        print(f"{name}: made on {h} ({r['size'] / 2**20:.1f}M; boot {r['boot_s']:.2f} s, "
              f"save {r['save_s']:.2f} s)")
    for h, why in sorted(((job.get("result") or {}).get("skipped") or {}).items()):
        print(f"{name}: not on {h}: {why}")
    print(f"snapshot {name} of {image} in {time.monotonic() - t0:.1f} s (job {job['id']})")


@snapshot_app.command("delete")
def delete(name: str,
           host: str = typer.Option(None, help="only on this host (default: every host "
                                    "holding it)")) -> None:
    """Delete a golden snapshot (admins); refused while VMs are clones of it."""
    from vnix.node.images import NAME_RE

    if not NAME_RE.match(name):
        raise CliUsageError(f"bad snapshot name {name!r}: use a-z, 0-9, '.', '_', '-' (max 63)")
    ApiClient().request("DELETE", f"/snapshots/{name}", params={"host": host} if host else None)
    print(f"snapshot {name} deleted" + (f" on {host}" if host else ""))
