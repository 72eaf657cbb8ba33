"""Browser sessions in the relational store, on SQLite and MariaDB: only a digest
of the id is kept, and every way a session ends."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from sqlalchemy import select

from tornado_sched.auth import OperatorAccounts
from tornado_sched.errors import Conflict, NotFound
from tornado_sched.sessions import BrowserSessions
from tornado_sched.stores import SqlStore
from tornado_sched.tables import browser_sessions


@pytest.fixture
async def store(sql_url: str):
    sql = SqlStore(sql_url)
    await sql.create_schema()
    accounts = OperatorAccounts(sql, "secret-for-tests-0123")
    await accounts.create("alice", "alice-password-1", "admin")
    await accounts.create("bob", "bob-password-12", "viewer")
    yield sql, accounts
    await sql.close()


async def test_sessions_resolve_end_and_list(store) -> None:
    sql, accounts = store
    sessions = BrowserSessions(sql, accounts)
    alice, bob = await accounts.get("alice"), await accounts.get("bob")
    first = await sessions.start(alice, "192.0.2.1", "Firefox")
    second = await sessions.start(alice, "192.0.2.2", "x" * 500)
    third = await sessions.start(bob, None, None)
    async with sql.engine.connect() as conn:
        rows = (await conn.execute(select(browser_sessions).order_by(browser_sessions.c.id))).all()
    assert [r.token_hash for r in rows] == [hashlib.sha256(s.encode()).hexdigest() for s in (first, second, third)]
    assert len(rows[1].user_agent) == 200

    assert (await sessions.resolve(first)).username == "alice"
    assert await sessions.resolve("not-a-session-id-at-all-000000") is None
    assert await sessions.resolve("") is None
    assert [s.username for s in await sessions.list_active()] == ["bob", "alice", "alice"]

    await sessions.end(first)
    assert await sessions.resolve(first) is None
    ended = await sessions.end_by_id(rows[2].id)
    assert ended.end_reason == "admin" and ended.ended_at is not None
    assert await sessions.resolve(third) is None
    with pytest.raises(Conflict):
        await sessions.end_by_id(rows[2].id)
    with pytest.raises(NotFound):
        await sessions.end_by_id(999_999)
    assert await sessions.end_user("alice") == 1
    assert await sessions.resolve(second) is None
    assert await sessions.list_active() == []


async def test_a_password_change_ends_sessions_started_before_it(store) -> None:
    sql, accounts = store
    sessions = BrowserSessions(sql, accounts)
    before = await sessions.start(await accounts.get("alice"), None, None)
    await accounts.set_password("alice", "another-password-2")
    assert await sessions.list_active() == []
    assert await sessions.resolve(before) is None
    after = await sessions.start(await accounts.get("alice"), None, None)
    assert (await sessions.resolve(after)).username == "alice"


async def test_idle_and_absolute_lifetimes_and_batched_touches(store) -> None:
    sql, accounts = store
    # MariaDB's DATETIME keeps whole seconds, so every lifetime here is a few seconds
    # and each wait clears it by more than one second either way.
    idle = BrowserSessions(sql, accounts, idle_seconds=2.5, max_seconds=60, touch_seconds=60)
    session_id = await idle.start(await accounts.get("alice"), None, None)
    for _ in range(4):
        await asyncio.sleep(0.5)
        assert await idle.resolve(session_id) is not None
    async with sql.engine.connect() as conn:
        row = (await conn.execute(select(browser_sessions))).one()
    # Touches are written at most every idle/4 s, not once per request.
    assert row.last_seen_at >= row.created_at
    await asyncio.sleep(3.7)
    assert await idle.resolve(session_id) is None

    absolute = BrowserSessions(sql, accounts, idle_seconds=60, max_seconds=2.0)
    session_id = await absolute.start(await accounts.get("bob"), None, None)
    assert await absolute.resolve(session_id) is not None
    await asyncio.sleep(3.2)
    assert await absolute.resolve(session_id) is None
    async with sql.engine.connect() as conn:
        reasons = [r.end_reason for r in (await conn.execute(
            select(browser_sessions).order_by(browser_sessions.c.id))).all()]
    assert reasons == ["idle", "expired"]
