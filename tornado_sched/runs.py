"""Runs: one firing of a workflow, one step per module.

Open runs live in memory (this process dispatched them and holds the sockets their
results come back on); the store gets the current state of each changed run in a
group commit: results that arrive together are written together, and a module's
`receive result` ack is sent only after its result is durable.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from pymongo import DESCENDING

from .clock import as_utc, read_datetime, utcnow
from .errors import Invalid, NotFound, Unavailable
from .events import EventBus
from .hub import ConnectionHub, ModuleSession
from .protocol import ResultMessage, execute_frame
from .registry import ModuleRegistry
from .stores import DocumentStore
from .workflows import Workflow, WorkflowStore

log = logging.getLogger(__name__)

OPEN_STEP = ("pending", "sent")
RUN_STATUSES = ("running", "success", "failure", "partial", "skipped", "interrupted")


@dataclass
class Step:
    index: int
    module_hash: str
    module_name: str
    args: dict[str, Any]
    status: str = "pending"
    attempts: int = 0
    sent_at: datetime | None = None
    ended_at: datetime | None = None
    message: str | None = None
    error: str | None = None

    @property
    def open(self) -> bool:
        return self.status in OPEN_STEP

    def doc(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "module_hash": self.module_hash,
            "module_name": self.module_name,
            "args": self.args,
            "status": self.status,
            "attempts": self.attempts,
            "sent_at": self.sent_at,
            "ended_at": self.ended_at,
            "message": self.message,
            "error": self.error,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Step:
        return cls(
            index=int(doc.get("index", 0)),
            module_hash=str(doc.get("module_hash", "")),
            module_name=str(doc.get("module_name", "")),
            args=dict(doc.get("args") or {}),
            status=str(doc.get("status", "pending")),
            attempts=int(doc.get("attempts") or 0),
            sent_at=read_datetime(doc.get("sent_at")),
            ended_at=read_datetime(doc.get("ended_at")),
            message=doc.get("message"),
            error=doc.get("error"),
        )


@dataclass
class Run:
    """One firing of a workflow."""

    run_id: str
    workflow_id: int
    workflow_name: str
    trigger: str
    nominal_time: datetime
    timezone: str
    fired_at: datetime
    steps: list[Step]
    status: str = "running"
    started_at: datetime = field(default_factory=utcnow)
    ended_at: datetime | None = None
    timeout_seconds: int = 600
    retries: int = 0
    retry_delay_seconds: int = 10
    reason: str | None = None

    @property
    def execution_time(self) -> str:
        """The seed's `meta.execution_time`: the nominal tick, local, no zone suffix."""
        return self.nominal_time.astimezone(ZoneInfo(self.timezone)).strftime("%Y-%m-%dT%H:%M:%S")

    @property
    def open(self) -> bool:
        return self.status == "running"

    def doc(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workflow_id": self.workflow_id,
            "workflow_name": self.workflow_name,
            "trigger": self.trigger,
            "nominal_time": self.nominal_time,
            "execution_time": self.execution_time,
            "timezone": self.timezone,
            "fired_at": self.fired_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "status": self.status,
            "reason": self.reason,
            "timeout_seconds": self.timeout_seconds,
            "retries": self.retries,
            "retry_delay_seconds": self.retry_delay_seconds,
            "steps": [s.doc() for s in self.steps],
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Run:
        return cls(
            run_id=str(doc["run_id"]),
            workflow_id=int(doc["workflow_id"]),
            workflow_name=str(doc.get("workflow_name", "")),
            trigger=str(doc.get("trigger", "manual")),
            nominal_time=read_datetime(doc.get("nominal_time")) or utcnow(),
            timezone=str(doc.get("timezone") or "UTC"),
            fired_at=read_datetime(doc.get("fired_at")) or utcnow(),
            steps=[Step.from_doc(s) for s in doc.get("steps") or []],
            status=str(doc.get("status", "running")),
            started_at=read_datetime(doc.get("started_at")) or utcnow(),
            ended_at=read_datetime(doc.get("ended_at")),
            timeout_seconds=int(doc.get("timeout_seconds") or 600),
            retries=int(doc.get("retries") or 0),
            retry_delay_seconds=int(doc.get("retry_delay_seconds") or 0),
            reason=doc.get("reason"),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "trigger": self.trigger,
            "execution_time": self.execution_time,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }

    def public(self) -> dict[str, Any]:
        return self.doc()


def overall_status(steps: list[Step]) -> str:
    if any(s.open for s in steps):
        return "running"
    if not steps or all(s.status == "success" for s in steps):
        return "success"
    if all(s.status == "interrupted" for s in steps):
        return "interrupted"
    if any(s.status == "success" for s in steps):
        return "partial"
    return "failure"


class RunTracker:
    """Starts runs, dispatches steps over the hub, records results and timeouts."""

    def __init__(
        self,
        docs: DocumentStore,
        registry: ModuleRegistry,
        workflows: WorkflowStore,
        hub: ConnectionHub,
        events: EventBus,
    ) -> None:
        self._docs = docs
        self._registry = registry
        self._workflows = workflows
        self._hub = hub
        self._events = events
        self._open: dict[str, Run] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._dirty: set[str] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._finished: list[Run] = []
        self._retry_timers: set[asyncio.TimerHandle] = set()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._unsubscribe = events.subscribe(self._on_event)
        self.flush_failures = 0

    @property
    def _col(self) -> Any:
        return self._docs["runs"]

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> int:
        """Runs left open by a crash become interrupted. Returns how many."""
        count = 0
        async for doc in self._col.find({"status": "running"}):
            run = Run.from_doc(doc)
            now = utcnow()
            for step in run.steps:
                if step.open:
                    step.status, step.ended_at = "interrupted", now
                    step.error = step.error or "server restarted while the step was open"
            run.status, run.ended_at = "interrupted", now
            run.reason = "server restarted while the run was open"
            await self._col.update_one({"run_id": run.run_id}, {"$set": self._state(run)})
            await self._workflows.set_last_run(run.workflow_id, run.summary())
            self._events.publish("run.finished", {"run": run})
            for step in run.steps:
                if step.status == "interrupted":
                    self._events.publish("step.failed", {"run": run, "step": step})
            count += 1
        if count:
            log.warning("marked %d run(s) interrupted after an unclean stop", count)
        self._flusher = asyncio.ensure_future(self._flush_loop())
        return count

    async def close(self) -> None:
        self._unsubscribe()
        for timer in [*self._timers.values(), *self._retry_timers]:
            timer.cancel()
        self._timers.clear()
        self._retry_timers.clear()
        if self._flusher is not None:
            self._flusher.cancel()
            try:
                await self._flusher
            except asyncio.CancelledError:
                pass
        if not await self._flush_once():
            log.error("run state not written at shutdown (store unavailable); open runs become interrupted at the next start")
        for future in self._waiters:  # nobody may wait forever on a stopped tracker
            if not future.done():
                future.set_exception(Unavailable("shutting down before the result was stored"))
        self._waiters.clear()

    # -- starting runs ---------------------------------------------------------------
    def open_runs(self, workflow_id: int) -> list[Run]:
        return [r for r in self._open.values() if r.workflow_id == workflow_id]

    async def start_run(self, workflow: Workflow, trigger: str, nominal_time: datetime) -> Run:
        """Create the run and dispatch every step. With overlap=forbid and a run still
        open, the firing is recorded as a skipped run."""
        now = utcnow()
        records = await self._registry.names(list({m["module_hash"] for m in workflow.execute_modules}))
        steps = [
            Step(
                index=i,
                module_hash=item["module_hash"],
                module_name=records.get(item["module_hash"], "?"),
                args=item.get("args") or {},
            )
            for i, item in enumerate(workflow.execute_modules)
        ]
        run = Run(
            run_id=uuid.uuid4().hex,
            workflow_id=workflow.workflow_id,
            workflow_name=workflow.name,
            trigger=trigger,
            nominal_time=as_utc(nominal_time) or now,
            timezone=workflow.timezone,
            fired_at=now,
            steps=steps,
            timeout_seconds=workflow.timeout_seconds,
            retries=workflow.retries,
            retry_delay_seconds=workflow.retry_delay_seconds,
        )
        if workflow.overlap == "forbid" and self.open_runs(workflow.workflow_id):
            run.status, run.ended_at = "skipped", now
            run.reason = "previous run still open (overlap=forbid)"
            for step in steps:
                step.status = "skipped"
            await self._col.insert_one(run.doc())
            self._events.publish("run.finished", {"run": run})
            return run
        # Open before the first await: a second firing racing this one must see it.
        self._open[run.run_id] = run
        try:
            await self._col.insert_one(run.doc())
        except BaseException:
            self._open.pop(run.run_id, None)
            raise
        loop = asyncio.get_running_loop()
        self._timers[run.run_id] = loop.call_later(run.timeout_seconds, self._on_timeout, run.run_id)
        for step in steps:
            self._dispatch(run, step)
        self._after_change(run)
        try:
            await self._workflows.set_last_run(run.workflow_id, run.summary())
        except Exception as exc:  # the run is live; its summary is rewritten when it ends
            log.warning("run %s: last-run summary not written: %s", run.run_id[:8], type(exc).__name__)
        self._events.publish("run.started", {"run": run})
        await self._commit()
        return run

    def _dispatch(self, run: Run, step: Step) -> None:
        step.attempts += 1
        step.sent_at = utcnow()
        message = execute_frame(
            execution_time=run.execution_time, workflow_id=run.workflow_id, workflow_name=run.workflow_name,
            run_id=run.run_id, fired_at=run.fired_at.isoformat(), timezone=run.timezone, args=step.args,
        )
        try:
            self._hub.send(step.module_hash, message)
        except Exception:  # offline (Conflict) or a socket that just closed
            # Said for the operator; the step status `offline` is the machine-readable fact.
            when = "when the run started" if step.attempts == 1 else f"at retry {step.attempts - 1}"
            self._fail_step(run, step, "offline", f"module was offline {when}")
            return
        step.status = "sent"

    # -- results ---------------------------------------------------------------------
    async def record_result(self, session: ModuleSession, result: ResultMessage) -> None:
        """Apply a module's result to its step, then wait until it is durable."""
        run, step = self._match(session.module_hash, result)
        if step is None or run is None:
            log.warning(
                "result from %r matches no open step (run_id=%s workflow_id=%s): ignored",
                session.name, result.run_id, result.workflow_id,
            )
            return
        now = utcnow()
        step.message, step.error = result.message, result.error
        if result.succeeded:
            step.status, step.ended_at = "success", now
        else:
            self._fail_step(run, step, "failure", result.error or "module reported failure")
        self._after_change(run)
        await self._commit()

    def _match(self, module_hash: str, result: ResultMessage) -> tuple[Run | None, Step | None]:
        if result.run_id:
            run = self._open.get(result.run_id)
            if run is None:
                return None, None
            candidates = [run]
        else:
            try:
                workflow_id = int(result.workflow_id) if result.workflow_id is not None else None
            except ValueError:
                workflow_id = None
            candidates = sorted(
                (r for r in self._open.values() if workflow_id is None or r.workflow_id == workflow_id),
                key=lambda r: r.started_at,
                reverse=True,
            )
        for run in candidates:
            for step in run.steps:
                if step.module_hash == module_hash and step.status == "sent":
                    return run, step
        return None, None

    def _fail_step(self, run: Run, step: Step, status: str, error: str) -> None:
        step.error = error
        if step.attempts <= run.retries and run.open:
            # Retry later; the step stays open meanwhile.
            step.status = "pending"
            delay = run.retry_delay_seconds
            log.info("run %s step %d (%s) failed (%s); retry %d in %ss", run.run_id[:8], step.index,
                     step.module_name, status, step.attempts, delay)
            handle = asyncio.get_running_loop().call_later(delay, self._retry, run.run_id, step.index)
            self._retry_timers.add(handle)
            return
        step.status, step.ended_at = status, utcnow()
        self._events.publish("step.failed", {"run": run, "step": step})

    def _retry(self, run_id: str, index: int) -> None:
        self._retry_timers = {h for h in self._retry_timers if not h.cancelled() and h.when() > asyncio.get_running_loop().time()}
        run = self._open.get(run_id)
        if run is None or run.steps[index].status != "pending":
            return
        self._dispatch(run, run.steps[index])
        self._after_change(run)
        asyncio.ensure_future(self._commit())

    # -- disconnects and timeouts ----------------------------------------------------
    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind != "module.offline":
            return
        module_hash = data["hash"]
        error = "module disconnected during the run" + (f" ({data['reason']})" if data.get("reason") else "")
        for run in list(self._open.values()):
            changed = False
            for step in run.steps:
                if step.module_hash == module_hash and step.status == "sent":
                    self._fail_step(run, step, "failure", error)
                    changed = True
            if changed:
                self._after_change(run)
        self._wake.set()

    def _on_timeout(self, run_id: str) -> None:
        run = self._open.get(run_id)
        if run is None:
            return
        now = utcnow()
        for step in run.steps:
            if step.open:
                step.status, step.ended_at = "timeout", now
                step.error = f"no result within {run.timeout_seconds} s"
                self._events.publish("step.failed", {"run": run, "step": step})
        self._after_change(run)
        self._wake.set()

    # -- state and persistence -------------------------------------------------------
    def _after_change(self, run: Run) -> None:
        status = overall_status(run.steps)
        self._dirty.add(run.run_id)
        if status != "running" and run.open:
            run.status, run.ended_at = status, utcnow()
            self._open.pop(run.run_id, None)
            timer = self._timers.pop(run.run_id, None)
            if timer is not None:
                timer.cancel()
            self._finished.append(run)
            self._events.publish("run.finished", {"run": run})
        else:
            self._events.publish("run.updated", {"run": run})

    def _state(self, run: Run) -> dict[str, Any]:
        doc = run.doc()
        return {k: doc[k] for k in ("status", "ended_at", "steps", "reason")}

    async def _commit(self) -> None:
        """Wait for the next group commit that includes the changes made so far."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake.set()
        await future

    async def _flush_once(self) -> bool:
        """Write every changed run; False if the store refused (all kept for a retry)."""
        dirty, self._dirty = self._dirty, set()
        waiters, self._waiters = self._waiters, []
        finished, self._finished = self._finished, []
        runs = {r.run_id: r for r in finished}
        for run_id in dirty:
            run = self._open.get(run_id) or runs.get(run_id)
            if run is not None:
                runs[run_id] = run
        try:
            for run in runs.values():
                await self._col.update_one({"run_id": run.run_id}, {"$set": self._state(run)})
            for run in finished:
                await self._workflows.set_last_run(run.workflow_id, run.summary())
        except asyncio.CancelledError:
            # close() cancelled the flusher mid-write: its final flush must see these.
            self._dirty |= set(runs)
            self._finished = finished + self._finished
            self._waiters = waiters + self._waiters
            raise
        except Exception as exc:
            self.flush_failures += 1
            log.warning("run state flush failed, will retry: %s: %s", type(exc).__name__, exc)
            self._dirty |= set(runs)
            self._finished = finished + self._finished
            self._waiters = waiters + self._waiters
            return False
        for future in waiters:
            if not future.done():
                future.set_result(None)
        return True

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not await self._flush_once():
                # The store refused: back off before retrying what is still pending.
                await asyncio.sleep(1.0)
                self._wake.set()

    # -- queries ---------------------------------------------------------------------
    async def get(self, run_id: str) -> Run:
        if not isinstance(run_id, str) or len(run_id) > 64:
            raise Invalid("run_id: expected a run id string", field="run_id")
        if run_id in self._open:
            return self._open[run_id]
        doc = await self._col.find_one({"run_id": run_id})
        if doc is None:
            raise NotFound(f"run {run_id} not found")
        return Run.from_doc(doc)

    async def list(
        self, workflow_id: int | None = None, status: str | None = None, page: int = 1, page_size: int = 20
    ) -> tuple[list[Run], int]:
        query: dict[str, Any] = {}
        if workflow_id is not None:
            query["workflow_id"] = int(workflow_id)
        if status is not None:
            if status not in RUN_STATUSES:
                raise Invalid(f"status: must be one of {', '.join(RUN_STATUSES)}", field="status")
            query["status"] = status
        total = await self._col.count_documents(query)
        cursor = self._col.find(query).sort("started_at", DESCENDING).skip((page - 1) * page_size).limit(page_size)
        runs = [Run.from_doc(d) async for d in cursor]
        # Open runs: the in-memory state is newer than the last flush.
        return [self._open.get(r.run_id, r) for r in runs], total

    async def delete_older_than(self, cutoff: datetime) -> int:
        result = await self._col.delete_many({"started_at": {"$lt": cutoff}, "status": {"$ne": "running"}})
        return result.deleted_count
