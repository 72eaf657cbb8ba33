"""In-process event bus: the core publishes what happened (module online/offline,
run and step changes, workflow changes); the run tracker, scheduler, notifier and
dashboard subscribe.

Callbacks are synchronous and must not block: they queue work, they don't do it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], None]

# Event kinds and what their data holds.
MODULE_ONLINE = "module.online"  # hash, name, module_id
MODULE_OFFLINE = "module.offline"  # hash, name, module_id
RUN_STARTED = "run.started"  # run
RUN_UPDATED = "run.updated"  # run, steps (indexes of the steps that changed)
RUN_FINISHED = "run.finished"  # run
STEP_FAILED = "step.failed"  # run, step
STEP_PROGRESS = "step.progress"  # run, step, lines (new log lines; [] for a progress frame)
WORKFLOW_SAVED = "workflow.saved"  # workflow (created, changed, enabled or disabled)
WORKFLOW_DELETED = "workflow.deleted"  # workflow_id
SCHEDULE_FIRED = "schedule.fired"  # workflow_id, lateness_seconds (scheduled fire time -> firing)
FAILING_CHANGED = "failing.changed"  # failing: list of failing.FailingWorkflow, longest-failing first
RUN_EVENTS = (RUN_STARTED, RUN_UPDATED, RUN_FINISHED)


class EventBus:
    """Publish/subscribe by event kind (`module.online`, `run.updated`, ...)."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener(kind, data)
            except Exception:
                log.exception("event listener failed on %s", kind)
