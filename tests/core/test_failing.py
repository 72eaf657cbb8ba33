"""FailingNow's streak rule on runs, and the service following run events on a real
event bus (the store side is covered over HTTP in tests/dashboard)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tornado_sched.events import FAILING_CHANGED, RUN_FINISHED, WORKFLOW_DELETED, EventBus
from tornado_sched.failing import STREAK_SCAN, FailingNow, streak_of
from tornado_sched.run_state import Run, Step

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def run(n: int, status: str, *, step: str | None = None, error: str | None = None, workflow_id: int = 7) -> Run:
    steps = [Step(0, "h0", "ok-module", {}, status="success"),
             Step(1, "h1", "bad-module", {}, status=step or ("success" if status == "success" else "failure"),
                  error=error)]
    return Run(run_id=f"r{n}", workflow_id=workflow_id, workflow_name="wf", trigger="schedule", nominal_time=T0,
               timezone="UTC", fired_at=T0, steps=steps, status=status, started_at=T0 + timedelta(minutes=n))


def test_streak_runs_back_to_the_last_success_over_skipped_runs() -> None:
    newest_first = [run(5, "failure", error="e5"), run(4, "skipped"), run(3, "partial", error="e3"),
                    run(2, "success"), run(1, "failure")]
    item = streak_of(newest_first, "wf")
    assert item is not None
    assert (item.streak, item.since, item.run_id, item.error) == (2, T0 + timedelta(minutes=3), "r5", "e5")
    assert item.modules == ["bad-module"] and not item.streak_capped
    assert streak_of([run(2, "success"), run(1, "failure")], "wf") is None
    assert streak_of([], "wf") is None
    capped = streak_of([run(n, "failure") for n in range(STREAK_SCAN, 0, -1)], "wf")
    assert capped is not None and capped.streak == STREAK_SCAN and capped.streak_capped


async def test_service_follows_run_events_and_publishes_changes() -> None:
    events = EventBus()
    published: list[list] = []
    events.subscribe(lambda kind, data: published.append(data["failing"]) if kind == FAILING_CHANGED else None)
    failing = FailingNow(workflows=None, runs=None, events=events)  # type: ignore[arg-type]  # start() not used
    events.publish(RUN_FINISHED, {"run": run(1, "failure", step="offline", error="module was offline")})
    events.publish(RUN_FINISHED, {"run": run(2, "interrupted", step="timeout", error="no result")})
    [item] = failing.list()
    assert (item.streak, item.since, item.status, item.error) == (2, T0 + timedelta(minutes=1), "interrupted",
                                                                  "no result")
    events.publish(RUN_FINISHED, {"run": run(3, "skipped")})  # neither ends nor extends it
    assert len(published) == 2
    events.publish(RUN_FINISHED, {"run": run(4, "failure", workflow_id=8)})
    assert [f.workflow_id for f in failing.list()] == [7, 8]  # longest-failing first
    events.publish(RUN_FINISHED, {"run": run(5, "success")})
    events.publish(WORKFLOW_DELETED, {"workflow_id": 8})
    assert failing.list() == [] and published[-1] == []
    await failing.close()
