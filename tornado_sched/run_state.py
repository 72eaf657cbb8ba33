"""A run's state in memory: `Run` and its `Step`s, the statuses they take, and how
a run's status follows from its steps. Plain records: RunTracker (runs.py) changes
them, RunHistory (history.py) stores and reads them, the API and the dashboard show
them; none of that lives here."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from .clock import read_datetime, utcnow
from .dataorder import WAITING, DataOrder
from .workflows import DEFAULT_RETRIES, DEFAULT_RETRY_DELAY_SECONDS, DEFAULT_TIMEOUT_SECONDS

OPEN_STEP = ("pending", "sent")
RUN_STATUSES = ("running", "success", "failure", "partial", "skipped", "interrupted", "cancelled")
# What a step keeps of its module's log frames while it runs: the last lines, each cut.
LOG_TAIL_LINES = 200
LOG_LINE_CHARS = 1000


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
    # The module's `output` from its result (a bounded JSON value), fed to consumers.
    output: Any = None
    # Reported by the module while the step runs (progress and log frames).
    progress_percent: float | None = None
    progress_message: str | None = None
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))

    @property
    def open(self) -> bool:
        return self.status in OPEN_STEP

    @property
    def waiting(self) -> bool:
        """Never sent yet (a data-ordered step waiting for its producers)."""
        return self.status == "pending" and self.attempts == 0

    @property
    def progress(self) -> dict[str, Any] | None:
        if self.progress_percent is None and self.progress_message is None:
            return None
        return {"percent": self.progress_percent, "message": self.progress_message}

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
            "output": self.output,
            "progress": self.progress,
            "log": list(self.log),
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
            output=doc.get("output"),
            progress_percent=(doc.get("progress") or {}).get("percent"),
            progress_message=(doc.get("progress") or {}).get("message"),
            log=deque((str(line) for line in doc.get("log") or []), maxlen=LOG_TAIL_LINES),
        )


class StepStates(Sequence[str]):
    """A read-only view: step index -> "waiting" (never sent) or the step's status."""

    __slots__ = ("_steps",)

    def __init__(self, steps: list[Step]) -> None:
        self._steps = steps

    def __len__(self) -> int:
        return len(self._steps)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [WAITING if s.waiting else s.status for s in self._steps[index]]
        step = self._steps[index]
        return WAITING if step.waiting else step.status


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
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    retries: int = DEFAULT_RETRIES
    retry_delay_seconds: int = DEFAULT_RETRY_DELAY_SECONDS
    reason: str | None = None
    # Cluster mode: the instance that started the run and holds it open.
    instance: str = ""
    # "data": steps are sent in the order of `data_order` (built from the solver's plan
    # at start; in memory only, since a run left open by a restart is interrupted).
    order: str = "parallel"
    data_order: DataOrder | None = field(default=None, repr=False, compare=False)
    rerun_of: str | None = None  # the run this one re-runs (RunTracker.rerun)
    # Per-result lookups that do not walk every step (on a 5,000-step fan-out that
    # walk, once per result, was O(steps²) per run). Both are derived, never stored.
    _by_module: dict[str, list[Step]] | None = field(default=None, init=False, repr=False, compare=False)
    _open_cursor: int = field(default=0, init=False, repr=False, compare=False)

    def steps_of(self, module_hash: str) -> list[Step]:
        """This module's steps, in order (a module may hold several steps of a run).
        The steps of a run are fixed at its start; the index is built on first use."""
        if self._by_module is None:
            by_module: dict[str, list[Step]] = {}
            for step in self.steps:
                by_module.setdefault(step.module_hash, []).append(step)
            self._by_module = by_module
        return self._by_module.get(module_hash, [])

    def any_open(self) -> bool:
        """`any(s.open for s in steps)`, resumed from the open step found last time:
        it stays open until its own result, and the closed steps passed on the way
        to the next one are passed once, so a run's results cost O(steps) in all,
        not O(steps) each. Wraps round, so a step reopened for a retry is found."""
        steps, count = self.steps, len(self.steps)
        start = self._open_cursor if self._open_cursor < count else 0
        for offset in range(count):
            index = start + offset
            if index >= count:
                index -= count
            if steps[index].status in OPEN_STEP:
                self._open_cursor = index
                return True
        return False

    def overall_status(self) -> str:
        """`overall_status(self.steps)`, with the open-step test from `any_open`."""
        return "running" if self.any_open() else overall_status(self.steps)

    def states(self) -> StepStates:
        """Each step's state for the dispatch rule ("waiting" if never sent), read
        on demand: the rule looks at a few steps per result, not at all of them."""
        return StepStates(self.steps)

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
            **({"instance": self.instance} if self.instance else {}),
            "timeout_seconds": self.timeout_seconds,
            "retries": self.retries,
            "retry_delay_seconds": self.retry_delay_seconds,
            "rerun_of": self.rerun_of,
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
            timeout_seconds=int(doc.get("timeout_seconds") or DEFAULT_TIMEOUT_SECONDS),
            retries=int(doc.get("retries") or DEFAULT_RETRIES),
            retry_delay_seconds=int(doc.get("retry_delay_seconds") or 0),
            reason=doc.get("reason"),
            instance=str(doc.get("instance") or ""),
            rerun_of=doc.get("rerun_of"),
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
