"""`vnix cluster ...`: virtual clusters through the manager's REST API.

    vnix cluster create hpc.xml            deploy (a progress bar until every node runs)
    vnix cluster list | show NAME          tables, or --json
    vnix cluster export NAME [-o FILE]     the cluster as XML, as it is now
    vnix cluster import FILE [--name N]    create from an exported file (--adopt: take over VMs)
    vnix cluster scale NAME GROUP COUNT
    vnix cluster start|stop|suspend|resume NAME [--group G]
    vnix cluster move NODE --to CLUSTER    balloon, suspend, re-assign, resume
    vnix cluster delete NAME
    vnix cluster profile list|show|save|delete ...
    vnix cluster schema                    the XSD files are checked against

The manager is the one ``vnix up`` / ``vnix login`` configured (``$VNIX_HOME/client.json``,
:mod:`vnix.cli.client`), or ``--url``/``--token`` (``VNIX_URL``/``VNIX_TOKEN``). Errors are one line, exit status 2 for bad input (a bad
file's problems as ``file:line: message``), 1 for failures.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from vnix.cli.main import app
from vnix.errors import UsageError, VnixError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import httpx

cluster_app = typer.Typer(help="Virtual clusters described in XML.", no_args_is_help=True)
profile_app = typer.Typer(help="Saved VMM configuration profiles.", no_args_is_help=True)
cluster_app.add_typer(profile_app, name="profile")
app.add_typer(cluster_app, name="cluster")
out = Console(highlight=False, soft_wrap=True)

URL = typer.Option(None, "--url", envvar="VNIX_URL", help="the manager (default: the one "
                   "`vnix up` or `vnix login` set up)")
TOKEN = typer.Option(None, "--token", envvar="VNIX_TOKEN", help="an API token")
JSON = typer.Option(False, "--json", help="print JSON instead of a table")
NO_WAIT = typer.Option(False, "--no-wait", help="print the job and return at once")


class ClusterCliError(VnixError):
    pass


class ClusterUsageError(UsageError):
    pass


class Api:
    def __init__(self, url: str | None, token: str | None) -> None:
        from vnix.cli.client import NotLoggedIn, load_config

        if url is None:
            cfg = load_config()  # NotLoggedIn (exit 2) names what to run
            url, token = cfg.url, token or cfg.token
        elif token is None:
            try:
                token = load_config().token
            except NotLoggedIn:
                pass
        self.url = url.rstrip("/")
        import httpx  # not at import time: most CLI commands never use it

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=60)

    def __call__(self, method: str, path: str, **kw: Any) -> httpx.Response:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ClusterCliError(f"cannot reach the manager at {self.url}: {exc} "
                                  "(is it running? `vnix up`)") from None
        if r.status_code >= 400:
            try:
                msg = r.json().get("error") or r.text
            except ValueError:
                msg = r.text.strip() or r.reason_phrase
            err = ClusterUsageError if r.status_code < 500 and r.status_code != 502 \
                else ClusterCliError
            raise err(" ".join(str(msg).split("\n")))
        return r

    def json(self, method: str, path: str, **kw: Any) -> Any:
        return self(method, path, **kw).json()


def _read(file: Path) -> bytes:
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ClusterUsageError(f"cannot read {file}: {exc.strerror}") from None
    return data


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def follow(api: Api, job: dict[str, Any], as_json: bool, what: str) -> dict[str, Any]:
    """Wait for ``job`` with a Rich progress bar (none with --json or when not a terminal);
    exit 1 with the job's error if it failed."""
    show = not as_json and out.is_terminal
    job_id = job["id"]
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), console=out, disable=not show, transient=False) as bar:
        task = bar.add_task(what, total=1.0)
        while job["state"] not in ("succeeded", "failed", "cancelled"):
            job = api.json("GET", f"/jobs/{job_id}/wait", params={"timeout": 1.0})
            last = (job.get("log") or "").strip().splitlines()[-1:] or [""]
            bar.update(task, completed=job["progress"],
                       description=f"{what} [dim]{last[0][:60]}[/dim]")
        bar.update(task, completed=job["progress"])
    if as_json:
        _print_json(job)
    if job["state"] != "succeeded":
        raise ClusterCliError(f"job {job_id} {job['state']}: {job.get('error') or '?'}")
    return job


