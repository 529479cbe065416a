"""The dashboard's pages (GET): login, overview, host, VM, cluster, golden snapshots, users; the
live fragments htmx polls (overview tables, cluster nodes, snapshots, a job's progress) and the
graphs' data.

Every page authenticates the session cookie like the API authenticates a token
(:mod:`vnix.web.session`) and shows only what the actor may see; action buttons are drawn
only where the actor may act (the server checks again when the action comes).
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from vnix.api.models import SnapshotsOut
from vnix.cluster import metrics
from vnix.cluster.auth import Actor, Role
from vnix.cluster.errors import Forbidden, NotFound
from vnix.cluster.ops_vm import visible_vm
from vnix.cluster.tables import Job
from vnix.cluster.vcluster import records
from vnix.cluster.vcluster.ops import export_text
from vnix.web import views
from vnix.web.session import COOKIE, csrf_of, manager_of, page_actor

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.filters["size"] = views.size_text
JOB_DONE = "vnix-job-done"  # the event a finished job's fragment fires (lists refresh on it)
router = APIRouter(include_in_schema=False)
PAGE = Depends(page_actor)
WINDOWS = {"15m": 900, "1h": 3600, "6h": 21600, "24h": 86400}


def render(request: Request, template: str, actor: Actor | None, status: int = 200,
           **context: Any) -> HTMLResponse:
    """A template with what every page needs: who is logged in, may they act, CSRF."""
    from vnix import __version__

    token = getattr(request.state, "token", None) or request.cookies.get(COOKIE) or ""
    base = {"actor": actor, "version": __version__, "csrf": csrf_of(token) if token else "",
            "can_act": actor is not None and actor.role.at_least(Role.USER),
            "is_admin": actor is not None and actor.is_admin}
    return TEMPLATES.TemplateResponse(request, template, base | context, status_code=status)


def job_fragment_of(request: Request, actor: Actor, job: Job | None) -> HTMLResponse:
    """A job's live fragment; once the job has ended it also fires ``vnix-job-done`` (htmx's
    HX-Trigger), on which a page's lists refresh (the snapshots table)."""
    out = render(request, "_job.html", actor, job=job)
    if job is not None and job.state in ("succeeded", "failed", "cancelled"):
        out.headers["HX-Trigger"] = JOB_DONE
    return out


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, error: str = "", next: str = "/") -> HTMLResponse:
    return render(request, "login.html", None, error=error, next=_safe_next(next))


def _safe_next(url: str) -> str:
    return url if url.startswith("/") and not url.startswith("//") else "/"


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, actor: Actor = PAGE) -> HTMLResponse:
    with manager_of(request).store.session() as s:
        data = views.overview(s, actor)
        return render(request, "overview.html", actor, o=data)


@router.get("/ui/overview", response_class=HTMLResponse)
def overview_fragment(request: Request, actor: Actor = PAGE) -> HTMLResponse:
    with manager_of(request).store.session() as s:
        data = views.overview(s, actor)
        return render(request, "_overview_tables.html", actor, o=data)


@router.get("/hosts/{name}", response_class=HTMLResponse)
def host_page(request: Request, name: str, actor: Actor = PAGE) -> HTMLResponse:
    with manager_of(request).store.session() as s:
        rows = views.host_rows(s, name)
        if not rows:
            raise NotFound(f"no host {name!r}")
        return render(request, "host.html", actor, host=rows[0],
                      vms=views.visible_vms(s, actor, host=name),
                      graphs=views.graphs_of(s, "host", name), kind="host", name=name)


@router.get("/vms/{name}", response_class=HTMLResponse)
def vm_page(request: Request, name: str, actor: Actor = PAGE) -> HTMLResponse:
    with manager_of(request).store.session() as s:
        vm = visible_vm(s, actor, name)
        driver = (vm.spec or {}).get("driver") or ""
        return render(request, "vm.html", actor, vm=vm, may_touch=actor.may_touch(vm.owner),
                      graphs=views.graphs_of(s, "vm", name), kind="vm", name=name,
                      vnc=driver != "native", actions=views.VM_ACTIONS)


@router.get("/ui/vms/{name}/state", response_class=HTMLResponse)
def vm_state_fragment(request: Request, name: str, actor: Actor = PAGE) -> HTMLResponse:
    with manager_of(request).store.session() as s:
        vm = visible_vm(s, actor, name)
        return render(request, "_vm_state.html", actor, vm=vm)


