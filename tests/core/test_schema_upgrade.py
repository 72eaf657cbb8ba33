"""An existing database from before a column or an index was added gets it at start
(create_all alone only makes missing tables), on SQLite and MariaDB."""

from __future__ import annotations

import asyncio

from sqlalchemy import inspect, text

from tests.conftest import MakeServer
from tornado_sched.clock import utcnow
from tornado_sched.history import RunHistory
from tornado_sched.run_state import Run, Step
from tornado_sched.stores import SqlStore
from tornado_sched.tables import ADDED_INDEXES

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


async def _indexes(store: SqlStore, table: str) -> set[str]:
    async with store.engine.connect() as conn:
        return await conn.run_sync(lambda c: {i["name"] for i in inspect(c).get_indexes(table)})


async def _drop_added_indexes(store: SqlStore) -> None:
    """Make the tables as a version before ADDED_INDEXES made them."""
    async with store.engine.begin() as conn:
        for table, index in ADDED_INDEXES:
            on = "" if store.dialect == "sqlite" else f" ON {table}"
            await conn.execute(text(f"DROP INDEX {index}{on}"))
    for table, index in ADDED_INDEXES:
        assert index not in await _indexes(store, table)


async def test_indexes_added_later_are_created_in_an_existing_database(sql_url: str, caplog) -> None:
    store = SqlStore(sql_url)
    try:
        await store.create_schema()
        await _drop_added_indexes(store)
        with caplog.at_level("WARNING", logger="tornado_sched.stores"):
            await store.create_schema()
        for table, index in ADDED_INDEXES:
            assert index in await _indexes(store, table)
            assert f"schema: added index {index} on {table}" in caplog.text
        caplog.clear()
        await store.create_schema()  # and again: nothing left to create, nothing logged
        assert "added index" not in caplog.text
    finally:
        await store.close()


async def test_instances_starting_together_both_add_the_index(sql_url: str) -> None:
    """Cluster instances start at once: the one that finds the index already made by
    the other (or loses the race to create it) still starts."""
    first, second = SqlStore(sql_url), SqlStore(sql_url)
    try:
        await first.create_schema()
        await _drop_added_indexes(first)
        await asyncio.gather(first.create_schema(), second.create_schema())
        for table, index in ADDED_INDEXES:
            assert index in await _indexes(first, table)
    finally:
        await first.close()
        await second.close()


async def test_a_server_started_on_an_old_database_serves_module_history_from_the_index(
    sql_url: str, make_server: MakeServer,
) -> None:
    old = SqlStore(sql_url)
    try:
        await old.create_schema()
        await _drop_added_indexes(old)
        now = utcnow()
        step = Step(index=0, module_hash="h" * 40, module_name="m", args={}, status="success", attempts=1,
                    sent_at=now, ended_at=now)
        await RunHistory(old).insert(Run(run_id="c" * 32, workflow_id=7, workflow_name="old-w", trigger="manual",
                                         nominal_time=now, timezone="UTC", fired_at=now, steps=[step]))
    finally:
        await old.close()
    server = await make_server(sql_url_override=sql_url)
    for table, index in ADDED_INDEXES:
        assert index in await _indexes(server.ctx.sql, table)
    page = await RunHistory(server.ctx.sql).module_steps("h" * 40)
    assert [(s.run_id, s.workflow_name, s.step.status) for s in page.steps] == [("c" * 32, "old-w", "success")]