def _submit(api: Api, method: str, path: str, what: str, as_json: bool, no_wait: bool,
            **kw: Any) -> dict[str, Any]:
    job = api.json(method, path, **kw)
    if no_wait:
        if as_json:
            _print_json(job)
        else:
            out.print(f"job {job['id']}: {job['kind']} {job['target']} ({job['state']})")
        return job
    return follow(api, job, as_json, what)


def _nodes_table(detail: dict[str, Any]) -> Table:
    t = Table(title=f"cluster {detail['name']} ({detail['state']}, owner {detail['owner']})")
    for col in ("NODE", "GROUP", "HOST", "STATE", "CPUS", "MEMORY", "ADDRESS"):
        t.add_column(col)
    for n in detail["node_list"]:
        t.add_row(n["name"], n["group"] or "-", n["host"] or "-", n["actual"], str(n["cpus"]),
                  f"{n['memory_mib']}M", ", ".join(n["ips"]) or "-")
    return t


@cluster_app.command("create")
def create(file: Path, name: str = typer.Option(None, help="another name than the file's"),
           start: bool = typer.Option(True, help="start the nodes"), as_json: bool = JSON,
           no_wait: bool = NO_WAIT, url: str = URL, token: str = TOKEN) -> None:
    """Deploy the cluster FILE describes: nodes in parallel across the hosts."""
    api, data = Api(url, token), _read(file)
    t0 = time.monotonic()
    params: dict[str, Any] = {"start": start, **({"name": name} if name else {})}
    job = _submit(api, "POST", "/clusters", "deploying", as_json, no_wait, content=data,
                  params=params, headers={"Content-Type": "application/xml",
                                          "X-Filename": file.name})
    if not no_wait and not as_json:
        cname = job["target"].removeprefix("cluster/")
        detail = api.json("GET", f"/clusters/{cname}")
        out.print(_nodes_table(detail))
        out.print(f"{detail['running']} of {detail['nodes']} node(s) running after "
                  f"{time.monotonic() - t0:.1f} s")


@cluster_app.command("import")
def import_(file: Path, name: str = typer.Option(None, help="another name than the file's"),
            adopt: bool = typer.Option(False, help="take over existing VMs named like nodes"),
            start: bool = typer.Option(True), as_json: bool = JSON, no_wait: bool = NO_WAIT,
            url: str = URL, token: str = TOKEN) -> None:
    """Create a cluster from an exported file."""
    api, data = Api(url, token), _read(file)
    params: dict[str, Any] = {"start": start, "adopt": adopt, **({"name": name} if name else {})}
    _submit(api, "POST", "/clusters/import", "importing", as_json, no_wait, content=data,
            params=params, headers={"Content-Type": "application/xml", "X-Filename": file.name})


@cluster_app.command("list")
def list_(as_json: bool = JSON, url: str = URL, token: str = TOKEN) -> None:
    """The clusters you may see."""
    rows = Api(url, token).json("GET", "/clusters")
    if as_json:
        return _print_json(rows)
    t = Table()
    for col in ("NAME", "OWNER", "STATE", "GROUPS", "NODES", "RUNNING"):
        t.add_column(col)
    for c in rows:
        groups = ", ".join(f"{g['name']}x{g['count']}" for g in c["groups"])
        t.add_row(c["name"], c["owner"], c["state"], groups, str(c["nodes"]), str(c["running"]))
    out.print(t)


@cluster_app.command("show")
def show(name: str, as_json: bool = JSON, url: str = URL, token: str = TOKEN) -> None:
    """A cluster's nodes: host, state, addresses."""
    detail = Api(url, token).json("GET", f"/clusters/{name}")
    if as_json:
        return _print_json(detail)
    out.print(_nodes_table(detail))
    for n in detail["networks"]:
        out.print(f"network {n['name']}: {n['subnet']} (VXLAN {n['vni'] or '-'}, "
                  f"dhcp {'on' if n['dhcp'] else 'off'})")


