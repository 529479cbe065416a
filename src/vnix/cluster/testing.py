"""Test helpers that ship with the manager (httpx's and click's habit).

:class:`FakeAgents` runs node agents in-process (``vnix.node.app.create_app`` with the fake
driver, reached through Starlette's TestClient transport, no sockets) and can take a host
"off the network"; :func:`fake_manager` builds a manager on a SQLite file over them with
the admin created, and :func:`image_files` writes a kernel/initrd the agent accepts.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from vnix.cluster.manager import Manager, ManagerConfig
from vnix.cluster.store import Store, sqlite_url
from vnix.node.app import create_app

AGENT_TOKEN = "agent-secret"
ADMIN_PASSWORD = "admin-password"


def image_files(directory: Path) -> tuple[Path, Path]:
    """A file that looks like a bzImage (boot flag 0xAA55 at 0x1FE, "HdrS" at 0x202) and an
    initrd."""
    directory.mkdir(parents=True, exist_ok=True)
    kernel, initrd = directory / "bzImage", directory / "initrd"
    kernel.write_bytes(b"\0" * 0x1FE + b"\x55\xaa" + b"\0\0" + b"HdrS" + b"\0" * 64)
    initrd.write_bytes(b"070701")
    return kernel, initrd


class _Switch(httpx.BaseTransport):
    def __init__(self, agents: FakeAgents, host: str) -> None:
        self.agents, self.host = agents, host

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.host in self.agents.down or self.host not in self.agents.clients:
            raise httpx.ConnectError("connection refused (host taken down by the test)",
                                     request=request)
        if self.agents.delay:
            time.sleep(self.agents.delay)
        client = self.agents.clients[self.host]  # the newest agent "process" on the host
        return client._transport.handle_request(request)  # noqa: SLF001


class FakeAgents:
    """In-process agents ``http://<host>.test`` with the fake driver."""

    def __init__(self, root: Path, hosts: Iterable[str], image: str = "tiny") -> None:
        self.root = root
        self.down: set[str] = set()
        self.delay = 0.0  # seconds added to every request: slow agents for cancel tests
        self.clients: dict[str, TestClient] = {}
        kernel, initrd = image_files(root / "files")
        for host in hosts:
            self.add(host)
            if image:
                r = self.clients[host].post("/images", headers=self.auth, json={
                    "name": image, "kernel": str(kernel), "initrd": str(initrd),
                    "cmdline": "console=ttyS0"})
                assert r.status_code == 201, r.text

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {AGENT_TOKEN}"}

    def add(self, host: str) -> TestClient:
        app = create_app(self.root / host, AGENT_TOKEN, ["fake"], "fake", reconcile=False)
        self.clients[host] = TestClient(app, base_url=self.url(host))
        return self.clients[host]

    @staticmethod
    def url(host: str) -> str:
        return f"http://{host}.test"

    def http_factory(self, url: str) -> httpx.Client:
        host = url.removeprefix("http://").removesuffix(".test")
        return httpx.Client(base_url=url, transport=_Switch(self, host))

    def vm_state(self, host: str, vm: str) -> str | None:
        r = self.clients[host].get(f"/vms/{vm}", headers=self.auth)
        return r.json()["state"] if r.status_code == 200 else None


def fake_manager(root: Path, agents: FakeAgents, config: ManagerConfig | None = None,
                 register: bool = True) -> Manager:
    """A manager over ``agents`` (all registered), the admin's password ADMIN_PASSWORD."""
    from vnix.cluster.auth import SYSTEM
    from vnix.cluster.ops_admin import RegisterHost

    store = Store(sqlite_url(root / "manager.db"))
    config = config or ManagerConfig(monitor=False, workers=4)
    manager = Manager(store, config, http_factory=agents.http_factory)
    manager.ensure_admin(ADMIN_PASSWORD)
    if register:
        for host in agents.clients:
            manager.submit(RegisterHost(name=host, url=agents.url(host), token=AGENT_TOKEN),
                           SYSTEM)
    return manager
