"""The manager's tables (SQLAlchemy 2 ORM). One schema for SQLite and PostgreSQL.

The schema is created and changed only by the Alembic migrations in
``vnix/cluster/migrations/versions``; a change here needs a new migration there
(``tests/unit/test_cluster_store.py`` checks that the two agree).

::

    hosts ◄─── vms ───► users ◄── api_tokens        jobs (kind, op JSON, progress, log)
                │                                   metric_samples (host|vm, metric, ts, value)
                └──► clusters ◄── cluster_groups    images (per host, as the agents report them)
                                                    settings (key/value: join token hash, ...)
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Host(Base):
    __tablename__ = "hosts"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(256))
    token: Mapped[str] = mapped_column(String(256))  # the agent's bearer token
    cpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="up")  # up | down
    detail: Mapped[str] = mapped_column(Text, default="")
    drivers: Mapped[list[str]] = mapped_column(JSON, default=list)
    cpu_percent: Mapped[float] = mapped_column(Float, default=0.0)
    memory_available_mib: Mapped[int] = mapped_column(Integer, default=0)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class User(Base):
    __tablename__ = "users"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))  # admin | user | guest
    max_vms: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: no limit
    max_cpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_memory_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Cluster(Base):
    """A virtual cluster (the XML engineer's): the XML text it was made from and its groups."""

    __tablename__ = "clusters"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(ForeignKey("users.name"), index=True)
    xml: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default="active")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    groups: Mapped[list[ClusterGroup]] = relationship(
        back_populates="cluster_obj", cascade="all, delete-orphan")


class ClusterGroup(Base):
    __tablename__ = "cluster_groups"
    __table_args__ = (UniqueConstraint("cluster", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cluster: Mapped[str] = mapped_column(ForeignKey("clusters.name", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer, default=0)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # image, cpus, memory, ...
    anti_affinity: Mapped[bool] = mapped_column(Boolean, default=False)
    cluster_obj: Mapped[Cluster] = relationship(back_populates="groups")


class Vm(Base):
    """What the store wants (``desired``) and what the agent last said (``actual``)."""

    __tablename__ = "vms"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(ForeignKey("users.name"), index=True)
    host: Mapped[str | None] = mapped_column(ForeignKey("hosts.name"), nullable=True, index=True)
    desired: Mapped[str] = mapped_column(String(16))  # running|stopped|paused|suspended|deleted
    actual: Mapped[str] = mapped_column(String(16), default="pending")
    cpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    image: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the agent's CreateVm request
    cluster: Mapped[str | None] = mapped_column(
        ForeignKey("clusters.name", ondelete="SET NULL"), nullable=True, index=True)
    group: Mapped[str | None] = mapped_column(String(64), nullable=True)
    spread: Mapped[bool] = mapped_column(Boolean, default=False)  # anti-affinity in its group
    detail: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                              onupdate=utcnow)


class Image(Base):
    """An image as one agent reported it (the same name may exist on several hosts)."""

    __tablename__ = "images"
    host: Mapped[str] = mapped_column(ForeignKey("hosts.name", ondelete="CASCADE"),
                                      primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    virtual_size: Mapped[int] = mapped_column(BigInteger, default=0)
    seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    op: Mapped[dict[str, Any]] = mapped_column(JSON)
    target: Mapped[str] = mapped_column(String(128), default="")  # "vm/web1", "host/h1", ...
    owner: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    log: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class MetricSample(Base):
    """One value of one metric of a host or VM. ``step`` is 0 for raw samples and the bucket
    width in seconds for downsampled ones (issue 7 adds the downsampler)."""

    __tablename__ = "metric_samples"
    __table_args__ = (Index("ix_metric_samples_lookup", "kind", "name", "metric", "ts"),
                      Index("ix_metric_samples_step_ts", "step", "ts"))  # tiers by time
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))  # host | vm
    name: Mapped[str] = mapped_column(String(64))
    metric: Mapped[str] = mapped_column(String(32))
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    value: Mapped[float] = mapped_column(Float)
    step: Mapped[int] = mapped_column(Integer, default=0)


class Setting(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
