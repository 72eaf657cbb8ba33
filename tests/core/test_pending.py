"""PendingSqlRows against real SQL stores: a burst of rows goes in a few
transactions (not one per row), every caller learns its row is stored, and a row the
store refuses is quarantined without costing the others of its batch."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event, func, select

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
