"""`vnix agent`: run the node agent (HTTP API on FastAPI + uvicorn)."""
from __future__ import annotations

from pathlib import Path

import typer

from vnix.cli.main import app
from vnix.errors import UsageError


class AgentUsageError(UsageError):
    pass


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AgentUsageError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8470")
    return host, int(port)


@app.command()
def agent(
    listen: str = typer.Option("127.0.0.1:8470", help="HOST:PORT to serve the API on"),
    token: str = typer.Option(..., envvar="VNIX_AGENT_TOKEN", help="bearer token clients send"),
    data_dir: Path = typer.Option(..., help="where VMs' run dirs, images and networks live"),
    driver: str = typer.Option("qemu", help="default hypervisor driver (qemu, native, fake)"),
    drivers: str = typer.Option("", help="comma-separated drivers to enable (default: --driver)"),
    join: str = typer.Option(None, help="a manager's URL to register with once serving"),
    join_token: str = typer.Option(None, envvar="VNIX_JOIN_TOKEN",
                                   help="the manager's join token (with --join)"),
    name: str = typer.Option(None, help="host name at the manager (default: hostname)"),
    advertise: str = typer.Option(None, help="URL the manager reaches this agent at "
                                             "(default: http://LISTEN)"),
) -> None:
    """Run the node agent. VMs it starts keep running when it stops."""
    import uvicorn

    from vnix.node.app import create_app

    host, port = _listen(listen)
    if not token:
        raise AgentUsageError("--token must not be empty")
    enabled = [d.strip() for d in drivers.split(",") if d.strip()] or [driver]
    data_dir.mkdir(parents=True, exist_ok=True)
    api = create_app(data_dir.resolve(), token, enabled, driver)
    if join:
        from vnix.cli.client import join_later

        join_later(join, join_token, name, advertise or f"http://{host}:{port}", token)
    uvicorn.run(api, host=host, port=port, log_level="warning")
