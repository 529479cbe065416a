"""The control API's routes: what each one does to the running :class:`~vnix.vmm.machine.Machine`.

=======  ================  ==============================================================
method   path              what it does (errors: 400 bad body, 404 unknown path, 405 wrong
                           method, 409 wrong state)
=======  ================  ==============================================================
GET      /vm               state (starting, running, paused, stopping), uptime, configuration
PUT      /vm/pause         every vCPU out of KVM_RUN and held (409 unless running)
PUT      /vm/resume        the vCPUs run again (409 unless paused)
PUT      /vm/stop          ``{"graceful": true, "timeout": 30}``: Ctrl-Alt-Del through the
                           i8042, then a forced stop after ``timeout`` s (null: never);
                           ``{"graceful": false}``: stop now. Exit status 0 either way
GET      /stats            exits by reason (and by vCPU, port, address), memory, devices, timings
GET      /balloon          balloon target, actual size, guest statistics (asks for fresh ones)
PUT      /balloon          ``{"target_mib": N}``: the balloon's size (what the guest gives up)
PUT      /snapshot         ``{"path": P, "memory": "full"|"diff", "resume": true}``: pause,
                           save the machine (``vnix.vmm.snapshot.save_machine``), resume
GET      /openapi.json     the OpenAPI 3 document of these routes (:mod:`vnix.vmm.api.openapi`)
=======  ================  ==============================================================

**Graceful stop.** The VMM presses Ctrl-Alt-Del on the i8042 keyboard controller, as
Firecracker's ``SendCtrlAltDel`` does (no ACPI GED device is needed, and every x86 guest with a
keyboard driver sees it). Linux turns it into its C-A-D action (by default a reboot, which the
VMM, asked to stop, reports as a power-off: status 0); the test kit's ``idle`` guest powers off
through ACPI S5. A paused guest cannot see the key press: that answers 409.

Actions that change the run state take one lock, so two clients cannot interleave a pause with
a snapshot. Nothing a client sends can end the VMM except the stop route.
"""
from __future__ import annotations

import json
import os
import threading
import time

from vnix.vmm.api.http import HttpError, Request, Response
from vnix.vmm.devices.legacy.i8042 import CTR_KBD_DISABLED
from vnix.vmm.exitcodes import POWEROFF, Stop

TYPE_CHECKING = False  # typing is not imported at run time (mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from vnix.vmm.machine import Machine

MIB = 1024 * 1024
PAGES_PER_MIB = 256
MAX_STOP_TIMEOUT = 3600.0


