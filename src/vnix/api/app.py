"""The manager's HTTP app: the REST API under /api/v1 and a landing page at /.

``create_api(manager)`` returns the FastAPI app; it starts the manager (job workers, monitor)
on startup and stops it on shutdown unless ``own_manager=False``. The OpenAPI schema is at
/api/openapi.json, the interactive docs at /api/docs. Errors are JSON
``{"error": "...", "kind": "..."}``: 400/422 bad input, 401 no token, 403 role or quota,
404 unknown names, 409 wrong state or no capacity, 502 an agent failed — never a 500 for
anything a user sends. The dashboard (:mod:`vnix.web`) adds its pages, /static and /metrics
to the same app; the console proxy (:mod:`vnix.api.consoles`) its WebSockets under /api/v1.
"""
from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from vnix.api import clusters, consoles, routes_admin, routes_jobs, routes_snapshots, routes_vms
from vnix.api.models import ErrorOut
from vnix.cluster.errors import Unauthorized, http_status
from vnix.cluster.manager import Manager
from vnix.errors import VnixError
from vnix.web import mount_web

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"
_ERRORS = {c: {"model": ErrorOut} for c in (400, 401, 403, 404, 409, 422, 502)}


def create_api(manager: Manager, own_manager: bool = True) -> FastAPI:
    from vnix import __version__

    app = FastAPI(title="vnix manager", version=__version__, openapi_url="/api/openapi.json",
                  docs_url="/api/docs", redoc_url=None)
    app.state.manager = manager

    @app.exception_handler(VnixError)
    def _vnix_error(_: Request, exc: VnixError) -> JSONResponse:
        status = http_status(exc)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse({"error": str(exc), "kind": type(exc).__name__},
                            status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}",
                             "kind": "ValidationError"}, status_code=422)

    api = APIRouter(prefix=API_PREFIX, responses=_ERRORS)  # type: ignore[arg-type]

    @api.get("/health", tags=["meta"])
    def health() -> dict[str, str]:
        """No token needed: for `vnix up` and load balancers."""
        return {"status": "ok", "version": __version__}

    api.include_router(routes_admin.router)
    api.include_router(routes_vms.router)
    api.include_router(routes_snapshots.router)  # golden snapshots on the hosts
    api.include_router(routes_jobs.router)
    api.include_router(clusters.router)  # virtual clusters (XML) and saved profiles
    api.include_router(clusters.profiles_router)
    api.include_router(consoles.router)  # console and VNC WebSockets, proxied to the agents
    app.include_router(api)
    mount_web(app)  # the dashboard (/, /login, ...), /static and /metrics

    if own_manager:
        app.router.on_startup.append(lambda: manager.started or manager.start())
        app.router.on_shutdown.append(manager.stop)
    return app

