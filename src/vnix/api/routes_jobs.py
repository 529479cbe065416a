"""/api/v1/jobs: list, show (with the log), wait, cancel, and submit any registered operation."""
from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from vnix.api.deps import GUEST, USER, manager_of
from vnix.api.models import JobDetail, JobIn, JobOut
from vnix.cluster.auth import Actor, Role
from vnix.cluster.errors import Forbidden, NotFound
from vnix.cluster.operations import OPERATIONS, parse_operation
from vnix.cluster.tables import Job

router = APIRouter(prefix="/jobs", tags=["jobs"])


def job_out(s: Session, job_id: int, detail: bool = False) -> JobOut:
    job = s.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    fields = {k: getattr(job, k) for k in JobOut.model_fields}
    if detail:
        return JobDetail(**fields, op=job.op, log=job.log)
    return JobOut(**fields)


def _visible(s: Session, actor: Actor, job_id: int) -> Job:
    job = s.get(Job, job_id)
    if job is None or not actor.may_see(job.owner):
        raise NotFound(f"no job {job_id}")
    return job


@router.get("", response_model=list[JobOut])
def list_jobs(request: Request, actor: Actor = GUEST, state: str | None = None,
              kind: str | None = None, limit: int = Query(100, ge=1, le=1000)) -> list[JobOut]:
    with manager_of(request).store.session() as s:
        q = select(Job).order_by(Job.id.desc())
        if state:
            q = q.where(Job.state == state)
        if kind:
            q = q.where(Job.kind == kind)
        if actor.role is Role.USER:  # a user sees their own jobs
            q = q.where(Job.owner == actor.name)
        return [job_out(s, j.id) for j in s.scalars(q.limit(limit))]


@router.post("", response_model=JobOut, status_code=202)
def submit_job(request: Request, response: Response, req: JobIn, actor: Actor = USER,
               wait: float = Query(0.0, ge=0, le=3600)) -> JobOut:
    """Any registered operation, by kind (see GET /api/v1/jobs/kinds)."""
    from vnix.api.routes_vms import submit

    return submit(request, response, parse_operation(req.op), actor, wait)


@router.get("/kinds", response_model=list[str])
def kinds(actor: Actor = GUEST) -> list[str]:
    return sorted(OPERATIONS)


@router.get("/{job_id}", response_model=JobDetail)
def show_job(request: Request, job_id: int, actor: Actor = GUEST) -> JobOut:
    with manager_of(request).store.session() as s:
        _visible(s, actor, job_id)
        return job_out(s, job_id, detail=True)


@router.get("/{job_id}/wait", response_model=JobDetail)
def wait_job(request: Request, job_id: int, actor: Actor = GUEST,
             timeout: float = Query(30.0, ge=0, le=600)) -> JobOut:
    """Answers when the job has ended or after ``timeout`` seconds (look at ``state``)."""
    manager = manager_of(request)
    with manager.store.session() as s:
        _visible(s, actor, job_id)
    manager.runner.wait(job_id, timeout)
    with manager.store.session() as s:
        return job_out(s, job_id, detail=True)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(request: Request, job_id: int, actor: Actor = USER) -> JobOut:
    manager = manager_of(request)
    with manager.store.session() as s:
        job = _visible(s, actor, job_id)
        if not actor.may_touch(job.owner):
            raise Forbidden(f"job {job_id} belongs to {job.owner}")
    manager.runner.cancel(job_id)
    with manager.store.session() as s:
        return job_out(s, job_id)
