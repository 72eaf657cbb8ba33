"""RunHistory.module_steps against SQLite and MariaDB: newest first by sent time,
keyset pages that neither skip nor repeat a step when many share one sent time (a
module twice in one run, runs sent in the same microsecond), the status filter and
the failed group; and on SQLite, that both queries walk their index with no sort."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import event

from tornado_sched.clock import utcnow
from tornado_sched.errors import Invalid
from tornado_sched.history import RunHistory
from tornado_sched.run_state import Run, Step
from tornado_sched.stores import SqlStore

MODULE = "m" * 40
OTHER = "o" * 40


@pytest.fixture
async def history(sql_url: str) -> AsyncIterator[RunHistory]:
    store = SqlStore(sql_url)
    await store.create_schema()
    yield RunHistory(store)
    await store.close()


def _run(n: int, sent: object, statuses: list[str], hashes: list[str] | None = None) -> Run:
    now = utcnow()
    steps = [
        Step(index=i, module_hash=(hashes or [MODULE] * len(statuses))[i], module_name="m", args={}, status=status,
             attempts=0 if sent is None else 1, sent_at=sent, ended_at=None if sent is None else sent)
        for i, status in enumerate(statuses)
    ]
    return Run(run_id=f"{n:032x}", workflow_id=n % 3, workflow_name=f"w{n % 3}", trigger="manual",
               nominal_time=now, timezone="UTC", fired_at=now, steps=steps, status="failure")


async def _walk(history: RunHistory, status: str | None, size: int) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    cursor = None
    while True:
        page = await history.module_steps(MODULE, status, cursor, size)
        seen += [(s.run_id, s.step.index) for s in page.steps]
        assert len(page.steps) <= size
        if not page.has_more:
            assert page.next_before is None
            return seen
        cursor = page.next_before


async def test_module_steps_newest_first_with_ties_filters_and_cursors(history: RunHistory) -> None:
    base = utcnow().replace(microsecond=0)
    same = base + timedelta(seconds=5)
    runs = [
        _run(1, base, ["success", "failure"]),  # the module twice in one run
        _run(2, same, ["timeout", "success", "success"]),  # three steps, one sent time
        _run(3, same, ["offline"]),  # another run with that same sent time
        _run(4, None, ["upstream_failed"]),  # never sent: not in the history
        _run(5, base + timedelta(seconds=9), ["success", "failure"], [OTHER, MODULE]),
        _run(6, base + timedelta(seconds=1), ["cancelled"], [OTHER]),  # another module only
    ]
    for run in runs:
        await history.insert(run)
    expected = [(runs[4].run_id, 1), (runs[2].run_id, 0), (runs[1].run_id, 2), (runs[1].run_id, 1),
                (runs[1].run_id, 0), (runs[0].run_id, 1), (runs[0].run_id, 0)]
    for size in (1, 2, 3, 20):
        assert await _walk(history, None, size) == expected, size
    failed = [(runs[4].run_id, 1), (runs[2].run_id, 0), (runs[1].run_id, 0), (runs[0].run_id, 1)]
    for size in (1, 3, 20):
        assert await _walk(history, "failed", size) == failed, size
    assert await _walk(history, "success", 2) == [(runs[1].run_id, 2), (runs[1].run_id, 1), (runs[0].run_id, 0)]
    assert await _walk(history, "cancelled", 5) == []

    page = await history.module_steps(MODULE, "timeout")
    [item] = page.steps
    assert (item.run_id, item.workflow_id, item.workflow_name, item.run_status) == (runs[1].run_id, 2, "w2", "failure")
    assert item.public()["sent_at"] == same and item.public()["status"] == "timeout"
    assert (await history.module_steps("nobody")).steps == []

    for status in ("bogus", "$ne", "FAILED"):
        with pytest.raises(Invalid, match="status: must be one of"):
            await history.module_steps(MODULE, status)
    not_hex = base64.urlsafe_b64encode(b"2026-12-02T01:00:00|zzz|1").decode()
    zoned = base64.urlsafe_b64encode(f"2026-12-02T01:00:00+00:00|{'a' * 32}|1".encode()).decode()
    for cursor in ("x", "bm90IGEgY3Vyc29y", "=" * 200, not_hex, zoned):
        with pytest.raises(Invalid, match="before: not a module history cursor"):
            await history.module_steps(MODULE, None, cursor)


async def test_module_steps_walk_their_index_without_a_sort_on_sqlite(tmp_path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'plan.sqlite3'}")
    await store.create_schema()
    history = RunHistory(store)
    statements: list[tuple[str, tuple]] = []
    event.listen(store.engine.sync_engine, "before_cursor_execute",
                 lambda conn, cursor, sql, params, context, many: statements.append((sql, params)))
    try:
        await history.insert(_run(1, utcnow(), ["success"]))
        for status, index in ((None, "ix_run_steps_module_sent"), ("failure", "ix_run_steps_module_status_sent")):
            statements.clear()
            await history.module_steps(MODULE, status, None, 20)
            sql, params = statements[0]
            async with store.engine.connect() as conn:
                plan = " | ".join(str(r[-1]) for r in await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params))
            assert f"USING INDEX {index} (module_hash=?" in plan or f"USING COVERING INDEX {index}" in plan, plan
            assert "TEMP B-TREE" not in plan, plan
    finally:
        await store.close()
