"""Jobs: operations run by a pool of worker threads, with progress, a log and cancellation.

A job's life, kept in the ``jobs`` table (never only in memory)::

    queued ──worker──► running ──► succeeded
       │                  │  └───► failed      (error set; the log says what happened)
       └──cancel──► cancelled ◄──cancel (cooperative: the op checks between steps)

At start the runner queues again the jobs a previous manager left ``queued`` and marks those
it left ``running`` as failed ("interrupted"): their desired state is in the store, so the
reconcile loop finishes what they started.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from vnix.cluster.auth import SYSTEM, Actor, Role
from vnix.cluster.errors import Cancelled, Conflict, NotFound
from vnix.cluster.operations import JobContext, Operation, parse_operation
from vnix.cluster.tables import Job, User, utcnow
from vnix.errors import VnixError

if TYPE_CHECKING:
    from vnix.cluster.manager import Manager

log = logging.getLogger(__name__)
FINAL = frozenset({"succeeded", "failed", "cancelled"})


class JobRunner:
    def __init__(self, manager: Manager, workers: int = 4) -> None:
        self.manager = manager
        self.workers = workers
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._changed = threading.Condition()

    # -- life -----------------------------------------------------------------------------
    def start(self) -> None:
        with self.manager.store.session() as s:
            s.execute(update(Job).where(Job.state == "running").values(
                state="failed", finished=utcnow(),
                error="interrupted: the manager stopped while it ran"))
            queued = list(s.scalars(select(Job.id).where(Job.state == "queued")
                                    .order_by(Job.id)))
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"job-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        for job_id in queued:
            self._queue.put(job_id)

    def stop(self, timeout: float = 5.0) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def enqueue(self, job_id: int) -> None:
        self._queue.put(job_id)

    # -- running --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self.execute(job_id)
            except Exception:  # a worker must survive any job
                log.exception("job %s", job_id)

    def execute(self, job_id: int, op: Operation | None = None, reraise: bool = False) -> None:
        """Run one queued job to its end. Inline operations pass ``op`` itself (its secrets
        are masked in the row) and ``reraise``: their error reaches the caller."""
        with self.manager.store.session() as s:
            job = s.get(Job, job_id)
            if job is None or job.state != "queued":
                return
            # claimed by one atomic update (queued -> ...): with several managers on one
            # database (vnix.cluster.leader) two runners may see the same queued job
            claim = update(Job).where(Job.id == job_id, Job.state == "queued")
            if job.cancel_requested:
                claim = claim.values(state="cancelled", finished=utcnow())
                abandon = dict(job.op)
            else:
                abandon = None
                claim = claim.values(state="running", started=utcnow())
            if s.execute(claim).rowcount != 1:
                return
            op_data, owner = dict(job.op), job.owner
            user = s.get(User, owner)
            actor = Actor(owner, Role(user.role)) if user else SYSTEM
        if abandon is not None:
            self._abandon(abandon)
            return
        self._notify()
        ctx = JobContext(self.manager, job_id, actor)
        state, error, result = "succeeded", "", None
        failure: BaseException | None = None
        try:
            result = (op or parse_operation(op_data)).run(ctx)
        except Cancelled as exc:
            state, error, failure = "cancelled", str(exc), exc
        except VnixError as exc:
            state, error, failure = "failed", str(exc), exc
        except Exception as exc:  # a bug: keep the traceback in the job's log
            state, error, failure = "failed", f"internal error: {exc!r}", exc
            ctx.log(traceback.format_exc())
        with self.manager.store.session() as s:
            values = {"state": state, "error": error, "result": result, "finished": utcnow()}
            if state == "succeeded":
                values["progress"] = 1.0
            s.execute(update(Job).where(Job.id == job_id).values(**values))
        self._notify()
        if reraise and failure is not None:
            raise failure

    # -- asking ---------------------------------------------------------------------------
    def cancel(self, job_id: int) -> str:
        """Cancel a job; returns its state afterwards. Conflict if it has already ended."""
        with self.manager.store.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            if job.state in FINAL:
                raise Conflict(f"job {job_id} has already {job.state}")
            job.cancel_requested = True
            queued = job.state == "queued"
            if queued:
                job.state, job.finished, job.error = "cancelled", utcnow(), "cancelled by request"
            state, op = job.state, dict(job.op)
        if queued:
            self._abandon(op)
        self._notify()
        return state

    def _abandon(self, op_data: dict[str, object]) -> None:
        try:
            parse_operation(op_data).abandon(self.manager)
        except Exception:  # cancelling must not fail because the undo did
            log.exception("abandoning %s", op_data.get("kind"))
        self._notify()

    def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """Block until the job ends (or ``timeout``); returns the job row as it is then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.manager.store.session() as s:
                job = s.get(Job, job_id)
                if job is None:
                    raise NotFound(f"no job {job_id}")
                if job.state in FINAL:
                    return job
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return job
            with self._changed:
                self._changed.wait(min(0.5, left) if left is not None else 0.5)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()
