"""APScheduler 3 `TornadoScheduler` wiring: one job per enabled workflow.

Jobs are rebuilt from MongoDB at start and on reload (the workflow documents are the
source of truth, so no APScheduler job store is needed). Each firing writes an
execution-log row to the relational store. Downtime is detected from a liveness mark
the scheduler refreshes every 30 s: ticks missed while the server was down are
skipped, or run once within the grace period, per the workflow's `misfire` setting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pymongo
from apscheduler.executors.base import run_coroutine_job
from apscheduler.executors.tornado import TornadoExecutor
from apscheduler.schedulers.tornado import TornadoScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import iscoroutinefunction_partial
from pymongo.errors import DuplicateKeyError
from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError

from .clock import naive_utc, utcnow
from .errors import Invalid, Unavailable
from .events import MODULE_ONLINE, SCHEDULE_FIRED, WORKFLOW_DELETED, WORKFLOW_SAVED, EventBus
from .history import TickClaim, TickNotClaimed, TickTaken
from .pending import PendingSqlRows
from .runs import RunTracker
from .stores import SQL_HOUSEKEEPING_SECONDS, DocumentStore, SqlStore
from .tables import execution_log, tick_claims
from .workflows import Workflow, WorkflowStore

log = logging.getLogger(__name__)

JOB_PREFIX = "workflow-"
ALIVE_SECONDS = 30
ALIVE_MARK_SECONDS = 10.0
# A tick is late, not missed, within this window (loop stalls, GC, a slow store).
LATE_GRACE_SECONDS = 60
# How long a stop waits for firings under way (each bounded by its stores' waits).
FIRING_DRAIN_SECONDS = 20.0
# Missed ticks counted one by one after downtime; past this only the grace window is scanned.
MISFIRE_COUNT_LIMIT = 1000


def job_id(workflow_id: int) -> str:
    return f"{JOB_PREFIX}{workflow_id}"


class PromptTornadoExecutor(TornadoExecutor):
    """APScheduler's Tornado executor, starting a coroutine job ahead of the loop's
    queue (`ServerEventLoop.create_task_first`; a plain task on another loop): the
    stock one queues the job's first step behind every callback already waiting, so
    under a fan-out a firing started one busy loop iteration late. Other jobs go to
    its thread pool, as before."""

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        if not iscoroutinefunction_partial(job.func):
            super()._do_submit_job(job, run_times)
            return

        def finished(task: asyncio.Task[Any]) -> None:
            try:
                events = task.result()
            except BaseException as exc:
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, events)

        loop = self._ioloop.asyncio_loop
        coro = run_coroutine_job(job, job._jobstore_alias, run_times, self._logger.name)
        start = getattr(loop, "create_task_first", loop.create_task)
        start(coro).add_done_callback(finished)


class PromptTornadoScheduler(TornadoScheduler):
    """`TornadoScheduler` whose timer runs ahead of the loop's queue
    (`ServerEventLoop.call_later_first`; a plain timer on another loop) and runs the
    due jobs in its own callback. The stock timer calls `wakeup`, which only queues
    the work (it may be called from any thread): one more loop iteration before a
    fire. `wakeup` still does that for calls from outside the loop (add_job,
    reschedule)."""

    def _start_timer(self, wait_seconds: float | None) -> None:
        self._stop_timer()
        if wait_seconds is not None:
            loop = self._ioloop.asyncio_loop
            # Tornado's remove_timeout (in _stop_timer) cancels the asyncio handle.
            self._timeout = getattr(loop, "call_later_first", loop.call_later)(wait_seconds, self._wake_on_loop)

    def _create_default_executor(self) -> PromptTornadoExecutor:
        return PromptTornadoExecutor()

    def _wake_on_loop(self) -> None:
        self._timeout = None
        self._start_timer(self._process_jobs())


class WorkflowScheduler:
    """Keeps one APScheduler job per enabled workflow in step with the store."""

    def __init__(
        self,
        docs: DocumentStore,
        sql: SqlStore,
        workflows: WorkflowStore,
        runs: RunTracker,
        time_zone: str,
        retention_days: int,
        events: EventBus | None = None,
        is_online: Callable[[str], bool] = lambda _hash: True,
        misfire_settle_seconds: float = 30.0,
        instance: str = "",
    ) -> None:
        self._docs = docs
        self._events = events
        self._is_online = is_online
        self._settle_seconds = misfire_settle_seconds
        self._catch_ups: set[asyncio.Task[None]] = set()
        # Firings under way: close() lets them finish, or a tick whose claim is written
        # would lose its run to the stores closing under it (and no catch-up could
        # fire it again: the claim says it fired).
        self._firing: set[asyncio.Task[Any]] = set()
        self._sql = sql
        self._workflows = workflows
        self._runs = runs
        self._time_zone = time_zone
        self._retention_days = retention_days
        self._scheduler: PromptTornadoScheduler | None = None
        # Each scheduled workflow as its job was built from (sync follows every stored
        # change): in one process a tick fires from memory, with no store read first.
        self._definitions: dict[int, Workflow] = {}
        self._unsubscribe: Callable[[], None] | None = None
        # One row per firing, kept and retried while SQL is down.
        self.execution_log = PendingSqlRows(sql, execution_log)
        # Set in cluster mode: a tick that cannot be claimed is then not fired.
        self._instance = instance
        self.claim_failures = 0
        self.ticks_lost = 0

    @property
    def log_failures(self) -> int:
        return self.execution_log.write_failures

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Build the scheduler inside the running loop (one built earlier never fires)."""
        self.execution_log.start()
        self._scheduler = PromptTornadoScheduler(
            timezone="UTC",
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": LATE_GRACE_SECONDS},
        )
        self._scheduler.start()
        if self._events is not None:
            self._unsubscribe = self._events.subscribe(self._follow)
        down_since = await self._last_alive()
        await self.reload()
        self._scheduler.add_job(
            self._cleanup, CronTrigger(day_of_week="mon", hour=3, timezone=self._time_zone),
            id="system-cleanup", name="delete old runs and log rows",
        )
        self._scheduler.add_job(
            self._mark_alive, IntervalTrigger(seconds=ALIVE_SECONDS), id="system-alive", name="scheduler liveness mark",
        )
        await self._mark_alive()
        if down_since is not None:
            await self._handle_misfires(down_since, utcnow())

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in list(self._catch_ups):
            task.cancel()
        if self._catch_ups:
            await asyncio.gather(*self._catch_ups, return_exceptions=True)
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
            if self._firing:
                _done, late = await asyncio.wait(self._firing, timeout=FIRING_DRAIN_SECONDS)
                if late:
                    log.warning("%d firing(s) still under way at stop", len(late))
            try:
                await self._mark_alive()
            except Exception as exc:
                # Without it the next start treats the whole stop as downtime; still stop.
                log.warning("could not record the stop time: %s", type(exc).__name__)
        self._scheduler = None
        await self.execution_log.close()

    # -- jobs ------------------------------------------------------------------------
    def _follow(self, kind: str, data: dict[str, Any]) -> None:
        """Event bus listener: every stored workflow change reaches the schedule at once."""
        if self._scheduler is None:
            return
        if kind == WORKFLOW_SAVED:
            self.sync(data["workflow"])
        elif kind == WORKFLOW_DELETED:
            self.sync(None, data["workflow_id"])

    def sync(self, workflow: Workflow | None, workflow_id: int | None = None) -> None:
        """Make the scheduler match one workflow (created, changed, enabled, disabled, deleted)."""
        assert self._scheduler is not None
        wid = workflow.workflow_id if workflow is not None else workflow_id
        assert wid is not None
        if self._scheduler.get_job(job_id(wid)) is not None:
            self._scheduler.remove_job(job_id(wid))
        self._definitions.pop(wid, None)
        if workflow is not None and workflow.schedulable:
            self._scheduler.add_job(
                self._fire, workflow.trigger(), args=[workflow.workflow_id],
                id=job_id(workflow.workflow_id), name=workflow.name,
            )
            self._definitions[wid] = workflow

    async def reload(self) -> dict[str, Any]:
        """Rebuild every workflow job from the store (the seed's /scheduler/reload)."""
        assert self._scheduler is not None
        # Read first, then swap the jobs with no await in between: no tick is lost in
        # a gap, and a concurrent enable/disable is not undone by a stale list.
        workflows = await self._workflows.list(enabled_only=True)
        removed = 0
        for job in self._scheduler.get_jobs():
            if job.id.startswith(JOB_PREFIX):
                job.remove()
                removed += 1
        self._definitions.clear()
        enabled = []
        for workflow in workflows:
            try:
                self.sync(workflow)
            except ValueError as exc:
                log.error("workflow %d not scheduled: %s", workflow.workflow_id, exc)
                continue
            enabled.append({"workflow_id": workflow.workflow_id, "name": workflow.name})
        return {
            "removed_count": removed,
            "current_count": len(enabled),
            "enabled_workflows": enabled,
            "message": f"已重新加载 {len(enabled)} 个工作流任务",
        }

    def jobs(self) -> list[dict[str, Any]]:
        assert self._scheduler is not None
        result = []
        for job in self._scheduler.get_jobs():
            workflow_id = int(job.id[len(JOB_PREFIX):]) if job.id.startswith(JOB_PREFIX) else None
            result.append({
                "id": job.id,
                "name": job.name,
                "workflow_id": workflow_id,
                "trigger": str(job.trigger),
                "next_run_time": job.next_run_time,
            })
        return result

    async def jobs_and_paused(self) -> list[dict[str, Any]]:
        """`jobs()` plus one row per disabled workflow (`paused`: it has no job and
        no next run time until it is enabled again)."""
        rows = [{**job, "paused": False} for job in self.jobs()]
        for workflow in await self._workflows.list():
            if not workflow.enable:
                rows.append({
                    "id": job_id(workflow.workflow_id), "name": workflow.name, "workflow_id": workflow.workflow_id,
                    "trigger": " | ".join(workflow.execute_cron_list), "next_run_time": None, "paused": True,
                })
        return rows

    def next_run_time(self, workflow_id: int) -> datetime | None:
        if self._scheduler is None:
            return None
        job = self._scheduler.get_job(job_id(workflow_id))
        return None if job is None else job.next_run_time

    def next_fire_time(self) -> datetime | None:
        """The earliest scheduled fire of any workflow (None: none is scheduled)."""
        if self._scheduler is None:
            return None
        # get_jobs() comes sorted by next run time (paused jobs last).
        for job in self._scheduler.get_jobs():
            if job.id.startswith(JOB_PREFIX) and job.next_run_time is not None:
                return job.next_run_time
        return None

    # -- firing ----------------------------------------------------------------------
    async def _fire(self, workflow_id: int) -> None:
        task = asyncio.current_task()  # APScheduler runs each firing as a task
        if task is not None:
            self._firing.add(task)
        try:
            await self._fire_tick(workflow_id)
        finally:
            self._firing.discard(task)

    async def _fire_tick(self, workflow_id: int) -> None:
        now = utcnow()
        # One process: the definition the job was built from (every change to the
        # store is published here). A cluster reads the store: a change made on
        # another instance arrives over Redis, which may be down or late.
        workflow = None if self._instance else self._definitions.get(workflow_id)
        if workflow is None:
            workflow = await self._workflows.find(workflow_id)
        if workflow is None or not workflow.schedulable:
            return
        trigger = workflow.trigger()
        # APScheduler does not hand the job its scheduled time: it is the latest fire
        # time at or before now (coalesce=True runs one job for a burst).
        fire_time = _latest_fire(trigger, now)
        tick = trigger.nominal_tick(fire_time) if fire_time else now
        if fire_time is not None and self._events is not None:
            self._events.publish(SCHEDULE_FIRED, {
                "workflow_id": workflow_id, "lateness_seconds": (now - fire_time).total_seconds(),
            })
        await self.fire(workflow, "schedule", tick)

    async def run_now(self, workflow_id: int) -> tuple[Workflow, str | None]:
        """Start a manual run (also of a disabled workflow); returns it and the run id."""
        workflow = await self._workflows.get(workflow_id)
        return workflow, await self.fire(workflow, "manual", utcnow())

    async def fire(
        self, workflow: Workflow, trigger: str, nominal: datetime
    ) -> str | None:
        """Start a run and write the execution-log row; returns the run id. A
        scheduled tick (trigger `schedule` or `misfire`) fires only if this instance
        wins its claim; otherwise another instance fired it and None is returned."""
        if not workflow.execute_modules:
            # A run with no steps would "succeed" having done nothing.
            raise Invalid("execute_modules: the workflow has no modules to run", field="execute_modules")
        # The claim is written with the run, in one transaction: a tick is never
        # claimed without its run (a stop or a store failure in between lost it).
        claim = None if trigger == "manual" else TickClaim(workflow.workflow_id, nominal, self._instance)
        fired_at = utcnow()
        run_id, outcome, error = None, "started", None
        try:
            run = await self._runs.start_run(workflow, trigger, nominal, claim=claim)
            run_id = run.run_id
            outcome = "skipped" if run.status == "skipped" else "started"
            if run.status == "skipped":
                error = run.reason
        except TickTaken:
            self.ticks_lost += 1
            log.debug("workflow %d tick %s fired elsewhere", workflow.workflow_id, nominal)
            return None
        except TickNotClaimed as exc:
            self.claim_failures += 1
            cause = exc.__cause__ or exc
            if self._instance:
                # Nothing of the tick was written: another instance may fire it, so
                # this one neither fires nor logs it.
                log.error("workflow %d tick %s not fired: claim failed (%s)",
                          workflow.workflow_id, nominal, type(cause).__name__)
                return None
            outcome, error = "error", f"{type(cause).__name__}: {cause}"
            log.error("workflow %d firing failed: %s", workflow.workflow_id, error)
        except Exception as exc:
            outcome, error = "error", f"{type(exc).__name__}: {exc}"
            log.exception("workflow %d firing failed", workflow.workflow_id)
        await self._log(job_id(workflow.workflow_id), workflow.workflow_id, run_id, trigger, nominal, fired_at, outcome, error)
        if outcome == "error":
            raise Unavailable("could not start the run: a store is unavailable")
        return run_id

    async def _claim(self, workflow_id: int, nominal: datetime) -> bool:
        """Insert (workflow, nominal tick) alone, for a missed tick logged as skipped:
        True for the one instance whose insert wins. (A fired tick's claim is written
        with its run, see fire.)"""
        try:
            async with self._sql.begin() as conn:
                await conn.execute(insert(tick_claims).values(
                    workflow_id=workflow_id, nominal_time=naive_utc(nominal).replace(microsecond=0),
                    instance=self._instance or "-", claimed_at=naive_utc(utcnow()),
                ))
            return True
        except IntegrityError:
            self.ticks_lost += 1
            log.debug("workflow %d tick %s fired elsewhere", workflow_id, nominal)
            return False
        except Exception as exc:
            self.claim_failures += 1
            if self._instance:
                # Without the claim the tick could fire twice in the cluster: not fired.
                log.error("workflow %d tick %s not fired: claim failed (%s)", workflow_id, nominal, type(exc).__name__)
                return False
            # One process: nobody else could fire it; fire as before the claims existed.
            log.warning("workflow %d: tick claim not written (%s)", workflow_id, type(exc).__name__)
            return True

    async def _log(self, job: str, workflow_id: int, run_id: str | None, trigger: str,
                   nominal: datetime | None, fired_at: datetime, outcome: str, error: str | None) -> None:
        # Kept and retried while SQL is down: every firing gets its row (README).
        await self.execution_log.add({
            "job_id": job, "workflow_id": workflow_id, "run_id": run_id, "trigger": trigger,
            "nominal_time": naive_utc(nominal), "fired_at": naive_utc(fired_at), "outcome": outcome, "error": error,
        })

    # -- downtime --------------------------------------------------------------------
    async def _last_alive(self) -> datetime | None:
        doc = await self._docs["scheduler_state"].find_one({"_id": "alive"})
        value = doc.get("at") if doc else None
        return value if isinstance(value, datetime) else None

    async def _mark_alive(self) -> None:
        # Bounded: a document store that stops answering must not hold the job or the stop.
        with pymongo.timeout(ALIVE_MARK_SECONDS):
            await self._write_alive()

    async def _write_alive(self) -> None:
        state = self._docs["scheduler_state"]
        now = utcnow()
        if await state.find_one({"_id": "alive"}) is None:
            try:
                await state.insert_one({"_id": "alive", "at": now})
                return
            except DuplicateKeyError:
                pass  # another instance of the cluster started at the same moment
        await state.update_one({"_id": "alive"}, {"$set": {"at": now}})

    async def _handle_misfires(self, down_since: datetime, now: datetime) -> None:
        for workflow in await self._workflows.list(enabled_only=True):
            try:
                trigger = workflow.trigger()
            except ValueError:
                continue
            # The liveness mark is refreshed only every ALIVE_SECONDS, so after a crash
            # it can predate ticks that did fire; a run started later proves the
            # process was alive then, and those ticks must not be caught up twice.
            since = max(down_since, await self._last_started(workflow.workflow_id) or down_since)
            count, latest, capped = _missed_ticks(trigger, since, now, workflow.misfire_grace_seconds)
            if latest is None:
                continue
            fire_time, tick = latest
            missed = f"{'more than ' if capped else ''}{count} tick(s) missed"
            recent = (now - fire_time).total_seconds() <= workflow.misfire_grace_seconds
            if workflow.misfire == "run_once" and recent:
                log.warning("workflow %d: %s while down; running once", workflow.workflow_id, missed)
                grace_left = workflow.misfire_grace_seconds - (now - fire_time).total_seconds()
                task = asyncio.ensure_future(self._catch_up(workflow, tick, min(self._settle_seconds, grace_left)))
                self._catch_ups.add(task)
                task.add_done_callback(self._catch_ups.discard)
            elif await self._claim(workflow.workflow_id, tick):
                log.warning("workflow %d: %s while down; skipped", workflow.workflow_id, missed)
                await self._log(job_id(workflow.workflow_id), workflow.workflow_id, None, "misfire", tick, now,
                                "missed", f"{missed} while the server was down")

    async def _catch_up(self, workflow: Workflow, tick: datetime, wait: float) -> None:
        """Fire a missed tick once the workflow's modules are back. At start-up every
        module is offline until it reconnects: firing at once would only record
        `offline` steps. Waits at most `wait` seconds, then fires whatever is online."""
        hashes = {step["module_hash"] for step in workflow.execute_modules}
        arrived = asyncio.Event()
        unsubscribe = self._events.subscribe(
            lambda kind, data: arrived.set() if kind == MODULE_ONLINE and data["hash"] in hashes else None
        ) if self._events else (lambda: None)
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                while not all(self._is_online(h) for h in hashes):
                    arrived.clear()
                    await arrived.wait()
        except TimeoutError:
            pass
        finally:
            unsubscribe()
        try:
            await self.fire(workflow, "misfire", tick)
        except Exception:
            log.exception("workflow %d: misfire catch-up failed", workflow.workflow_id)

    async def _last_started(self, workflow_id: int) -> datetime | None:
        return await self._runs.last_started(workflow_id)

    # -- housekeeping ----------------------------------------------------------------
    async def _cleanup(self) -> None:
        cutoff = utcnow() - timedelta(days=self._retention_days)
        runs = await self._runs.delete_older_than(cutoff)
        async with self._sql.begin(SQL_HOUSEKEEPING_SECONDS) as conn:
            rows = (await conn.execute(delete(execution_log).where(execution_log.c.fired_at < naive_utc(cutoff)))).rowcount
            await conn.execute(delete(tick_claims).where(tick_claims.c.nominal_time < naive_utc(cutoff)))
        log.info("retention: deleted %d run(s) and %d execution-log row(s) older than %s", runs, rows, cutoff)


