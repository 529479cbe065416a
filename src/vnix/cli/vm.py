"""``vnix login`` and ``vnix vm ...``: VMs through the manager's REST API.

Every action builds the same operation the API and the web UI build (``vnix.cluster.ops_vm``)
and waits for its job with a progress bar (``--no-wait`` prints the job and returns).
"""
from __future__ import annotations

import sys
import time
from typing import Any

import typer

from vnix.cli.client import (
    ApiClient,
    ClientConfig,
    mib,
    print_json,
    print_table,
    save_config,
)
from vnix.cli.main import app
from vnix.errors import UsageError

vm_app = typer.Typer(help="Virtual machines (through the manager).", no_args_is_help=True)
app.add_typer(vm_app, name="vm")
JSON = typer.Option(False, "--json", help="Print JSON.")
NO_WAIT = typer.Option(False, "--no-wait", help="Print the job and return at once.")


class CliUsageError(UsageError):
    exit_code = 2


@app.command()
def login(
    url: str = typer.Argument(None, help="The manager, e.g. http://127.0.0.1:8460 "
                              "(default: the one in client.json)"),
    user: str = typer.Option("admin", "--user", "-u"),
    password: str = typer.Option(None, "--password", envvar="VNIX_PASSWORD",
                                 help="asked for when not given"),
) -> None:
    """Log in to a manager; the API token goes to $VNIX_HOME/client.json."""
    if url is None:
        from vnix.cli.client import load_config

        url = load_config().url
    if not url.startswith(("http://", "https://")):
        raise CliUsageError(f"{url!r} is not a URL (e.g. http://127.0.0.1:8460)")
    if password is None:
        password = typer.prompt(f"password for {user}", hide_input=True)
    client = ApiClient(ClientConfig(url=url))
    out = client.request("POST", "/login", {"name": user, "password": password})
    path = save_config(ClientConfig(url=url, token=out["token"]))
    print(f"logged in to {url} as {out['user']} ({out['role']}); token in {path}")


def _job_done(client: ApiClient, job: dict[str, Any], label: str, no_wait: bool,
              as_json: bool) -> dict[str, Any]:
    if not no_wait:
        job = client.wait_jobs([job], label, show=not as_json and sys.stderr.isatty())[0]
    if as_json:
        print_json(job)
    elif no_wait:
        print(f"job {job['id']} {job['state']}: {label}")
    return job


@vm_app.command("list")
def list_vms(as_json: bool = JSON, owner: str = typer.Option(None),
             host: str = typer.Option(None), cluster: str = typer.Option(None)) -> None:
    """List VMs: desired and actual state, where they run."""
    vms = ApiClient().get("/vms", owner=owner, host=host, cluster=cluster)
    if as_json:
        return print_json(vms)
    for v in vms:
        v["mem"] = mib(v["memory_mib"])
        v["state"] = v["actual"] if v["actual"] == v["desired"] else \
            f"{v['actual']} (→ {v['desired']})"
    print_table(vms, [("name", "NAME"), ("state", "STATE"), ("host", "HOST"),
                      ("cpus", "CPUS"), ("mem", "MEMORY"), ("image", "IMAGE"),
                      ("owner", "OWNER"), ("cluster", "CLUSTER")], "no VMs")


@vm_app.command("create")
def create(
    name: str = typer.Argument(..., help="VM name; with --count, the prefix (NAME-1, ...)"),
    image: str = typer.Option(None, help="an image the hosts have (vnix image list); default "
                              "tiny, with --snapshot the snapshot's"),
    memory: str = typer.Option(None, help="256M, 1G, ... (default 256M, with --snapshot the "
                               "snapshot's)"),
    cpus: int = typer.Option(None, min=1, help="(default 1, with --snapshot the snapshot's)"),
    snapshot: str = typer.Option(None, help="clone this golden snapshot (native driver) on a "
                                 "host that holds it: the VM is the snapshot's machine (its "
                                 "image, memory and vCPUs; give them only to check them)"),
    count: int = typer.Option(1, min=1, max=512, help="make a batch of N VMs in parallel"),
    host: str = typer.Option(None, help="pin to a host"),
    group: str = typer.Option(None, help="group name (with --anti-affinity: spread)"),
    anti_affinity: bool = typer.Option(False, "--anti-affinity",
                                       help="no two VMs of the group on one host"),
    driver: str = typer.Option(None, help="qemu, native or fake (the host's default)"),
    cmdline: str = typer.Option(None, help="kernel command line"),
    start: bool = typer.Option(True, "--start/--no-start"),
    owner: str = typer.Option(None, help="(admins) create for this user"),
    no_wait: bool = NO_WAIT,
    as_json: bool = JSON,
) -> None:
    """Create (and start) a VM, or a batch of them deployed in parallel across hosts."""
    from vnix.cluster.ops_vm import CreateVm, CreateVms  # the operation the API takes

    names = [name] if count == 1 else [f"{name}-{i}" for i in range(1, count + 1)]
    # only what was given: a clone of a snapshot takes the rest from the snapshot
    given = {k: v for k, v in (("image", image), ("memory", memory), ("cpus", cpus),
                               ("snapshot", snapshot)) if v is not None}
    try:
        ops = [CreateVm(name=n, host=host, group=group, anti_affinity=anti_affinity,
                        driver=driver, cmdline=cmdline, start=start, owner=owner, **given)
               for n in names]
    except ValueError as exc:
        first = exc.errors()[0] if hasattr(exc, "errors") else {"msg": str(exc), "loc": ()}
        raise CliUsageError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    client = ApiClient()
    t0 = time.monotonic()
    if count == 1:  # what was given (the manager fills in the defaults, or the snapshot's)
        job = client.post("/vms", ops[0].model_dump(exclude_none=True, exclude_unset=True))
    else:
        job = client.post("/vms/batch", CreateVms(vms=ops).model_dump(exclude_none=True,
                                                                       exclude_unset=True))
    job = _job_done(client, job, f"create {len(names)} VM(s)", no_wait, as_json)
    if not as_json and not no_wait:
        where = job.get("result") or {}
        placed = where.get("vms") or {where.get("vm"): where.get("host")}
        for n in names:
            print(f"{n}: created on {placed.get(n, '?')}")
        print(f"{len(names)} VM(s) in {time.monotonic() - t0:.1f} s (job {job['id']})")


