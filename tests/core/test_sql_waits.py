"""Every wait on SQL is bounded: a server that stops answering without closing (stopped,
blackholed) is a StoreTimeout (a 503 naming the store) after SqlStore's bound, waits
already under way are cut when a shutdown shortens them, and closing the pool does
not wait on the server. MariaDB is reached through a TCP proxy the test hangs."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, make_url, select

from tests.support.tcpproxy import TcpProxy
from tornado_sched.errors import Unavailable
from tornado_sched.stores import SqlStore, StoreTimeout, is_store_outage

ROOT = Path(__file__).resolve().parents[2]
# Only stores.py opens the engine itself (the schema at start, which may build an index
# on a long history); everything else goes through SqlStore.begin/connect.
RAW_ENGINE_USE = re.compile(r"\bengine\.(begin|connect)\(")


def test_nothing_but_the_store_opens_the_sql_engine() -> None:
    """A call on `engine.begin()` / `engine.connect()` elsewhere would wait on a hung
    server without a limit."""
    offenders = []
    for path in sorted([*(ROOT / "tornado_sched").rglob("*.py"), *(ROOT / "handlers").rglob("*.py")]):
        if path.name == "stores.py" and path.parent.name == "tornado_sched":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if RAW_ENGINE_USE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.fixture
async def hung_sql(mariadb_admin_url: str) -> AsyncIterator[tuple[SqlStore, Table, TcpProxy]]:
    """A SqlStore with a 1 s bound through a proxy, and a table of its own."""
    target = make_url(mariadb_admin_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 3306)
    await proxy.start()
    url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    sql = SqlStore(url, wait_seconds=1.0)
    table = Table(f"w_{uuid.uuid4().hex[:10]}", MetaData(), Column("k", Integer, primary_key=True),
                  Column("v", String(40)))
    async with sql.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
    yield sql, table, proxy
    await proxy.restore()
    admin = SqlStore(mariadb_admin_url)
    async with admin.begin() as conn:
        await conn.run_sync(table.metadata.drop_all)
    await admin.close()
    await sql.close()
    await proxy.close()


@pytest.mark.mariadb
async def test_a_hung_server_is_a_503_after_the_bound_and_nothing_is_half_written(
    hung_sql: tuple[SqlStore, Table, TcpProxy],
) -> None:
    sql, table, proxy = hung_sql
    await proxy.hang()
    for attempt in range(3):  # pooled connections and new ones alike
        started = time.monotonic()
        with pytest.raises(StoreTimeout) as timed_out:
            async with sql.begin() as conn:
                await conn.execute(table.insert().values(k=attempt, v="during"))
        took = time.monotonic() - started
        assert 0.9 < took < 3.0, took
    # What handlers and writers see: a 503 naming the store, an outage to retry.
    assert isinstance(timed_out.value, Unavailable) and timed_out.value.status == 503
    assert timed_out.value.message == "store unavailable: sql" and is_store_outage(timed_out.value)
    assert sql.stalled and sql.timeouts == 3
    assert not await sql.answers(0.3)

    await proxy.restore()
    async with sql.connect() as conn:
        rows = (await conn.execute(select(table.c.k))).all()
    assert rows == []  # the cut transactions were rolled back, not left open
    assert not sql.stalled  # a wait that completes clears it


@pytest.mark.mariadb
async def test_shortening_cuts_waits_under_way_and_closing_the_pool_does_not_wait(
    hung_sql: tuple[SqlStore, Table, TcpProxy],
) -> None:
    sql, table, proxy = hung_sql
    async with sql.connect() as conn:  # a pooled connection the close must let go of
        await conn.execute(select(table.c.k))
    await proxy.hang()

    async def long_write() -> None:
        async with sql.begin(60.0) as conn:
            await conn.execute(table.insert().values(k=1, v="x"))

    waiting = asyncio.ensure_future(long_write())
    await asyncio.sleep(0.3)
    started = time.monotonic()
    sql.shorten_waits(0.2)
    with pytest.raises(StoreTimeout):
        await waiting
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    with pytest.raises(StoreTimeout):  # new waits get the short bound too
        await sql.ping()
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    await sql.close()
    assert time.monotonic() - started < 1.5