def _missed_ticks(
    trigger: Any, since: datetime, now: datetime, grace_seconds: int
) -> tuple[int, tuple[datetime, datetime] | None, bool]:
    """Fires in (since, now]: (how many, the latest (fire, tick), whether counting was cut).

    Counting stops at MISFIRE_COUNT_LIMIT (an every-minute crontab down for a week has
    ~10,000 ticks, ~0.4 s of croniter work on the loop); the scan then jumps to the
    grace window, the only part that can change the decision."""
    count, latest, capped = 0, None, False
    recent_from = now - timedelta(seconds=grace_seconds) - timedelta(microseconds=1)
    item = trigger.schedule.next_fire(since)
    while item is not None and item[0] <= now:
        count += 1
        latest = item
        if count >= MISFIRE_COUNT_LIMIT and item[0] < recent_from:
            capped = True
            item = trigger.schedule.next_fire(recent_from)
            continue
        item = trigger.schedule.next_fire(item[0])
    return count, latest, capped


def _latest_fire(trigger: Any, now: datetime) -> datetime | None:
    item = trigger.schedule.next_fire(now - timedelta(seconds=LATE_GRACE_SECONDS + 1))
    latest = None
    while item is not None and item[0] <= now:
        latest = item[0]
        item = trigger.schedule.next_fire(item[0])
    return latest
