"""Runs: one firing of a workflow, one step per module — the run lifecycle (the
records themselves, Run and Step, are in run_state.py).

Open runs live in memory (this process dispatched them and holds the sockets their
results come back on): creation, dispatch, result matching, retries and timeouts
happen here. Persistence is `RunHistory` (SQL, `history.py`): each changed step and
run row is written by key in a group commit (`batching.GroupCommit`), so results
that arrive together are written together, and a module's `receive result` ack is
sent only after its result is durable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .batching import GroupCommit
from .clock import as_utc, utcnow
from .dataorder import UPSTREAM_FAILED, DataOrder
from .errors import Conflict, Invalid, NotFound
from .events import (
    MODULE_OFFLINE,
    RUN_FINISHED,
    RUN_STARTED,
    RUN_UPDATED,
    STEP_FAILED,
    STEP_PROGRESS,
    EventBus,
)
from .graph import PlanGraph, layout
from .hub import ConnectionHub, ModuleSession
from .protocol import LogMessage, ProgressMessage, ResultMessage, cancel_frame, execute_frame
from .registry import ModuleRegistry
from .run_state import (
    LOG_LINE_CHARS,
    LOG_TAIL_LINES,
    Run,
    Step,
)
from .stores import is_store_outage
from .strips import STRIP_RUNS, RunStrip, build_strips
from .workflows import Workflow, WorkflowStore

if TYPE_CHECKING:
    from .history import ModuleStepPage, RunFilter, RunHistory, RunPage, TickClaim

log = logging.getLogger(__name__)

# A step of a data-ordered run that was never sent because a producer of one of its
# required inputs did not succeed.
STEP_UPSTREAM_FAILED = UPSTREAM_FAILED
# A step key meaning "only the run row changed" (status, counters, reason).
RUN_ROW = -1
# How long a run start sends before it yields to the loop (see _dispatch_all).
DISPATCH_SLICE_SECONDS = 0.002
RERUN_CHOICES = ("failed", "all")
# A run search by workflow name walks the history once per matched workflow; past
# this many matches the operator is asked to type more of the name.
SEARCH_MAX_WORKFLOWS = 50
SEARCH_MAX_CHARS = 100


class ResultNotMatched(Exception):
    """A module's result that matches no step it may close; the text says why and is
    sent back to the module in an error frame (instead of `receive result`)."""


class RunTracker:
    """Run lifecycle: starts runs, dispatches steps over the hub, matches results,
    retries and times out steps of open runs; persists through a RunHistory."""

    def __init__(
        self,
        history: RunHistory,
        registry: ModuleRegistry,
        workflows: WorkflowStore,
        hub: ConnectionHub,
        events: EventBus,
        instance: str = "",
    ) -> None:
        self._history = history
        self._instance = instance
        # Cluster mode (tornado_sched/cluster.py sets these): whether an instance is
        # alive; a result matching no run here goes to the instance owning its run
        # (True once stored there); told of each run taken over from a lost instance.
        self.is_live: Callable[[str], bool] = lambda _name: False
        self.forward_result: Callable[[ModuleSession, ResultMessage], Awaitable[bool]] | None = None
        self.on_adopt: Callable[[Run], None] = lambda _run: None
        # Run control of a run another live instance holds: a progress or log frame is
        # handed on (True once accepted for its owner), the owner's live state read
        # (None when it cannot say), a cancel asked of the owner (its answer returned).
        # Known dead (never merely unreachable): its open runs may be taken over.
        self.is_gone: Callable[[str], bool] = lambda _name: False
        self.forward_report: Callable[[str, ProgressMessage | LogMessage], bool] | None = None
        self.read_remote: Callable[[Run], Awaitable[Run | None]] | None = None
        self.forward_cancel: Callable[[Run, str], Awaitable[Run]] | None = None
        self._registry = registry
        self._workflows = workflows
        self._hub = hub
        self._events = events
        self._open: dict[str, Run] = {}
        # Finished in memory, not yet written: the writer still needs their state.
        self._closing: dict[str, Run] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._retry_timers: set[asyncio.TimerHandle] = set()
        # Keys are (run_id, step index or RUN_ROW); a bad record quarantines its run's
        # pending state and never blocks the results of other runs.
        self._writer: GroupCommit[tuple[str, int]] = GroupCommit(
            "run state", self._write, is_outage=is_store_outage, group=lambda key: key[0],
            on_quarantine=self._on_quarantine,
        )
        self._unsubscribe = events.subscribe(self._on_event)

    @property
    def flush_failures(self) -> int:
        return self._writer.failures

    @property
    def quarantined(self) -> int:
        return self._writer.quarantined

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> int:
        """Runs left open by a crash become interrupted. Returns how many. In a
        cluster, runs a live instance owns are left alone."""
        def orphaned(run: Run) -> bool:
            owner = run.instance
            return not owner or owner == self._instance or not self.is_live(owner)

        stale = []
        for run in await self._history.open_runs():
            if not orphaned(run):
                continue
            if run.instance and run.instance != self._instance and not await self._history.take_over(
                run.run_id, run.instance, self._instance, f"instance {run.instance} was lost"
            ):
                continue  # another instance starting at the same moment closes it (once)
            stale.append(run)
        now = utcnow()
        for run in stale:
            lost = bool(run.instance) and run.instance != self._instance
            what = f"instance {run.instance} was lost" if lost else "server restarted"
            for step in run.steps:
                if step.open:
                    step.status, step.ended_at = "interrupted", now
                    step.error = step.error or f"{what} while the step was open"
            run.status, run.ended_at = "interrupted", now
            run.reason = f"{what} while the run was open"
        if stale:
            await self._history.write([(run, range(len(run.steps))) for run in stale])
        for run in stale:
            await self._workflows.set_last_run(run.workflow_id, run.summary())
            self._events.publish(RUN_FINISHED, {"run": run})
            for step in run.steps:
                if step.status == "interrupted":
                    self._events.publish(STEP_FAILED, {"run": run, "step": step})
        if stale:
            log.warning("marked %d run(s) interrupted after an unclean stop", len(stale))
        self._writer.start()
        return len(stale)

    async def instance_lost(self, name: str) -> int:
        """Cluster mode: take over the open runs of an instance that died. For each
        run one live instance wins a conditional update of its owner; the winner
        re-arms the run's timeout (counted from the run's start), re-sends steps that
        were waiting for a retry (their timers died with the instance) and waits for
        the results of steps already sent (a module that reconnected elsewhere sends
        them there, and they are forwarded to the new owner)."""
        count = 0
        for run in await self._history.open_runs():
            if run.instance != name or run.run_id in self._open:
                continue
            if await self._take_over(run):
                count += 1
        if count:
            log.warning("took over %d open run(s) of lost instance %r", count, name)
        return count

    async def _take_over(self, run: Run) -> bool:
        """Own `run` (open, held by a lost instance) if this instance wins the
        conditional update of its owner; False when another live instance did."""
        lost = run.instance
        reason = f"taken over by {self._instance} after instance {lost} was lost"
        if not await self._history.take_over(run.run_id, lost, self._instance, reason):
            return False
        run.instance, run.reason = self._instance, reason
        self._adopt(run)
        return True

    def _adopt(self, run: Run) -> None:
        # A step never sent (attempts 0) only exists in a data-ordered run, whose
        # dispatch plan lived in the lost instance's memory: end it, saying why.
        if run.order == "data" or any(s.status == "pending" and s.attempts == 0 for s in run.steps):
            now = utcnow()
            for step in run.steps:
                if step.open:
                    step.status, step.ended_at = "interrupted", now
                    step.error = step.error or "its instance was lost (data-ordered runs are not resumed)"
            self._open[run.run_id] = run
            self._after_change(run, list(range(len(run.steps))))
            return
        self._open[run.run_id] = run
        left = run.timeout_seconds - (utcnow() - run.started_at).total_seconds()
        self._timers[run.run_id] = asyncio.get_running_loop().call_later(max(left, 0.0), self._on_timeout, run.run_id)
        self.on_adopt(run)
        resent = [step.index for step in run.steps if step.status == "pending"]
        for index in resent:
            self._dispatch(run, run.steps[index])
        self._after_change(run, resent)

    async def close(self) -> None:
        self._unsubscribe()
        for timer in [*self._timers.values(), *self._retry_timers]:
            timer.cancel()
        self._timers.clear()
        self._retry_timers.clear()
        if not await self._writer.close():
            log.error("open runs not written at shutdown; they become interrupted at the next start")

    # -- starting runs ---------------------------------------------------------------
    def open_runs(self, workflow_id: int) -> list[Run]:
        return [r for r in self._open.values() if r.workflow_id == workflow_id]

    async def start_run(
        self, workflow: Workflow, trigger: str, nominal_time: datetime, *, rerun_of: str | None = None,
        carried: dict[int, Step] | None = None, claim: TickClaim | None = None,
    ) -> Run:
        """Create the run and dispatch its steps: every step at once (order "parallel"),
        or the steps with no producer, the rest as their producers succeed (order
        "data"; a plan with conflicts fails the run at once). With overlap=forbid and a
        run still open, the firing is recorded as a skipped run. `rerun_of`: the run
        this one repeats (see rerun); `carried`: for a data-ordered re-run, the steps
        (by index) that succeeded in it, kept as done with their outputs so that
        their consumers get `meta.inputs` and nothing upstream is sent again.
        `claim`: a scheduled tick's claim, stored with the run (TickTaken: not started)."""
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
            order=workflow.order,
            instance=self._instance,
            rerun_of=rerun_of,
        )
        if workflow.overlap == "forbid" and self.open_runs(workflow.workflow_id):
            run.status, run.ended_at = "skipped", now
            run.reason = "previous run still open (overlap=forbid)"
            for step in steps:
                step.status = "skipped"
            await self._history.insert(run, claim)
            self._events.publish(RUN_FINISHED, {"run": run})
            return run
        if workflow.order == "data":
            # Solved now, against the modules' current registrations: a module may have
            # re-registered other requirements since the workflow was saved.
            plan = await self._workflows.solve(workflow)
            if not plan.ok:
                return await self._refuse_plan(run, "; ".join(c.message for c in plan.conflicts[:5]), claim)
            run.data_order = DataOrder.from_plan(plan)
            for index, done in (carried or {}).items():
                step = steps[index]
                step.status, step.output, step.ended_at = "success", done.output, now
                step.message = f"carried over from run {rerun_of}"
        first = steps if run.data_order is None else [steps[i] for i in run.data_order.first() if steps[i].waiting]
        # Open before the first await: a second firing racing this one must see it.
        self._open[run.run_id] = run
        try:
            # The first wave's rows are stored as the dispatch below leaves them
            # ("sent"), so a 1,000-step run does not write its 1,000 rows twice. In
            # memory they stay pending until each frame is out: nothing may match,
            # fail or close a step that was not sent.
            await self._history.insert(run, claim, sending={s.index for s in first}, sent_at=now)
        except BaseException:
            self._open.pop(run.run_id, None)
            raise
        loop = asyncio.get_running_loop()
        self._timers[run.run_id] = loop.call_later(run.timeout_seconds, self._on_timeout, run.run_id)
        changed = await self._dispatch_all(run, first, now)
        if run.data_order is not None and run.open:
            changed += self._advance(run, [s.index for s in steps if not s.open])
        self._after_change(run, changed)
        try:
            await self._workflows.set_last_run(run.workflow_id, run.summary())
        except Exception as exc:  # the run is live; its summary is rewritten when it ends
            log.warning("run %s: last-run summary not written: %s", run.run_id[:8], type(exc).__name__)
        self._events.publish(RUN_STARTED, {"run": run})
        await self._writer.commit()
        return run

    async def _refuse_plan(self, run: Run, conflicts: str, claim: TickClaim | None) -> Run:
        """A data-ordered run whose plan has conflicts: it ends failed at once, no step sent."""
        now = utcnow()
        run.status, run.ended_at = "failure", now
        run.reason = f'order "data": the modules cannot be ordered: {conflicts}'
        for step in run.steps:
            step.status, step.ended_at = "skipped", now
        await self._history.insert(run, claim)
        log.warning("run %s of workflow %d failed at start: %s", run.run_id[:8], run.workflow_id, run.reason)
        try:
            await self._workflows.set_last_run(run.workflow_id, run.summary())
        except Exception as exc:  # the history row is the truth; the summary is a cache
            log.warning("run %s: last-run summary not written: %s", run.run_id[:8], type(exc).__name__)
        self._events.publish(RUN_FINISHED, {"run": run})
        return run

    def _execute_frame(self, run: Run, step: Step) -> str:
        inputs = None
        if run.data_order is not None:
            inputs = run.data_order.inputs(step.index, run.steps)
        return encode_frame(execute_frame(
            execution_time=run.execution_time, workflow_id=run.workflow_id, workflow_name=run.workflow_name,
            run_id=run.run_id, fired_at=run.fired_at.isoformat(), timezone=run.timezone, args=step.args,
            inputs=inputs,
        ))

    async def _dispatch_all(self, run: Run, steps: list[Step], sent_at: datetime) -> list[int]:
        """Send the first wave its commands (their rows are stored as sent at
        `sent_at`). Returns the steps whose state now differs from that row: a send
        that failed (module offline), or a step not sent because it changed meanwhile
        (the run cancelled or closed). Steps with the same args share one encoded
        frame: a 1,000-module fan-out with common args encodes JSON once, not 1,000
        times. (Only used where the steps' `meta.inputs` are equal too: all of a
        parallel run, or a data-ordered run's first stage, whose inputs are {}.)
        Yields to the loop every DISPATCH_SLICE_SECONDS: 1,000 socket writes in one go
        held the loop (scheduled firings, other sockets) for 100 ms and more."""
        frames: dict[str, str] = {}
        differ: list[int] = []
        loop = asyncio.get_running_loop()
        slice_ends = loop.time() + DISPATCH_SLICE_SECONDS
        for step in steps:
            if loop.time() >= slice_ends:
                await asyncio.sleep(0)
                slice_ends = loop.time() + DISPATCH_SLICE_SECONDS
            if not run.open or step.status != "pending" or step.attempts:
                differ.append(step.index)
                continue
            key = encode_frame(step.args)
            frame = frames.get(key)
            if frame is None:
                frame = frames[key] = self._execute_frame(run, step)
            step.status, step.attempts, step.sent_at = "sent", 1, sent_at
            if not self._transmit(run, step, frame):
                differ.append(step.index)
        return differ

    def _dispatch(self, run: Run, step: Step) -> None:
        self._send(run, step, self._execute_frame(run, step))

    def _send(self, run: Run, step: Step, frame: str) -> None:
        step.attempts += 1
        step.sent_at = utcnow()
        step.status = "sent"
        self._transmit(run, step, frame)

    def _transmit(self, run: Run, step: Step, frame: str) -> bool:
        """Hand the frame to the module's socket; False (the step failed or waits
        for a retry) when the module is offline."""
        try:
            self._hub.send(step.module_hash, frame)
        except Exception:  # offline (Conflict) or a socket that just closed
            # Said for the operator; the step status `offline` is the machine-readable fact.
            when = "when the run started" if step.attempts == 1 else f"at retry {step.attempts - 1}"
            self._fail_step(run, step, "offline", f"module was offline {when}")
            return False
        return True

    # -- results ---------------------------------------------------------------------
    async def record_result(self, session: ModuleSession, result: ResultMessage) -> None:
        """Apply a module's result to its step and return once it is durable.
        ResultNotMatched (with the reason) when it matches no step it may close; a
        re-sent result equal to the stored one is acknowledged (returns normally)."""
        if self.forward_result is not None and not self._held_here(session.module_hash, result):
            # Another instance's run (or one it has just lost): its owner records it.
            if await self.forward_result(session, result):
                return
        run, step, resent = await self._match(session.module_hash, result)
        await self._apply(run, step, resent, result)

    def record_result_now(self, session: ModuleSession, result: ResultMessage) -> asyncio.Future[None] | None:
        """`record_result` without a task, for the common case (the result's run is
        open in this instance): the result is applied now and the returned future is
        done once it is durable, with record_result's outcomes. ResultNotMatched is
        raised at once. None: the result needs `record_result` (another instance's
        run, or a run only the store knows)."""
        if self.forward_result is not None and not self._held_here(session.module_hash, result):
            return None
        if not self._in_memory(result):
            return None
        run, step, resent = self._match_now(session.module_hash, result)
        return self._apply(run, step, resent, result)

    def _apply(
        self, run: Run, step: Step | None, resent: list[tuple[str, int]] | None, result: ResultMessage
    ) -> asyncio.Future[None]:
        """Apply a matched result; the future of its durability."""
        if step is None:
            # A re-send: acknowledged once the step it matched is durable (Unstorable
            # if the store refused that step's state: it was never stored).
            return self._writer.commit_future(resent)
        now = utcnow()
        step.message, step.error, step.output = result.message, result.error, result.output
        if result.succeeded:
            step.status, step.ended_at = "success", now
        else:
            self._fail_step(run, step, "failure", result.error or "module reported failure")
        changed = [step.index, *self._advance(run, [step.index])]
        self._after_change(run, changed)
        return self._writer.commit_future([(run.run_id, step.index)])

    def _advance(self, run: Run, ended: list[int]) -> list[int]:
        """Data order: after `ended` steps changed, end the steps they block
        (upstream_failed, never sent) and send those now ready. Returns every step
        changed here. A no-op for parallel runs and for steps still open (retrying)."""
        order = run.data_order
        if order is None or not run.open:
            return []
        ended = [i for i in ended if not run.steps[i].open]
        if not ended:
            return []
        changed: list[int] = []
        while ended:
            ready, blocked = order.advance(run.states(), ended)
            now = utcnow()
            for index, cause in blocked:
                step, producer = run.steps[index], run.steps[cause]
                step.status, step.ended_at = STEP_UPSTREAM_FAILED, now
                step.error = f"not sent: {producer.module_name} (step {cause}) ended {producer.status}"
                changed.append(index)
            ended = []
            for index in ready:
                step = run.steps[index]
                self._dispatch(run, step)
                changed.append(index)
                # Offline at dispatch with no retry left: it ended here; go round again.
                if not step.open:
                    ended.append(index)
        return changed
    def _held_here(self, module_hash: str, result: ResultMessage) -> bool:
        """Whether the result's run is open (or closing) in this instance."""
        if result.run_id:
            return result.run_id in self._open or result.run_id in self._closing
        return any(
            step.module_hash == module_hash and step.status == "sent"
            for run in self._open.values()
            if result.workflow_id is None or str(run.workflow_id) == str(result.workflow_id)
            for step in run.steps
        )

    def _in_memory(self, result: ResultMessage) -> bool:
        """Whether the result can be matched without the store."""
        return not result.run_id or result.run_id in self._open or result.run_id in self._closing

    async def _match(
        self, module_hash: str, result: ResultMessage
    ) -> tuple[Run, Step | None, list[tuple[str, int]] | None]:
        """(run, step, None) to apply the result to; (run, None, keys) for a re-send of
        the result those step keys hold (None: an answer to a cancel, nothing to wait
        for but the next write); ResultNotMatched otherwise."""
        if self._in_memory(result):
            return self._match_now(module_hash, result)
        # Not open here: a late or re-sent result. One keyed read, off the hot path.
        stored = await self._history.get(result.run_id) if len(result.run_id) <= 32 else None
        if stored is None:
            raise ResultNotMatched(f"unknown run_id {result.run_id[:32]}")
        return self._match_now(module_hash, result, stored)

    def _match_now(
        self, module_hash: str, result: ResultMessage, stored: Run | None = None
    ) -> tuple[Run, Step | None, list[tuple[str, int]] | None]:
        """`_match` over what is in memory (`stored`: the result's run read from the store)."""
        if result.run_id:
            run = stored or self._open.get(result.run_id) or self._closing.get(result.run_id)
            if run is None:
                raise ResultNotMatched(f"unknown run_id {result.run_id[:32]}")
            mine = run.steps_of(module_hash)
            if not mine:
                raise ResultNotMatched(f"run {run.run_id} has no step for this module")
            if run.open:
                for step in mine:
                    if step.status == "sent":
                        return run, step, None
            same = [(run.run_id, step.index) for step in mine if _same_result(step, result)]
            if same:
                return run, None, same
            if any(step.status == "cancelled" for step in mine):
                return run, None, None  # the module's answer to a cancel: nothing left to record
            if not run.open:
                raise ResultNotMatched(f"run {run.run_id} is closed ({run.status})")
            status = ", ".join(sorted({s.status for s in mine}))
            raise ResultNotMatched(f"this module's step in run {run.run_id} is not awaiting a result ({status})")
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
            for step in run.steps_of(module_hash):
                if step.status == "sent":
                    return run, step, None
        for run in candidates:
            same = [(run.run_id, s.index) for s in run.steps_of(module_hash) if _same_result(s, result)]
            if same:
                return run, None, same
        where = f"workflow {result.workflow_id}" if result.workflow_id is not None else "any workflow"
        raise ResultNotMatched(f"no open step for this module in {where} (send run_id for an exact match)")

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
        self._events.publish(STEP_FAILED, {"run": run, "step": step})

    def _retry(self, run_id: str, index: int) -> None:
        self._retry_timers = {h for h in self._retry_timers if not h.cancelled() and h.when() > asyncio.get_running_loop().time()}
        run = self._open.get(run_id)
        if run is None or run.steps[index].status != "pending":
            return
        self._dispatch(run, run.steps[index])
        self._after_change(run, [index, *self._advance(run, [index])])

    # -- disconnects and timeouts ----------------------------------------------------
    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind != MODULE_OFFLINE:
            return
        module_hash = data["hash"]
        error = "module disconnected during the run" + (f" ({data['reason']})" if data.get("reason") else "")
        for run in list(self._open.values()):
            changed = []
            for step in run.steps_of(module_hash):
                if step.status == "sent":
                    self._fail_step(run, step, "failure", error)
                    changed.append(step.index)
            if changed:
                self._after_change(run, [*changed, *self._advance(run, changed)])

    def _on_timeout(self, run_id: str) -> None:
        run = self._open.get(run_id)
        if run is None:
            return
        now = utcnow()
        changed = []
        for step in run.steps:
            if step.waiting and run.data_order is not None:
                # The run's timeout covers the whole chain: a step still waiting for a
                # producer was never sent, so it is its producer that timed out.
                step.status, step.ended_at = STEP_UPSTREAM_FAILED, now
                step.error = f"not sent: the run timed out after {run.timeout_seconds} s before its producers ended"
                changed.append(step.index)
            elif step.open:
                step.status, step.ended_at = "timeout", now
                step.error = f"no result within {run.timeout_seconds} s"
                changed.append(step.index)
                self._events.publish(STEP_FAILED, {"run": run, "step": step})
        self._after_change(run, changed)

    # -- state and persistence -------------------------------------------------------
    def _after_change(self, run: Run, step_indexes: list[int]) -> None:
        """Mark the changed steps (and the run row) for the next group commit and
        close the run if every step is done."""
        status = run.overall_status()
        if status != "running" and run.open:
            self._close_as(run, status, step_indexes)
        else:
            self._mark(run, step_indexes)
            self._events.publish(RUN_UPDATED, {"run": run, "steps": step_indexes})

    def _mark(self, run: Run, step_indexes: list[int]) -> None:
        for index in step_indexes:
            self._writer.mark((run.run_id, index))
        self._writer.mark((run.run_id, RUN_ROW))

    def _on_quarantine(self, keys: set[tuple[str, int]], reason: str) -> None:
        """The store refuses this run's state: stop carrying it (it is not retried);
        a run left open in the store becomes interrupted at the next start."""
        for run_id in {run_id for run_id, _ in keys}:
            self._closing.pop(run_id, None)
            log.error("run %s: state not stored (%s)", run_id[:8], reason)

    async def _write(self, keys: set[tuple[str, int]]) -> None:
        """GroupCommit's writer: every changed step row and run row, one transaction."""
        by_run: dict[str, set[int]] = {}
        for run_id, index in keys:
            indexes = by_run.setdefault(run_id, set())
            if index != RUN_ROW:
                indexes.add(index)
        changes = []
        # Only runs already closed now are complete once written; one that closes while
        # this write is in flight stays in _closing for the next flush (its keys are dirty).
        closed = [run_id for run_id in by_run if run_id in self._closing]
        for run_id, indexes in by_run.items():
            run = self._open.get(run_id) or self._closing.get(run_id)
            if run is not None:
                changes.append((run, indexes))
        await self._history.write(changes)
        finished = [self._closing.pop(run_id) for run_id in closed]
        for run in finished:
            try:
                await self._workflows.set_last_run(run.workflow_id, run.summary())
            except Exception as exc:  # the history row is the truth; the summary is a cache
                log.warning("run %s: last-run summary not written: %s", run.run_id[:8], type(exc).__name__)

    # -- run control: cancel, re-run ----------------------------------------------------
    async def cancel(self, run_id: str, actor: str = "", *, forwarded: bool = False) -> Run:
        """End an open run now: each step still running gets a `cancel` frame on its
        module's socket (wherever the module is connected), every open step ends
        `cancelled`, the run ends `cancelled`. Returns once that is durable. NotFound
        for an unknown run, Conflict for one already closed. Cluster mode: a run
        another live instance holds is cancelled there (`forward_cancel`, its answer
        returned; Unavailable when it cannot be asked); one whose instance is lost is
        taken over here first. `forwarded`: asked by another instance, which already
        chose this one as the owner (never handed on again)."""
        run = self._open.get(run_id) if isinstance(run_id, str) else None
        if run is None:
            stored = await self._stored(run_id)  # Invalid / NotFound
            if not stored.open:
                raise Conflict(f"run {stored.run_id} is already closed ({stored.status})")
            # Open, but its state and timers live in another instance.
            owner = stored.instance
            if self.forward_cancel is None or forwarded or not owner or owner == self._instance:
                raise Conflict(f"run {stored.run_id} is held by instance {owner or '?'}; cancel it there")
            if self.is_gone(owner):
                # Its instance is gone and nobody adopted the run yet: adopt it now
                # (as instance_lost would), then cancel it here.
                if await self._take_over(stored):
                    return await self.cancel(run_id, actor, forwarded=True)
                if run_id in self._open:  # taken over here meanwhile (instance_lost)
                    return await self.cancel(run_id, actor, forwarded=True)
                stored = await self._stored(run_id)  # another instance won: ask it
                if not stored.open:
                    raise Conflict(f"run {stored.run_id} is already closed ({stored.status})")
            return await self.forward_cancel(stored, actor)
        now = utcnow()
        changed = []
        for step in run.steps:
            if not step.open:
                continue
            if step.status == "sent":
                frame = cancel_frame(run_id=run.run_id, workflow_id=run.workflow_id, workflow_name=run.workflow_name)
                try:
                    self._hub.send(step.module_hash, encode_frame(frame))
                except Exception as exc:  # gone meanwhile: nothing left to stop there
                    log.info("run %s: cancel not delivered to %s: %s", run.run_id[:8], step.module_name,
                             type(exc).__name__)
            step.status, step.ended_at = "cancelled", now
            step.error = "cancelled by an operator"
            changed.append(step.index)
        run.reason = f"cancelled by {actor}" if actor else "cancelled by an operator"
        self._close_as(run, "cancelled", changed)
        await self._writer.commit([(run.run_id, RUN_ROW)])  # Unstorable if quarantined
        return run

    def _close_as(self, run: Run, status: str, step_indexes: list[int]) -> None:
        """Close an open run with `status` (its steps' sum, or the operator's choice
        on cancel), mark it for the next group commit and say so."""
        self._mark(run, step_indexes)
        run.status, run.ended_at = status, utcnow()
        self._open.pop(run.run_id, None)
        self._closing[run.run_id] = run
        timer = self._timers.pop(run.run_id, None)
        if timer is not None:
            timer.cancel()
        self._events.publish(RUN_FINISHED, {"run": run})

    async def rerun(self, run_id: str, steps: str = "failed") -> Run:
        """Start a new run of a closed run's workflow, linked to it (`rerun_of`),
        trigger `rerun`, for the steps that did not succeed (`failed`) or every step
        (`all`), each with the args it had. Conflict when the run is still open, its
        workflow is gone or nothing failed."""
        if steps not in RERUN_CHOICES:
            raise Invalid('steps: expected "failed" or "all"', field="steps")
        original = await self._stored(run_id)
        if original.open:
            raise Conflict(f"run {original.run_id} is still running; cancel it first")
        workflow = await self._workflows.find(original.workflow_id)
        if workflow is None:
            raise Conflict(f"workflow {original.workflow_id} no longer exists")
        chosen = [s for s in original.steps if steps == "all" or s.status != "success"]
        if not chosen:
            raise Conflict(f"nothing to re-run: every step of run {original.run_id} succeeded")
        # The same tick again: modules see the execution_time of the run they repeat.
        same_steps = [m["module_hash"] for m in workflow.execute_modules] == [s.module_hash for s in original.steps]
        if workflow.order == "data" and steps == "failed" and same_steps:
            # The whole chain again, its succeeded steps carried over as done: the
            # failed steps and everything behind them run, fed the outputs they need.
            full = dataclasses.replace(
                workflow, execute_modules=[{"module_hash": s.module_hash, "args": s.args} for s in original.steps]
            )
            carried = {s.index: s for s in original.steps if s.status == "success"}
            return await self.start_run(full, "rerun", original.nominal_time, rerun_of=original.run_id,
                                        carried=carried)
        subset = dataclasses.replace(
            workflow, execute_modules=[{"module_hash": s.module_hash, "args": s.args} for s in chosen]
        )
        return await self.start_run(subset, "rerun", original.nominal_time, rerun_of=original.run_id)

    # -- progress and log frames -------------------------------------------------------
    def report_step(self, module_hash: str, frame: ProgressMessage | LogMessage, *, forwarded: bool = False) -> None:
        """Keep a module's progress or log lines on its running step, in memory only:
        they are written with the step's next state write (its result, timeout or
        cancel), never per frame. ResultNotMatched when no step of this module is
        running in that run. Cluster mode: a frame for a run not open here goes to
        its owner (`forward_report`), unless it was `forwarded` here already."""
        run = self._open.get(frame.run_id)
        if run is None:
            # Cluster mode: most likely a run another instance owns; handed on to it.
            if not forwarded and self.forward_report is not None and self.forward_report(module_hash, frame):
                return
            raise ResultNotMatched(f"run {frame.run_id[:32]} is not running")
        step = next((s for s in run.steps_of(module_hash) if s.status == "sent"), None)
        if step is None:
            raise ResultNotMatched(f"this module has no running step in run {run.run_id}")
        lines: list[str] = []
        if isinstance(frame, ProgressMessage):
            step.progress_percent, step.progress_message = frame.percent, frame.message
        else:
            lines = [line[:LOG_LINE_CHARS] for line in frame.lines[-LOG_TAIL_LINES:]]
            step.log.extend(lines)
        self._events.publish(STEP_PROGRESS, {"run": run, "step": step, "lines": lines})

    # -- queries ---------------------------------------------------------------------
    async def get(self, run_id: str) -> Run:
        """The run as it is now: this instance's live state of a run it holds; in a
        cluster, the owner's live state of an open run another instance holds
        (progress and log lines are written only with state changes); else the
        stored row."""
        run = await self._stored(run_id)
        if run.open and run.instance and run.instance != self._instance \
                and self.read_remote is not None:
            live = await self.read_remote(run)
            if live is not None:
                return live
        return run

    def held(self, run_id: str) -> Run | None:
        """The run if this instance holds it open (or is still writing its end)."""
        return self._open.get(run_id) or self._closing.get(run_id)

    async def _stored(self, run_id: str) -> Run:
        """This instance's live state of the run, else the stored row."""
        if not isinstance(run_id, str) or len(run_id) > 64:
            raise Invalid("run_id: expected a run id string", field="run_id")
        live = self.held(run_id)
        if live is not None:
            return live
        run = await self._history.get(run_id)
        if run is None:
            raise NotFound(f"run {run_id} not found")
        return run

    async def detail(self, run_id: str) -> tuple[Run, PlanGraph | None]:
        """The run, and its workflow's data plan laid out for drawing when the workflow
        runs in data order (solved against the current registrations; None when the
        workflow changed its steps since this run, or has no order to draw)."""
        run = await self.get(run_id)
        workflow = await self._workflows.find(run.workflow_id)
        if workflow is None or workflow.order != "data":
            return run, None
        if [m["module_hash"] for m in workflow.execute_modules] != [s.module_hash for s in run.steps]:
            return run, None
        return run, layout(await self._workflows.solve(workflow))

    async def list(
        self, filters: RunFilter, *, before: str | None = None, page: int | None = None, page_size: int = 20,
        search: str = "",
    ) -> RunPage:
        """Newest first: after the `before` cursor, or by page number (bounded).
        `search`: runs of the workflows whose name contains it (case-insensitive),
        and runs whose id starts with it (4+ hex characters); always keyset pages."""
        if search:
            filters = await self._search_filter(filters, search)
        if before is not None or page is None or filters.searching or filters.oldest_first:
            found = await self._history.page(filters, before, page_size)
        else:
            found = await self._history.page_by_number(filters, page, page_size)
        # Open runs: the in-memory state is newer than the last flush.
        live = [self._open.get(r.run_id) or self._closing.get(r.run_id) or r for r in found.runs]
        found.runs[:] = live
        return found

    async def _search_filter(self, filters: RunFilter, search: str) -> RunFilter:
        # history.py imports this module; the reverse import waits until called.
        from .history import RUN_ID_PREFIX_MIN, is_hex

        text = search.strip()
        if not text:
            return filters
        if len(text) > SEARCH_MAX_CHARS:
            raise Invalid(f"q: at most {SEARCH_MAX_CHARS} characters", field="q")
        fragment = text.casefold()
        ids = [
            w.workflow_id for w in await self._workflows.list()
            if fragment in w.name.casefold() and filters.workflow_id in (None, w.workflow_id)
        ]
        if len(ids) > SEARCH_MAX_WORKFLOWS:
            raise Invalid(f"q: {len(ids)} workflows match (at most {SEARCH_MAX_WORKFLOWS} are searched); "
                          "type more of the name", field="q")
        prefix = fragment if RUN_ID_PREFIX_MIN <= len(fragment) <= 32 and is_hex(fragment) else None
        return dataclasses.replace(filters, workflow_ids=tuple(ids), run_id_prefix=prefix)

    async def module_history(
        self, module_hash: str, *, status: str | None = None, before: str | None = None, page_size: int = 20,
    ) -> ModuleStepPage:
        """The steps a registered module was sent, newest first (NotFound for an
        unknown hash); steps of open runs as they are in memory now."""
        await self._registry.get(module_hash)
        found = await self._history.module_steps(module_hash, status, before, page_size)
        for i, item in enumerate(found.steps):
            run = self._open.get(item.run_id) or self._closing.get(item.run_id)
            if run is not None and item.step.index < len(run.steps):
                found.steps[i] = dataclasses.replace(item, step=run.steps[item.step.index], run_status=run.status)
        return found

    async def last_started(self, workflow_id: int) -> datetime | None:
        return await self._history.last_started(workflow_id)

    async def strips(self, workflow_ids: list[int], per_workflow: int = STRIP_RUNS) -> dict[int, RunStrip]:
        """Each workflow's last runs (oldest first) for the run strips: one query."""
        found = await self._history.recent_by_workflow(workflow_ids, per_workflow)
        # Open runs: the in-memory status is newer than the last flush.
        live = [
            dataclasses.replace(r, status=open_run.status, ended_at=open_run.ended_at)
            if (open_run := self._open.get(r.run_id) or self._closing.get(r.run_id)) else r
            for r in found
        ]
        return build_strips(workflow_ids, live)

    async def delete_older_than(self, cutoff: datetime) -> int:
        return await self._history.delete_older_than(cutoff)


def _same_result(step: Step, result: ResultMessage) -> bool:
    """Whether `result` is a re-send of the result this step already holds."""
    expected = "success" if result.succeeded else "failure"
    return step.status == expected and step.message == result.message and (
        result.succeeded or step.error == (result.error or "module reported failure")
    )


# One encoder: json.dumps with options builds a new one per call.
_FRAME_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


def encode_frame(value: Any) -> str:
    return _FRAME_ENCODER.encode(value)
