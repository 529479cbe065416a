"""``vnix manager``: the manager alone (agents join it with ``vnix agent --join``)."""
from __future__ import annotations

import typer

from vnix.cli.main import app
from vnix.errors import UsageError


class ManagerUsageError(UsageError):
    exit_code = 2


def listen_address(text: str, option: str = "--listen") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ManagerUsageError(f"{option} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8460")
    return host, int(port)


@app.command()
def manager(
    db: str = typer.Option(None, envvar="VNIX_DB",
                           help="SQLAlchemy URL: postgresql+psycopg://user@host/db "
                                "(default: SQLite in $VNIX_HOME/manager.db)"),
    listen: str = typer.Option("127.0.0.1:8460", help="HOST:PORT for the API"),
    join_token: str = typer.Option(None, envvar="VNIX_JOIN_TOKEN",
                                   help="token agents join with (default: made and printed "
                                        "at first start)"),
    cpu_ratio: float = typer.Option(4.0, min=0.1, help="vCPU overcommit per host CPU"),
    memory_ratio: float = typer.Option(1.0, min=0.1, help="memory overcommit"),
    interval: float = typer.Option(5.0, min=0.1, help="seconds between agent polls"),
) -> None:
    """Run the manager: REST API, jobs, scheduler, monitor (migrations applied on start)."""
    import uvicorn

    from vnix.api.app import create_api
    from vnix.cluster.manager import Manager, ManagerConfig
    from vnix.cluster.scheduler import Overcommit
    from vnix.cluster.store import Store, sqlite_url
    from vnix.images.store import vnix_home

    host, port = listen_address(listen)
    if db is None:
        vnix_home().mkdir(parents=True, exist_ok=True)
        db = sqlite_url(vnix_home() / "manager.db")
    store = Store(db)
    config = ManagerConfig(overcommit=Overcommit(cpu_ratio=cpu_ratio,
                                                 memory_ratio=memory_ratio),
                           monitor_interval_s=interval)
    mgr = Manager(store, config)
    _say_leadership()
    password = mgr.ensure_admin()
    if password:
        print(f"first start: user admin, password {password} (shown once)", flush=True)
    if join_token:
        mgr.new_join_token(join_token)
    elif mgr.join_token_hash() is None:
        print(f"join token for agents: {mgr.new_join_token()} (shown once)", flush=True)
    print(f"vnix manager on http://{host}:{port}/ (API /api/v1, database "
          f"{store.engine.url.render_as_string(hide_password=True)})", flush=True)
    uvicorn.run(create_api(mgr), host=host, port=port, log_level="warning")


def _say_leadership() -> None:
    """Print when this manager becomes leader or steps down (several on one PostgreSQL)."""
    import logging
    import sys

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("vnix manager: %(message)s"))
    leader_log = logging.getLogger("vnix.cluster.leader")
    leader_log.addHandler(handler)
    leader_log.setLevel(logging.INFO)