@cluster_app.command("export")
def export(name: str, output: Path = typer.Option(None, "-o", "--output", help="write here"),
           url: str = URL, token: str = TOKEN) -> None:
    """The cluster as XML, as it is now (imports back as the same cluster)."""
    text = Api(url, token)("GET", f"/clusters/{name}/export").text
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise ClusterUsageError(f"cannot write {output}: {exc.strerror}") from None


@cluster_app.command("delete")
def delete(name: str, as_json: bool = JSON, no_wait: bool = NO_WAIT, url: str = URL,
           token: str = TOKEN) -> None:
    """Delete a cluster: every node, its networks on every host."""
    _submit(Api(url, token), "DELETE", f"/clusters/{name}", f"deleting {name}", as_json, no_wait)
    if not as_json and not no_wait:
        out.print(f"cluster {name} deleted")


@cluster_app.command("scale")
def scale(name: str, group: str, count: int, as_json: bool = JSON, no_wait: bool = NO_WAIT,
          url: str = URL, token: str = TOKEN) -> None:
    """Grow or shrink one group to COUNT nodes."""
    if count < 0:
        raise ClusterUsageError("COUNT must be 0 or more")
    job = _submit(Api(url, token), "POST", f"/clusters/{name}/scale", f"scaling {group}",
                  as_json, no_wait, json={"group": group, "count": count})
    if not as_json and not no_wait:
        r = job.get("result") or {}
        out.print(f"{name}/{group}: {count} node(s) (+{len(r.get('added', {}))}, "
                  f"-{len(r.get('removed', []))})")


def _action(action: str) -> None:
    def command(name: str, group: str = typer.Option(None, help="only this group"),
                force: bool = typer.Option(False, help="stop: pull the plug at once"),
                as_json: bool = JSON, no_wait: bool = NO_WAIT, url: str = URL,
                token: str = TOKEN) -> None:
        params: dict[str, Any] = {"force": force, **({"group": group} if group else {})}
        job = _submit(Api(url, token), "POST", f"/clusters/{name}/{action}",
                      f"{action} {name}", as_json, no_wait, params=params)
        if not as_json and not no_wait:
            r = job.get("result") or {}
            out.print(f"{action}: {len(r.get('done', []))} node(s) done, "
                      f"{len(r.get('skipped', {}))} skipped")
            for node, why in (r.get("skipped") or {}).items():
                out.print(f"  {node}: {why}")

    command.__doc__ = f"{action.capitalize()} every node of a cluster (or of one group)."
    cluster_app.command(action)(command)


for _a in ("start", "stop", "suspend", "resume"):
    _action(_a)


@cluster_app.command("move")
def move(node: str, to: str = typer.Option(..., "--to", help="the cluster to move it into"),
         group: str = typer.Option(None, help="its group there"),
         balloon: int = typer.Option(None, help="balloon to this many MiB first"),
         resume: bool = typer.Option(True, help="resume it afterwards"), as_json: bool = JSON,
         no_wait: bool = NO_WAIT, url: str = URL, token: str = TOKEN) -> None:
    """Move NODE to another cluster (balloon, suspend, re-assign, resume)."""
    api = Api(url, token)
    vm = api.json("GET", f"/vms/{node}")
    if not vm.get("cluster"):
        raise ClusterUsageError(f"VM {node!r} is in no cluster")
    body = {"to": to, "group": group, "balloon_mib": balloon, "resume": resume}
    job = _submit(api, "POST", f"/clusters/{vm['cluster']}/nodes/{node}/move", f"moving {node}",
                  as_json, no_wait, json=body)
    if not as_json and not no_wait:
        out.print("; ".join((job.get("result") or {}).get("steps", [])))


READY_LINE = "vnix-guest: ready"  # what the tiny guest's init prints before its shell


