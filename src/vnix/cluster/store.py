"""The store: one SQLAlchemy engine, sessions, and the Alembic migrations applied on open.

``Store("sqlite:///path/manager.db")`` or ``Store("postgresql+psycopg://user@host/db")``;
``with store.session() as s: ...`` commits on success and rolls back on error. Sessions are
short (one request, one job step): threads never share one.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from vnix.cluster.errors import BadRequest, ClusterError
from vnix.cluster.tables import Setting

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


class StoreError(ClusterError):
    pass


class Store:
    def __init__(self, url: str, migrate: bool = True) -> None:
        self.url = url
        try:
            self.engine: Engine = _engine(url)
        except (ArgumentError, ImportError, ValueError) as exc:
            raise BadRequest(f"cannot use database {url!r}: {exc}") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the newest migration (Alembic ``upgrade head``)."""
        from alembic import command

        try:
            with self.engine.begin() as conn:
                cfg = alembic_config(self.url)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except OperationalError as exc:
            raise StoreError(f"cannot open database {self.url}: {exc.orig}") from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        s = self._sessions()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    # -- settings (small key/value facts: the join token's hash, ...) ---------------------
    def get_setting(self, key: str) -> str | None:
        with self.session() as s:
            row = s.get(Setting, key)
            return row.value if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self.session() as s:
            row = s.get(Setting, key)
            if row:
                row.value = value
            else:
                s.add(Setting(key=key, value=value))

    def settings(self) -> dict[str, str]:
        with self.session() as s:
            return {r.key: r.value for r in s.scalars(select(Setting))}

    def close(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the job writers
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"
