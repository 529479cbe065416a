"""The web dashboard (issue 7): Jinja2 pages with htmx, graphs (uPlot), serial consoles
(xterm.js) and VNC (noVNC) through the manager's WebSocket proxy, and ``/metrics``.

``mount_web(app)`` adds it to the manager's FastAPI app (:func:`vnix.api.app.create_api`)::

    /login /logout              a session cookie holding an ordinary API token
    /                           overview: hosts, VMs, clusters, jobs, alerts
    /hosts/{n} /vms/{n} /clusters/{n} /users      the pages
    /ui/...                     htmx fragments, graph data and actions (POST, CSRF-checked)
    /static/...                 our CSS/JS and the npm libraries (`make web` copies them)
    /metrics                    Prometheus text format (bearer token or session, any role)

The front-end libraries come from ``web/package.json`` (pinned, installed by ``make web``
into ``static/vendor``); nothing is loaded from another site.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from vnix.cluster.auth import Actor
from vnix.cluster.errors import http_status
from vnix.errors import VnixError
from vnix.web.session import LoginRequired, page_actor

STATIC = Path(__file__).parent / "static"
__all__ = ["STATIC", "mount_web"]


def mount_web(app: FastAPI) -> None:
    from vnix.web import actions, pages, prom

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(pages.router)
    app.include_router(actions.router)

    @app.get("/metrics", include_in_schema=False)
    def prometheus(request: Request, actor: Actor = Depends(page_actor)) -> Response:
        manager = request.app.state.manager
        return Response(prom.render(manager.store, manager.config.monitor_interval_s),
                        media_type=prom.CONTENT_TYPE)

    @app.exception_handler(LoginRequired)
    def _login(request: Request, exc: LoginRequired) -> Response:
        if request.url.path == "/metrics" or request.method != "GET":
            return Response(str(exc), status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": "/login"})
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    api_handler = app.exception_handlers.get(VnixError)

    async def _page_error(request: Request, exc: Exception) -> Response:
        """Pages answer errors as a page; the API keeps its JSON."""
        path = request.url.path
        if path.startswith("/api/") or not isinstance(exc, VnixError) or api_handler is None \
                or request.headers.get("hx-request"):
            assert api_handler is not None
            return api_handler(request, exc)  # type: ignore[no-any-return]
        return HTMLResponse(f"<!doctype html><title>vnix: error</title>"
                            f"<body style='font-family:sans-serif;margin:3em'>"
                            f"<h1>{http_status(exc)}</h1><p>{_escape(str(exc))}</p>"
                            f"<p><a href='/'>overview</a></p></body>",
                            status_code=http_status(exc))

    app.add_exception_handler(VnixError, _page_error)


def _escape(text: str) -> str:
    import html

    return html.escape(text)
