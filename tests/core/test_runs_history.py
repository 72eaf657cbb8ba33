"""RunTracker + RunHistory constructed directly, against SQLite and MariaDB (and the
embedded document server for modules/workflows): a result writes its own step row,
results arriving together share one transaction, retention deletes in batches,
keyset pages, migration from the document store's `runs` collection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select

from tornado_sched.clock import naive_utc, utcnow
from tornado_sched.errors import Invalid
from tornado_sched.events import EventBus
from tornado_sched.history import RunFilter, RunHistory
from tornado_sched.hub import ConnectionHub
from tornado_sched.protocol import OUTPUT_LIMIT_BYTES, ResultMessage
from tornado_sched.registry import ModuleRegistry
from tornado_sched.run_state import Run, Step
from tornado_sched.runs import ResultNotMatched, RunTracker
from tornado_sched.stores import DocumentStore, SqlStore
from tornado_sched.tables import run_steps, runs
from tornado_sched.workflows import WorkflowStore


@dataclass
class RecordingSocket:
    """The hub's connection shape (Tornado's WebSocketHandler fits it): keeps frames."""

    frames: list[str] = field(default_factory=list)

    def write_message(self, message: Any, binary: bool = False) -> None:
        self.frames.append(message)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        pass


@dataclass
class Core:
    docs: DocumentStore
    sql: SqlStore
    history: RunHistory
    registry: ModuleRegistry
    hub: ConnectionHub
    workflows: WorkflowStore
    tracker: RunTracker
    statements: list[tuple[str, int]] = field(default_factory=list)

    def watch(self) -> None:
        """Record every SQL statement from now on: (text, number of parameter sets)."""
        self.statements.clear()

        def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            self.statements.append((statement.split()[0].upper() + " " + _table_of(statement),
                                    len(parameters) if executemany else 1))

        event.listen(self.sql.engine.sync_engine, "before_cursor_execute", record)


def _table_of(statement: str) -> str:
    words = statement.replace("`", "").replace('"', "").split()
    for keyword in ("UPDATE", "INTO", "FROM"):
        if keyword in (w.upper() for w in words):
            index = [w.upper() for w in words].index(keyword)
            return words[index + 1]
    return "?"


@pytest.fixture
async def core(sql_url: str, docserver_uri: str) -> AsyncIterator[Core]:
    docs = DocumentStore(docserver_uri, f"t{uuid.uuid4().hex[:16]}")
    await docs.ensure_indexes()
    sql = SqlStore(sql_url)
    await sql.create_schema()
    events = EventBus()
    registry = ModuleRegistry(docs)
    await registry.load()
    hub = ConnectionHub(registry, events, flush_seconds=0.2)
    await hub.start()
    workflows = WorkflowStore(docs, registry, "UTC")
    history = RunHistory(sql)
    tracker = RunTracker(history, registry, workflows, hub, events)
    await tracker.start()
    yield Core(docs, sql, history, registry, hub, workflows, tracker)
    await tracker.close()
    await hub.close()
    await sql.close()
    await docs.db.client.drop_database(docs.db.name)
    await docs.close()


async def _online_modules(core: Core, count: int) -> list[tuple[Any, Any]]:
    sessions = []
    for i in range(count):
        record = await core.registry.register(f"m{i}-{uuid.uuid4().hex[:6]}", "", [], [], "")
        sessions.append(core.hub.attach(record, RecordingSocket(), "127.0.0.1"))
    return sessions


async def _workflow(core: Core, hashes: list[str], **fields: Any) -> Any:
    return await core.workflows.create({
        "name": f"wf-{uuid.uuid4().hex[:8]}", "enable": False, "execute_cron_list": [],
        "execute_modules": [{"module_hash": h, "args": {"n": 1}} for h in hashes],
        "timeout_seconds": 600, **fields,
    })


def _result(run: Run, status: str = "success", message: str = "ok") -> ResultMessage:
    return ResultMessage(status, str(run.workflow_id), run.workflow_name, None, None, message, run.run_id)


async def _step_rows(core: Core, run_id: str) -> list[Any]:
    async with core.sql.engine.connect() as conn:
        return list(await conn.execute(
            select(run_steps).where(run_steps.c.run_id == run_id).order_by(run_steps.c.step_index)))


async def test_a_result_writes_its_own_step_row_and_the_run_row(core: Core) -> None:
    sessions = await _online_modules(core, 3)
    workflow = await _workflow(core, [s.module_hash for s in sessions])
    run = await core.tracker.start_run(workflow, "manual", utcnow())
    assert [r.status for r in await _step_rows(core, run.run_id)] == ["sent", "sent", "sent"]

    core.watch()
    await core.tracker.record_result(sessions[1], _result(run, message="second"))
    # Durable when record_result returns: one keyed update of one step row, one of the run row.
    writes = [s for s in core.statements if s[0].startswith(("UPDATE", "INSERT", "DELETE"))]
    assert writes == [("UPDATE run_steps", 1), ("UPDATE runs", 1)], core.statements
    rows = await _step_rows(core, run.run_id)
    assert [(r.status, r.message) for r in rows] == [("sent", None), ("success", "second"), ("sent", None)]
    async with core.sql.engine.connect() as conn:
        row = (await conn.execute(select(runs).where(runs.c.run_id == run.run_id))).one()
    assert (row.status, row.steps_ok, row.steps_failed, row.steps_total) == ("running", 1, 0, 3)

    await core.tracker.record_result(sessions[0], _result(run, "failure"))
    await core.tracker.record_result(sessions[2], _result(run))
    stored = await core.history.get(run.run_id)
    assert stored is not None and stored.status == "partial"
    async with core.sql.engine.connect() as conn:
        row = (await conn.execute(select(runs).where(runs.c.run_id == run.run_id))).one()
    assert (row.status, bool(row.failed), row.steps_ok, row.steps_failed) == ("partial", True, 2, 1)
    assert row.ended_at is not None


async def test_results_arriving_together_share_one_transaction(core: Core) -> None:
    sessions = await _online_modules(core, 40)
    workflow = await _workflow(core, [s.module_hash for s in sessions])
    run = await core.tracker.start_run(workflow, "manual", utcnow())
    core.watch()
    await asyncio.gather(*(core.tracker.record_result(s, _result(run)) for s in sessions))
    writes = [s for s in core.statements if s[0].startswith("UPDATE")]
    # Every result went out in one executemany of 40 step rows (not 40 statements,
    # and not the whole run rewritten per result).
    assert ("UPDATE run_steps", 40) in writes, writes
    assert sum(n for s, n in writes if s == "UPDATE run_steps") == 40
    assert (await core.history.get(run.run_id)).status == "success"


async def test_unmatched_results_say_why(core: Core) -> None:
    sessions = await _online_modules(core, 2)
    workflow = await _workflow(core, [sessions[0].module_hash])
    run = await core.tracker.start_run(workflow, "manual", utcnow())
    with pytest.raises(ResultNotMatched, match="has no step for this module"):
        await core.tracker.record_result(sessions[1], _result(run))
    unknown = ResultMessage("success", None, None, None, None, None, "f" * 32)
    with pytest.raises(ResultNotMatched, match="unknown run_id"):
        await core.tracker.record_result(sessions[0], unknown)
    await core.tracker.record_result(sessions[0], _result(run))
    # A re-send of the stored result is acknowledged; a different one is refused.
    await core.tracker.record_result(sessions[0], _result(run))
    with pytest.raises(ResultNotMatched, match="closed"):
        await core.tracker.record_result(sessions[0], _result(run, "failure"))


def _stored_run(workflow_id: int, started: Any, status: str, steps: int = 2) -> Run:
    return Run(
        run_id=uuid.uuid4().hex, workflow_id=workflow_id, workflow_name=f"w{workflow_id}", trigger="schedule",
        nominal_time=started, timezone="UTC", fired_at=started, started_at=started, status=status,
        ended_at=started + timedelta(seconds=1),
        steps=[Step(i, "a" * 40, f"m{i}", {}, status="success" if status == "success" else "failure")
               for i in range(steps)],
    )


async def _bulk(sql: SqlStore, items: list[Run]) -> None:
    from tornado_sched.history import _run_row, _step_row  # the same rows the history writes

    async with sql.engine.begin() as conn:
        await conn.execute(insert(runs), [_run_row(r) for r in items])
        await conn.execute(insert(run_steps), [_step_row(r.run_id, s) for r in items for s in r.steps])


async def test_retention_deletes_in_batches_and_keeps_open_and_recent_runs(core: Core) -> None:
    now = utcnow()
    old = [_stored_run(1, now - timedelta(days=100, seconds=i), "success") for i in range(2500)]
    open_old = _stored_run(1, now - timedelta(days=100), "running")
    recent = _stored_run(1, now - timedelta(days=1), "failure")
    await _bulk(core.sql, [*old, open_old, recent])
    core.watch()
    deleted = await core.history.delete_older_than(now - timedelta(days=90), batch=1000)
    assert deleted == 2500
    deletes = [s for s in core.statements if s[0].startswith("DELETE")]
    assert deletes == [("DELETE run_steps", 1), ("DELETE runs", 1)] * 3, deletes
    async with core.sql.engine.connect() as conn:
        left = set((await conn.execute(select(runs.c.run_id))).scalars())
        steps_left = (await conn.execute(select(func.count()).select_from(run_steps))).scalar_one()
    assert left == {open_old.run_id, recent.run_id}
    assert steps_left == 4


async def test_retention_lets_result_writes_through(core: Core) -> None:
    """A result arriving during a long clean-up is stored before the clean-up ends."""
    now = utcnow()
    await _bulk(core.sql, [_stored_run(1, now - timedelta(days=100, seconds=i), "success", 1) for i in range(5000)])
    sessions = await _online_modules(core, 1)
    workflow = await _workflow(core, [sessions[0].module_hash])
    run = await core.tracker.start_run(workflow, "manual", utcnow())
    cleanup = asyncio.ensure_future(core.history.delete_older_than(now - timedelta(days=90), batch=500))
    await asyncio.sleep(0)
    await core.tracker.record_result(sessions[0], _result(run))
    assert not cleanup.done(), "the result waited for the whole clean-up"
    assert await cleanup == 5000


async def test_keyset_pages_filters_and_bounded_totals(core: Core) -> None:
    now = utcnow().replace(microsecond=0)
    items = []
    for i in range(45):
        # Pairs of runs share a start time: the cursor must break the tie.
        items.append(_stored_run(1 + i % 3, now - timedelta(minutes=i // 2), ("success", "failure", "partial")[i % 3]))
    await _bulk(core.sql, items)
    seen: list[str] = []
    before = None
    pages = 0
    while True:
        page = await core.history.page(RunFilter(), before, 20)
        seen += [r.run_id for r in page.runs]
        pages += 1
        if not page.has_more:
            assert page.next_before is None
            break
        before = page.next_before
    assert pages == 3 and len(seen) == 45 and set(seen) == {r.run_id for r in items}
    starts = [r.started_at for r in (await core.history.page(RunFilter(), None, 45)).runs]
    assert starts == sorted(starts, reverse=True)

    failed = await core.history.page(RunFilter(status="failed"), None, 100)
    assert len(failed.runs) == 30 and {r.status for r in failed.runs} == {"failure", "partial"}
    only = await core.history.page(RunFilter(workflow_id=2, status="failure"), None, 100)
    assert len(only.runs) == 15 and {r.workflow_id for r in only.runs} == {2}
    window = await core.history.page(
        RunFilter(since=now - timedelta(minutes=4), until=now - timedelta(minutes=1)), None, 100)
    # `until` is exclusive.
    assert {r.started_at for r in window.runs} == {now - timedelta(minutes=m) for m in (2, 3, 4)}
    assert len(window.runs[0].steps) == 2

    numbered = await core.history.page_by_number(RunFilter(), 2, 20)
    assert [r.run_id for r in numbered.runs] == seen[20:40]
    assert (numbered.total, numbered.total_exact) == (45, True)
    with pytest.raises(Invalid, match="before"):
        await core.history.page(RunFilter(), "not-a-cursor", 20)
    with pytest.raises(Invalid, match="page"):
        await core.history.page_by_number(RunFilter(), 10_000, 20)
    with pytest.raises(Invalid, match="status"):
        RunFilter(status="bogus")


async def test_total_is_bounded(core: Core) -> None:
    now = utcnow()
    await _bulk(core.sql, [_stored_run(7, now - timedelta(seconds=i), "success", 1) for i in range(1005)])
    page = await core.history.page_by_number(RunFilter(workflow_id=7), 1, 20)
    assert (page.total, page.total_exact, page.has_more) == (1000, False, True)


async def test_migration_from_the_document_store_is_batched_and_idempotent(core: Core) -> None:
    started = utcnow().replace(microsecond=0) - timedelta(days=3)
    docs = [_stored_run(3, started - timedelta(minutes=i), "success").doc() for i in range(120)]
    # Half were migrated by an earlier, interrupted attempt.
    await _bulk(core.sql, [Run.from_doc(d) for d in docs[:60]])
    await core.docs["runs"].insert_many([dict(d) for d in docs])

    core.watch()
    assert await core.history.migrate_from_documents(core.docs, batch=25) == 60
    inserts = [s for s in core.statements if s[0] == "INSERT runs"]
    assert len(inserts) == 3  # batches of 25 holding the 60 missing ones (0, 10, 25, 25)
    assert "runs" not in await core.docs.db.list_collection_names()
    assert await core.history.migrate_from_documents(core.docs) == 0
    stored = await core.history.get(docs[100]["run_id"])
    assert stored is not None and stored.status == "success" and len(stored.steps) == 2
    assert naive_utc(stored.started_at) == naive_utc(docs[100]["started_at"])


async def test_registry_authenticates_hashes_from_memory(core: Core) -> None:
    record = await core.registry.register(f"mem-{uuid.uuid4().hex[:6]}", "", [], [], "")
    assert core.registry.authenticate(record.hash) == record
    fresh = ModuleRegistry(core.docs)
    assert fresh.authenticate(record.hash) is None
    assert await fresh.load() >= 1 and fresh.authenticate(record.hash) is not None
    await core.registry.delete(record.hash)
    assert core.registry.authenticate(record.hash) is None


async def test_data_ordered_run_stores_outputs_and_feeds_them_downstream(core: Core) -> None:
    """Against SQLite and MariaDB: an output near the 64 KiB bound (multi-byte text)
    round-trips through run_steps.output, and reaches the consumer's meta.inputs."""
    import json

    producer = await core.registry.register(f"p-{uuid.uuid4().hex[:6]}", "", [], [{"name": "prices"}], "")
    consumer = await core.registry.register(f"c-{uuid.uuid4().hex[:6]}", "", [{"name": "prices"}], [], "")
    sockets = [RecordingSocket(), RecordingSocket()]
    sessions = [core.hub.attach(m, s, "127.0.0.1") for m, s in zip((producer, consumer), sockets, strict=True)]
    workflow = await _workflow(core, [consumer.hash, producer.hash], order="data")
    run = await core.tracker.start_run(workflow, "manual", utcnow())
    assert [s.status for s in run.steps] == ["pending", "sent"]
    # sockets[0] is the producer's (step 1), sockets[1] the consumer's (step 0).
    assert len(sockets[0].frames) == 1 and len(sockets[1].frames) == 0
    assert json.loads(sockets[0].frames[0])["meta"]["inputs"] == {}

    # Exactly the bound (65,536 bytes encoded, multi-byte text): one byte more than MySQL's TEXT holds.
    output = {"t": "价格" * 10_000 + "x" * (OUTPUT_LIMIT_BYTES - 9 - 60_000)}
    assert len(json.dumps(output, ensure_ascii=False).encode()) == OUTPUT_LIMIT_BYTES
    result = ResultMessage("success", str(run.workflow_id), run.workflow_name, None, None, "ok", run.run_id, output)
    await core.tracker.record_result(sessions[0], result)
    rows = await _step_rows(core, run.run_id)
    assert [r.status for r in rows] == ["sent", "success"]
    assert json.loads(rows[1].output) == output and rows[0].output is None
    assert json.loads(sockets[1].frames[0])["meta"]["inputs"] == {"prices": output}

    await core.tracker.record_result(sessions[1], _result(run))
    stored = await core.history.get(run.run_id)
    assert stored is not None and stored.status == "success"
    assert [s.output for s in stored.steps] == [None, output]


