"""How one instance's services use the cluster (tornado_sched/cluster.py is the
transport): dashboards fed with the other instances' run events, results and
progress handed to the instance that owns their run, run control (read, cancel)
asked of the owner, a lost instance's runs taken over, the schedule followed across
instances. `wire` and `wire_scheduler` are called once by context.open_context,
before anything starts, and only in cluster mode."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from .auth import LoginThrottle, OperatorAccounts, ReplayGuard
from .cluster import Cluster, remote_error, spawn
from .errors import Unavailable
from .events import (
    RUN_EVENTS,
    RUN_STARTED,
    RUN_UPDATED,
    STEP_PROGRESS,
    WORKFLOW_DELETED,
    WORKFLOW_SAVED,
    EventBus,
)
from .hub import ConnectionHub, ModuleSession, remote_session
from .protocol import LogMessage, ProgressMessage, ResultMessage
from .registry import ModuleRegistry
from .run_state import LOG_LINE_CHARS, LOG_TAIL_LINES, Run, Step
from .runs import ResultNotMatched, RunTracker
from .scheduler import WorkflowScheduler
from .workflows import WorkflowStore

log = logging.getLogger(__name__)

# A result for another instance's run: tries, and the wait between them, before the
# module gets an error frame (together longer than the liveness TTL plus a beat).
FORWARD_ATTEMPTS = 8
FORWARD_WAIT_SECONDS = 1.5
# Step progress and log lines crossing instances (a module on one instance reporting
# on a run another owns; the owner telling the others' dashboards) are merged and
# sent at most once per this many seconds, never one Redis message per frame.
REPORT_SECONDS = 0.5
# Steps whose reports may wait at once; more are dropped (they are display only).
REPORT_KEYS_LIMIT = 10_000
# Reading an open run's live state from its owner (GET /runs/<id> elsewhere): past
# this, the stored row is shown instead.
READ_TIMEOUT_SECONDS = 3.0


class StepReports:
    """Progress and log lines of steps, merged by key and handed to `send` as one list
    at most once per `interval` seconds: a chatty module costs one cluster message
    per interval, not one per frame. Bounded: a key keeps its last LOG_TAIL_LINES
    lines, at most `limit` keys wait, reports past that are dropped (display only)."""

    def __init__(
        self, send: Callable[[list[dict[str, Any]]], Any], interval: float = REPORT_SECONDS,
        limit: int = REPORT_KEYS_LIMIT,
    ) -> None:
        self._send = send
        self._interval = interval
        self._limit = limit
        self._pending: dict[tuple[str, Any], dict[str, Any]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0

    def add(
        self, key: tuple[str, Any], base: dict[str, Any], lines: list[str],
        progress: dict[str, Any] | None = None,
    ) -> bool:
        """Merge one report into the key's entry (`base`: its identity, set once;
        `progress` replaces the entry's, `lines` are appended). False if dropped."""
        entry = self._pending.get(key)
        if entry is None:
            if len(self._pending) >= self._limit:
                self.dropped += 1
                return False
            entry = self._pending[key] = {**base, "lines": []}
        if progress is not None:
            entry["progress"] = progress
        if lines:
            entry["lines"] = (entry["lines"] + [line[:LOG_LINE_CHARS] for line in lines])[-LOG_TAIL_LINES:]
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)
        return True

    def take(self, key: tuple[str, Any]) -> dict[str, Any] | None:
        """Remove and return the key's waiting entry (it travels with something else)."""
        return self._pending.pop(key, None)

    def flush(self) -> None:
        """Hand every waiting entry to `send` now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending = list(self._pending.values()), {}
        try:
            outcome = self._send(batch)
            if asyncio.iscoroutine(outcome):
                spawn(outcome)
        except Exception:
            log.exception("step reports not sent")

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()


class RunUpdates:
    """This instance's run updates for the other instances' dashboards, merged by run
    and handed to `send` at most once per `interval` seconds, as the run is then: one
    broadcast per event made a 1,000-module fan-out 1,000 broadcasts of 1,000 steps.
    A run's start and end go out at once (`drop` its waiting update first: they carry
    every step)."""

    def __init__(self, send: Callable[[Run], None], interval: float = REPORT_SECONDS) -> None:
        self._send = send
        self._interval = interval
        self._waiting: dict[str, Run] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, run: Run) -> None:
        self._waiting[run.run_id] = run
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def drop(self, run_id: str) -> None:
        self._waiting.pop(run_id, None)

    def flush(self) -> None:
        self._timer = None
        waiting, self._waiting = self._waiting, {}
        for run in waiting.values():
            try:
                self._send(run)
            except Exception:
                log.exception("run %s: update not shared", run.run_id[:8])


def wire(
    cluster: Cluster, *, events: EventBus, feed: EventBus, hub: ConnectionHub, runs: RunTracker,
    throttle: LoginThrottle, replay: ReplayGuard, accounts: OperatorAccounts, registry: ModuleRegistry,
) -> None:
    """Connect the services of one instance to the cluster (before any starts)."""
    hub.join(cluster)

    # Dashboards: local events as they are; other instances' run events from Redis.
    events.subscribe(feed.publish)

    # Step progress of runs held here, for the others' dashboards: merged per step,
    # one broadcast per REPORT_SECONDS at most.
    progress_out = StepReports(lambda batch: cluster.broadcast({"op": "step_reports", "reports": batch}))
    cluster.report_queues.append(progress_out)

    updates_out = RunUpdates(lambda run: cluster.broadcast({"op": "event", "kind": RUN_UPDATED, "run": run.doc()}))

    def share(kind: str, data: dict[str, Any]) -> None:
        run = data.get("run")
        if kind in RUN_EVENTS and isinstance(run, Run):
            if kind == RUN_UPDATED:
                updates_out.add(run)
                return
            if kind == RUN_STARTED:
                cluster.own_run(run.run_id, run.workflow_id, [s.module_hash for s in run.steps])
            updates_out.drop(run.run_id)
            cluster.broadcast({"op": "event", "kind": kind, "run": run.doc()})
        elif kind == STEP_PROGRESS and isinstance(run, Run) and isinstance(step := data.get("step"), Step):
            progress_out.add(
                (run.run_id, step.index),
                {"run_id": run.run_id, "workflow_id": run.workflow_id, "index": step.index,
                 "hash": step.module_hash, "name": step.module_name},
                list(data.get("lines") or []), step.progress,
            )

    def show_reports(message: dict[str, Any]) -> None:
        for report in message.get("reports") or []:
            run = Run.from_doc({"run_id": report["run_id"], "workflow_id": report["workflow_id"]})
            progress = report.get("progress") or {}
            step = Step(int(report["index"]), str(report.get("hash", "")), str(report.get("name", "")), {},
                        progress_percent=progress.get("percent"), progress_message=progress.get("message"))
            feed.publish(STEP_PROGRESS, {"run": run, "step": step, "lines": report.get("lines") or [],
                                         "remote": True})

    events.subscribe(share)
    cluster.handle("event", lambda m: feed.publish(m["kind"], {"run": Run.from_doc(m["run"]), "remote": True}))
    cluster.handle("step_reports", show_reports)

    # Progress and log frames that reach this instance for a run another one owns:
    # merged per (run, module), sent to the owner once per REPORT_SECONDS.
    async def relay(batch: list[dict[str, Any]]) -> None:
        owners: dict[str, list[dict[str, Any]]] = {}
        for report in batch:
            module_hash, run_id = report["hash"], report["run_id"]
            owner = hub.origins.origin(module_hash, run_id, None)
            if owner is None or not cluster.is_live(owner):
                owner = await cluster.run_owner(module_hash, run_id, None) or owner
            if owner is None or owner == cluster.instance:
                log.debug("report for run %s dropped: no other instance holds it", run_id[:8])
                continue
            owners.setdefault(owner, []).append(report)
        for owner, reports in owners.items():
            cluster.route(owner, {"op": "reports", "reports": reports})

    reports_in = StepReports(relay)
    cluster.report_queues.append(reports_in)

    def forward_report(module_hash: str, frame: ProgressMessage | LogMessage) -> bool:
        if not cluster.connected:
            return False
        progress = {"percent": frame.percent, "message": frame.message} if isinstance(frame, ProgressMessage) else None
        lines = frame.lines if isinstance(frame, LogMessage) else []
        return reports_in.add((frame.run_id, module_hash), {"run_id": frame.run_id, "hash": module_hash},
                              lines, progress)

    def apply_reports(reports: Any) -> None:
        """Reports relayed by the instance a module is connected to, for runs held here."""
        for report in reports if isinstance(reports, list) else []:
            module_hash, run_id = str(report.get("hash", "")), str(report.get("run_id", ""))
            try:
                if report.get("lines"):
                    runs.report_step(module_hash, LogMessage(run_id, [str(x) for x in report["lines"]]),
                                     forwarded=True)
                progress = report.get("progress")
                if isinstance(progress, dict):
                    runs.report_step(module_hash, ProgressMessage(run_id, progress.get("percent"),
                                                                  progress.get("message")), forwarded=True)
            except ResultNotMatched as exc:
                log.debug("relayed report not recorded: %s", exc)

    runs.forward_report = forward_report
    cluster.handle("reports", lambda m: apply_reports(m.get("reports")))

    # Run control from any instance: the owner's live state, and cancel, asked of it.
    async def read_remote(run: Run) -> Run | None:
        if not cluster.connected or not cluster.is_live(run.instance):
            return None
        try:
            reply = await cluster.request(run.instance, {"op": "run", "run_id": run.run_id},
                                          timeout=READ_TIMEOUT_SECONDS)
        except Unavailable:
            return None
        result = reply.get("result")
        return Run.from_doc(result) if reply.get("ok") and isinstance(result, dict) else None

    def held_run(message: dict[str, Any]) -> dict[str, Any] | None:
        run = runs.held(str(message.get("run_id", "")))
        return run.doc() if run is not None else None

    async def forward_cancel(run: Run, actor: str) -> Run:
        owner = run.instance
        if not cluster.connected:
            raise Unavailable(f"run {run.run_id} is held by instance {owner}, which cannot be reached while "
                              "Redis is unavailable; try again later")
        try:
            reply = await cluster.request(owner, {"op": "cancel", "run_id": run.run_id, "actor": actor})
        except Unavailable:
            raise Unavailable(f"run {run.run_id} is held by instance {owner}, which did not answer; "
                              "try again later") from None
        result = reply.get("result")
        if not reply.get("ok") or not isinstance(result, dict):
            raise remote_error(reply, f"instance {owner} could not cancel run {run.run_id} ({reply.get('error')})")
        return Run.from_doc(result)

    async def cancel_here(message: dict[str, Any]) -> dict[str, Any]:
        # Audited by the instance the operator used, not here.
        run = await runs.cancel(str(message.get("run_id", "")), str(message.get("actor", "")), forwarded=True)
        return run.doc()

    runs.is_gone = cluster.is_gone
    runs.read_remote = read_remote
    runs.forward_cancel = forward_cancel
    cluster.handle("run", held_run)
    cluster.handle("cancel", cancel_here)

    # Results that reach this instance for a run another one owns.
    async def forward(session: ModuleSession, result: ResultMessage) -> bool:
        message = {"op": "result", "hash": session.module_hash, "name": session.name, "result": asdict(result)}
        if result.run_id and (waiting := reports_in.take((result.run_id, session.module_hash))) is not None:
            # The module's last reports before its result: they must reach the step
            # while it is still open, so they travel with the result.
            message["reports"] = [waiting]
        for attempt in range(FORWARD_ATTEMPTS):
            last = attempt == FORWARD_ATTEMPTS - 1
            # Looked up again on every attempt: a run whose owner died is taken over
            # by another instance, which then owns it in Redis.
            origin = hub.origins.origin(session.module_hash, result.run_id, result.workflow_id)
            if origin is None or not cluster.is_live(origin):
                origin = await cluster.run_owner(session.module_hash, result.run_id, result.workflow_id) or origin
            if origin is None or origin == cluster.instance:
                return False
            try:
                if not cluster.is_live(origin):
                    raise Unavailable(f"instance {origin} is gone; its runs are being taken over")
                reply = await cluster.request(origin, message)
            except Unavailable:
                # The module does not resend a refused result: wait for a restart or
                # a takeover (within the liveness TTL) before giving up.
                if last:
                    raise
                await asyncio.sleep(FORWARD_WAIT_SECONDS)
                continue
            if not reply.get("ok"):
                raise Unavailable(f"instance {origin} could not store the result ({reply.get('error')})")
            return True
        return False

    async def on_result(message: dict[str, Any]) -> None:
        module_hash = str(message["hash"])
        session = hub.session(module_hash) or remote_session(
            cluster, module_hash, {"instance": message.get("reply_to", ""), "name": message.get("name", "")}
        )
        apply_reports(message.get("reports"))
        await runs.record_result(session, ResultMessage(**message["result"]))

    runs.forward_result = forward

    # Module hashes: registered elsewhere -> read through; deleted/rotated -> forgotten.
    registry.read_through = True
    registry.on_forget = lambda module_hash: cluster.broadcast({"op": "module_gone", "hash": module_hash})
    cluster.handle("module_gone", lambda m: registry.forget(str(m.get("hash", ""))))
    runs.is_live = cluster.is_live
    runs.on_adopt = lambda run: cluster.own_run(run.run_id, run.workflow_id, [s.module_hash for s in run.steps])
    cluster.on_instance_lost = lambda name: spawn(runs.instance_lost(name))
    cluster.handle("result", on_result)

    # Shared security state.
    throttle.on_change = lambda event, address: cluster.broadcast({"op": "throttle", "event": event, "address": address})
    cluster.handle("throttle", lambda m: throttle.apply(str(m.get("event")), str(m.get("address"))))
    replay.shared = cluster.accept_once
    accounts.on_password_change = lambda: cluster.broadcast({"op": "auth_changed"})
    cluster.handle("auth_changed", lambda _m: accounts.forget_verified())


def wire_scheduler(cluster: Cluster, events: EventBus, scheduler: WorkflowScheduler, workflows: WorkflowStore) -> None:
    """Every instance schedules every workflow: a change saved on one instance reaches
    the schedulers of all (each re-reads the workflow from the shared store)."""

    def share(kind: str, data: dict[str, Any]) -> None:
        if kind == WORKFLOW_SAVED:
            cluster.broadcast({"op": "workflow", "workflow_id": data["workflow"].workflow_id})
        elif kind == WORKFLOW_DELETED:
            cluster.broadcast({"op": "workflow", "workflow_id": data["workflow_id"]})

    async def follow(message: dict[str, Any]) -> None:
        workflow_id = int(message["workflow_id"])
        try:
            scheduler.sync(await workflows.find(workflow_id), workflow_id)
        except Exception:
            log.exception("workflow %d: change from another instance not applied", workflow_id)

    async def rejoin() -> None:
        # Changes broadcast while Redis was away never arrived: rebuild from the store.
        try:
            await scheduler.reload()
        except Exception:
            log.exception("scheduler reload after the redis outage failed")

    events.subscribe(share)
    cluster.handle("workflow", follow)
    cluster.on_rejoin = rejoin
