"""Run strips: the last few runs of each workflow (newest last), their success rate
and a duration sparkline, for the workflows list (Airflow's grid, in one row).

Read with one bounded query for all listed workflows (`RunHistory.recent_by_workflow`:
one index-backed `LIMIT` per workflow, no count); shaped here so every page reads the
same figures. Nothing here knows about HTML beyond the sparkline's point list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# Runs shown per workflow.
STRIP_RUNS = 20
# The sparkline's drawing box (SVG user units); the page scales it.
SPARK_WIDTH = 100
SPARK_HEIGHT = 20
# Run statuses that count as a success / are left out of the rate (nothing ended).
SUCCESS_STATUSES = ("success",)
UNDECIDED_STATUSES = ("running", "skipped")


@dataclass(frozen=True)
class StripRun:
    """One run in a strip: just what a square and the sparkline need."""

    run_id: str
    workflow_id: int
    status: str
    started_at: datetime
    ended_at: datetime | None

    @property
    def duration_seconds(self) -> float | None:
        if self.ended_at is None:
            return None
        return max(0.0, (self.ended_at - self.started_at).total_seconds())


@dataclass
class RunStrip:
    """A workflow's last runs, oldest first (newest on the right), and their figures."""

    runs: list[StripRun] = field(default_factory=list)

    @property
    def decided(self) -> list[StripRun]:
        return [r for r in self.runs if r.status not in UNDECIDED_STATUSES]

    @property
    def success_rate(self) -> float | None:
        """Share of ended, non-skipped runs that succeeded; None when there is none."""
        decided = self.decided
        if not decided:
            return None
        return sum(r.status in SUCCESS_STATUSES for r in decided) / len(decided)

    @property
    def durations(self) -> list[float]:
        return [d for d in (r.duration_seconds for r in self.runs) if d is not None]

    def sparkline_points(self, width: int = SPARK_WIDTH, height: int = SPARK_HEIGHT) -> str:
        """The durations as an SVG polyline `points` value (longest at the top);
        empty below two ended runs, where a line says nothing."""
        values = self.durations
        if len(values) < 2:
            return ""
        top = max(values) or 1.0
        step = width / (len(values) - 1)
        # One unit of margin so the stroke is not cut at the edges.
        usable = height - 2
        return " ".join(
            f"{i * step:.1f},{1 + usable - (v / top) * usable:.1f}" for i, v in enumerate(values)
        )


def build_strips(workflow_ids: list[int], newest_first: list[StripRun]) -> dict[int, RunStrip]:
    """Group runs (as the history returns them, newest first) into one strip per
    listed workflow, oldest first; a workflow without runs gets an empty strip."""
    strips = {wid: RunStrip() for wid in workflow_ids}
    for run in newest_first:
        strip = strips.get(run.workflow_id)
        if strip is not None:
            strip.runs.append(run)
    for strip in strips.values():
        strip.runs.reverse()
    return strips
