"""Typed operations: one pydantic model per action, and the registry that finds them by kind.

The CLI, the REST API and the web UI build the same :class:`Operation`; the manager then
follows one path (Ganeti's): ``allowed`` (role) → ``check`` (arguments, permissions, quotas,
placement; records the desired state, in the same transaction as the job row) → ``run`` in a
job (agent calls, progress, log, cancellation) → the reconcile loop fixes what is left.

Adding an operation::

    @register
    class ScaleGroup(Operation):
        kind: Literal["scale_group"] = "scale_group"
        cluster: str
        group: str
        count: int = Field(ge=0)

        def describe(self) -> str: return f"scale {self.cluster}/{self.group} to {self.count}"
        def check(self, ctx: OpContext) -> None: ...      # raise ClusterError subclasses
        def run(self, ctx: JobContext) -> dict | None: ... # ctx.progress(), ctx.log(), ...

and it is at once reachable as ``POST /api/v1/jobs {"op": {"kind": "scale_group", ...}}``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import update
from sqlalchemy.orm import Session

from vnix.cluster.auth import Actor, Role
from vnix.cluster.errors import BadRequest, Cancelled, ClusterError
from vnix.cluster.tables import Job
from vnix.errors import VnixError

if TYPE_CHECKING:
    from vnix.cluster.agents import AgentClient
    from vnix.cluster.manager import Manager

T = TypeVar("T")
R = TypeVar("R")


class Operation(BaseModel):
    """One action a user (or the manager itself) asks for."""

    model_config = ConfigDict(extra="forbid")
    kind: str

    min_role: ClassVar[Role] = Role.USER
    inline: ClassVar[bool] = False  # run at once in the caller's thread (users, hosts)
    secret_fields: ClassVar[frozenset[str]] = frozenset()  # stored as "***" in the job row

    @classmethod
    def allowed(cls, actor: Actor) -> bool:
        return actor.role.at_least(cls.min_role)

    def describe(self) -> str:
        return self.kind.replace("_", " ")

    def stored(self) -> dict[str, Any]:
        """The JSON the job row keeps (secrets masked)."""
        data = self.model_dump(mode="json")
        return data | {k: "***" for k in self.secret_fields if k in data}

    def target(self) -> str:
        """What the job is about ("vm/web1", "host/h1"): shown in job lists, used to filter."""
        return ""

    def check(self, ctx: OpContext) -> None:
        """Validate against the store and record the desired state. Raise, never return False."""

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        """Carry the operation out. The returned dict becomes the job's result."""
        return None

    def abandon(self, manager: Manager) -> None:
        """Undo what ``check`` recorded, for a job cancelled before it ran (idempotent)."""


OPERATIONS: dict[str, type[Operation]] = {}
O = TypeVar("O", bound=type[Operation])


def register(cls: O) -> O:
    kind = cls.model_fields["kind"].default
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__} needs kind: Literal['...'] = '...'")
    if kind in OPERATIONS and OPERATIONS[kind] is not cls:
        raise TypeError(f"operation kind {kind!r} registered twice")
    OPERATIONS[kind] = cls
    return cls


def parse_operation(data: dict[str, Any]) -> Operation:
    """An operation from its JSON form (``{"kind": ..., ...}``); BadRequest if it is wrong."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in OPERATIONS:
        raise BadRequest(f"unknown operation kind {kind!r} "
                         f"(known: {', '.join(sorted(OPERATIONS))})")
    try:
        return OPERATIONS[kind].model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadRequest(f"{kind}: {where}: {first['msg']}") from None


@dataclass
class OpContext:
    """What ``check`` sees: the request's session (one transaction with the job row)."""

    manager: Manager
    session: Session
    actor: Actor


class JobContext:
    """What ``run`` sees: progress, log and cancellation of its job, sessions, agents."""

    def __init__(self, manager: Manager, job_id: int, actor: Actor) -> None:
        self.manager = manager
        self.job_id = job_id
        self.actor = actor

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.manager.store.session() as s:
            yield s

    def agent(self, host: str) -> AgentClient:
        return self.manager.agent(host)

    def log(self, line: str) -> None:
        with self.session() as s:
            s.execute(update(Job).where(Job.id == self.job_id)
                      .values(log=Job.log + line.rstrip("\n") + "\n"))

    def progress(self, fraction: float, line: str | None = None) -> None:
        """Set progress (0..1) and optionally log a line; raises Cancelled if asked to stop."""
        with self.session() as s:
            values: dict[str, Any] = {"progress": max(0.0, min(1.0, fraction))}
            if line:
                values["log"] = Job.log + line.rstrip("\n") + "\n"
            s.execute(update(Job).where(Job.id == self.job_id).values(**values))
        self.check_cancelled()

    def cancelled(self) -> bool:
        with self.session() as s:
            job = s.get(Job, self.job_id)
            return bool(job and job.cancel_requested)

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled("cancelled by request")

    def parallel(self, items: Sequence[T], fn: Callable[[T], R], label: Callable[[T], str],
                 max_workers: int = 8) -> list[tuple[T, R | None, VnixError | None]]:
        """Run ``fn`` over ``items`` in threads; progress follows the items done. Items not
        started when the job is cancelled are skipped (their error is Cancelled, they do not
        count as progress). Returns (item, result, error) in the items' order: one failure
        never hides the others."""
        done = 0
        out: dict[int, tuple[T, R | None, VnixError | None]] = {}
        skipped = Cancelled("cancelled before it started")

        def one(i: int, item: T) -> tuple[int, R | None, VnixError | None]:
            if self.cancelled():
                return i, None, skipped
            try:
                return i, fn(item), None
            except VnixError as exc:
                return i, None, exc

        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(items))),
                                thread_name_prefix=f"job{self.job_id}") as pool:
            futures = [pool.submit(one, i, it) for i, it in enumerate(items)]
            for fut in as_completed(futures):
                i, res, err = fut.result()
                out[i] = (items[i], res, err)
                if err is skipped:
                    continue
                done += 1
                status = "ok" if err is None else f"failed: {err}"
                with self.session() as s:
                    s.execute(update(Job).where(Job.id == self.job_id).values(
                        progress=done / len(items),
                        log=Job.log + f"{label(items[i])}: {status}\n"))
        return [out[i] for i in range(len(items))]


def summarize(results: Sequence[tuple[Any, Any, VnixError | None]],
              label: Callable[[Any], str]) -> None:
    """Raise one error naming every failed item (after all were tried)."""
    failed = [(label(it), err) for it, _, err in results if err is not None]
    if failed:
        detail = "; ".join(f"{n}: {e}" for n, e in failed[:5])
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        if all(isinstance(e, Cancelled) for _, e in failed):
            raise Cancelled(f"{len(failed)} of {len(results)} cancelled")
        raise ClusterError(f"{len(failed)} of {len(results)} failed: {detail}{more}")
