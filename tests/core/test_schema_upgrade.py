"""An existing database from before a column was added gets the column at start
(create_all alone only makes missing tables), on SQLite and MariaDB."""

from __future__ import annotations

from sqlalchemy import inspect, text

from tornado_sched.clock import utcnow
from tornado_sched.history import RunHistory
from tornado_sched.runs import Run, Step
from tornado_sched.stores import SqlStore

ADDED = {"runs": ["rerun_of"], "run_steps": ["progress_percent", "progress_message", "log_tail"]}


async def _columns(store: SqlStore, table: str) -> set[str]:
    async with store.engine.connect() as conn:
        return await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns(table)})


async def test_columns_added_later_are_added_to_an_existing_database(sql_url: str) -> None:
    store = SqlStore(sql_url)
    try:
        await store.create_schema()
        async with store.engine.begin() as conn:  # the tables as an older version made them
            for table, columns in ADDED.items():
                for column in columns:
                    await conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        for table, columns in ADDED.items():
            assert not set(columns) & await _columns(store, table)

        await store.create_schema()
        for table, columns in ADDED.items():
            assert set(columns) <= await _columns(store, table)
        step = Step(index=0, module_hash="h", module_name="m", args={}, status="sent", progress_percent=5.0)
        step.log.append("kept")
        now = utcnow()
        run = Run(run_id="a" * 32, workflow_id=1, workflow_name="w", trigger="rerun", nominal_time=now,
                  timezone="UTC", fired_at=now, steps=[step], rerun_of="b" * 32)
        history = RunHistory(store)
        await history.insert(run)
        stored = await history.get(run.run_id)
        assert stored is not None and stored.rerun_of == "b" * 32
        assert stored.steps[0].progress_percent == 5.0 and list(stored.steps[0].log) == ["kept"]
        await store.create_schema()  # and again: nothing left to add
    finally:
        await store.close()