async def test_schema_adds_the_output_column_to_an_older_run_steps_table(sql_url: str) -> None:
    """A database created before run_steps.output existed gets the column at start."""
    from sqlalchemy import inspect, text

    sql = SqlStore(sql_url)
    try:
        async with sql.engine.begin() as conn:
            await conn.execute(text("DROP TABLE IF EXISTS run_steps"))
            await conn.execute(text(
                "CREATE TABLE run_steps (run_id VARCHAR(32) NOT NULL, step_index INTEGER NOT NULL, "
                "module_hash VARCHAR(128) NOT NULL, module_name VARCHAR(200) NOT NULL, args TEXT NOT NULL, "
                "status VARCHAR(16) NOT NULL, attempts INTEGER NOT NULL, sent_at DATETIME NULL, "
                "ended_at DATETIME NULL, message TEXT NULL, error TEXT NULL, PRIMARY KEY (run_id, step_index))"
            ))
            await conn.execute(text(
                "INSERT INTO run_steps (run_id, step_index, module_hash, module_name, args, status, attempts) "
                "VALUES ('old', 0, 'h', 'm', '{}', 'success', 1)"
            ))
        await sql.create_schema()
        await sql.create_schema()  # idempotent
        async with sql.engine.connect() as conn:
            columns = await conn.run_sync(lambda c: [col["name"] for col in inspect(c).get_columns("run_steps")])
            row = (await conn.execute(select(run_steps).where(run_steps.c.run_id == "old"))).one()
        assert columns.count("output") == 1  # added once (later columns follow it)
        assert (row.status, row.output) == ("success", None)
    finally:
        await sql.close()