class ControlApi:
    """Dispatches requests to the routes above (call it with a :class:`Request`)."""

    def __init__(self, machine: Machine) -> None:
        self.m = machine
        self._lock = threading.Lock()
        self._stop_timer: threading.Timer | None = None
        self.routes: dict[str, dict[str, Callable[[Request], Response]]] = {
            "/vm": {"GET": self.get_vm},
            "/vm/pause": {"PUT": self.pause},
            "/vm/resume": {"PUT": self.resume},
            "/vm/stop": {"PUT": self.stop},
            "/stats": {"GET": self.get_stats},
            "/balloon": {"GET": self.get_balloon, "PUT": self.put_balloon},
            "/snapshot": {"PUT": self.put_snapshot},
            "/openapi.json": {"GET": self.openapi},
        }

    def __call__(self, req: Request) -> Response:
        methods = self.routes.get(req.path.rstrip("/") or "/")
        if methods is None:
            raise HttpError(404, f"no route {req.path!r} (GET /openapi.json lists them)")
        route = methods.get(req.method)
        if route is None:
            allowed = ", ".join(sorted(methods))
            return Response(405, {"error": f"{req.method} is not allowed on {req.path} (use {allowed})"},
                            {"Allow": allowed})
        return route(req)

    # -- state ----------------------------------------------------------------------------------
    def state(self) -> str:
        m = self.m
        if m.stopping:
            return "stopping"
        if m.paused:
            return "paused"
        if not m.threads or all(t.state.value == "created" for t in m.threads):
            return "starting"
        return "running"

    def get_vm(self, req: Request) -> Response:
        return Response(200, {
            "state": self.state(),
            "uptime_s": round(time.monotonic() - self.m.stats.t0, 3),
            "started_at_unix": self.m.stats.started_at,
            "pid": os.getpid(),
            "config": json.loads(self.m.config.to_json()),
        })

    def pause(self, req: Request) -> Response:
        with self._lock:
            self._require("pause", "running")
            self.m.pause()
            return Response(200, {"state": self.state()})

    def resume(self, req: Request) -> Response:
        with self._lock:
            self._require("resume", "paused")
            self.m.resume()
            return Response(200, {"state": self.state()})

    def stop(self, req: Request) -> Response:
        body = _body(req)
        _only(body, {"graceful", "timeout"})
        graceful = body.get("graceful", True)
        if not isinstance(graceful, bool):
            raise HttpError(400, "graceful must be true or false")
        timeout = body.get("timeout", 30.0)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 < timeout <= MAX_STOP_TIMEOUT):
            raise HttpError(400, f"timeout must be a number of seconds in (0, {MAX_STOP_TIMEOUT:g}] or null")
        with self._lock:
            if not graceful:  # also while a graceful stop is pending: the way to escalate
                return Response(200, {"state": "stopping", "graceful": False},
                                after=lambda: self.m.request_stop(Stop(POWEROFF, "stopped through the control API")))
            if not (self.m.graceful_stop and self.m._stop is None):  # pressing again is fine
                self._require("stop gracefully", "running")
            if self._stop_timer is not None:
                self._stop_timer.cancel()
                self._stop_timer = None
            delivered = not self.m.i8042.ctr & CTR_KBD_DISABLED  # else the guest never sees the keys
            self.m.graceful_stop = True
            if timeout is not None:
                timer = threading.Timer(float(timeout), self._force_after, (float(timeout),))
                timer.daemon = True
                timer.start()
                self._stop_timer = timer
            # The keys go after the answer: a quick guest powers off (and the process ends)
            # before an answer sent afterwards would leave.
            return Response(202, {"state": "stopping", "graceful": True, "method": "ctrl-alt-del",
                                  "delivered": delivered, "force_after_s": timeout},
                            after=self._press_ctrl_alt_del)

    def _press_ctrl_alt_del(self) -> None:
        """Send the keys and watch them go: the i8042 raises IRQ 1 again for each next byte
        when the guest reads one, but on this software-nested KVM (kvm_pvm) an edge raised
        while the guest is still in its handler for the previous byte was seen lost (about one
        time in four): the rest then waits forever. A byte the guest has not taken for 20 ms
        gets its edge again (a driver that finds OBF clear ignores an extra interrupt)."""
        kbd = self.m.i8042
        if not kbd.send_ctrl_alt_del():
            return

        def watch() -> None:
            last = len(kbd.out)
            for _ in range(150):  # 3 s
                time.sleep(0.02)
                left = len(kbd.out)
                if not left or self.m._stop is not None:
                    return
                if left == last:
                    kbd._pulse()
                last = left

        threading.Thread(target=watch, name="api-keys", daemon=True).start()

    def _force_after(self, timeout: float) -> None:
        self.m.request_stop(Stop(POWEROFF, f"the guest did not stop within {timeout:g} s of Ctrl-Alt-Del: "
                                           "stopped by force"))

    def _require(self, action: str, wanted: str) -> None:
        state = self.state()
        if state != wanted:
            raise HttpError(409, f"cannot {action}: the VM is {state}, needs {wanted}")

    # -- information ----------------------------------------------------------------------------
    def get_stats(self, req: Request) -> Response:
        from vnix.vmm.machine import _resident_bytes
        from vnix.vmm.stats import rss_bytes

        m, st = self.m, self.m.stats
        reasons: dict[str, int] = {}
        by_vcpu: list[dict[str, int]] = []
        io_out: dict[str, int] = {}
        io_in: dict[str, int] = {}
        mmio: dict[str, int] = {}
        for c in list(st.vcpus):  # the vCPU threads count without a lock: copy, retry on a race
            r = _copy(lambda: dict(c.reasons()))
            by_vcpu.append(r)
            for k, v in r.items():
                reasons[k] = reasons.get(k, 0) + v
            for target, source in ((io_out, c.io_out), (io_in, c.io_in), (mmio, c.mmio)):
                for key, n in _copy(lambda s=source: dict(s)).items():  # type: ignore[misc]
                    target[f"{key:#x}"] = target.get(f"{key:#x}", 0) + n
        resident = sum(_resident_bytes(r.host_address, r.size) for r in m.parts.mem) if m.parts else 0
        rss = rss_bytes()
        return Response(200, {
            "state": self.state(),
            "uptime_s": round(time.monotonic() - st.t0, 3),
            "exits": reasons,
            "exits_total": sum(reasons.values()),
            "exits_by_vcpu": by_vcpu,
            "io_out_by_port": io_out, "io_in_by_port": io_in, "mmio_by_addr": mmio,
            "memory": {"guest_ram_bytes": st.guest_ram_bytes, "guest_resident_bytes": resident,
                       "rss_bytes": rss, "vmm_overhead_bytes": max(0, rss - resident),
                       "balloon": self._balloon_info(refresh=False)},
            "devices": self._devices(),
            "i8042": {"pending_bytes": len(m.i8042.out), "command_byte": m.i8042.ctr},
            "serial": {"bytes_out": m.serial.bytes_out, "bytes_in": m.console.bytes_in},
            "timings_ms": dict(st.marks),
            "python_startup_ms": st.python_startup_ms,
        })

    def _devices(self) -> dict[str, dict[str, Any]]:
        pci = getattr(self.m, "pci", None)
        out: dict[str, dict[str, Any]] = {}
        for name in list(pci.functions) if pci is not None else []:
            dev = pci.device(name)
            if dev is not None:
                out[name] = {**dev.metrics.to_dict(), **dev.counters(), "active": dev.active, "broken": dev.broken}
        return out

    # -- balloon --------------------------------------------------------------------------------
    def _balloon(self) -> Any:
        pci = getattr(self.m, "pci", None)
        dev = pci.device("balloon") if pci is not None else None
        if dev is None:
            raise HttpError(409, "this VM has no balloon device")
        return dev

    def _balloon_info(self, refresh: bool) -> dict[str, Any] | None:
        try:
            dev = self._balloon()
        except HttpError:
            return None
        if refresh:
            dev.request_stats()  # the guest refills the buffer; the next read shows it
        info = dev.info()
        return {"target_mib": info["target_bytes"] / MIB, "actual_mib": info["actual_bytes"] / MIB,
                "inflated_mib": info["inflated_bytes"] / MIB, "reported_bytes": info["reported_bytes"],
                "driver_active": dev.active, "guest_stats": info["stats"],
                "guest_stats_age_s": round(time.time() - dev.stats_time, 3) if info["stats"] else None}

    def get_balloon(self, req: Request) -> Response:
        self._balloon()
        return Response(200, self._balloon_info(refresh=True))

    def put_balloon(self, req: Request) -> Response:
        body = _body(req)
        _only(body, {"target_mib"})
        n = body.get("target_mib")
        ram_mib = self.m.config.memory_mib
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < ram_mib:
            raise HttpError(400, f"target_mib must be a whole number of MiB from 0 to {ram_mib - 1} "
                                 "(the balloon's size: what the guest gives back)")
        dev = self._balloon()
        if self.m.stopping:
            raise HttpError(409, "cannot set the balloon: the VM is stopping")
        dev.set_target(n * PAGES_PER_MIB)
        return Response(200, self._balloon_info(refresh=False))

    # -- snapshot -------------------------------------------------------------------------------
    def put_snapshot(self, req: Request) -> Response:
        body = _body(req)
        _only(body, {"path", "memory", "resume", "base"})
        path, memory = body.get("path"), body.get("memory", "full")
        resume, base = body.get("resume", True), body.get("base")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise HttpError(400, "path must be an absolute file path")
        if not os.path.isdir(os.path.dirname(path)):
            raise HttpError(400, f"directory {os.path.dirname(path)} does not exist")
        if memory not in ("full", "diff"):
            raise HttpError(400, 'memory must be "full" or "diff"')
        if not isinstance(resume, bool):
            raise HttpError(400, "resume must be true or false")
        if base is not None and not isinstance(base, str):
            raise HttpError(400, "base must be a snapshot path")
        try:
            from vnix.vmm.snapshot import save_machine
        except ImportError:
            raise HttpError(501, "snapshots are not available in this build of the VMM") from None
        from vnix.errors import UsageError, VnixError

        with self._lock:
            state = self.state()
            if state not in ("running", "paused"):
                raise HttpError(409, f"cannot snapshot: the VM is {state}")
            was_running = state == "running"
            t = time.monotonic()
            if was_running:
                self.m.pause()
            try:
                kwargs: dict[str, Any] = {"memory": memory}
                if base is not None:
                    kwargs["base"] = base
                info = save_machine(self.m, path, **kwargs)
            except UsageError as exc:
                raise HttpError(400, str(exc)) from None
            except VnixError as exc:
                raise HttpError(500, f"snapshot failed: {exc}") from None
            finally:
                if was_running and resume:
                    self.m.resume()
            took = (time.monotonic() - t) * 1000
        size = os.path.getsize(path) if os.path.exists(path) else None
        details = info.to_dict()
        return Response(200, {"path": path, "memory": memory, "size_bytes": size, "took_ms": round(took, 3),
                              "state": self.state(), "info": _jsonable(details)})

    def openapi(self, req: Request) -> Response:
        from vnix.vmm.api.openapi import DOCUMENT

        return Response(200, DOCUMENT)


def _body(req: Request) -> dict[str, Any]:
    if not req.body.strip():
        return {}
    try:
        body = json.loads(req.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    return body


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise HttpError(400, f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _copy(read: Callable[[], dict[Any, int]]) -> dict[Any, int]:
    for _ in range(10):
        try:
            return read()
        except RuntimeError:  # "dictionary changed size during iteration": a vCPU counted a new key
            continue
    return {}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "to_dict"):  # a Record
        return _jsonable(value.to_dict())
    if hasattr(value, "__dict__"):
        return _jsonable(vars(value))
    return str(value)
