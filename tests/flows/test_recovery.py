"""Downtime and restarts: ticks missed while the server was down (misfire run_once /
skip), runs left open by a crash, and the retention clean-up."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from sqlalchemy import insert

from tests.conftest import RunningServer, make_settings, start_server, stop_server
from tests.flows.support import Module, create_workflow, get_run, log_rows, register, workflow_body
from tests.flows.test_data_order_api import register_with
from tests.flows.test_data_order_runs import QUIET, result_with_output
from tests.support.history import HistoryProbe
from tornado_sched.clock import as_utc, naive_utc, utcnow
from tornado_sched.config import Settings
from tornado_sched.tables import execution_log


@pytest.fixture
def shared_settings(tmp_path: Path, docserver_uri: str) -> Settings:
    """One set of stores (same MongoDB database, same SQLite file) for two servers."""
    return make_settings(tmp_path, docserver_uri)


@pytest.fixture
async def db(docserver_uri: str, shared_settings: Settings) -> AsyncIterator[AsyncDatabase]:
    """Direct access to the documents while no server runs."""
    client: AsyncMongoClient = AsyncMongoClient(docserver_uri, tz_aware=True)
    yield client[shared_settings.mongodb_name]
    await client.close()


@pytest.fixture
async def probe(shared_settings: Settings) -> AsyncIterator[HistoryProbe]:
    """Direct access to the SQL run history (the schema exists once a server started)."""
    holder = HistoryProbe(shared_settings.sql_url)
    yield holder
    await holder.close()


class Restartable:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.running: tuple[RunningServer, Any] | None = None

    async def start(self) -> RunningServer:
        self.running = await start_server(self.settings)
        return self.running[0]

    async def stop(self) -> None:
        if self.running is not None:
            running, self.running = self.running, None
            await stop_server(*running)


@pytest.fixture
async def restartable(shared_settings: Settings) -> AsyncIterator[Restartable]:
    holder = Restartable(shared_settings)
    yield holder
    await holder.stop()


async def misfire_runs(probe: HistoryProbe, workflow_id: int) -> list[dict[str, Any]]:
    """The catch-up fires in the background after start-up: wait for it (bounded),
    then give it time to show a second, wrong, run."""
    for _ in range(50):
        runs = await probe.find(workflow_id=workflow_id, trigger="misfire")
        if runs:
            await asyncio.sleep(0.3)
            return await probe.find(workflow_id=workflow_id, trigger="misfire")
        await asyncio.sleep(0.1)
    return []


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


async def test_ticks_missed_while_down_run_once_or_are_skipped(
    restartable: Restartable, db: AsyncDatabase, probe: HistoryProbe
) -> None:
    server = await restartable.start()
    module_hash = await register(server)  # never connected: runs end at once as offline
    every_minute = {"execute_cron_list": ["* * * * *"], "execute_shift_time": 0, "timezone": "UTC"}
    run_once = await create_workflow(server, workflow_body(
        "run-once", [module_hash], misfire="run_once", misfire_grace_seconds=300, **every_minute))
    skip = await create_workflow(server, workflow_body("skip", [module_hash], misfire="skip", **every_minute))
    # run_once, but its only missed tick (5 minutes ago) is older than the grace period.
    old_tick = _minute(utcnow() - timedelta(minutes=5))
    too_late = await create_workflow(server, workflow_body(
        "too-late", [module_hash], misfire="run_once", misfire_grace_seconds=60, timezone="UTC",
        execute_cron_list=[f"{old_tick.minute} {old_tick.hour} * * *"], execute_shift_time=0))
    disabled = await create_workflow(server, workflow_body(
        "disabled", [module_hash], misfire="run_once", enable=False, **every_minute))
    await restartable.stop()

    # The server "was down" for the last 10 minutes: move its liveness mark back, and
    # drop any run the first server fired (a minute may have turned while it ran).
    await probe.clear()
    alive = await db["scheduler_state"].find_one({"_id": "alive"})
    assert alive is not None and isinstance(alive["at"], datetime)
    assert utcnow() - alive["at"] < timedelta(seconds=30)
    down_since = utcnow() - timedelta(minutes=10)
    await db["scheduler_state"].update_one({"_id": "alive"}, {"$set": {"at": down_since}})
    stored = (await db["scheduler_state"].find_one({"_id": "alive"}))["at"]
    assert isinstance(stored, datetime) and abs(stored - down_since) < timedelta(seconds=1)
    before_restart = {wid: await probe.count(workflow_id=wid, trigger="misfire")
                      for wid in (run_once, skip, too_late, disabled)}
    assert set(before_restart.values()) == {0}

    server = await restartable.start()
    restarted = utcnow()

    # run_once: exactly one run, for the latest missed tick, fired once its modules
    # are back or MISFIRE_SETTLE_SECONDS (0.5 s in tests) have passed; this one's
    # module never reconnects.
    runs = await misfire_runs(probe, run_once)
    assert len(runs) == 1, runs
    latest_tick = _minute(restarted)
    assert runs[0]["nominal_time"] in (latest_tick, latest_tick - timedelta(minutes=1))
    run = await get_run(server, runs[0]["run_id"])
    assert run["trigger"] == "misfire" and run["steps"][0]["status"] == "offline"
    rows = [r for r in await log_rows(server, run_once) if r["trigger"] == "misfire"]
    assert [(r["outcome"], r["run_id"]) for r in rows] == [("started", runs[0]["run_id"])]

    # skip: no run, one "missed" row that says how many ticks were missed.
    assert await probe.count(workflow_id=skip, trigger="misfire") == 0
    rows = [r for r in await log_rows(server, skip) if r["trigger"] == "misfire"]
    assert len(rows) == 1, rows
    assert rows[0]["outcome"] == "missed" and rows[0]["run_id"] is None
    assert rows[0]["error"].split()[0] in ("10", "11")

    # run_once beyond the grace period: treated as skip.
    assert await probe.count(workflow_id=too_late) == 0
    rows = await log_rows(server, too_late)
    assert [(r["outcome"], r["nominal_time"]) for r in rows] == [("missed", naive_utc(old_tick))]

    # Disabled workflows have nothing to catch up.
    assert await probe.count(workflow_id=disabled) == 0
    assert await log_rows(server, disabled) == []

    # The liveness mark is fresh again, and the jobs are back.
    alive = await db["scheduler_state"].find_one({"_id": "alive"})
    assert utcnow() - alive["at"] < timedelta(seconds=30)
    status, env = await server.api("/scheduler/jobs")
    assert {j["workflow_id"] for j in env["result"]} >= {run_once, skip, too_late}


async def test_long_downtime_still_runs_the_latest_tick_once(
    restartable: Restartable, db: AsyncDatabase, probe: HistoryProbe
) -> None:
    """Eight days down: ~11,500 ticks of an every-minute crontab were missed. The
    decision must still be about the latest one (and not stall the start-up)."""
    server = await restartable.start()
    module_hash = await register(server)
    every_minute = {"execute_cron_list": ["* * * * *"], "execute_shift_time": 0, "timezone": "UTC"}
    run_once = await create_workflow(server, workflow_body(
        "run-once", [module_hash], misfire="run_once", misfire_grace_seconds=300, **every_minute))
    skip = await create_workflow(server, workflow_body("skip", [module_hash], misfire="skip", **every_minute))
    await restartable.stop()
    await probe.clear()
    await db["scheduler_state"].update_one({"_id": "alive"}, {"$set": {"at": utcnow() - timedelta(days=8)}})

    started = time.monotonic()
    server = await restartable.start()
    assert time.monotonic() - started < 5
    runs = await misfire_runs(probe, run_once)
    assert len(runs) == 1, runs
    assert utcnow() - runs[0]["nominal_time"] < timedelta(minutes=2)
    rows = [r for r in await log_rows(server, skip) if r["trigger"] == "misfire"]
    assert [r["outcome"] for r in rows] == ["missed"]
    assert rows[0]["error"].startswith("more than 1"), rows[0]["error"]
    assert utcnow() - as_utc(rows[0]["nominal_time"]) < timedelta(minutes=2)


async def test_tick_fired_just_before_a_crash_is_not_run_again(
    restartable: Restartable, db: AsyncDatabase, probe: HistoryProbe
) -> None:
    """The liveness mark is refreshed every 30 s, so after a crash it can predate the
    last ticks that did fire. Those must not be caught up a second time."""
    server = await restartable.start()
    module_hash = await register(server)
    wid = await create_workflow(server, workflow_body(
        "crash", [module_hash], misfire="run_once", misfire_grace_seconds=300,
        execute_cron_list=["* * * * *"], execute_shift_time=0, timezone="UTC"))
    await restartable.stop()
    await probe.clear()
    if utcnow() - _minute(utcnow()) < timedelta(seconds=2):
        await asyncio.sleep(2)
    tick = _minute(utcnow())
    # Alive mark 20 s before the tick; the tick fired (a run exists), then the crash.
    await db["scheduler_state"].update_one({"_id": "alive"}, {"$set": {"at": tick - timedelta(seconds=20)}})
    fired = _open_run(wid, tick) | {"status": "success", "ended_at": tick + timedelta(seconds=1)}
    fired["started_at"] = fired["fired_at"] = tick + timedelta(milliseconds=100)
    fired["steps"] = [fired["steps"][0]]
    await probe.insert(fired)

    server = await restartable.start()
    assert await probe.count(workflow_id=wid, trigger="misfire") == 0
    assert [r for r in await log_rows(server, wid) if r["trigger"] == "misfire"] == []


async def test_clean_restart_misses_nothing(
    restartable: Restartable, db: AsyncDatabase, probe: HistoryProbe
) -> None:
    server = await restartable.start()
    module_hash = await register(server)
    wid = await create_workflow(server, workflow_body(
        "steady", [module_hash], misfire="run_once", execute_cron_list=["0 0 1 1 *"], timezone="UTC"))
    await restartable.stop()
    server = await restartable.start()
    assert await probe.count(workflow_id=wid) == 0
    assert await log_rows(server, wid) == []


def _open_run(workflow_id: int, started: datetime) -> dict[str, Any]:
    return {
        "run_id": uuid.uuid4().hex,
        "workflow_id": workflow_id,
        "workflow_name": "crashed",
        "trigger": "schedule",
        "nominal_time": started,
        "execution_time": started.strftime("%Y-%m-%dT%H:%M:%S"),
        "timezone": "UTC",
        "fired_at": started,
        "started_at": started,
        "ended_at": None,
        "status": "running",
        "reason": None,
        "timeout_seconds": 600,
        "retries": 0,
        "retry_delay_seconds": 0,
        "steps": [
            {"index": 0, "module_hash": "a" * 40, "module_name": "done", "args": {}, "status": "success",
             "attempts": 1, "sent_at": started, "ended_at": started, "message": "ok", "error": None},
            {"index": 1, "module_hash": "b" * 40, "module_name": "busy", "args": {}, "status": "sent",
             "attempts": 1, "sent_at": started, "ended_at": None, "message": None, "error": None},
            {"index": 2, "module_hash": "c" * 40, "module_name": "waiting", "args": {}, "status": "pending",
             "attempts": 0, "sent_at": None, "ended_at": None, "message": None, "error": None},
        ],
    }


async def test_runs_left_open_by_a_crash_become_interrupted(
    restartable: Restartable, db: AsyncDatabase, probe: HistoryProbe
) -> None:
    server = await restartable.start()
    module_hash = await register(server)
    wid = await create_workflow(server, workflow_body("crashed", [module_hash], enable=False, execute_cron_list=[]))
    await restartable.stop()

    started = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    crashed = _open_run(wid, started)
    finished = _open_run(wid, started) | {"status": "success", "ended_at": started}
    finished["steps"] = [crashed["steps"][0]]
    # Written the way versions before the SQL history kept runs: the start migrates
    # them into SQL, then marks the open one interrupted.
    await db["runs"].insert_many([dict(crashed), dict(finished)])

    server = await restartable.start()
    run = await get_run(server, crashed["run_id"])
    assert run["status"] == "interrupted"
    assert "restart" in run["reason"]
    assert [s["status"] for s in run["steps"]] == ["success", "interrupted", "interrupted"]
    assert run["steps"][0]["message"] == "ok"
    assert all("restart" in s["error"] for s in run["steps"][1:])
    stored = await probe.stored(crashed["run_id"])
    assert stored is not None and stored["status"] == "interrupted"
    assert isinstance(stored["ended_at"], datetime) and stored["ended_at"] >= started
    assert [s["status"] for s in stored["steps"]] == ["success", "interrupted", "interrupted"]
    assert "runs" not in await db.list_collection_names()
    assert (await get_run(server, finished["run_id"]))["status"] == "success"
    status, env = await server.api(f"/runs?workflow_id={wid}&status=interrupted")
    assert env["result"]["total"] == 1
    workflow = await db["workflows"].find_one({"workflow_id": wid})
    assert workflow["last_run"]["run_id"] == crashed["run_id"]
    assert workflow["last_run"]["status"] == "interrupted"


async def test_retention_deletes_old_runs_and_log_rows(server: RunningServer) -> None:
    days = server.ctx.settings.run_retention_days
    old = utcnow() - timedelta(days=days + 1)
    recent = utcnow() - timedelta(days=days - 1)
    probe = HistoryProbe(server.ctx.settings.sql_url)
    docs = {
        "old-finished": _open_run(1, old) | {"status": "success", "ended_at": old},
        "old-open": _open_run(1, old),  # still running (in another life): kept
        "recent-finished": _open_run(1, recent) | {"status": "failure", "ended_at": recent},
    }
    for doc in docs.values():
        await probe.insert(doc)
    async with server.ctx.sql.engine.begin() as conn:
        for label, when in (("old", old), ("recent", recent)):
            await conn.execute(insert(execution_log).values(
                job_id="workflow-1", workflow_id=1, run_id=None, trigger="schedule",
                nominal_time=naive_utc(when), fired_at=naive_utc(when), outcome="started", error=label,
            ))

    await server.ctx.scheduler._cleanup()

    left = {d["run_id"] for d in await probe.find(workflow_id=1)}
    await probe.close()
    assert left == {docs["old-open"]["run_id"], docs["recent-finished"]["run_id"]}
    assert [r["error"] for r in await log_rows(server, 1)] == ["recent"]


async def test_misfire_catch_up_waits_for_its_module_to_reconnect(
    shared_settings: Settings, db: AsyncDatabase, probe: HistoryProbe
) -> None:
    """After a restart every module is offline until it reconnects: the catch-up
    waits for the workflow's modules (up to MISFIRE_SETTLE_SECONDS) and then runs
    for real instead of recording `offline` steps."""
    holder = Restartable(replace(shared_settings, misfire_settle_seconds=20))
    try:
        server = await holder.start()
        module = await Module.online(server)
        wid = await create_workflow(server, workflow_body(
            "catch-up", [module.hash], misfire="run_once", misfire_grace_seconds=300,
            execute_cron_list=["* * * * *"], execute_shift_time=0, timezone="UTC",
        ))
        module.close()
        await holder.stop()
        await db["scheduler_state"].update_one({"_id": "alive"}, {"$set": {"at": utcnow() - timedelta(minutes=3)}})

        server = await holder.start()
        await asyncio.sleep(0.5)
        assert await probe.count(workflow_id=wid) == 0, "fired before the module was back"
        module.server = server
        await module.connect()
        command = await module.recv_execute()
        assert command["meta"]["run_id"]
        assert await module.result(command) == "receive result"
        run = await get_run(server, command["meta"]["run_id"])
        assert run["trigger"] == "misfire" and run["status"] == "success", run
    finally:
        await holder.stop()


async def test_misfire_of_a_data_ordered_workflow_decides_the_run_not_its_stages(
    shared_settings: Settings, db: AsyncDatabase, probe: HistoryProbe
) -> None:
    """run_once catches the missed tick up as one whole data-ordered run (producer
    first, its consumer fed its output); skip records the miss and runs nothing."""
    holder = Restartable(replace(shared_settings, misfire_settle_seconds=20))
    try:
        server = await holder.start()
        producer = Module(server, "prod", await register_with(server, "prod", [], [{"name": "prices"}]))
        consumer = Module(server, "cons", await register_with(server, "cons", [{"name": "prices"}], []))
        idle = [await register_with(server, f"idle-{n}", *io) for n, io in
                enumerate(([[], [{"name": "x"}]], [[{"name": "x"}], []]))]
        # A daily tick two minutes ago: missed during the downtime below, and not due
        # again while the test runs.
        tick = _minute(utcnow() - timedelta(minutes=2))
        daily = {"execute_cron_list": [f"{tick.minute} {tick.hour} * * *"], "execute_shift_time": 0,
                 "timezone": "UTC", "order": "data", "misfire_grace_seconds": 300}
        run_once = await create_workflow(server, workflow_body(
            "chain-once", [consumer.hash, producer.hash], misfire="run_once", **daily))
        skip = await create_workflow(server, workflow_body("chain-skip", idle, misfire="skip", **daily))
        await holder.stop()
        await db["scheduler_state"].update_one({"_id": "alive"}, {"$set": {"at": utcnow() - timedelta(minutes=5)}})

        server = await holder.start()
        for module in (producer, consumer):
            module.server = server
            await module.connect()
        first = await producer.recv_execute()
        assert first["meta"]["inputs"] == {}
        await consumer.no_message(QUIET)
        assert await result_with_output(producer, first, "p-caught-up") == "receive result"
        second = await consumer.recv_execute()
        assert second["meta"]["run_id"] == first["meta"]["run_id"]
        assert second["meta"]["inputs"] == {"prices": "p-caught-up"}
        assert await consumer.result(second) == "receive result"
        run = await get_run(server, first["meta"]["run_id"])
        assert run["trigger"] == "misfire" and run["status"] == "success", run
        assert run["nominal_time"].startswith(tick.strftime("%Y-%m-%dT%H:%M:00")), run["nominal_time"]
        assert [s["module_name"] for s in run["steps"]] == ["cons", "prod"]
        assert run["steps"][1]["sent_at"] < run["steps"][0]["sent_at"]

        assert await probe.count(workflow_id=skip) == 0
        rows = [r for r in await log_rows(server, skip) if r["trigger"] == "misfire"]
        assert [(r["outcome"], r["run_id"]) for r in rows] == [("missed", None)]
        assert await probe.count(workflow_id=run_once) == 1
    finally:
        await holder.stop()