@router.get("/clusters/{name}", response_class=HTMLResponse)
def cluster_page(request: Request, name: str, actor: Actor = PAGE) -> HTMLResponse:
    with manager_of(request).store.session() as s:
        row = records.visible_cluster(s, actor, name)
        spec = records.spec_of(row)
        return render(request, "cluster.html", actor, cluster=row, spec=spec,
                      groups=sorted(row.groups, key=lambda g: g.id),
                      nodes=records.describe_nodes(s, name),
                      may_touch=actor.may_touch(row.owner))


@router.get("/ui/clusters/{name}/nodes", response_class=HTMLResponse)
def cluster_nodes_fragment(request: Request, name: str, actor: Actor = PAGE) -> HTMLResponse:
    with manager_of(request).store.session() as s:
        records.visible_cluster(s, actor, name)
        return render(request, "_cluster_nodes.html", actor,
                      nodes=records.describe_nodes(s, name))


@router.get("/ui/clusters/{name}/export")
def cluster_export(request: Request, name: str, actor: Actor = PAGE) -> Response:
    with manager_of(request).store.session() as s:
        text = export_text(s, records.visible_cluster(s, actor, name))
    return Response(text, media_type="application/xml",
                    headers={"Content-Disposition": f'attachment; filename="{name}.xml"'})


# -- golden snapshots (the agents own them: asked as GET /api/v1/snapshots asks them) ----------
def snapshot_listing(request: Request, actor: Actor) -> SnapshotsOut:
    from vnix.api.routes_snapshots import list_snapshots

    return list_snapshots(request, actor, host=None)


@router.get("/snapshots", response_class=HTMLResponse)
def snapshots_page(request: Request, actor: Actor = PAGE) -> HTMLResponse:
    listing = snapshot_listing(request, actor)
    with manager_of(request).store.session() as s:
        images, hosts = views.image_names(s), views.host_names(s)
    return render(request, "snapshots.html", actor, listing=listing, images=images,
                  hosts=hosts)


@router.get("/ui/snapshots", response_class=HTMLResponse)
def snapshots_fragment(request: Request, actor: Actor = PAGE) -> HTMLResponse:
    return render(request, "_snapshot_table.html", actor,
                  listing=snapshot_listing(request, actor))


@router.get("/ui/snapshot-choices", response_class=HTMLResponse)
def snapshot_choices(request: Request, actor: Actor = PAGE) -> HTMLResponse:
    """The VM create form's "from snapshot" options: each name once, with its machine."""
    seen: dict[str, Any] = {}
    for g in snapshot_listing(request, actor).snapshots:
        seen.setdefault(g.name, g)
    return render(request, "_snapshot_choices.html", actor,
                  choices=sorted(seen.values(), key=lambda g: g.name))


@router.get("/users", response_class=HTMLResponse)
def users_page(request: Request, actor: Actor = PAGE) -> HTMLResponse:
    if not actor.is_admin:
        raise Forbidden(f"{actor.role.value} {actor.name!r} may not manage users")
    with manager_of(request).store.session() as s:
        return render(request, "users.html", actor, users=views.user_rows(s))


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
def job_fragment(request: Request, job_id: int, actor: Actor = PAGE) -> HTMLResponse:
    with manager_of(request).store.session() as s:
        job = s.get(Job, job_id)
        if job is None or not actor.may_see(job.owner):
            raise NotFound(f"no job {job_id}")
        return job_fragment_of(request, actor, job)


@router.get("/ui/graph/{kind}/{name}/{metric}")
def graph_data(request: Request, kind: str, name: str, metric: str, actor: Actor = PAGE,
               window: str = Query("15m", pattern="^(15m|1h|6h|24h)$")) -> JSONResponse:
    """uPlot's data: ``{"x": [epoch s...], "y": [values...], "title", "unit"}``."""
    if kind not in ("host", "vm"):
        raise NotFound(f"no graph kind {kind!r}")
    with manager_of(request).store.session() as s:
        if kind == "vm":
            visible_vm(s, actor, name)
        points = metrics.graph(s, kind, name, metric, timedelta(seconds=WINDOWS[window]))
    fig = metrics.figure(metric)
    return JSONResponse({"title": fig.title, "unit": fig.unit,
                         "x": [round(t.timestamp(), 3) for t, _ in points],
                         "y": [round(v, 4) for _, v in points]})
