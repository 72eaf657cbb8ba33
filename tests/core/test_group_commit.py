"""GroupCommit against real stores: a record the store refuses is quarantined and
never blocks the others; a wait on a store that is out of reach is bounded and the
change is written once the store is back."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, make_url, select

from tests.core.test_runs_history import Core, _online_modules, _result, _workflow, core  # noqa: F401
from tests.support.tcpproxy import TcpProxy
from tornado_sched.batching import GroupCommit
from tornado_sched.clock import utcnow
from tornado_sched.errors import Unavailable, Unstorable
from tornado_sched.stores import SqlStore, is_store_outage


async def test_a_poisoned_result_is_quarantined_and_other_runs_are_stored(core: Core) -> None:  # noqa: F811
    sessions = await _online_modules(core, 3)
    runs = []
    for session in sessions:
        workflow = await _workflow(core, [session.module_hash])
        runs.append(await core.tracker.start_run(workflow, "manual", utcnow()))
    # A lone surrogate cannot be encoded for the store (the edge refuses it; this is
    # the last line of defence for whatever else a store may refuse).
    outcomes = await asyncio.gather(
        core.tracker.record_result(sessions[0], _result(runs[0], message="bad \ud800")),
        core.tracker.record_result(sessions[1], _result(runs[1], message="good")),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], Unstorable), outcomes
    assert outcomes[1] is None, outcomes
    assert (await core.history.get(runs[1].run_id)).status == "success"
    # Nothing is frozen: a later result of another run is stored and acknowledged.
    await core.tracker.record_result(sessions[2], _result(runs[2], message="later"))
    assert (await core.history.get(runs[2].run_id)).status == "success"
    assert core.tracker.quarantined == 1
    assert core.tracker.flush_failures == 0  # a bad record is not an outage


async def _proxied_table(admin_url: str, proxy: TcpProxy) -> tuple[SqlStore, Table]:
    url = make_url(admin_url).set(host="127.0.0.1", port=proxy.port)
    sql = SqlStore(url.render_as_string(hide_password=False))
    table = Table(f"gc_{uuid.uuid4().hex[:10]}", MetaData(), Column("k", Integer, primary_key=True),
                  Column("v", String(40)))
    async with sql.engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
    return sql, table


@pytest.mark.mariadb
async def test_a_wait_on_an_unreachable_store_is_bounded_and_the_change_lands_later(mariadb_admin_url: str) -> None:
    target = make_url(mariadb_admin_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 3306)
    await proxy.start()
    sql, table = await _proxied_table(mariadb_admin_url, proxy)
    values: dict[int, str] = {}

    async def write(keys: set[int]) -> None:
        async with sql.engine.begin() as conn:
            for key in keys:
                await conn.execute(table.delete().where(table.c.k == key))
                await conn.execute(table.insert().values(k=key, v=values[key]))

    writer: GroupCommit[int] = GroupCommit(
        "test rows", write, is_outage=is_store_outage, retry_seconds=0.2, commit_timeout=1.0, write_timeout=2.0)
    writer.start()
    try:
        values[1] = "before"
        writer.mark(1)
        await writer.commit([1])
        await proxy.cut()
        values[2] = "during"
        writer.mark(2)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="not stored within"):
            await writer.commit([2])
        assert time.monotonic() - started < 5
        assert writer.failures >= 1 and writer.quarantined == 0
        await proxy.restore()
        await writer.commit([2])  # kept while the store was away, written now
        async with sql.engine.connect() as conn:
            rows = dict((await conn.execute(select(table.c.k, table.c.v))).all())
        assert rows == {1: "before", 2: "during"}
    finally:
        await writer.close()
        async with sql.engine.begin() as conn:
            await conn.run_sync(table.metadata.drop_all)
        await sql.close()
        await proxy.close()


async def test_a_resent_result_whose_run_was_quarantined_is_not_acknowledged(core: Core) -> None:  # noqa: F811
    """The re-send of a result the store refused matches the step's state in memory:
    it must not be acknowledged as stored (it was not), only refused again."""
    sessions = await _online_modules(core, 2)
    workflow = await _workflow(core, [s.module_hash for s in sessions])  # open after one result
    run = await core.tracker.start_run(workflow, "manual", utcnow())
    poisoned = _result(run, message="bad \ud800")
    with pytest.raises(Unstorable):
        await core.tracker.record_result(sessions[0], poisoned)
    with pytest.raises(Unstorable):
        await core.tracker.record_result(sessions[0], poisoned)
    stored = await core.history.get(run.run_id)
    assert stored is not None and stored.steps[0].status == "sent"  # never written


async def test_a_write_answers_its_waiters_in_slices_the_loop_runs_between(tmp_path) -> None:
    """1,000 waiters covered by one write are answered RELEASE_SLICE at a time: a
    callback scheduled meanwhile (a timer's firing) runs before the last answer,
    not after all of them; every waiter gets its answer, and each key is stored."""
    from tornado_sched.batching import RELEASE_SLICE

    sql = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'gc.sqlite3'}")
    table = Table("rows", MetaData(), Column("k", Integer, primary_key=True), Column("v", String(40)))
    async with sql.engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)

    async def write(keys: set[int]) -> None:
        async with sql.engine.begin() as conn:
            await conn.execute(table.insert(), [{"k": k, "v": f"v{k}"} for k in sorted(keys)])

    writer: GroupCommit[int] = GroupCommit("slices", write)
    writer.start()
    answered: list[int] = []
    timeline: list[str] = []
    try:
        futures = []
        for key in range(1000):
            writer.mark(key)
            future = writer.commit_future([key])
            future.add_done_callback(lambda f, key=key: answered.append(key))
            futures.append(future)
        # Scheduled once the first slice is answered: it must not wait for all 1,000.
        futures[0].add_done_callback(
            lambda f: asyncio.get_running_loop().call_soon(lambda: timeline.append(f"probe after {len(answered)}")))
        await asyncio.gather(*futures)
        assert sorted(answered) == list(range(1000))
        assert len(timeline) == 1
        seen = int(timeline[0].split()[-1])
        assert seen < 1000 and seen <= 2 * RELEASE_SLICE, timeline
        async with sql.engine.connect() as conn:
            assert (await conn.execute(select(table.c.k))).scalars().all() == list(range(1000))
    finally:
        await writer.close()
        await sql.close()


async def _sqlite_rows(tmp_path: Any) -> tuple[SqlStore, Table]:
    sql = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'gc-rows.sqlite3'}")
    table = Table("rows", MetaData(), Column("k", Integer, primary_key=True), Column("v", String(40)))
    async with sql.engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
    return sql, table


async def test_a_lowered_commit_timeout_bounds_the_next_wait(tmp_path: Any) -> None:
    """The wait bound is read per wait: lowered at run time, a new wait gives up
    after the new bound, not behind an older wait's deadline."""
    sql, table = await _sqlite_rows(tmp_path)
    gate = asyncio.Event()

    async def write(keys: set[int]) -> None:
        await gate.wait()  # the store is slow: this write is in flight
        async with sql.engine.begin() as conn:
            await conn.execute(table.insert(), [{"k": k, "v": "x"} for k in sorted(keys)])

    writer: GroupCommit[int] = GroupCommit("lowered", write, commit_timeout=5.0, write_timeout=30.0)
    writer.start()
    try:
        writer.mark(1)
        first = writer.commit_future([1])
        await asyncio.sleep(0.05)
        writer.commit_timeout = 0.2
        writer.mark(2)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="not stored within 0.2 s"):
            await writer.commit([2])
        assert time.monotonic() - started < 1.5
        gate.set()
        await first
        await writer.commit([2])  # kept, written once the store answers
    finally:
        await writer.close()
        await sql.close()


async def test_waiters_of_a_write_that_succeeded_are_not_expired_while_answered(tmp_path: Any) -> None:
    """A write that ends just before its waiters' deadline: answering 400 of them in
    slices crosses the deadline, and every one is still told it is stored."""
    sql, table = await _sqlite_rows(tmp_path)

    async def write(keys: set[int]) -> None:
        await asyncio.sleep(0.25)
        async with sql.engine.begin() as conn:
            await conn.execute(table.insert(), [{"k": k, "v": "x"} for k in sorted(keys)])

    writer: GroupCommit[int] = GroupCommit("deadline", write, commit_timeout=0.4)
    writer.start()
    try:
        futures = []
        for key in range(400):
            writer.mark(key)
            future = writer.commit_future([key])
            # Each acknowledgement costs ~1 ms of the loop: answering all takes ~0.4 s.
            future.add_done_callback(lambda f: time.sleep(0.001))
            futures.append(future)
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert [o for o in outcomes if o is not None] == []
    finally:
        await writer.close()
        await sql.close()