def _action(verb: str, names: list[str], no_wait: bool, as_json: bool,
            **params: Any) -> None:
    client = ApiClient()
    jobs = []
    for n in names:
        if verb == "delete":
            jobs.append(client.request("DELETE", f"/vms/{n}"))
        else:
            jobs.append(client.post(f"/vms/{n}/{verb}", **params))
    if not no_wait:
        jobs = client.wait_jobs(jobs, f"{verb} {', '.join(names)}",
                                show=not as_json and sys.stderr.isatty())
    if as_json:
        return print_json(jobs)
    for n, j in zip(names, jobs):
        print(f"{n}: {verb} {j['state']}" + (f" (job {j['id']})" if no_wait else ""))


NAMES = typer.Argument(..., help="one or more VM names")


@vm_app.command("start")
def start_(names: list[str] = NAMES, no_wait: bool = NO_WAIT, as_json: bool = JSON) -> None:
    """Start VMs."""
    _action("start", names, no_wait, as_json)


@vm_app.command("stop")
def stop(names: list[str] = NAMES, force: bool = typer.Option(False, "--force",
                                                              help="pull the plug at once"),
         timeout: float = typer.Option(30.0, min=0, max=600,
                                       help="seconds before pulling the plug"),
         no_wait: bool = NO_WAIT, as_json: bool = JSON) -> None:
    """Stop VMs (ACPI power button, then the plug after --timeout)."""
    _action("stop", names, no_wait, as_json, force=str(force).lower(), timeout=timeout)


@vm_app.command("pause")
def pause(names: list[str] = NAMES, no_wait: bool = NO_WAIT, as_json: bool = JSON) -> None:
    """Pause VMs (in memory)."""
    _action("pause", names, no_wait, as_json)


@vm_app.command("resume")
def resume(names: list[str] = NAMES, no_wait: bool = NO_WAIT, as_json: bool = JSON) -> None:
    """Resume paused or suspended VMs."""
    _action("resume", names, no_wait, as_json)


@vm_app.command("suspend")
def suspend(names: list[str] = NAMES, no_wait: bool = NO_WAIT, as_json: bool = JSON) -> None:
    """Suspend VMs to disk."""
    _action("suspend", names, no_wait, as_json)


@vm_app.command("delete")
def delete(names: list[str] = NAMES, no_wait: bool = NO_WAIT, as_json: bool = JSON) -> None:
    """Delete VMs (their overlays go too; images stay)."""
    _action("delete", names, no_wait, as_json)


@vm_app.command("show")
def show(name: str, as_json: bool = JSON) -> None:
    """One VM in detail."""
    vm = ApiClient().get(f"/vms/{name}")
    if as_json:
        return print_json(vm)
    for key in ("name", "owner", "host", "desired", "actual", "cpus", "memory_mib", "image",
                "cluster", "group", "detail", "created"):
        print(f"{key:<11} {vm[key] if vm[key] not in (None, '') else '-'}")


@vm_app.command("console")
def console(
    name: str,
    lines: int = typer.Option(50, min=0, max=10000, help="how many last lines to print"),
    send: str = typer.Option(None, help="type this (a newline is added) before reading"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new lines"),
    wait_for: str = typer.Option(None, "--wait-for", help="wait until a line contains this"),
    timeout: float = typer.Option(60.0, help="for --wait-for / --follow, in seconds"),
) -> None:
    """Print a VM's serial console (and type into it with --send)."""
    client = ApiClient()
    if send is not None:
        client.post(f"/vms/{name}/console", {"text": send + "\n"})
        time.sleep(0.5)
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        got = client.get(f"/vms/{name}/console", lines=lines)["lines"]
        new = got[_overlap(seen, got):] if seen else got
        for line in new:
            print(line)
        seen = got
        if wait_for is not None and any(wait_for in ln for ln in got):
            return
        if (not follow and wait_for is None) or time.monotonic() > deadline:
            if wait_for is not None:
                raise CliUsageError(f"{name}: {wait_for!r} did not appear in {timeout:.0f} s")
            return
        time.sleep(0.5)


def _overlap(old: list[str], new: list[str]) -> int:
    """How many leading lines of ``new`` were already printed (the tail of ``old``)."""
    for k in range(min(len(old), len(new)), 0, -1):
        if old[-k:] == new[:k]:
            return k
    return 0