@cluster_app.command("wait")
def wait(name: str, console: bool = typer.Option(
             False, help=f"also wait for each console to show {READY_LINE!r} (tiny guests)"),
         timeout: float = typer.Option(60.0, min=1, help="seconds"), as_json: bool = JSON,
         url: str = URL, token: str = TOKEN) -> None:
    """Wait until every node runs (and, with --console, has booted to its shell)."""
    api = Api(url, token)
    t0 = time.monotonic()
    ready: dict[str, float | None] = {}
    while True:
        detail = api.json("GET", f"/clusters/{name}")
        nodes = detail["node_list"]
        for n in nodes:
            if n["name"] in ready and ready[n["name"]] is not None:
                continue
            ok = n["actual"] == "running"
            if ok and console:
                lines = api.json("GET", f"/vms/{n['name']}/console",
                                 params={"lines": 500})["lines"]
                ok = any(READY_LINE in ln for ln in lines)
            ready[n["name"]] = round(time.monotonic() - t0, 1) if ok else None
        if nodes and all(ready.get(n["name"]) is not None for n in nodes):
            break
        if time.monotonic() - t0 > timeout:
            late = sorted(k for k, v in ready.items() if v is None)
            raise ClusterCliError(f"{name}: {len(late)} node(s) not ready after {timeout:.0f} s:"
                                  f" {', '.join(late)}")
        time.sleep(1.0)
    rows = [{"node": n["name"], "host": n["host"], "ready_s": ready[n["name"]],
             "ips": n["ips"]} for n in nodes]
    if as_json:
        return _print_json(rows)
    t = Table(title=f"cluster {name}: every node {'on its console' if console else 'running'}")
    for col in ("NODE", "HOST", "READY AFTER", "ADDRESS"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["node"], r["host"] or "-", f"{r['ready_s']:.1f} s", ", ".join(r["ips"]) or "-")
    out.print(t)


@cluster_app.command("schema")
def schema(url: str = URL, token: str = TOKEN) -> None:
    """Print the XSD cluster files are checked against."""
    from vnix.cluster.vcluster import schema_text

    sys.stdout.write(schema_text())


# -- profiles ---------------------------------------------------------------------------------
@profile_app.command("list")
def profile_list(as_json: bool = JSON, url: str = URL, token: str = TOKEN) -> None:
    rows = Api(url, token).json("GET", "/profiles")
    if as_json:
        return _print_json(rows)
    t = Table()
    for col in ("NAME", "OWNER", "CPUS", "MEMORY", "DRIVER", "ACCEL", "USED BY"):
        t.add_column(col)
    for p in rows:
        t.add_row(p["name"], p["owner"] or "-", str(p["cpus"] or "-"),
                  f"{p['memory_mib']}M" if p["memory_mib"] else "-", p["driver"] or "-",
                  p["accel"] or "-", ", ".join(p["used_by"]) or "-")
    out.print(t)


@profile_app.command("show")
def profile_show(name: str, url: str = URL, token: str = TOKEN) -> None:
    _print_json(Api(url, token).json("GET", f"/profiles/{name}"))


@profile_app.command("save")
def profile_save(name: str, cpus: int = typer.Option(None), memory: str = typer.Option(None),
                 driver: str = typer.Option(None), accel: str = typer.Option(None),
                 vnc: bool = typer.Option(None), cmdline: str = typer.Option(None),
                 url: str = URL, token: str = TOKEN) -> None:
    """Save (or replace) profile NAME."""
    from vnix.vmm.config import parse_size_mib

    try:
        mib = parse_size_mib(memory) if memory else None
    except VnixError as exc:
        raise ClusterUsageError(str(exc)) from None
    body = {"name": name, "cpus": cpus, "memory_mib": mib, "driver": driver, "accel": accel,
            "vnc": vnc, "cmdline": cmdline}
    p = Api(url, token).json("PUT", f"/profiles/{name}", json=body)
    out.print(f"profile {p['name']} saved")


@profile_app.command("delete")
def profile_delete(name: str, url: str = URL, token: str = TOKEN) -> None:
    Api(url, token)("DELETE", f"/profiles/{name}")
    out.print(f"profile {name} deleted")

