"""Leader election among managers on one PostgreSQL database, through an advisory lock.

Several ``vnix manager`` processes may share a database: all of them serve the API (reads,
inline operations, jobs recorded as ``queued``), and exactly one, the *leader*, runs what must
not run twice: the job workers, the monitor and the reconcile loop. Leadership is PostgreSQL's
session-level advisory lock :data:`LOCK_KEY` (``pg_try_advisory_lock``, see "Advisory Locks"
in the PostgreSQL manual, section 13.3.5): the server holds it for as long as the leader's
connection lives and releases it the moment that connection ends, so no home-made consensus
and no lease clock.

A manager's life under election::

    standby ──pg_try_advisory_lock = true──► leader ──connection lost / stop──► standby
       ▲  └── false: try again every interval_s                                   │
       └──────────────────────────────────────────────────────────────────────────┘

* the standby asks for the lock every ``interval_s`` (1 s): when the leader dies its session
  ends, the server frees the lock, and the standby takes over within about a second (the
  server notices a killed process at once: the kernel closes its socket; a vanished host is
  noticed through TCP keepalives, set short on the lock's session);
* the leader checks its lock's connection every ``interval_s``; if it fails, it stops its
  workers and monitor at once (another manager may hold the lock by then) and goes back to
  standby;
* the leader also takes in the jobs other managers queued (:class:`JobIntake`: the queued ids
  it has not seen yet, every ``interval_s``); claiming a job is an atomic update (queued ->
  running), so a job never runs twice even if two runners were to see it.

On SQLite (``vnix up``) there is one manager and no election: :func:`elects` says so.
A leader that is frozen (SIGSTOP) but whose connection stays open keeps the lock: fencing that
case would need the workers to check the lock before each write, which this does not do.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from vnix.cluster.tables import Job

if TYPE_CHECKING:
    from vnix.cluster.manager import Manager

log = logging.getLogger(__name__)
LOCK_KEY = 0x766E6978  # "vnix": one advisory lock per database, held by the leader
# Short server-side keepalives on the lock's session: a leader whose host vanished loses the
# lock within ~10 s instead of the kernel's two hours.
_KEEPALIVES = ("SET tcp_keepalives_idle = 5", "SET tcp_keepalives_interval = 2",
               "SET tcp_keepalives_count = 3")


def elects(url: str) -> bool:
    """Whether managers on this database elect a leader (PostgreSQL) or not (SQLite)."""
    return url.startswith("postgresql")


class Leadership:
    """Hold (or wait for) the leader's lock in a thread; call ``on_elected`` when this
    manager becomes leader and ``on_deposed`` when it stops being one."""

    def __init__(self, url: str, on_elected: Callable[[], None],
                 on_deposed: Callable[[], None], interval_s: float = 1.0) -> None:
        # its own engine, one connection and no pool: the lock belongs to that session
        self._engine: Engine = create_engine(url, poolclass=NullPool)
        self.on_elected, self.on_deposed = on_elected, on_deposed
        self.interval_s = interval_s
        self.is_leader = False
        self.changed = threading.Event()  # set at each change of role (for tests and logs)
        self._conn: Connection | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop campaigning; a leader steps down (workers stopped, then the lock released)."""
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        if self.is_leader:
            self._depose()
        self._close()
        self._engine.dispose()

    # -- the loop -------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.is_leader:
                    self._check()
                else:
                    self._campaign()
            except Exception as exc:  # the database went away: stand by and try again
                if self.is_leader:
                    log.error("leader: lost the database (%s); stepping down", exc)
                    self._depose()
                else:
                    log.warning("leader election: %s", exc)
                self._close()
            self._stop.wait(self.interval_s)

    def _campaign(self) -> None:
        if self._conn is None:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            for stmt in _KEEPALIVES:
                conn.execute(text(stmt))
            self._conn = conn
        got = self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                 {"k": LOCK_KEY}).scalar()
        if got:
            log.info("leader: this manager holds the lock and runs jobs and the monitor")
            self.is_leader = True
            self.changed.set()
            try:
                self.on_elected()
            except Exception:
                log.exception("leader: starting the workers failed; stepping down")
                self._depose()
                self._close()

    def _check(self) -> None:
        assert self._conn is not None
        held = self._conn.execute(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                 "AND pid = pg_backend_pid() AND objid = :k"), {"k": LOCK_KEY}).scalar()
        if not held:
            raise RuntimeError("the advisory lock is no longer held by this session")

    def _depose(self) -> None:
        self.is_leader = False
        self.changed.set()
        try:
            self.on_deposed()
        except Exception:
            log.exception("leader: stopping the workers failed")

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()  # ends the session: the server frees the lock
            except Exception as exc:
                log.debug("closing the lock's connection: %s", exc)
            self._conn = None


class JobIntake:
    """On the leader: hand the job runner the jobs that other managers queued."""

    def __init__(self, manager: Manager, interval_s: float = 1.0) -> None:
        self.manager = manager
        self.interval_s = interval_s
        self._seen: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="job-intake", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def poll_once(self) -> list[int]:
        """Enqueue the queued jobs not handed over yet; returns their ids."""
        with self.manager.store.session() as s:
            queued = set(s.scalars(select(Job.id).where(Job.state == "queued")))
        new = sorted(queued - self._seen)
        self._seen = queued  # ids that left the queue are forgotten
        for job_id in new:
            self.manager.runner.enqueue(job_id)
        return new

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll_once()
            except Exception as exc:  # the database hiccups; the next poll tries again
                log.warning("job intake: %s", exc)
