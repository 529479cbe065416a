"""The dashboard's actions (POST): each builds the same typed operation as the CLI and the
REST API and hands it to ``manager.submit`` — the one door, where roles, ownership, quotas
and states are checked. The answer is a job fragment that polls its own progress (htmx,
every second) until the job ends; a refused action is an error fragment with the API's
status code (403 for a guest, 409 for a wrong state, ...).
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import delete

from vnix.cluster import auth
from vnix.cluster.auth import Actor
from vnix.cluster.errors import BadRequest, Unauthorized, http_status
from vnix.cluster.operations import Operation
from vnix.cluster.ops_admin import CreateUser, DeleteUser, SetQuota
from vnix.cluster.ops_snapshot import CreateSnapshot, DeleteSnapshot
from vnix.cluster.ops_vm import (
    CreateVm,
    DeleteVm,
    PauseVm,
    ResumeVm,
    StartVm,
    StopVm,
    SuspendVm,
)
from vnix.cluster.tables import ApiToken, Job
from vnix.cluster.vcluster.ops import (
    BatchAction,
    CreateCluster,
    DeleteCluster,
    ImportCluster,
    ScaleGroup,
)
from vnix.cluster.vcluster.xmlio import MAX_BYTES
from vnix.errors import VnixError
from vnix.web.pages import job_fragment_of, render
from vnix.web.session import COOKIE, action_actor, manager_of, page_actor, token_of

router = APIRouter(include_in_schema=False)
ACT = Depends(action_actor)
VM_OPS: dict[str, type[Operation]] = {"start": StartVm, "pause": PauseVm, "resume": ResumeVm,
                                      "suspend": SuspendVm}
LOGIN_TTL = timedelta(days=7)


def _submit(request: Request, actor: Actor, op: Operation | None = None,
            error: VnixError | None = None) -> HTMLResponse:
    """Submit ``op`` and answer with its job's live fragment, or the error it met."""
    manager = manager_of(request)
    try:
        if error is not None:
            raise error
        assert op is not None
        job_id = manager.submit(op, actor)
    except VnixError as exc:
        return render(request, "_error.html", actor, status=http_status(exc), error=str(exc))
    with manager.store.session() as s:
        return job_fragment_of(request, actor, s.get(Job, job_id))


def _op(build: Any) -> tuple[Operation | None, VnixError | None]:
    """Build an operation from form fields; bad fields are a BadRequest, as in the API."""
    from pydantic import ValidationError

    try:
        return build(), None
    except ValidationError as exc:
        first = exc.errors()[0]
        return None, BadRequest(f"{'.'.join(map(str, first['loc']))}: {first['msg']}")


# -- session ----------------------------------------------------------------------------------
@router.post("/login")
def login(request: Request, name: str = Form(""), password: str = Form(""),
          next: str = Form("/")) -> Response:
    from vnix.web.pages import _safe_next

    try:
        with manager_of(request).store.session() as s:
            token, _ = auth.login(s, name, password, LOGIN_TTL)
    except Unauthorized as exc:
        return render(request, "login.html", None, status=401, error=str(exc), next=next)
    out = RedirectResponse(_safe_next(next), status_code=303)
    out.set_cookie(COOKIE, token, max_age=int(LOGIN_TTL.total_seconds()), httponly=True,
                   samesite="strict", secure=request.url.scheme == "https")
    return out


@router.post("/logout")
def logout(request: Request, actor: Actor = ACT) -> Response:
    """Forget the cookie and revoke its token (other tokens of the user stay valid)."""
    token = token_of(request)
    if token:
        with manager_of(request).store.session() as s:
            s.execute(delete(ApiToken).where(ApiToken.token_hash == auth.token_hash(token)))
    out = RedirectResponse("/login", status_code=303)
    out.delete_cookie(COOKIE)
    if request.headers.get("hx-request"):
        out.headers["HX-Redirect"] = "/login"
    return out


# -- VMs ----------------------------------------------------------------------------------------
@router.post("/ui/vms", response_class=HTMLResponse)
def create_vm(request: Request, actor: Actor = ACT, name: str = Form(...),
              image: str = Form("tiny"), memory: str = Form("256M"), cpus: int = Form(1),
              driver: str = Form(""), snapshot: str = Form("")) -> HTMLResponse:
    """A VM of an image, or (``snapshot``) a clone of a golden snapshot: then image, memory
    and vCPUs are the snapshot's (the form disables those fields; sent anyway, they are left
    out of the operation, which takes the snapshot's)."""
    if snapshot.strip():
        op, err = _op(lambda: CreateVm(name=name.strip(), snapshot=snapshot.strip(),
                                       driver=driver or None))
    else:
        op, err = _op(lambda: CreateVm(name=name.strip(), image=image.strip(), memory=memory,
                                       cpus=cpus, driver=driver or None))
    return _submit(request, actor, op, err)


@router.post("/ui/vms/{name}/{action}", response_class=HTMLResponse)
def vm_action(request: Request, name: str, action: str, actor: Actor = ACT) -> HTMLResponse:
    if action == "stop":
        return _submit(request, actor, StopVm(name=name))
    if action == "force-stop":
        return _submit(request, actor, StopVm(name=name, force=True))
    if action == "delete":
        return _submit(request, actor, DeleteVm(name=name))
    if action not in VM_OPS:
        return _submit(request, actor, error=BadRequest(f"no VM action {action!r}"))
    return _submit(request, actor, VM_OPS[action](name=name))  # type: ignore[call-arg]


