"""PendingSqlRows against real SQL stores: a burst of rows goes in a few
transactions (not one per row), every caller learns its row is stored, a row the
store refuses is quarantined without costing the others of its batch, and rows kept
while the store is out of reach are bounded, counted and written in order later."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event, func, make_url, select
from sqlalchemy.ext.asyncio import create_async_engine

from tornado_sched.clock import naive_utc, utcnow
from tornado_sched.pending import PendingSqlRows
from tornado_sched.stores import SqlStore
from tornado_sched.tables import audit_log


def _row(i: int, actor: str = "alice") -> dict[str, Any]:
    return {"at": naive_utc(utcnow()), "actor": actor, "action": "send", "target": f"module:{i}",
            "detail": None, "remote_ip": "127.0.0.1"}


async def test_a_burst_is_inserted_in_few_transactions_and_a_bad_row_is_set_aside(sql_url: str) -> None:
    sql = SqlStore(sql_url)
    await sql.create_schema()
    inserts: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO AUDIT_LOG"):
            inserts.append(len(parameters) if executemany else 1)

    event.listen(sql.engine.sync_engine, "before_cursor_execute", count)
    pending = PendingSqlRows(sql, audit_log)
    pending.start()
    try:
        stored = await asyncio.gather(*(pending.add(_row(i)) for i in range(200)))
        assert stored == [True] * 200
        assert sum(inserts) == 200 and len(inserts) < 20, inserts  # batched, not 200 statements

        inserts.clear()
        # A lone surrogate cannot be encoded: that row alone is quarantined.
        stored = await asyncio.gather(*(pending.add(_row(i, "bad \ud800" if i == 3 else "bob")) for i in range(10)))
        assert stored == [True, True, True, False, True, True, True, True, True, True]
        assert pending.quarantined == 1 and pending.kept == 0
        async with sql.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(audit_log))).scalar_one()
        assert total == 209
    finally:
        await pending.close()
        await sql.close()


def _unreachable(sql_url: str) -> str:
    """The same kind of store, out of reach: a file in a missing directory, a closed port."""
    if sql_url.startswith("sqlite"):
        return "sqlite+aiosqlite:////nonexistent-dir/x.sqlite3"
    return make_url(sql_url).set(host="127.0.0.1", port=1).render_as_string(hide_password=False)


async def test_rows_kept_while_sql_is_down_are_bounded_counted_and_written_in_order(sql_url: str) -> None:
    sql = SqlStore(sql_url)
    await sql.create_schema()
    pending = PendingSqlRows(sql, audit_log, limit=5, retry_seconds=0.1)
    pending.start()
    real, sql.engine = sql.engine, create_async_engine(_unreachable(sql_url))
    broken = sql.engine
    try:
        stored = [await pending.add(_row(i, "down")) for i in range(8)]
        assert stored == [False] * 8
        # At most `limit` wait in memory: the oldest went first, and are counted.
        assert (pending.kept, pending.dropped, pending.quarantined) == (5, 3, 0)
        assert pending.write_failures >= 1
        sql.engine = real
        for _ in range(100):
            if pending.kept == 0:
                break
            await asyncio.sleep(0.05)
        async with sql.engine.connect() as conn:
            targets = (await conn.execute(
                select(audit_log.c.target).where(audit_log.c.actor == "down").order_by(audit_log.c.id))).scalars().all()
        assert targets == [f"module:{i}" for i in range(3, 8)]  # the newest five, in order
    finally:
        sql.engine = real
        await broken.dispose()
        await pending.close()
        await sql.close()
