"""What is failing now: for each workflow whose latest finished run failed, since
when (the first failure of the current streak), how many runs in a row, which
modules failed and why, and the run to look at.

Computed here, once, for every reader (the overview page, its live socket). The
state is kept in memory and follows `RUN_FINISHED` events synchronously (no store
read or write per event); it is rebuilt from run history at start. Each change is
published as `FAILING_CHANGED` with the whole list, which is short.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from .events import FAILING_CHANGED, RUN_FINISHED, WORKFLOW_DELETED, WORKFLOW_SAVED, EventBus
from .history import RunFilter, RunPage
from .run_state import Run
from .workflows import FAILED_RUN_STATUSES, Workflow, WorkflowStore

log = logging.getLogger(__name__)

# Runs read per failing workflow at start to find where its streak began; a longer
# streak is shown as "at least" this many.
STREAK_SCAN = 100
# Step statuses that count as a failed step.
FAILED_STEP_STATUSES = ("failure", "timeout", "offline", "interrupted")
# Run statuses that end nothing: they neither extend nor break a streak.
NEUTRAL_RUN_STATUSES = ("running", "skipped")


class RunLister(Protocol):
    """What the service reads history through (RunTracker fits)."""

    async def list(self, filters: RunFilter, *, before: str | None = None, page: int | None = None,
                   page_size: int = 20) -> RunPage: ...


@dataclass
class FailingWorkflow:
    """One workflow that is failing now."""

    workflow_id: int
    workflow_name: str
    since: datetime  # start of the first failed run of the streak
    streak: int  # failed runs in a row, newest back to the last success
    streak_capped: bool  # the history scan stopped before the streak began
    status: str  # of the latest run
    run_id: str  # the latest failed run
    last_failed_at: datetime
    modules: list[str] = field(default_factory=list)  # failed steps' modules, latest run
    error: str = ""  # the first failed step's error, latest run

    def public(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id, "workflow_name": self.workflow_name, "since": self.since,
            "streak": self.streak, "streak_capped": self.streak_capped, "status": self.status,
            "run_id": self.run_id, "last_failed_at": self.last_failed_at, "modules": self.modules,
            "error": self.error,
        }


def _failure_facts(run: Run) -> tuple[list[str], str]:
    failed = [s for s in run.steps if s.status in FAILED_STEP_STATUSES]
    modules = list(dict.fromkeys(s.module_name for s in failed))
    error = next((s.error for s in failed if s.error), "") or run.reason or ""
    return modules, error


def streak_of(runs: list[Run], workflow_name: str) -> FailingWorkflow | None:
    """The failing streak at the head of `runs` (newest first), or None when the
    newest run that ended did not fail."""
    head: Run | None = None
    oldest: Run | None = None
    count = 0
    ended_by_success = False
    for run in runs:
        if run.status in NEUTRAL_RUN_STATUSES:
            continue
        if run.status not in FAILED_RUN_STATUSES:
            ended_by_success = True
            break
        head = head or run
        oldest = run
        count += 1
    if head is None or oldest is None:
        return None
    modules, error = _failure_facts(head)
    return FailingWorkflow(
        workflow_id=head.workflow_id, workflow_name=workflow_name or head.workflow_name,
        since=oldest.started_at, streak=count, streak_capped=not ended_by_success and len(runs) >= STREAK_SCAN,
        status=head.status, run_id=head.run_id, last_failed_at=head.started_at, modules=modules, error=error,
    )


class FailingNow:
    """The failing-now list, kept current from run events."""

    def __init__(self, workflows: WorkflowStore, runs: RunLister, events: EventBus) -> None:
        self._workflows = workflows
        self._runs = runs
        self._events = events
        self._failing: dict[int, FailingWorkflow] = {}
        self._unsubscribe = events.subscribe(self._on_event)

    async def start(self) -> None:
        """Rebuild from history: the streak of every workflow whose last run failed."""
        for workflow in await self._workflows.list():
            if workflow.last_run_failed:
                await self._rebuild(workflow)
        if self._failing:
            self._events.publish(FAILING_CHANGED, {"failing": self.list()})

    async def _rebuild(self, workflow: Workflow) -> None:
        # One keyset page over the (workflow_id, started_at) index: no count.
        found = await self._runs.list(RunFilter(workflow_id=workflow.workflow_id), page_size=STREAK_SCAN)
        item = streak_of(found.runs, workflow.name)
        if item is not None:
            self._failing[workflow.workflow_id] = item

    async def close(self) -> None:
        self._unsubscribe()

    def list(self) -> list[FailingWorkflow]:
        """Longest-failing first."""
        return sorted(self._failing.values(), key=lambda f: (f.since, f.workflow_id))

    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == RUN_FINISHED and isinstance(data.get("run"), Run):
            changed = self._apply(data["run"])
        elif kind == WORKFLOW_DELETED:
            changed = self._failing.pop(int(data["workflow_id"]), None) is not None
        elif kind == WORKFLOW_SAVED and isinstance(data.get("workflow"), Workflow):
            item = self._failing.get(data["workflow"].workflow_id)
            changed = item is not None and item.workflow_name != data["workflow"].name
            if item is not None:
                item.workflow_name = data["workflow"].name
        else:
            return
        if changed:
            self._events.publish(FAILING_CHANGED, {"failing": self.list()})

    def _apply(self, run: Run) -> bool:
        if run.status in NEUTRAL_RUN_STATUSES:
            return False
        current = self._failing.get(run.workflow_id)
        if run.status not in FAILED_RUN_STATUSES:
            return self._failing.pop(run.workflow_id, None) is not None
        modules, error = _failure_facts(run)
        if current is None:
            self._failing[run.workflow_id] = FailingWorkflow(
                workflow_id=run.workflow_id, workflow_name=run.workflow_name, since=run.started_at, streak=1,
                streak_capped=False, status=run.status, run_id=run.run_id, last_failed_at=run.started_at,
                modules=modules, error=error,
            )
        else:
            current.streak += 1
            current.status, current.run_id, current.last_failed_at = run.status, run.run_id, run.started_at
            current.modules, current.error = modules, error
            current.since = min(current.since, run.started_at)
        return True

