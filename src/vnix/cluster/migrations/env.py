"""Alembic environment: runs on the connection :class:`vnix.cluster.store.Store` hands in
(``config.attributes["connection"]``), or on ``sqlalchemy.url`` from the command line."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from vnix.cluster.tables import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        context.configure(connection=conn, target_metadata=target_metadata,
                          render_as_batch=conn.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as c:
        context.configure(connection=c, target_metadata=target_metadata,
                          render_as_batch=c.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()


run()
