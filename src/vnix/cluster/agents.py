"""The manager's client for node agents: a declarative call table and per-host results.

Each agent route is one :class:`Call` in :data:`CALLS` (method, path, request model, answer
type), so the manager's side of the wire is checked by the same pydantic models the agent
serves (``vnix.node.models``). ``client.call("start_vm", name="web1")`` returns the parsed
answer or raises :class:`~vnix.cluster.errors.AgentError`;
:func:`call_many` asks many hosts at once and returns one :class:`HostResult` per host
(Ganeti's habit: fifty hosts, fifty results, never one exception).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from vnix.cluster.errors import AgentError, AgentUnreachable
from vnix.node import models as m

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # with {name} placeholders
    request: type[BaseModel] | None = None
    answer: Any = None  # a pydantic model, list[...] of one, str (text) or None (no body)
    timeout: float = 30.0


CALLS: dict[str, Call] = {
    "list_vms": Call("GET", "/vms", answer=list[m.VmOut]),
    "create_vm": Call("POST", "/vms", m.CreateVm, m.VmOut, timeout=120),
    "vm_info": Call("GET", "/vms/{name}", answer=m.VmOut),
    "delete_vm": Call("DELETE", "/vms/{name}", timeout=120),
    "start_vm": Call("POST", "/vms/{name}/start", answer=m.VmOut, timeout=120),
    "stop_vm": Call("POST", "/vms/{name}/stop", m.StopVm, m.VmOut, timeout=660),
    "force_stop_vm": Call("POST", "/vms/{name}/force-stop", answer=m.VmOut, timeout=60),
    "pause_vm": Call("POST", "/vms/{name}/pause", answer=m.VmOut),
    "resume_vm": Call("POST", "/vms/{name}/resume", answer=m.VmOut),
    "suspend_vm": Call("POST", "/vms/{name}/suspend", answer=m.VmOut, timeout=300),
    "resume_from_disk_vm": Call("POST", "/vms/{name}/resume-from-disk", answer=m.VmOut,
                                timeout=300),
    "balloon_vm": Call("POST", "/vms/{name}/balloon", m.Balloon, m.VmOut),
    "snapshot_vm": Call("POST", "/vms/{name}/snapshots", m.SnapshotReq, dict, timeout=300),
    "console": Call("GET", "/vms/{name}/console", answer=m.ConsoleOut),
    "console_write": Call("POST", "/vms/{name}/console", m.ConsoleIn),
    "list_images": Call("GET", "/images", answer=list[m.ImageOut]),
    "import_image": Call("POST", "/images", m.ImportImage, m.ImageOut, timeout=300),
    "image_info": Call("GET", "/images/{name}", answer=m.ImageOut),
    "delete_image": Call("DELETE", "/images/{name}"),
    "list_snapshots": Call("GET", "/snapshots", answer=list[m.SnapshotOut]),
    "snapshot_info": Call("GET", "/snapshots/{name}", answer=m.SnapshotOut),
    "create_snapshot": Call("POST", "/snapshots", m.CreateSnapshot, m.SnapshotOut, timeout=300),
    "delete_snapshot": Call("DELETE", "/snapshots/{name}"),
    "list_networks": Call("GET", "/networks", answer=list[m.NetworkOut]),
    "create_network": Call("POST", "/networks", m.CreateNetwork, m.NetworkOut),
    "delete_network": Call("DELETE", "/networks/{name}"),
    "host": Call("GET", "/host", answer=m.HostOut, timeout=10),
    "metrics": Call("GET", "/metrics", answer=str, timeout=10),
}
_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    k: TypeAdapter(c.answer) for k, c in CALLS.items() if c.answer not in (None, str)
}


@dataclass(frozen=True)
class HostResult:
    host: str
    ok: bool
    payload: Any = None
    error: str = ""
    status: int = 0  # the agent's HTTP status when it answered with an error


class AgentClient:
    """One agent. Thread-safe (httpx.Client is); ``transport`` lets tests plug in an
    in-process agent (``httpx.ASGITransport`` is async-only, so tests use TestClient's)."""

    def __init__(self, host: str, url: str, token: str,
                 http: httpx.Client | None = None) -> None:
        self.host = host
        self.url = url.rstrip("/")
        self._http = http or httpx.Client(base_url=self.url, timeout=30.0)
        self._auth = {"Authorization": f"Bearer {token}"}

    def call(self, name: str, body: BaseModel | None = None, /,
             params: Mapping[str, Any] | None = None, timeout: float | None = None,
             **path: str) -> Any:
        c = CALLS[name]
        if c.request is not None and body is not None and not isinstance(body, c.request):
            raise TypeError(f"{name} takes a {c.request.__name__}, not {type(body).__name__}")
        url = c.path.format(**path)
        try:
            r = self._http.request(
                c.method, url, headers=self._auth, params=params,
                json=body.model_dump(mode="json") if body is not None else None,
                timeout=timeout or c.timeout)
        except httpx.HTTPError as exc:
            raise AgentUnreachable(self.host, f"{c.method} {url}: {exc or type(exc).__name__}") \
                from None
        if r.status_code >= 400:
            try:
                message = r.json().get("error") or r.text
            except ValueError:
                message = r.text.strip() or r.reason_phrase
            raise AgentError(self.host, message, r.status_code)
        if c.answer is None:
            return None
        if c.answer is str:
            return r.text
        try:
            return _ADAPTERS[name].validate_python(r.json())
        except (ValueError, ValidationError) as exc:
            raise AgentError(self.host, f"{c.method} {url}: unexpected answer: {exc}") from None

    def try_call(self, name: str, body: BaseModel | None = None, /, **path: str) -> HostResult:
        try:
            return HostResult(self.host, True, self.call(name, body, **path))
        except AgentError as exc:
            return HostResult(self.host, False, None, exc.message, exc.status)

    def close(self) -> None:
        self._http.close()


def call_many(clients: Mapping[str, AgentClient], name: str, body: BaseModel | None = None,
              /, max_workers: int = 16, **path: str) -> dict[str, HostResult]:
    """Call ``name`` on every client at once; one result per host, in the clients' order."""
    if not clients:
        return {}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(clients)),
                            thread_name_prefix="agent-call") as pool:
        futures = {h: pool.submit(c.try_call, name, body, **path) for h, c in clients.items()}
        return {h: f.result() for h, f in futures.items()}
