"""Direct reads and writes of the SQL run history, for tests that look under the API
(what is stored, not what the server says) or prepare history before a start."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select

from tornado_sched.clock import as_utc
from tornado_sched.history import RunHistory
from tornado_sched.run_state import Run
from tornado_sched.stores import SqlStore
from tornado_sched.tables import run_steps, runs, tick_claims


class HistoryProbe:
    """A second connection to the server's SQL store (works while no server runs)."""

    def __init__(self, sql_url: str) -> None:
        self.sql = SqlStore(sql_url)
        self.history = RunHistory(self.sql)

    async def stored(self, run_id: str) -> dict[str, Any] | None:
        """The run as stored (`Run.doc()` shape), or None."""
        run = await self.history.get(run_id)
        return None if run is None else run.doc()

    async def find(self, **where: Any) -> list[dict[str, Any]]:
        """Run rows (no steps) matching column == value, oldest first; times aware UTC."""
        query = select(runs).where(*(runs.c[k] == v for k, v in where.items())).order_by(runs.c.started_at)
        async with self.sql.engine.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(query)]
        for row in rows:
            for key, value in row.items():
                if key.endswith(("_time", "_at")):
                    row[key] = as_utc(value)
        return rows

    async def count(self, **where: Any) -> int:
        query = select(func.count()).select_from(runs).where(*(runs.c[k] == v for k, v in where.items()))
        async with self.sql.engine.connect() as conn:
            return (await conn.execute(query)).scalar_one()

    async def insert(self, doc: dict[str, Any]) -> None:
        """Store a run given in the document shape (as older versions kept it)."""
        await self.history.insert(Run.from_doc(doc))

    async def clear(self) -> None:
        """Forget every run and tick claim: what a server fired before a test's
        simulated downtime (a minute may turn while it runs) must not count."""
        async with self.sql.engine.begin() as conn:
            await conn.execute(delete(run_steps))
            await conn.execute(delete(runs))
            await conn.execute(delete(tick_claims))

    async def close(self) -> None:
        await self.sql.close()


async def stored_run(server: Any, run_id: str) -> dict[str, Any] | None:
    """The run as the running server stored it (read on a separate connection)."""
    probe = HistoryProbe(server.ctx.settings.sql_url)
    try:
        return await probe.stored(run_id)
    finally:
        await probe.close()


async def count_runs(server: Any, **where: Any) -> int:
    probe = HistoryProbe(server.ctx.settings.sql_url)
    try:
        return await probe.count(**where)
    finally:
        await probe.close()
