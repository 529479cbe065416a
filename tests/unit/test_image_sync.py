"""The manager's images table follows what each agent lists (``sync_images``), and two syncs of
one host at once (the monitor's poll and an import job) both succeed: a clean-clone CI run once
failed an import job with ``UNIQUE constraint failed: images.host, images.name`` when both
inserted the new image."""
from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from vnix.cluster.ops_admin import sync_images
from vnix.cluster.store import Store, sqlite_url
from vnix.cluster.tables import Host, Image, utcnow
from vnix.node.models import ImageOut


def image(name: str, size: int = 1) -> ImageOut:
    return ImageOut(name=name, kind="linux", disk=None, disk_format=None, kernel=None, initrd=None, cmdline="",
                    size=size, virtual_size=size, used_by=[])


def rows(store: Store) -> dict[str, int]:
    with store.session() as s:
        return {i.name: i.size for i in s.query(Image).filter(Image.host == "h1")}


def with_host(store: Store) -> Store:
    with store.session() as s:
        s.add(Host(name="h1", url="http://h1", token="t", drivers=[], detail=""))
    return store


def check_sync(store: Store) -> None:
    with store.session() as s:
        sync_images(s, "h1", [image("a"), image("b")])
    assert rows(store) == {"a": 1, "b": 1}
    with store.session() as s:
        sync_images(s, "h1", [image("b", 7), image("c")])
    assert rows(store) == {"b": 7, "c": 1}  # a gone, b updated, c new

    # a list asked for before another session saw an image does not delete it
    asked = utcnow() - timedelta(seconds=5)
    with store.session() as s:
        sync_images(s, "h1", [image("b", 7)], asked=asked)
    assert rows(store) == {"b": 7, "c": 1}


def check_concurrent_syncs(store: Store) -> None:
    """B syncs the same new image while A's transaction holds it; B waits, then updates."""
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with store.session() as s:
                sync_images(s, "h1", [image("new", 2)])
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    with store.session() as a:
        sync_images(a, "h1", [image("new", 1)])
        a.flush()
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)  # B is now waiting for A's write
    t.join(30)
    assert not t.is_alive()
    assert errors == []
    assert rows(store) == {"new": 2}


def test_sync_on_sqlite(tmp_path: Path) -> None:
    store = with_host(Store(sqlite_url(tmp_path / "m.db")))
    try:
        check_sync(store)
        check_concurrent_syncs(store)
    finally:
        store.close()


def test_sync_on_postgresql() -> None:
    from vnix.cluster.vcluster.testlab import Postgres, pg_bindir

    if pg_bindir() is None:
        pytest.skip("needs PostgreSQL's binaries")
    with Postgres() as pg:
        store = with_host(Store(pg.url))
        try:
            check_sync(store)
            check_concurrent_syncs(store)
        finally:
            store.close()
