"""A scheduled (not manual) firing reaches a connected module over a real WebSocket,
its result closes the run, and the firing is in the SQL execution log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from tests.conftest import RunningServer
from tests.flows.support import (
    Module,
    create_workflow,
    log_rows,
    wait_run,
    wait_until,
    workflow_body,
)
from tests.support.history import count_runs
from tornado_sched.clock import utcnow


def _schedule_two_seconds_ahead() -> tuple[datetime, datetime, int]:
    """A shift for `* * * * *` whose next fire is 1.5-2.5 s from now.

    Returns (fire time, nominal tick, shift in seconds). The shift is negative: the
    tick is the minute boundary after the fire, so fire = tick + shift."""
    now = utcnow()
    fire = (now + timedelta(seconds=2.5)).replace(microsecond=0)
    tick = fire.replace(second=0) + timedelta(minutes=1)
    shift = int((fire - tick).total_seconds())
    assert -60 <= shift < 0 and fire - timedelta(minutes=1) < now < fire
    return fire, tick, shift


async def _has_rows(server: RunningServer, workflow_id: int) -> bool:
    return bool(await log_rows(server, workflow_id))


async def test_scheduled_firing_reaches_module_and_result_closes_run(server: RunningServer) -> None:
    module = await Module.online(server, "scheduled")
    fire, tick, shift = _schedule_two_seconds_ahead()
    zone = "Asia/Kolkata"  # +05:30: the nominal tick must be read in the workflow's zone
    # Two lines with a coincident tick: they must fire once.
    wid = await create_workflow(server, workflow_body(
        "定时", [module.hash],
        execute_cron_list=["* * * * *", f"{tick.astimezone(ZoneInfo(zone)).minute} * * * *"],
        execute_shift_time=shift, execute_shift_unit="s", timezone=zone, timeout_seconds=30,
    ))
    status, env = await server.api("/scheduler/jobs")
    job = next(j for j in env["result"] if j["workflow_id"] == wid)
    assert datetime.fromisoformat(job["next_run_time"]) == fire

    command = await module.recv_execute(within=6)
    received = utcnow()
    meta = command["meta"]
    assert meta["execution_time"] == tick.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%dT%H:%M:%S")
    assert meta["workflow_id"] == wid and meta["workflow_name"] == "定时"
    assert meta["timezone"] == zone
    fired_at = datetime.fromisoformat(meta["fired_at"])
    assert fire <= fired_at <= received, (fire, fired_at, received)
    assert received - fire < timedelta(seconds=2)

    # A seed client: no run_id in the result.
    assert await module.result(command, run_id=None, message="scheduled ok") == "receive result"
    run = await wait_run(server, meta["run_id"])
    assert run["status"] == "success" and run["trigger"] == "schedule"
    assert run["execution_time"] == meta["execution_time"]
    assert run["nominal_time"] == tick
    assert run["steps"][0]["message"] == "scheduled ok"

    # The row is written once the run has started, which may be after the result.
    await wait_until(lambda: _has_rows(server, wid))
    rows = await log_rows(server, wid)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["outcome"] == "started" and row["trigger"] == "schedule"
    assert row["run_id"] == meta["run_id"] and row["job_id"] == f"workflow-{wid}"
    assert row["nominal_time"] == tick.astimezone(UTC).replace(tzinfo=None)
    assert row["error"] is None
    # The coincident second line did not fire a second run.
    await module.no_message(1.0)
    assert await count_runs(server, workflow_id=wid) == 1

    # The job moved on to the next minute.
    status, env = await server.api("/scheduler/jobs")
    job = next(j for j in env["result"] if j["workflow_id"] == wid)
    assert datetime.fromisoformat(job["next_run_time"]) == fire + timedelta(minutes=1)
    await server.api(f"/workflow/{wid}/disable", "POST")


async def test_disabled_before_its_tick_does_not_fire(server: RunningServer) -> None:
    module = await Module.online(server, "muted")
    fire, _tick, shift = _schedule_two_seconds_ahead()
    wid = await create_workflow(server, workflow_body(
        modules=[module.hash], execute_cron_list=["* * * * *"], execute_shift_time=shift, timezone="UTC",
    ))
    status, env = await server.api(f"/workflow/{wid}/disable", "POST")
    assert status == 200, env
    wait = (fire - utcnow()).total_seconds() + 1.0
    await module.no_message(max(wait, 0.5))
    assert await count_runs(server, workflow_id=wid) == 0
    assert await log_rows(server, wid) == []


async def test_built_in_cleanup_job_runs_mondays_at_three(server: RunningServer) -> None:
    status, env = await server.api("/scheduler/jobs")
    job = next(j for j in env["result"] if j["id"] == "system-cleanup")
    when = datetime.fromisoformat(job["next_run_time"]).astimezone(ZoneInfo(server.ctx.settings.time_zone))
    assert (when.weekday(), when.hour, when.minute) == (0, 3, 0)
    assert timedelta(0) < when - utcnow() <= timedelta(days=7)


async def test_a_tick_is_claimed_once_and_manual_runs_are_not_claimed(server: RunningServer) -> None:
    """The tick claim (what makes a cluster fire each tick once) on one server: the
    same nominal tick fired twice starts one run and writes one execution-log row;
    manual runs at the same instant are never claimed."""
    module = await Module.online(server)
    workflow_id = await create_workflow(server, workflow_body(modules=[module.hash]))
    workflow = await server.ctx.workflows.get(workflow_id)
    tick = utcnow().replace(second=0, microsecond=0) + timedelta(minutes=5)
    first = await server.ctx.scheduler.fire(workflow, "schedule", tick)
    again = await server.ctx.scheduler.fire(workflow, "schedule", tick)
    caught_up = await server.ctx.scheduler.fire(workflow, "misfire", tick)
    assert first is not None and again is None and caught_up is None
    manual = [await server.ctx.scheduler.fire(workflow, "manual", tick) for _ in range(2)]
    assert all(manual) and manual[0] != manual[1]
    rows = await log_rows(server, workflow_id)
    assert [r["trigger"] for r in rows] == ["schedule", "manual", "manual"], rows
    assert server.ctx.scheduler.ticks_lost == 2
