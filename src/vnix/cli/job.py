"""``vnix job ...``: the manager's jobs (every operation runs as one)."""
from __future__ import annotations

import typer

from vnix.cli.client import ApiClient, print_json, print_table
from vnix.cli.main import app

job_app = typer.Typer(help="Jobs: operations in progress and done.", no_args_is_help=True)
app.add_typer(job_app, name="job")
JSON = typer.Option(False, "--json", help="Print JSON.")


@job_app.command("list")
def list_jobs(state: str = typer.Option(None, help="queued, running, succeeded, ..."),
              kind: str = typer.Option(None), limit: int = typer.Option(30, min=1, max=1000),
              as_json: bool = JSON) -> None:
    """The newest jobs first."""
    jobs = ApiClient().get("/jobs", state=state, kind=kind, limit=limit)
    if as_json:
        return print_json(jobs)
    for j in jobs:
        j["pct"] = f"{j['progress'] * 100:.0f}%"
        j["when"] = str(j["created"])[:19].replace("T", " ")
    print_table(jobs, [("id", "ID"), ("kind", "KIND"), ("target", "TARGET"),
                       ("state", "STATE"), ("pct", "DONE"), ("owner", "OWNER"),
                       ("when", "CREATED"), ("error", "ERROR")], "no jobs")


@job_app.command("show")
def show(job_id: int, as_json: bool = JSON) -> None:
    """A job with its operation and log."""
    j = ApiClient().get(f"/jobs/{job_id}")
    if as_json:
        return print_json(j)
    for key in ("id", "kind", "target", "owner", "state", "progress", "error", "created",
                "started", "finished"):
        print(f"{key:<9} {j[key] if j[key] not in (None, '') else '-'}")
    print("log:")
    for line in j["log"].splitlines():
        print(f"  {line}")


@job_app.command("cancel")
def cancel(job_id: int) -> None:
    """Cancel a queued or running job (a running one stops at its next step)."""
    j = ApiClient().post(f"/jobs/{job_id}/cancel")
    print(f"job {job_id}: {j['state']}")


@job_app.command("wait")
def wait(job_id: int, timeout: float = typer.Option(None, help="seconds (default: forever)"),
         as_json: bool = JSON) -> None:
    """Wait for a job with a progress bar; exit status 1 if it failed."""
    client = ApiClient()
    j = client.get(f"/jobs/{job_id}")
    j = client.wait_jobs([j], f"job {job_id} {j['kind']}", show=not as_json,
                         timeout=timeout)[0]
    if as_json:
        return print_json(j)
    print(f"job {job_id}: {j['state']}")
