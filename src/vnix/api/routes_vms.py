"""/api/v1/vms: list, create (one or a batch), act, delete, console. Actions answer 202 with
the job; ``?wait=SECONDS`` waits for it to end first (then 200)."""
from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from vnix.api.deps import GUEST, USER, manager_of
from vnix.api.models import ConsoleIn, ConsoleOut, JobOut, VmOut
from vnix.api.routes_jobs import job_out
from vnix.cluster.auth import Actor
from vnix.cluster.errors import BadRequest, Conflict
from vnix.cluster.operations import Operation
from vnix.cluster.ops_vm import (
    CreateVm,
    CreateVms,
    DeleteVm,
    PauseVm,
    ResumeVm,
    StartVm,
    StopVm,
    SuspendVm,
    visible_vm,
)
from vnix.cluster.tables import Vm
from vnix.node import models as agent

router = APIRouter(prefix="/vms", tags=["vms"])
WAIT = Query(0.0, ge=0, le=3600, description="seconds to wait for the job to end")


def vm_out(vm: Vm) -> VmOut:
    return VmOut(name=vm.name, owner=vm.owner, host=vm.host, desired=vm.desired,
                 actual=vm.actual, cpus=vm.cpus, memory_mib=vm.memory_mib, image=vm.image,
                 cluster=vm.cluster, group=vm.group, detail=vm.detail, created=vm.created)


def submit(request: Request, response: Response, op: Operation, actor: Actor,
           wait: float) -> JobOut:
    """The one door of every mutating VM route: the operation goes to the manager as a job."""
    manager = manager_of(request)
    job_id = manager.submit(op, actor)
    job = manager.runner.wait(job_id, wait) if wait else None
    with manager.store.session() as s:
        out = job_out(s, job_id)
    response.status_code = 200 if job is not None and out.state in (
        "succeeded", "failed", "cancelled") else 202
    return out


@router.get("", response_model=list[VmOut])
def list_vms(request: Request, actor: Actor = GUEST, owner: str | None = None,
             host: str | None = None, cluster: str | None = None) -> list[VmOut]:
    with manager_of(request).store.session() as s:
        q = select(Vm).order_by(Vm.name)
        for col, value in ((Vm.owner, owner), (Vm.host, host), (Vm.cluster, cluster)):
            if value is not None:
                q = q.where(col == value)
        return [vm_out(v) for v in s.scalars(q) if actor.may_see(v.owner)]


@router.post("", response_model=JobOut, status_code=202)
def create_vm(request: Request, response: Response, op: CreateVm, actor: Actor = USER,
              wait: float = WAIT) -> JobOut:
    return submit(request, response, op, actor, wait)


@router.post("/batch", response_model=JobOut, status_code=202)
def create_vms(request: Request, response: Response, op: CreateVms, actor: Actor = USER,
               wait: float = WAIT) -> JobOut:
    return submit(request, response, op, actor, wait)


@router.get("/{name}", response_model=VmOut)
def show_vm(request: Request, name: str, actor: Actor = GUEST) -> VmOut:
    with manager_of(request).store.session() as s:
        return vm_out(visible_vm(s, actor, name))


@router.delete("/{name}", response_model=JobOut, status_code=202)
def delete_vm(request: Request, response: Response, name: str, actor: Actor = USER,
              wait: float = WAIT) -> JobOut:
    return submit(request, response, DeleteVm(name=name), actor, wait)


@router.post("/{name}/start", response_model=JobOut, status_code=202)
def start_vm(request: Request, response: Response, name: str, actor: Actor = USER,
             wait: float = WAIT) -> JobOut:
    return submit(request, response, StartVm(name=name), actor, wait)


@router.post("/{name}/stop", response_model=JobOut, status_code=202)
def stop_vm(request: Request, response: Response, name: str, actor: Actor = USER,
            wait: float = WAIT, force: bool = False,
            timeout: float = Query(30.0, ge=0, le=600)) -> JobOut:
    return submit(request, response, StopVm(name=name, force=force, timeout=timeout), actor,
                  wait)


@router.post("/{name}/pause", response_model=JobOut, status_code=202)
def pause_vm(request: Request, response: Response, name: str, actor: Actor = USER,
             wait: float = WAIT) -> JobOut:
    return submit(request, response, PauseVm(name=name), actor, wait)


@router.post("/{name}/resume", response_model=JobOut, status_code=202)
def resume_vm(request: Request, response: Response, name: str, actor: Actor = USER,
              wait: float = WAIT) -> JobOut:
    return submit(request, response, ResumeVm(name=name), actor, wait)


@router.post("/{name}/suspend", response_model=JobOut, status_code=202)
def suspend_vm(request: Request, response: Response, name: str, actor: Actor = USER,
               wait: float = WAIT) -> JobOut:
    return submit(request, response, SuspendVm(name=name), actor, wait)


def _host_of(request: Request, actor: Actor, name: str, touch: bool) -> str:
    with manager_of(request).store.session() as s:
        vm = visible_vm(s, actor, name, touch=touch)
        if vm.host is None or vm.actual in ("creating", "pending", "missing"):
            raise Conflict(f"VM {name!r} has no console yet: it is {vm.actual}")
        return vm.host


@router.get("/{name}/console", response_model=ConsoleOut)
def console(request: Request, name: str, actor: Actor = GUEST,
            lines: int = Query(50, ge=0, le=10000)) -> ConsoleOut:
    host = _host_of(request, actor, name, touch=False)
    out: agent.ConsoleOut = manager_of(request).agent(host).call(
        "console", params={"lines": lines}, name=name)
    return ConsoleOut(lines=out.lines)


@router.post("/{name}/console", status_code=204)
def console_type(request: Request, name: str, req: ConsoleIn, actor: Actor = USER) -> Response:
    if not req.text:
        raise BadRequest("nothing to type")
    host = _host_of(request, actor, name, touch=True)
    manager_of(request).agent(host).call("console_write", agent.ConsoleIn(text=req.text),
                                         name=name)
    return Response(status_code=204)
