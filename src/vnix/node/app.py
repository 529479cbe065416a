"""The node agent's HTTP API (FastAPI): VMs, images, networks, host, metrics, consoles.

Every route needs ``Authorization: Bearer <token>`` (401 otherwise), the OpenAPI schema too.
Errors are JSON ``{"error": "...", "kind": "..."}`` with the status from
:func:`vnix.node.errors.http_status`: unknown things 404, wrong state or in use 409, bad
input 400 (422 for a request body that does not match the schema), never a 500.
Driver calls block, so the routes are plain functions (FastAPI runs them in its thread pool).
"""
from __future__ import annotations

import hmac
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

import psutil
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vnix.errors import VnixError
from vnix.hypervisor.accel import choose_accel
from vnix.node.consoles import console_router
from vnix.node.errors import BadRequest, http_status
from vnix.node.images import ImageRecord
from vnix.node.metrics import render
from vnix.node.models import (
    Balloon,
    ConsoleIn,
    ConsoleOut,
    CreateNetwork,
    CreateSnapshot,
    CreateVm,
    ErrorOut,
    HostOut,
    ImageOut,
    ImportImage,
    NetworkOut,
    SnapshotOut,
    SnapshotReq,
    StopVm,
    VmOut,
)
from vnix.node.overlay import overlay_router
from vnix.node.vms import VmService
from vnix.vmm.config import parse_size_mib

log = logging.getLogger(__name__)
RECONCILE_S = 5.0
_ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": ErrorOut} for c in (400, 401, 404, 409, 501, 502)
}