async def test_instances_starting_together_close_a_lost_instances_run_once(core: Core) -> None:
    """Two trackers (two instances of a cluster) start at the same moment over the
    same history; a run left open by a third, dead instance is closed by exactly one
    of them, so its failure is reported once."""
    lost = _stored_run(7, utcnow(), "running")
    lost.instance = "dead-instance"
    for step in lost.steps:
        step.status = "sent"
    await _bulk(core.sql, [lost])
    finished: list[str] = []
    trackers = []
    for name in ("a", "b"):
        events = EventBus()
        events.subscribe(lambda kind, data: finished.append(data["run"].run_id) if kind == "run.finished" else None)
        tracker = RunTracker(core.history, core.registry, core.workflows, core.hub, events, instance=name)
        tracker.is_live = lambda other: other in ("a", "b")  # what cluster.py answers: both are up
        trackers.append(tracker)
    try:
        counts = await asyncio.gather(*(t.start() for t in trackers))
        assert sorted(counts) == [0, 1]
        assert finished == [lost.run_id]
        stored = await core.history.get(lost.run_id)
        assert stored is not None and stored.status == "interrupted"
        assert stored.reason == "instance dead-instance was lost while the run was open"
    finally:
        for tracker in trackers:
            await tracker.close()


async def test_recent_runs_per_workflow_in_one_bounded_query(core: Core) -> None:
    """The run strips' read: the last N runs of each listed workflow, one statement,
    each workflow limited on its own (a busy workflow does not crowd out a quiet one)."""
    from tornado_sched.strips import build_strips

    now = utcnow().replace(microsecond=0)
    busy = [_stored_run(1, now - timedelta(minutes=i), "success" if i % 4 else "failure") for i in range(30)]
    quiet = [_stored_run(2, now - timedelta(days=3, minutes=i), "partial") for i in range(3)]
    other = [_stored_run(3, now - timedelta(minutes=i), "success") for i in range(5)]
    await _bulk(core.sql, [*busy, *quiet, *other])
    core.watch()
    found = await core.history.recent_by_workflow([1, 2, 99], 20)
    assert len(core.statements) == 1 and core.statements[0][0].startswith("SELECT"), core.statements
    by_workflow = {wid: [r for r in found if r.workflow_id == wid] for wid in (1, 2, 3)}
    assert [r.run_id for r in by_workflow[1]] == [r.run_id for r in busy[:20]]
    assert [r.run_id for r in by_workflow[2]] == [r.run_id for r in quiet]
    assert by_workflow[3] == []
    assert by_workflow[1][0].duration_seconds == 1.0

    strips = build_strips([1, 2, 99], found)
    assert [r.run_id for r in strips[1].runs] == [r.run_id for r in reversed(busy[:20])]  # newest right
    assert strips[1].success_rate == 15 / 20  # i = 0, 4, 8, 12, 16 failed
    assert strips[2].success_rate == 0.0 and strips[99].runs == [] and strips[99].success_rate is None
    assert len(strips[1].sparkline_points().split()) == 20 and strips[99].sparkline_points() == ""
    assert await core.history.recent_by_workflow([], 20) == []


