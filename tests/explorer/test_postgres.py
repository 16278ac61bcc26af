"""The explorer on PostgreSQL (by URL) instead of SQLite: a real throwaway server, the same devnet
activity indexed into it — in two runs, the second a restarted explorer resuming — and every page's
JSON equal to the SQLite index's. Also `veriplex explorer --db-url postgresql+psycopg://...` as a
process. Skipped, saying why, where no server or driver is installed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from devnet.explorer.app import create_app
from devnet.explorer.models import Block, Log
from tests.support.explorer import Activity, Explorer, make_explorer
from tests.support.verified import Verified

from . import postgres
from .test_cli import _wait, explorer_process

pytestmark = pytest.mark.skipif(postgres.available() is not None,
                                reason=str(postgres.available()))


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres.running_postgres() as url:
        yield url


@pytest.fixture(scope="module")
def pg_indexed(pg_url: str, activity: Activity, verified: Verified,
               indexed: Explorer) -> Iterator[Explorer]:
    """The SQLite fixture's blocks, indexed into PostgreSQL by two explorers in turn."""
    first = make_explorer(activity.devnet.url, pg_url, [activity.manifest, verified.manifest])
    head = indexed.status.indexed or 0
    assert first.indexer.sync_once(max_blocks=head // 2) == head // 2
    first.engine.dispose()
    second = make_explorer(activity.devnet.url, pg_url, [activity.manifest, verified.manifest])
    assert second.indexer.sync_once(max_blocks=head + 1 - head // 2) == head + 1 - head // 2
    yield second
    second.engine.dispose()


def _pages(activity: Activity, verified: Verified) -> list[str]:
    return [f"/api/request/{activity.request_id}", f"/api/request/{verified.request_id}",
            f"/api/node/{activity.owner}", f"/api/node/{verified.stage_owner}",
            f"/api/tx/{activity.settle_tx}", f"/api/epoch/{activity.epoch}",
            f"/api/model/{activity.model_id}", "/api/block/1"]


def test_postgres_holds_the_same_index_as_sqlite_page_for_page(
        pg_indexed: Explorer, indexed: Explorer, activity: Activity, verified: Verified) -> None:
    assert pg_indexed.engine.dialect.name == "postgresql"
    on_pg = TestClient(create_app(pg_indexed.engine, pg_indexed.status, pg_indexed.rpc))
    on_sqlite = TestClient(create_app(indexed.engine, indexed.status, indexed.rpc))
    for path in _pages(activity, verified):
        a, b = on_pg.get(path), on_sqlite.get(path)
        assert a.status_code == b.status_code == 200, (path, a.text)
        assert a.json()["data"] == b.json()["data"], path
    totals: dict[str, Any] = on_pg.get("/api/home").json()["data"]["totals"]
    assert totals == on_sqlite.get("/api/home").json()["data"]["totals"]
    assert on_pg.get(f"/search?q={verified.request_id}", follow_redirects=False) \
        .headers["location"] == f"/request/{verified.request_id}"
    assert on_pg.get("/api/request/0x" + "cd" * 32).status_code == 404
    with Session(pg_indexed.engine) as s:
        assert s.scalar(select(func.max(Block.number))) == indexed.status.indexed
        assert s.scalar(select(func.count()).select_from(Log)) == totals["events"]


def test_the_explorer_command_indexes_into_postgres_by_url(
        pg_url: str, activity: Activity, tmp_path: Path) -> None:
    db = pg_url.rsplit("/", 1)[0] + "/cli"
    import psycopg  # a fresh database on the same server, so the CLI starts from nothing

    with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql"),
                         autocommit=True) as conn:
        conn.execute("CREATE DATABASE cli")
    with explorer_process(tmp_path, "--manifest", str(activity.devnet.manifest_path), "explorer",
                          "--rpc-url", activity.devnet.url, "--db-url", db, "--port", "0") as url:
        st = _wait(url, lambda s: s["head"] is not None and s["indexed"] == s["head"])
        assert st["behind"] is False
        page = httpx.get(f"{url}/api/request/{activity.request_id}", timeout=10).json()["data"]
        assert page["request"]["commitment_root"] == activity.commitment_root
