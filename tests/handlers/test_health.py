"""/ready reports each store and the writes that failed since start."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import RunningServer


async def test_ready_names_failed_writes_and_the_overview_shows_them(server: RunningServer) -> None:
    status, env = await server.api("/ready", auth=None)
    assert status == 200
    assert set(env["result"]["failed_writes"]) == {
        "module_state_flush", "run_state_flush", "execution_log", "notification_outbox", "audit_log",
    }
    assert not any(env["result"]["failed_writes"].values())
    page = await server.fetch("/")
    assert b"writes to the stores failed" not in page.body

    # A real failure: the relational store points at a file that cannot exist for a
    # moment; the audit write fails and is counted, not silent.
    sql = server.ctx.sql
    broken = create_async_engine("sqlite+aiosqlite:////nonexistent-dir/x.sqlite3")
    real, sql.engine = sql.engine, broken
    try:
        await server.ctx.audit.record("admin", "create", "workflow:1")
    finally:
        sql.engine = real
        await broken.dispose()
    status, env = await server.api("/ready", auth=None)
    assert env["result"]["failed_writes"]["audit_log"] == 1
    page = await server.fetch("/")
    assert b"writes to the stores failed" in page.body and b"audit_log: 1" in page.body
