"""Test helpers that ship with the manager (httpx's and click's habit).

:class:`FakeAgents` runs node agents in-process (``vnix.node.app.create_app`` with the fake
driver, reached through Starlette's TestClient transport, no sockets) and can take a host
"off the network"; :func:`fake_manager` builds a manager on a SQLite file over them with
the admin created, and :func:`image_files` writes a kernel/initrd the agent accepts.
:class:`FakeGolden` stands in for what needs KVM on an agent with the native driver: making a
golden snapshot and cloning one.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any
from unittest import mock

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
    """In-process agents ``http://<host>.test`` with the fake driver (those in ``native`` also
    with the native one: golden snapshots and clones, see :class:`FakeGolden`)."""

    def __init__(self, root: Path, hosts: Iterable[str], image: str = "tiny",
                 native: Iterable[str] = ()) -> None:
        self.root = root
        self.down: set[str] = set()
        self.delay = 0.0  # seconds added to every request: slow agents for cancel tests
        self.clients: dict[str, TestClient] = {}
        kernel, initrd = image_files(root / "files")
        native = set(native)
        for host in hosts:
            self.add(host, ["fake", "native"] if host in native else ["fake"])
            if image:
                r = self.clients[host].post("/images", headers=self.auth, json={
                    "name": image, "kernel": str(kernel), "initrd": str(initrd),
                    "cmdline": "console=ttyS0"})
                assert r.status_code == 201, r.text

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {AGENT_TOKEN}"}

    def add(self, host: str, drivers: Iterable[str] = ("fake",)) -> TestClient:
        app = create_app(self.root / host, AGENT_TOKEN, list(drivers), "fake", reconcile=False)
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


class FakeGolden:
    """While entered: an agent makes a golden snapshot by writing the record the real one
    writes (``GoldenStore._create``; no template VM boots), and makes a clone of one on the fake
    driver (``VmService.clone``), counting it among the snapshot's users while it exists
    (``VmService.snapshot_users``; the real agent reads the clone's run dir).

    ``made``: (host, name, image, MiB, vCPUs, vsock) of each snapshot made.
    ``delay``: seconds making one takes (a job to watch)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.made: list[tuple[str, str, str, int, int, bool]] = []
        self.clones: dict[tuple[str, str], set[str]] = {}
        self._patches: list[Any] = []

    def __enter__(self) -> FakeGolden:
        from vnix.node.snapshots import GoldenStore
        from vnix.node.vms import VmService

        fake = self

        def _create(self: GoldenStore, name: str, image: str, memory_mib: int, cpus: int,
                    ready: str | None, vsock: bool, timeout: float = 60.0) -> Any:
            return fake.create(self, name, image, memory_mib, cpus, ready, vsock)

        def clone(self: VmService, req: Any) -> Any:
            gold = self.snapshots.get(req.snapshot or "")  # the agent's own check: it holds it
            out = self.create(req.model_copy(update={"snapshot": None, "driver": "fake",
                                                     "memory": f"{gold.memory_mib}M",
                                                     "cpus": gold.cpus}))
            fake.clones.setdefault((str(self.data_dir), gold.name), set()).add(req.name)
            return out

        def snapshot_users(self: VmService, snapshot: str) -> list[str]:
            return sorted(fake.clones.get((str(self.data_dir), snapshot), set())
                          & set(self.names()))

        self._patches = [mock.patch.object(GoldenStore, "_create", _create),
                         mock.patch.object(VmService, "clone", clone),
                         mock.patch.object(VmService, "snapshot_users", snapshot_users)]
        for p in self._patches:
            p.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for p in reversed(self._patches):
            p.stop()

    def create(self, store: Any, name: str, image: str, memory_mib: int, cpus: int,
               ready: str | None, vsock: bool) -> Any:
        from vnix.node.snapshots import GoldenRecord

        store.images.get(image)  # the agent's own check
        if self.delay:
            time.sleep(self.delay)
        d = store._dir(name)  # noqa: SLF001
        d.mkdir(parents=True)
        (d / "golden.snap").write_bytes(b"\0" * 4096)
        rec = GoldenRecord(name=name, image=image, memory_mib=memory_mib, cpus=cpus,
                           cmdline="console=ttyS0", ready=ready or "tick 1", vsock=vsock,
                           identity_port=None, disk=None, path=str(d / "golden.snap"),
                           size=4096, created=1.7e9, boot_s=0.5, save_s=0.05)
        (d / "golden.json").write_text(json.dumps(asdict(rec)))
        self.made.append((store.root.parent.name, name, image, memory_mib, cpus, vsock))
        return rec


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
