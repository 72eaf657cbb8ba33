"""The notifier keeps outbox rows like the execution log and audit log do
(PendingSqlRows), against real SQL stores (SQLite and MariaDB): rows waiting while
SQL is out of reach are bounded (oldest dropped, counted) and written in order when
it answers; a row the store refuses for itself is set aside, counted, and blocks
nothing; a combined failure notice never outgrows its payload column (MariaDB's TEXT
holds 65,535 bytes)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import make_settings
from tests.core.conftest import Core
from tests.core.test_pending import _unreachable
from tests.flows.support import wait_until
from tornado_sched.clock import utcnow
from tornado_sched.events import RUN_FINISHED, STEP_FAILED
from tornado_sched.notify import FACT_LIMIT_BYTES, Notifier
from tornado_sched.protocol import TEXT_LIMIT_BYTES
from tornado_sched.run_state import Run, Step
from tornado_sched.stores import SqlStore
from tornado_sched.tables import notification_outbox


@pytest.fixture
async def sql(sql_url: str) -> AsyncIterator[SqlStore]:
    store = SqlStore(sql_url)
    await store.create_schema()
    yield store
    await store.close()


async def _notifier(core: Core, sql: SqlStore, tmp_path: Path, docserver_uri: str, **settings: Any) -> Notifier:
    # No email settings: rows are stored as not_configured and never sent, so the
    # outbox holds exactly what the notifier wrote.
    notifier = Notifier(sql, core.events, core.workflows, make_settings(tmp_path, docserver_uri, **settings))
    notifier.poll_seconds = 0.1  # the send loop retries kept rows at each poll
    await notifier.start()
    return notifier


def _fail(core: Core, workflow_id: int, message: str = "it broke", error: str = "boom") -> str:
    """Publish one failed step of a new run of `workflow_id`; returns the run id."""
    step = Step(index=0, module_hash="a" * 64, module_name="m", args={}, status="failure",
                message=message, error=error, ended_at=utcnow())
    run = Run(run_id=uuid.uuid4().hex, workflow_id=workflow_id, workflow_name=f"wf-{workflow_id}",
              trigger="manual", nominal_time=utcnow(), timezone="Asia/Shanghai", fired_at=utcnow(),
              steps=[step], status="failure")
    core.events.publish(STEP_FAILED, {"run": run, "step": step})
    return run.run_id


async def _rows(sql: SqlStore) -> list[Any]:
    async with sql.connect() as conn:
        return list(await conn.execute(select(notification_outbox).order_by(notification_outbox.c.id)))


async def test_rows_kept_while_sql_is_down_are_bounded_counted_and_written_in_order(
    core: Core, sql: SqlStore, sql_url: str, tmp_path: Path, docserver_uri: str,
) -> None:
    notifier = await _notifier(core, sql, tmp_path, docserver_uri)
    notifier.backlog_limit = 3
    real, sql.engine = sql.engine, create_async_engine(_unreachable(sql_url))
    broken = sql.engine
    try:
        for workflow_id in range(1, 6):
            _fail(core, workflow_id)
        await wait_until(lambda: notifier.kept + notifier.dropped == 5)
        # At most `backlog_limit` wait in memory: the oldest went first, and are counted.
        assert (notifier.kept, notifier.dropped, notifier.quarantined) == (3, 2, 0)
        assert notifier.write_failures >= 1
        sql.engine = real
        await wait_until(lambda: notifier.kept == 0)
        rows = await _rows(sql)
        assert [r.workflow_id for r in rows] == [3, 4, 5]
        assert {r.status for r in rows} == {"not_configured"}
        assert notifier.quarantined == 0 and notifier.dropped == 2
    finally:
        sql.engine = real
        await broken.dispose()
        await notifier.close()


async def test_a_row_the_store_refuses_is_set_aside_and_blocks_nothing(
    core: Core, sql: SqlStore, sql_url: str, tmp_path: Path, docserver_uri: str,
) -> None:
    """A lone surrogate cannot be encoded for the store (the edge refuses it; this is
    the last line of defence): that notice is dropped with a logged reason, once, and
    the notices kept around it are written."""
    notifier = await _notifier(core, sql, tmp_path, docserver_uri)
    real, sql.engine = sql.engine, create_async_engine(_unreachable(sql_url))
    broken = sql.engine
    try:
        _fail(core, 1)
        _fail(core, 2, message="bad \ud800")
        _fail(core, 3)
        await wait_until(lambda: notifier.kept == 3)
        sql.engine = real
        await wait_until(lambda: notifier.kept == 0)
        assert [r.workflow_id for r in await _rows(sql)] == [1, 3]
        assert notifier.quarantined == 1

        # Without an outage: refused at once, and the next one is written.
        _fail(core, 4, error="bad \udfff")
        _fail(core, 5)
        await wait_until(lambda: notifier.quarantined == 2)
        await wait_until(_has_rows(sql, 3))
        assert [r.workflow_id for r in await _rows(sql)] == [1, 3, 5]
        assert notifier.kept == 0 and notifier.dropped == 0
    finally:
        sql.engine = real
        await broken.dispose()
        await notifier.close()


def _has_rows(sql: SqlStore, count: int) -> Any:
    async def check() -> bool:
        return len(await _rows(sql)) >= count
    return check


async def test_a_combined_failure_notice_never_outgrows_its_column(
    core: Core, sql: SqlStore, tmp_path: Path, docserver_uri: str,
) -> None:
    """Failures with messages and errors as long as a result may carry (each cut to
    65,535 bytes at the edge; control characters take six bytes in JSON), gathered
    within one window: each is cut to FACT_LIMIT_BYTES, a notice is closed before it
    outgrows its column and the next failure opens a new one; every failure is in
    exactly one notice, in order, and nothing is refused (MariaDB refused such a
    payload, and the notice was retried forever)."""
    notifier = await _notifier(core, sql, tmp_path, docserver_uri, notify_aggregate_seconds=60.0)
    try:
        run_ids = [_fail(core, 1, message="消" * 21_845, error="\x01" * 65_535) for _ in range(8)]
        await wait_until(_has_failures(sql, 8))
        rows = await _rows(sql)
        payloads = [json.loads(r.payload) for r in rows]
        assert [f["run_id"] for p in payloads for f in p["failures"]] == run_ids
        assert len(rows) >= 3  # the first at once, then follow-ups closed when full
        for row, payload in zip(rows, payloads, strict=True):
            assert len(row.payload.encode("utf-8")) <= TEXT_LIMIT_BYTES
            for fact in payload["failures"]:
                assert len(json.dumps(fact, ensure_ascii=False).encode("utf-8")) <= FACT_LIMIT_BYTES
                assert fact["message"].startswith("消消消") and fact["message"].endswith("…")
        assert max(len(p["failures"]) for p in payloads) >= 2  # still gathered
        assert (notifier.quarantined, notifier.write_failures, notifier.kept) == (0, 0, 0)
    finally:
        await notifier.close()


def _has_failures(sql: SqlStore, count: int) -> Any:
    async def check() -> bool:
        rows = await _rows(sql)
        return sum(len(json.loads(r.payload)["failures"]) for r in rows) >= count
    return check


def _finish(core: Core, workflow_id: int, status: str) -> None:
    """Publish the end of a new run of `workflow_id` with `status`."""
    run = Run(run_id=uuid.uuid4().hex, workflow_id=workflow_id, workflow_name=f"wf-{workflow_id}",
              trigger="manual", nominal_time=utcnow(), timezone="Asia/Shanghai", fired_at=utcnow(),
              steps=[], status=status)
    core.events.publish(RUN_FINISHED, {"run": run})


async def test_a_failure_after_a_recovery_kept_in_an_outage_starts_a_new_notice(
    core: Core, sql: SqlStore, sql_url: str, tmp_path: Path, docserver_uri: str,
) -> None:
    """Fail, fail, recover, fail again, all kept while SQL is away: written later, the
    last failure is a notice of its own after the recovery, not a follow-up of the
    failures before it (which would reach the operator before "recovered")."""
    notifier = await _notifier(core, sql, tmp_path, docserver_uri)
    real, sql.engine = sql.engine, create_async_engine(_unreachable(sql_url))
    broken = sql.engine
    try:
        first = _fail(core, 1)
        second = _fail(core, 1)
        _finish(core, 1, "failure")
        _finish(core, 1, "success")
        again = _fail(core, 1)
        await wait_until(lambda: notifier.kept == 4)
        sql.engine = real
        await wait_until(lambda: notifier.kept == 0)
        rows = [(r.kind, [f["run_id"] for f in json.loads(r.payload).get("failures", [])]) for r in await _rows(sql)]
        recovery = rows.index(("recovery", []))
        before = [run_id for kind, failures in rows[:recovery] for run_id in failures if kind == "failure"]
        assert before == [first, second] and rows[recovery + 1:] == [("failure", [again])], rows
    finally:
        sql.engine = real
        await broken.dispose()
        await notifier.close()
