"""WorkflowScheduler built directly on real stores (the embedded document server,
SQLite and MariaDB): a workflow change reaches the schedule with no handler involved."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from tornado_sched.history import RunHistory
from tornado_sched.runs import RunTracker
from tornado_sched.scheduler import WorkflowScheduler, job_id
from tornado_sched.stores import SqlStore
from tornado_sched.tables import execution_log

from .conftest import Core


@pytest.fixture
async def scheduled(core: Core, sql_url: str) -> AsyncIterator[tuple[Core, WorkflowScheduler, SqlStore]]:
    sql = SqlStore(sql_url)
    await sql.create_schema()
    runs = RunTracker(RunHistory(sql), core.registry, core.workflows, core.hub, core.events)
    await runs.start()
    scheduler = WorkflowScheduler(
        core.docs, sql, core.workflows, runs, "Asia/Shanghai", 90, events=core.events, is_online=core.hub.is_online,
    )
    await scheduler.start()
    yield core, scheduler, sql
    await scheduler.close()
    await runs.close()
    await sql.close()


def job_ids(scheduler: WorkflowScheduler) -> set[str]:
    return {job["id"] for job in scheduler.jobs() if job["workflow_id"] is not None}


async def test_workflow_changes_reach_the_schedule_by_themselves(scheduled) -> None:
    core, scheduler, _sql = scheduled
    workflow = await core.workflows.create({"name": "w", "execute_cron_list": ["0 9 * * *"], "timezone": "UTC",
                                            "execute_modules": await core.steps()})
    assert job_ids(scheduler) == {job_id(workflow.workflow_id)}
    first = scheduler.next_run_time(workflow.workflow_id)
    assert (first.hour, first.minute) == (9, 0)

    await core.workflows.update(workflow.workflow_id, {"execute_cron_list": ["30 17 * * *"]})
    moved = scheduler.next_run_time(workflow.workflow_id)
    assert (moved.hour, moved.minute) == (17, 30)

    await core.workflows.set_enabled(workflow.workflow_id, False)
    assert job_ids(scheduler) == set()
    await core.workflows.set_enabled(workflow.workflow_id, True)
    assert job_ids(scheduler) == {job_id(workflow.workflow_id)}

    await core.workflows.delete(workflow.workflow_id)
    assert job_ids(scheduler) == set() and scheduler.next_run_time(workflow.workflow_id) is None


async def test_a_disabled_workflow_is_not_scheduled_and_reload_agrees(scheduled) -> None:
    core, scheduler, _sql = scheduled
    on = await core.workflows.create({"name": "on", "execute_cron_list": ["0 9 * * *"],
                                      "execute_modules": await core.steps()})
    await core.workflows.create({"name": "off", "execute_cron_list": ["0 9 * * *"], "enable": False})
    assert job_ids(scheduler) == {job_id(on.workflow_id)}
    result = await scheduler.reload()
    assert result["removed_count"] == 1 and result["current_count"] == 1
    assert job_ids(scheduler) == {job_id(on.workflow_id)}


async def test_run_now_starts_a_run_and_logs_it(scheduled) -> None:
    core, scheduler, sql = scheduled
    workflow = await core.workflows.create({"name": "manual", "enable": False, "execute_modules": await core.steps()})
    got, run_id = await scheduler.run_now(workflow.workflow_id)
    assert got.workflow_id == workflow.workflow_id and run_id
    async with sql.engine.connect() as conn:
        rows = (await conn.execute(select(execution_log))).all()
    assert [(r.workflow_id, r.run_id, r.trigger, r.outcome) for r in rows] == [
        (workflow.workflow_id, run_id, "manual", "started")
    ]


async def test_close_lets_a_firing_under_way_finish(scheduled) -> None:
    """A tick firing when the server stops still gets its run and its log row: the
    stores must not close under it (its claim is written, so no catch-up after the
    restart could fire that tick again)."""
    core, scheduler, sql = scheduled
    workflow = await core.workflows.create({"name": "every-minute", "execute_cron_list": ["* * * * *"],
                                            "timezone": "UTC", "execute_modules": await core.steps()})
    firing = asyncio.ensure_future(scheduler._fire(workflow.workflow_id))  # what APScheduler runs at a tick
    await asyncio.sleep(0)  # under way: waiting for the workflow's document
    assert not firing.done()
    await scheduler.close()
    assert firing.done() and firing.exception() is None
    async with sql.engine.connect() as conn:
        rows = (await conn.execute(select(execution_log))).all()
    assert [(r.workflow_id, r.trigger, r.outcome) for r in rows] == [(workflow.workflow_id, "schedule", "started")]