def create_app(data_dir: Path, token: str, drivers: list[str] | None = None,
               default_driver: str = "qemu", reconcile: bool = True) -> FastAPI:
    if not token:
        raise BadRequest("the agent needs a non-empty --token")
    drivers = drivers or [default_driver]
    vms = VmService(data_dir, drivers, default_driver)
    vms.reconcile()  # find the VMs a previous agent left, mark the dead ones crashed
    bearer = HTTPBearer(auto_error=False)

    def auth(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if cred is None or not hmac.compare_digest(cred.credentials.encode(), token.encode()):
            raise _Unauthorized()

    app = FastAPI(title="vnix node agent", version="1", openapi_url=None, docs_url=None,
                  redoc_url=None)
    app.state.vms = vms
    api = APIRouter(dependencies=[Depends(auth)], responses=_ERRORS)

    @app.exception_handler(_Unauthorized)
    def _401(_: Request, exc: _Unauthorized) -> JSONResponse:
        return JSONResponse({"error": "missing or wrong bearer token", "kind": "Unauthorized"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(VnixError)
    def _vnix_error(_: Request, exc: VnixError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "kind": type(exc).__name__},
                            status_code=http_status(exc))

    @app.exception_handler(RequestValidationError)
    def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}",
                             "kind": "ValidationError"}, status_code=422)

    # -- VMs ------------------------------------------------------------------------------
    @api.get("/vms", response_model=list[VmOut])
    def list_vms() -> list[VmOut]:
        return vms.list()

    @api.post("/vms", response_model=VmOut, status_code=201)
    def create_vm(req: CreateVm) -> VmOut:
        return vms.create(req)

    @api.get("/vms/{name}", response_model=VmOut)
    def vm_info(name: str) -> VmOut:
        return vms.out(name)

    @api.delete("/vms/{name}", status_code=204)
    def destroy_vm(name: str) -> Response:
        vms.destroy(name)
        return Response(status_code=204)

    @api.post("/vms/{name}/stop", response_model=VmOut)
    def stop_vm(name: str, req: StopVm | None = None) -> VmOut:
        req = req or StopVm()
        return vms.stop(name, req.timeout, req.force_after)

    for action in ("start", "force-stop", "pause", "resume", "suspend", "resume-from-disk"):
        def act(name: str, _action: str = action) -> VmOut:
            return vms.act(name, _action)
        api.add_api_route(f"/vms/{{name}}/{action}", act, methods=["POST"],
                          response_model=VmOut, name=f"{action}_vm", summary=f"{action} a VM")

    @api.post("/vms/{name}/balloon", response_model=VmOut)
    def balloon(name: str, req: Balloon) -> VmOut:
        vms.driver_of(name).set_balloon(name, req.target_mib)
        return vms.out(name)

    @api.post("/vms/{name}/snapshots", status_code=201)
    def snapshot(name: str, req: SnapshotReq) -> dict[str, Any]:
        s = vms.driver_of(name).snapshot(name, req.tag)
        return {"tag": s.tag, "size": s.size, "created": s.created}

    @api.get("/vms/{name}/console", response_model=ConsoleOut)
    def console(name: str, lines: int = 50) -> ConsoleOut:
        if not 0 <= lines <= 10000:
            raise BadRequest("lines must be between 0 and 10000")
        return ConsoleOut(lines=vms.driver_of(name).console_lines(name, lines))

    @api.post("/vms/{name}/console", status_code=204)
    def console_type(name: str, req: ConsoleIn) -> Response:
        vms.driver_of(name).console_write(name, req.text.encode())
        return Response(status_code=204)

    # -- images ---------------------------------------------------------------------------
    def image_out(rec: ImageRecord) -> ImageOut:
        return ImageOut(**rec.__dict__, used_by=vms.image_users(rec.name))

    @api.get("/images", response_model=list[ImageOut])
    def list_images() -> list[ImageOut]:
        return [image_out(r) for r in vms.images.list()]

    @api.post("/images", response_model=ImageOut, status_code=201)
    def import_image(req: ImportImage) -> ImageOut:
        st = vms.images
        if req.tiny or req.built:
            return image_out(st.import_tiny(name=req.name, built=req.built or "tiny"))
        if req.kernel:
            return image_out(st.import_kernel(
                req.name, Path(req.kernel), Path(req.initrd) if req.initrd else None,
                req.cmdline, Path(req.path) if req.path else None))
        if req.path:
            return image_out(st.import_disk(req.name, Path(req.path), req.format))
        raise BadRequest("give 'path' (a disk), 'kernel' (and 'initrd'), 'tiny': true or "
                         "'built': NAME")

    @api.get("/images/{name}", response_model=ImageOut)
    def image_info(name: str) -> ImageOut:
        return image_out(vms.images.get(name))

    @api.delete("/images/{name}", status_code=204)
    def delete_image(name: str) -> Response:
        vms.images.delete(name, vms.image_users(name), vms.snapshots.of_image(name))
        return Response(status_code=204)

    # -- golden snapshots (vnix.node.snapshots): clones are POST /vms with 'snapshot' -------
    def snapshot_out(name: str) -> SnapshotOut:
        rec = vms.snapshots.get(name)
        return SnapshotOut(**{k: v for k, v in rec.__dict__.items()
                              if k in SnapshotOut.model_fields},
                           used_by=vms.snapshot_users(name))

    @api.get("/snapshots", response_model=list[SnapshotOut])
    def list_snapshots() -> list[SnapshotOut]:
        return [snapshot_out(r.name) for r in vms.snapshots.list()]

    @api.post("/snapshots", response_model=SnapshotOut, status_code=201)
    def create_snapshot(req: CreateSnapshot) -> SnapshotOut:
        if "native" not in vms.drivers:
            raise BadRequest("golden snapshots need the native driver, not enabled on this agent")
        vms.snapshots.create(req.name, req.image, parse_size_mib(req.memory), req.cpus,
                             req.ready, req.vsock)
        return snapshot_out(req.name)

    @api.get("/snapshots/{name}", response_model=SnapshotOut)
    def snapshot_info(name: str) -> SnapshotOut:
        return snapshot_out(name)

    @api.delete("/snapshots/{name}", status_code=204)
    def delete_snapshot(name: str) -> Response:
        vms.snapshots.delete(name, vms.snapshot_users(name))
        return Response(status_code=204)

    # -- networks -------------------------------------------------------------------------
    @api.get("/networks", response_model=list[NetworkOut])
    def list_networks() -> list[NetworkOut]:
        return [NetworkOut(**n.__dict__, used_by=vms.network_users(n.name))
                for n in vms.networks.list()]

    @api.post("/networks", response_model=NetworkOut, status_code=201)
    def create_network(req: CreateNetwork) -> NetworkOut:
        n = vms.networks.create(req.name, req.cidr, req.dhcp)
        return NetworkOut(**n.__dict__, used_by=[])

    @api.delete("/networks/{name}", status_code=204)
    def delete_network(name: str) -> Response:
        vms.networks.delete(name, vms.network_users(name))
        return Response(status_code=204)

    # -- host, metrics, schema ------------------------------------------------------------
    @api.get("/host", response_model=HostOut)
    def host() -> HostOut:
        mem = psutil.virtual_memory()
        return HostOut(
            hostname=socket.gethostname(), cpus=os.cpu_count() or 1,
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_total_mib=mem.total // 2**20, memory_available_mib=mem.available // 2**20,
            drivers=list(vms.drivers), default_driver=vms.default_driver,
            accel=choose_accel("auto"), vms=len(vms.names()),
            **_net_bytes(),
        )

    @api.get("/metrics", response_class=Response)
    def metrics() -> Response:
        return Response(render(vms), media_type="text/plain; version=0.0.4")

    @api.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    api.include_router(overlay_router(vms.networks))  # VXLAN: networks across hosts
    app.include_router(api)
    app.include_router(console_router(vms, token))
    app.router.on_shutdown.append(vms.snapshots.close)  # the clone servers (their clones run on)

    if reconcile:
        stop = threading.Event()

        def loop() -> None:  # notices powered-off and crashed VMs without being asked
            while not stop.wait(RECONCILE_S):
                try:
                    vms.reconcile()
                except Exception as exc:  # the loop must survive anything one VM does
                    log.warning("reconcile: %s", exc)

        app.router.on_startup.append(
            lambda: threading.Thread(target=loop, daemon=True, name="reconcile").start())
        app.router.on_shutdown.append(stop.set)
    return app


class _Unauthorized(Exception):
    pass


def _net_bytes() -> dict[str, int]:
    """The host's network traffic: every NIC but loopback (for the dashboard's graphs)."""
    nics = psutil.net_io_counters(pernic=True)
    return {"net_rx_bytes": sum(c.bytes_recv for n, c in nics.items() if n != "lo"),
            "net_tx_bytes": sum(c.bytes_sent for n, c in nics.items() if n != "lo")}