# -- golden snapshots (admins; the operations refuse anyone else) ------------------------------
@router.post("/ui/snapshots", response_class=HTMLResponse)
def create_snapshot(request: Request, actor: Actor = ACT, name: str = Form(...),
                    image: str = Form("tiny"), memory: str = Form("256M"), cpus: int = Form(1),
                    host: str = Form("")) -> HTMLResponse:
    """Make a golden snapshot (a job) on the host the scheduler picks, ``host``, or ``all``."""
    op, err = _op(lambda: CreateSnapshot(name=name.strip(), image=image.strip(),
                                         memory=memory.strip(), cpus=cpus,
                                         host=host.strip() or None))
    return _submit(request, actor, op, err)


@router.post("/ui/snapshots/{name}/delete", response_class=HTMLResponse)
def delete_snapshot(request: Request, name: str, actor: Actor = ACT,
                    host: str = Form("")) -> HTMLResponse:
    """Delete it on ``host`` (a row of the table), or on every host holding it; refused while
    clones use it (the manager's 409 names them)."""
    op, err = _op(lambda: DeleteSnapshot(name=name, host=host.strip() or None))
    return _submit(request, actor, op, err)


# -- clusters -------------------------------------------------------------------------------
async def _xml(xml: str, file: UploadFile | None) -> tuple[str, str]:
    if file is not None and file.filename:
        data = await file.read(MAX_BYTES + 1)
        try:
            return data.decode("utf-8"), file.filename
        except UnicodeDecodeError:
            raise BadRequest("the cluster file is not UTF-8 text") from None
    return xml, "cluster.xml"


@router.post("/ui/clusters", response_class=HTMLResponse)
async def create_cluster(request: Request, actor: Actor = ACT, xml: str = Form(""),
                         file: UploadFile | None = None, mode: str = Form("create"),
                         start: bool = Form(True)) -> HTMLResponse:
    """Deploy (``mode=create``) or import (``mode=import``) a cluster from XML."""
    try:
        text, filename = await _xml(xml, file)
    except BadRequest as exc:
        return _submit(request, actor, error=exc)
    if not text.strip():
        return _submit(request, actor, error=BadRequest("paste a cluster's XML or pick a file"))
    kind = ImportCluster if mode == "import" else CreateCluster
    op, err = _op(lambda: kind(xml=text, filename=filename, start=start))
    return _submit(request, actor, op, err)


@router.post("/ui/clusters/{name}/scale", response_class=HTMLResponse)
def scale(request: Request, name: str, actor: Actor = ACT, group: str = Form(...),
          count: int = Form(...)) -> HTMLResponse:
    op, err = _op(lambda: ScaleGroup(cluster=name, group=group, count=count))
    return _submit(request, actor, op, err)


@router.post("/ui/clusters/{name}/delete", response_class=HTMLResponse)
def delete_cluster(request: Request, name: str, actor: Actor = ACT) -> HTMLResponse:
    return _submit(request, actor, DeleteCluster(name=name))


@router.post("/ui/clusters/{name}/{action}", response_class=HTMLResponse)
def cluster_action(request: Request, name: str, action: str, actor: Actor = ACT,
                   group: str = Form("")) -> HTMLResponse:
    op, err = _op(lambda: BatchAction(cluster=name, action=action, group=group or None))
    return _submit(request, actor, op, err)


# -- users (admins; the operations refuse anyone else) ----------------------------------------
def _limit(text: str) -> int | None:
    return int(text) if text.strip() else None


@router.post("/ui/users", response_class=HTMLResponse)
def create_user(request: Request, actor: Actor = ACT, name: str = Form(...),
                password: str = Form(...), role: str = Form("user"),
                max_vms: str = Form(""), max_cpus: str = Form(""),
                max_memory: str = Form("")) -> HTMLResponse:
    op, err = _op(lambda: CreateUser(name=name.strip(), password=password, role=role,
                                     max_vms=_limit(max_vms), max_cpus=_limit(max_cpus),
                                     max_memory=max_memory.strip() or None))
    return _refresh_after(request, actor, op, err)


@router.post("/ui/users/{name}/quota", response_class=HTMLResponse)
def set_quota(request: Request, name: str, actor: Actor = ACT, max_vms: str = Form(""),
              max_cpus: str = Form(""), max_memory: str = Form("")) -> HTMLResponse:
    op, err = _op(lambda: SetQuota(name=name, max_vms=_limit(max_vms),
                                   max_cpus=_limit(max_cpus),
                                   max_memory=max_memory.strip() or None, clear=True))
    return _refresh_after(request, actor, op, err)


@router.post("/ui/users/{name}/delete", response_class=HTMLResponse)
def delete_user(request: Request, name: str, actor: Actor = ACT) -> HTMLResponse:
    return _refresh_after(request, actor, DeleteUser(name=name), None)


def _refresh_after(request: Request, actor: Actor, op: Operation | None,
                   err: VnixError | None) -> HTMLResponse:
    """Inline operations (users, quotas): done at once; the page reloads to show it."""
    out = _submit(request, actor, op, err)
    if out.status_code == 200:
        out.headers["HX-Refresh"] = "true"
    return out


@router.post("/ui/jobs/{job_id}/cancel", response_class=HTMLResponse)
def cancel_job(request: Request, job_id: int, actor: Actor = ACT) -> HTMLResponse:
    from vnix.cluster.errors import Forbidden, NotFound

    manager = manager_of(request)
    try:
        with manager.store.session() as s:
            job = s.get(Job, job_id)
            if job is None or not actor.may_see(job.owner):
                raise NotFound(f"no job {job_id}")
            if not actor.may_touch(job.owner):
                raise Forbidden(f"job {job_id} belongs to {job.owner}")
        manager.runner.cancel(job_id)
    except VnixError as exc:
        return render(request, "_error.html", actor, status=http_status(exc), error=str(exc))
    with manager.store.session() as s:
        return job_fragment_of(request, actor, s.get(Job, job_id))


__all__ = ["router", "page_actor"]
