"""The workflows list as an operator browses it: a name search, a state filter
(enabled, paused, failing) and a sort (id, i.e. creation order, the default; name,
next fire, last run, success rate).

Pure: the page gathers each workflow's figures (its strip, its next fire time,
whether it is failing now) and this decides what is shown and in which order, so
every rule lives in one place and is tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .errors import Invalid
from .workflows import Workflow

WORKFLOW_STATES = ("enabled", "paused", "failing")
# The first is the default (the order the list always had). Directions are fixed,
# attention first: the next to fire, the latest run, the lowest success rate.
WORKFLOW_SORTS = ("id", "name", "next_fire", "last_run", "success_rate")
MAX_SEARCH_CHARS = 100


@dataclass(frozen=True)
class WorkflowRow:
    """One workflow with the figures the list filters and sorts by."""

    workflow: Workflow
    next_fire: datetime | None  # None: paused, or no future tick
    last_run_at: datetime | None  # None: never ran
    success_rate: float | None  # None: no ended run to judge by
    failing: bool


def check_browse(name_contains: str, state: str, sort: str) -> None:
    """Invalid (naming the parameter) for a value the list does not offer."""
    if len(name_contains) > MAX_SEARCH_CHARS:
        raise Invalid(f"q: at most {MAX_SEARCH_CHARS} characters", field="q")
    if state and state not in WORKFLOW_STATES:
        raise Invalid(f"state: must be one of {', '.join(WORKFLOW_STATES)}", field="state")
    if sort not in WORKFLOW_SORTS:
        raise Invalid(f"sort: must be one of {', '.join(WORKFLOW_SORTS)}", field="sort")


def browse_workflows(rows: list[WorkflowRow], name_contains: str = "", state: str = "",
                     sort: str = WORKFLOW_SORTS[0]) -> list[WorkflowRow]:
    """The rows whose name contains `name_contains` (case-insensitive) and that are in
    `state`, sorted by `sort`; rows without the sort's figure go last, by name."""
    check_browse(name_contains, state, sort)
    fragment = name_contains.strip().casefold()
    wanted = {
        "": lambda r: True,
        "enabled": lambda r: r.workflow.enable,
        "paused": lambda r: not r.workflow.enable,
        "failing": lambda r: r.failing,
    }[state]
    shown = [r for r in rows if fragment in r.workflow.name.casefold() and wanted(r)]

    def by_name(r: WorkflowRow) -> tuple[str, int]:
        return r.workflow.name.casefold(), r.workflow.workflow_id

    if sort == "id":
        shown.sort(key=lambda r: r.workflow.workflow_id)
        return shown
    shown.sort(key=by_name)  # the tie-break of every other sort (sorts are stable)
    if sort == "next_fire":
        shown.sort(key=lambda r: (r.next_fire is None, r.next_fire.timestamp() if r.next_fire else 0.0))
    elif sort == "last_run":
        shown.sort(key=lambda r: (r.last_run_at is None, -r.last_run_at.timestamp() if r.last_run_at else 0.0))
    elif sort == "success_rate":
        shown.sort(key=lambda r: (r.success_rate is None, r.success_rate or 0.0))
    return shown