def test_a_step_state_write_carries_exactly_the_state_columns() -> None:
    # The update statement is built from _STEP_STATE and its rows from _step_state:
    # a column in one and not the other would be silently lost or fail at runtime.
    from tornado_sched.history import _STEP_STATE, _step_row, _step_state

    step = Step(index=3, module_hash="h", module_name="m", args={"a": 1}, status="sent", attempts=1)
    assert tuple(_step_state(step)) == _STEP_STATE
    assert {k: v for k, v in _step_row("r", step).items() if k in _STEP_STATE} == _step_state(step)


async def test_long_results_and_full_log_tails_are_stored_cut_to_fit(core: Core) -> None:
    """MySQL/MariaDB's TEXT holds 65,535 bytes: a message, an error or a log tail the
    protocol accepts must fit it (cut), or the store refuses the step and the result
    is never stored (it used to be quarantined on MariaDB)."""
    import json

    from tornado_sched.protocol import TEXT_LIMIT_BYTES, LogMessage, parse_module_message

    sessions = await _online_modules(core, 3)
    workflow = await _workflow(core, [s.module_hash for s in sessions])
    run = await core.tracker.start_run(workflow, "manual", utcnow())
    for _ in range(2):  # 200 lines of 1,000 three-byte characters: ~600 KB as JSON
        core.tracker.report_step(sessions[2].module_hash, LogMessage(run.run_id, ["日" * 1000] * 100))
    frames = [
        {"message": "x" * 70_000},  # over 64 KiB of ASCII
        {"status": "failure", "error": "错" * 30_000, "message": {"rows": ["数" * 30_000]}},
        {"message": "done"},
    ]
    for session, fields in zip(sessions, frames, strict=True):
        frame = {"type": "result", "status": "success", "run_id": run.run_id, **fields}
        await core.tracker.record_result(session, parse_module_message(json.dumps(frame, ensure_ascii=False)))
    assert core.tracker.quarantined == 0
    rows = await _step_rows(core, run.run_id)
    assert [r.status for r in rows] == ["success", "failure", "success"]
    assert rows[0].message == "x" * (TEXT_LIMIT_BYTES - 3) + "…"
    for text in (rows[1].error, rows[1].message):
        assert len(text.encode()) <= TEXT_LIMIT_BYTES and text.endswith("…"), len(text.encode())
    assert rows[1].error == "错" * ((TEXT_LIMIT_BYTES - 3) // 3) + "…"  # whole characters only
    tail = json.loads(rows[2].log_tail)
    assert len(rows[2].log_tail.encode()) <= TEXT_LIMIT_BYTES
    assert 20 < len(tail) < 200 and set(tail) == {"日" * 1000}  # the newest lines that fit
    stored = await core.history.get(run.run_id)
    assert stored is not None and stored.status == "partial"


async def test_args_are_bounded_to_what_a_run_can_store(core: Core) -> None:
    """A step's args are stored as JSON in a TEXT column with every run: args at the
    bound run on every backend, one byte more is refused when the workflow is saved
    (on MariaDB such a workflow used to be saved and then never run: 503 at each firing)."""
    from tornado_sched.workflows import MAX_ARGS_BYTES

    sessions = await _online_modules(core, 1)
    filler = MAX_ARGS_BYTES - len('{"s": ""}')
    workflow = await _workflow(core, [sessions[0].module_hash])
    fitting = {"execute_modules": [
        {"module_hash": sessions[0].module_hash, "args": {"s": "数" * (filler // 3) + "x" * (filler % 3)}}]}
    workflow = await core.workflows.update(workflow.workflow_id, fitting)
    run = await core.tracker.start_run(workflow, "manual", utcnow())
    assert [r.status for r in await _step_rows(core, run.run_id)] == ["sent"]
    too_big = {"execute_modules": [{"module_hash": sessions[0].module_hash, "args": {"s": "x" * (filler + 1)}}]}
    with pytest.raises(Invalid, match=r"execute_modules\[0\]\.args: 65536 bytes as JSON, more than 65535") as err:
        await core.workflows.update(workflow.workflow_id, too_big)
    assert err.value.field == "execute_modules"
