"""The CLI's client for the manager's REST API (httpx), its config, and shared output helpers.

Config: ``$VNIX_HOME/client.json`` = ``{"url": "http://127.0.0.1:8460", "token": "vnix_..."}``
(written by ``vnix login`` and ``vnix up``, mode 0600); ``VNIX_URL`` and ``VNIX_TOKEN``
override it. API errors become one-line :class:`ApiError`\\ s: 4xx exit with status 2 (bad
input, unknown names, wrong state, no permission), the rest with 1.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vnix.errors import UsageError, VnixError
from vnix.images.store import vnix_home

# piped output keeps whole lines (Rich would cut a table at 80 columns)
out_console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 250)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
FINAL = ("succeeded", "failed", "cancelled")


class ClientError(VnixError):
    """The manager could not be reached or failed (exit status 1)."""


class ApiError(ClientError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = 2 if 400 <= status < 500 else 1


class NotLoggedIn(UsageError):
    exit_code = 2


class JobFailed(ClientError):
    pass


class ClientConfig(BaseModel):
    url: str
    token: str | None = None


def config_path() -> Path:
    return vnix_home() / "client.json"


def load_config() -> ClientConfig:
    url, token = os.environ.get("VNIX_URL"), os.environ.get("VNIX_TOKEN")
    cfg: ClientConfig | None = None
    try:
        cfg = ClientConfig.model_validate_json(config_path().read_text())
    except FileNotFoundError:
        pass
    except (OSError, ValidationError) as exc:
        raise NotLoggedIn(f"cannot read {config_path()}: {str(exc).splitlines()[0]}") from None
    if url:
        cfg = ClientConfig(url=url, token=token or (cfg.token if cfg else None))
    elif cfg and token:
        cfg.token = token
    if cfg is None:
        raise NotLoggedIn("no manager configured: run `vnix up`, or `vnix login URL`")
    return cfg


def save_config(cfg: ClientConfig) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(cfg.model_dump_json(indent=2) + "\n")
    os.replace(path.with_suffix(".tmp"), path)
    return path


class ApiClient:
    def __init__(self, cfg: ClientConfig | None = None, timeout: float = 60.0) -> None:
        self.cfg = cfg or load_config()
        import httpx  # here, not at the top: ~50 ms that vnix run, image and host commands never use

        headers = {"Authorization": f"Bearer {self.cfg.token}"} if self.cfg.token else {}
        self.http = httpx.Client(base_url=self.cfg.url.rstrip("/") + "/api/v1",
                                 headers=headers, timeout=timeout)

    def request(self, method: str, path: str, json_body: Any = None,
                params: dict[str, Any] | None = None) -> Any:
        import httpx

        try:
            r = self.http.request(method, path, json=json_body, params=params)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the manager at {self.cfg.url}: "
                              f"{exc or type(exc).__name__}") from None
        if r.status_code >= 400:
            try:
                message = r.json().get("error") or r.text
            except ValueError:
                message = r.text.strip() or r.reason_phrase
            if r.status_code == 401 and path != "/login":
                message += " (log in again: vnix login)"
            raise ApiError(message, r.status_code)
        if r.status_code == 204 or not r.content:
            return None
        return r.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items()
                                                 if v is not None})

    def post(self, path: str, body: Any = None, **params: Any) -> Any:
        return self.request("POST", path, body, params={k: v for k, v in params.items()
                                                        if v is not None})

    def wait_jobs(self, jobs: list[dict[str, Any]], label: str, show: bool = True,
                  timeout: float | None = None) -> list[dict[str, Any]]:
        """Wait for jobs to end, with a Rich progress bar on stderr; JobFailed names the
        failures (after all have ended)."""
        ids = [j["id"] for j in jobs]
        state = {j["id"]: j for j in jobs}
        deadline = None if timeout is None else time.monotonic() + timeout
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                      console=err_console, transient=True, disable=not show) as bar:
            task = bar.add_task(label, total=len(ids))
            while True:
                for i in ids:
                    if state[i]["state"] not in FINAL:
                        state[i] = self.get(f"/jobs/{i}/wait", timeout=0.5 if len(ids) > 1
                                            else 1.0)
                bar.update(task, completed=sum(state[i]["progress"] for i in ids))
                if all(state[i]["state"] in FINAL for i in ids):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise ClientError(f"{label}: still running after {timeout:.0f} s "
                                      f"(jobs {', '.join(map(str, ids))})")
        failed = [state[i] for i in ids if state[i]["state"] != "succeeded"]
        if failed:
            raise JobFailed("; ".join(f"job {j['id']} ({j['kind']} {j['target']}) {j['state']}: "
                                      f"{j['error']}" for j in failed))
        return [state[i] for i in ids]


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]],
                empty: str = "nothing") -> None:
    """Rows as a Rich table: ``columns`` = [(key, header), ...]."""
    if not rows:
        err_console.print(f"({empty})")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for _, header in columns:
        table.add_column(header)
    for row in rows:
        table.add_row(*[_cell(row.get(key)) for key, _ in columns])
    out_console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


def mib(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:.1f}G" if value >= 1024 else f"{value}M"


def join_later(manager_url: str, join_token: str | None, name: str | None, agent_url: str,
               agent_token: str, attempts: int = 60) -> threading.Thread:
    """Register this agent with a manager once it answers (``vnix agent --join``), from a
    thread: retried every second while the agent or the manager is not up yet."""
    import socket

    if not join_token:
        raise NotLoggedIn("--join needs the manager's join token (--join-token or "
                          "VNIX_JOIN_TOKEN; `vnix node join-token` makes one)")
    host = name or socket.gethostname().lower()
    client = ApiClient(ClientConfig(url=manager_url, token=join_token), timeout=30)
    body = {"name": host, "url": agent_url, "token": agent_token}

    def run() -> None:
        for i in range(attempts):
            try:
                h = client.post("/hosts", body)
                err_console.print(f"joined {manager_url} as host {h['name']} "
                                  f"({h['cpus']} CPUs, {mib(h['memory_mib'])})")
                return
            except ApiError as exc:
                if exc.status in (401, 403, 422) or i == attempts - 1:
                    err_console.print(f"vnix: error: cannot join {manager_url}: {exc}")
                    return
            except ClientError as exc:
                if i == attempts - 1:
                    err_console.print(f"vnix: error: cannot join {manager_url}: {exc}")
                    return
            time.sleep(1.0)

    t = threading.Thread(target=run, name="join", daemon=True)
    t.start()
    return t
