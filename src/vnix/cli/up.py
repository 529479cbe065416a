"""``vnix up`` / ``vnix down``: the manager and a local agent in one process.

State under ``$VNIX_HOME``: ``manager.db`` (SQLite), ``agent/`` (the agent's data: images,
overlays, VM run dirs), ``agent.token``, ``up.json`` (pid and URLs, written when ready),
``up.log`` (with ``--detach``), ``client.json`` (the CLI logged in as admin). The agent
listens on a loopback port of its own with a generated token and registers itself as the
host named after this machine. ``--detach`` returns once all of it answers; ``vnix down``
stops it (VMs keep running, as with ``vnix agent``; the next ``vnix up`` finds them).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import typer

from vnix.cli.client import ClientConfig, ClientError, save_config
from vnix.cli.main import app
from vnix.cli.manager import ManagerUsageError, listen_address
from vnix.images.store import vnix_home


def _state_file() -> Path:
    return vnix_home() / "up.json"


def running_instance() -> dict[str, Any] | None:
    """What up.json says, if its process is still alive."""
    try:
        info = json.loads(_state_file().read_text())
        os.kill(int(info["pid"]), 0)
        return info  # type: ignore[no-any-return]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_port(host: str, port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ManagerUsageError(f"cannot listen on {host}:{port}: {exc.strerror} "
                                    "(choose another with --listen)") from None


def _host_name() -> str:
    name = re.sub(r"[^a-z0-9.-]", "-", socket.gethostname().lower()).strip("-.")
    return name[:63] or "local"


@app.command()
def up(
    listen: str = typer.Option("127.0.0.1:8460", help="HOST:PORT for the API and dashboard"),
    driver: str = typer.Option(None, help="the local agent's driver (qemu, native, fake; "
                                          "default: what `vnix host check` recommends)"),
    detach: bool = typer.Option(False, "--detach", "-d", help="run in the background"),
    interval: float = typer.Option(2.0, min=0.1, help="seconds between agent polls"),
) -> None:
    """Run the manager and a local agent in one process; print the URLs and the login."""
    from vnix.cluster.manager import Manager, ManagerConfig
    from vnix.cluster.store import Store, sqlite_url

    host, port = listen_address(listen)
    if driver is None:
        from vnix.host import recommended_driver

        driver = recommended_driver()[0]
        driver = "qemu" if driver.startswith("qemu") else driver  # qemu-tcg: the qemu driver
                                                                  # picks TCG by itself
    from vnix.hypervisor.registry import driver_class

    driver_class(driver)  # an unknown name is a one-line error (status 2) before anything
    running = running_instance()
    if running:
        raise ManagerUsageError(f"vnix up is running already (pid {running['pid']}, "
                                f"{running['url']}): `vnix down` first")
    _check_port(host, port)
    home = vnix_home()
    home.mkdir(parents=True, exist_ok=True)
    store = Store(sqlite_url(home / "manager.db"))
    password = Manager(store, ManagerConfig(monitor=False)).ensure_admin()
    store.close()
    if detach:
        return _detach(listen, driver, interval, password)
    _serve(host, port, driver, interval, password)


def _detach(listen: str, driver: str, interval: float, password: str | None) -> None:
    home = vnix_home()
    log = home / "up.log"
    with open(log, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "vnix", "up", "--listen", listen, "--driver", driver,
             "--interval", str(interval)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = running_instance()
        if info and info.get("pid") == child.pid:
            _print_ready(info, password)
            return
        if child.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise ClientError(f"vnix up stopped at start (status {child.returncode}): "
                              f"{tail[0] if tail else 'see ' + str(log)}")
        time.sleep(0.1)
    raise ClientError(f"vnix up did not become ready in 120 s (see {log})")


def _print_ready(info: dict[str, Any], password: str | None) -> None:
    url = info["url"]
    login = (f"user admin, password {password} (shown once; keep it)" if password else
             "user admin (password from the first start or VNIX_ADMIN_PASSWORD)")
    print(f"vnix is up (pid {info['pid']})\n"
          f"  dashboard  {url}/\n"
          f"  API        {url}/api/v1  (docs {url}/api/docs)\n"
          f"  agent      {info['agent_url']}  (host {info['host']}, driver {info['driver']})\n"
          f"  login      {login}\n"
          f"  CLI        logged in as admin ({info['client']}): try "
          f"`vnix vm create web1 --image tiny`; `vnix down` stops it", flush=True)


def _serve(host: str, port: int, driver: str, interval: float, password: str | None) -> None:
    import uvicorn

    from vnix.api.app import create_api
    from vnix.cluster.auth import SYSTEM, issue_token
    from vnix.cluster.manager import Manager, ManagerConfig
    from vnix.cluster.ops_admin import RegisterHost
    from vnix.cluster.store import Store, sqlite_url
    from vnix.node.app import create_app

    home = vnix_home()
    token_file = home / "agent.token"
    if not token_file.exists():
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    agent_token = token_file.read_text().strip()
    agent_port = _free_port()
    agent_url = f"http://127.0.0.1:{agent_port}"
    (home / "agent").mkdir(exist_ok=True)
    agent_server = uvicorn.Server(uvicorn.Config(
        create_app((home / "agent").resolve(), agent_token, [driver], driver),
        host="127.0.0.1", port=agent_port, log_level="warning"))
    agent_thread = threading.Thread(target=agent_server.run, name="agent", daemon=True)
    agent_thread.start()
    while not agent_server.started:
        if not agent_thread.is_alive():
            raise ClientError("the local agent did not start")
        time.sleep(0.05)

    store = Store(sqlite_url(home / "manager.db"))
    mgr = Manager(store, ManagerConfig(monitor_interval_s=interval))
    name = _host_name()
    agent = mgr.agent_for(name, agent_url, agent_token)
    _import_tiny(agent)
    mgr.submit(RegisterHost(name=name, url=agent_url, token=agent_token), SYSTEM)

    url = f"http://{host}:{port}"
    if not _client_logged_in(store, url):
        with store.session() as s:
            token = issue_token(s, "admin", "vnix up")
        save_config(ClientConfig(url=url, token=token))

    server = uvicorn.Server(uvicorn.Config(create_api(mgr), host=host, port=port,
                                           log_level="warning"))
    info = {"pid": os.getpid(), "url": url, "agent_url": agent_url, "host": name,
            "driver": driver, "client": str(home / "client.json")}

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            tmp = _state_file().with_suffix(".tmp")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, _state_file())
            _print_ready(info, password)

    threading.Thread(target=announce, name="announce", daemon=True).start()
    try:
        server.run()
    finally:
        agent_server.should_exit = True
        agent_thread.join(10)
        try:
            if json.loads(_state_file().read_text()).get("pid") == os.getpid():
                _state_file().unlink()
        except (OSError, ValueError):
            pass


def _client_logged_in(store: Any, url: str) -> bool:
    """Whether client.json already holds a valid token for this manager."""
    from vnix.cli.client import load_config
    from vnix.cluster.auth import authenticate
    from vnix.errors import VnixError

    try:
        cfg = load_config()
        if cfg.url != url or not cfg.token:
            return False
        with store.session() as s:
            authenticate(s, cfg.token)
        return True
    except VnixError:
        return False


def _import_tiny(agent: Any) -> None:
    """Make the tiny guest (if `vnix image build tiny` made one) an image of the agent."""
    from vnix.cluster.errors import AgentError
    from vnix.images.store import image_dir, read_manifest
    from vnix.node.models import ImportImage

    if read_manifest(image_dir("tiny")) is None:
        return
    try:
        agent.call("image_info", name="tiny")
    except AgentError as exc:
        if exc.status != 404:
            raise
        agent.call("import_image", ImportImage(name="tiny", tiny=True))


@app.command()
def down(timeout: float = typer.Option(30.0, min=1, help="seconds to wait for it to stop")) -> None:
    """Stop what `vnix up --detach` started (VMs keep running)."""
    info = running_instance()
    if info is None:
        print("vnix is not running")
        return
    pid = int(info["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            print(f"vnix stopped (pid {pid})")
            return
        time.sleep(0.1)
    raise ClientError(f"vnix up (pid {pid}) did not stop in {timeout:.0f} s")
