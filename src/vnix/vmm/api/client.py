"""A client of the VMM's control API (httpx over the Unix socket): what ``vnix vmm`` and the
native hypervisor driver use. Never imported by the VMM process itself.

Errors::

    VmmError
     └── ApiClientError          the API could not be used (exit status 1)
          ├── VmmUnreachable     nothing answers on the socket (says why: no file, refused, ...)
          └── VmmApiError        the VMM answered an error status; 4xx are also UsageErrors
                                 (exit status 2): bad body, unknown route, wrong state
"""
from __future__ import annotations

import os
from typing import Any

import httpx

from vnix.errors import UsageError
from vnix.vmm import VmmError


class ApiClientError(VmmError):
    """The control API could not be used."""


class VmmUnreachable(ApiClientError):
    pass


class VmmApiError(ApiClientError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class VmmRequestError(VmmApiError, UsageError):
    """A 4xx answer: the request was wrong for the VM as it is (exit status 2)."""

    exit_code = 2


class VmmClient:
    """One VMM's control API. Each call opens one connection (the server closes it)."""

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        if not os.path.exists(self.socket_path):
            raise VmmUnreachable(f"no VMM control socket at {self.socket_path} (is the VM running?)")
        transport = httpx.HTTPTransport(uds=self.socket_path)
        try:
            with httpx.Client(transport=transport, base_url="http://vmm",
                              timeout=timeout or self.timeout) as http:
                r = http.request(method, path, json=body)
        except httpx.TimeoutException:
            raise VmmUnreachable(f"the VMM at {self.socket_path} did not answer {method} {path} "
                                 f"within {timeout or self.timeout:g} s") from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc.__cause__, OSError) and exc.__cause__.strerror:
                reason = exc.__cause__.strerror
            raise VmmUnreachable(f"cannot reach the VMM at {self.socket_path}: {reason}") from None
        try:
            data = r.json()
        except ValueError:
            raise VmmApiError(r.status_code, f"the VMM answered {r.status_code} without JSON") from None
        if r.status_code >= 400:
            message = data.get("error", r.reason_phrase) if isinstance(data, dict) else r.reason_phrase
            cls = VmmRequestError if r.status_code < 500 else VmmApiError
            raise cls(r.status_code, str(message))
        return data if isinstance(data, dict) else {"value": data}

    # -- the routes ---------------------------------------------------------------------------
    def vm(self) -> dict[str, Any]:
        return self.request("GET", "/vm")

    def pause(self) -> dict[str, Any]:
        return self.request("PUT", "/vm/pause")

    def resume(self) -> dict[str, Any]:
        return self.request("PUT", "/vm/resume")

    def stop(self, graceful: bool = True, timeout: float | None = 30.0) -> dict[str, Any]:
        body: dict[str, Any] = {"graceful": graceful}
        if graceful:
            body["timeout"] = timeout
        return self.request("PUT", "/vm/stop", body)

    def stats(self) -> dict[str, Any]:
        return self.request("GET", "/stats")

    def balloon(self) -> dict[str, Any]:
        return self.request("GET", "/balloon")

    def set_balloon(self, target_mib: int) -> dict[str, Any]:
        return self.request("PUT", "/balloon", {"target_mib": target_mib})

    def snapshot(self, path: str, memory: str = "full", resume: bool = True,
                 timeout: float = 300.0) -> dict[str, Any]:
        return self.request("PUT", "/snapshot", {"path": path, "memory": memory, "resume": resume},
                            timeout=timeout)
