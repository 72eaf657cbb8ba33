"""WorkflowScheduler built directly on real stores (the embedded document server,
SQLite and MariaDB): a workflow change reaches the schedule with no handler involved."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.conftest import proxied_mariadb_store
from tornado_sched.clock import utcnow
from tornado_sched.history import RunHistory
from tornado_sched.runs import RunTracker
from tornado_sched.scheduler import WorkflowScheduler, job_id
from tornado_sched.stores import SqlStore
from tornado_sched.tables import execution_log, tick_claims

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


async def test_next_fire_time_is_the_earliest_workflow_fire(scheduled) -> None:
    core, scheduler, _sql = scheduled
    assert scheduler.next_fire_time() is None  # the system jobs do not count
    later = await core.workflows.create({"name": "later", "execute_cron_list": ["0 9 * * *"], "timezone": "UTC",
                                         "execute_modules": await core.steps()})
    sooner = await core.workflows.create({"name": "sooner", "execute_cron_list": ["* * * * *"], "timezone": "UTC",
                                          "execute_modules": await core.steps()})
    assert scheduler.next_fire_time() == scheduler.next_run_time(sooner.workflow_id)
    await core.workflows.set_enabled(sooner.workflow_id, False)
    assert scheduler.next_fire_time() == scheduler.next_run_time(later.workflow_id)


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
    await asyncio.sleep(0)  # under way: writing its claim and run
    assert not firing.done()
    await scheduler.close()
    assert firing.done() and firing.exception() is None
    async with sql.engine.connect() as conn:
        rows = (await conn.execute(select(execution_log))).all()
    assert [(r.workflow_id, r.trigger, r.outcome) for r in rows] == [(workflow.workflow_id, "schedule", "started")]


@pytest.mark.mariadb
async def test_in_a_cluster_a_tick_that_cannot_be_claimed_is_not_fired(
    core: Core, mariadb_admin_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Cluster mode (an instance name): with MySQL unreachable the claim cannot be
    written, and the tick is not fired, since another instance may have fired it;
    it is logged. Nothing was written, so once MySQL is back the claim can be won."""
    async with proxied_mariadb_store(mariadb_admin_url) as (sql, proxy):
        runs = RunTracker(RunHistory(sql), core.registry, core.workflows, core.hub, core.events, "i1")
        await runs.start()
        scheduler = WorkflowScheduler(core.docs, sql, core.workflows, runs, "UTC", 90, events=core.events,
                                      instance="i1")
        workflow = await core.workflows.create({"name": "cluster-tick", "enable": False,
                                                "execute_modules": await core.steps()})
        tick = utcnow().replace(second=0, microsecond=0) + timedelta(minutes=5)
        await proxy.cut()
        with caplog.at_level(logging.ERROR, logger="tornado_sched.scheduler"):
            assert await scheduler.fire(workflow, "schedule", tick) is None
        assert scheduler.claim_failures == 1 and runs.open_runs(workflow.workflow_id) == []
        assert f"workflow {workflow.workflow_id} tick" in caplog.text and "not fired: claim failed" in caplog.text
        await proxy.restore()
        run_id = await scheduler.fire(workflow, "schedule", tick)
        assert run_id is not None
        async with sql.engine.connect() as conn:
            claims = (await conn.execute(select(tick_claims.c.instance))).all()
        assert [c.instance for c in claims] == ["i1"]
        await runs.close()
