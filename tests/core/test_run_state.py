"""A run's per-result lookups (tornado_sched/run_state.py `Run.steps_of`,
`Run.any_open`, `Run.overall_status`) agree with walking every step, whatever order
results and retries come in; a run's timing fields default to the workflow's."""

from __future__ import annotations

import random

from tornado_sched.clock import utcnow
from tornado_sched.run_state import Run, Step, overall_status
from tornado_sched.workflows import validate_workflow

STATUSES = ["pending", "sent", "success", "failure", "timeout", "offline", "cancelled", "interrupted"]


def make_run(hashes: list[str]) -> Run:
    now = utcnow()
    steps = [Step(index=i, module_hash=h, module_name=f"m-{h}", args={}, status="sent") for i, h in enumerate(hashes)]
    return Run("r" * 32, 1, "wf", "manual", now, "UTC", now, steps)


def test_steps_of_lists_each_modules_steps_in_order() -> None:
    run = make_run(["a", "b", "a", "c", "a"])
    assert [s.index for s in run.steps_of("a")] == [0, 2, 4]
    assert [s.index for s in run.steps_of("c")] == [3]
    assert run.steps_of("unknown") == []


def test_any_open_finds_a_step_reopened_behind_the_last_open_one() -> None:
    run = make_run(["a", "b", "c", "d"])
    for step in run.steps[:3]:
        step.status = "success"
        assert run.any_open()
    run.steps[3].status = "failure"
    assert not run.any_open()
    assert run.overall_status() == "partial"
    run.steps[1].status = "pending"  # a retry: open again, before the last open step found
    assert run.any_open()
    assert run.overall_status() == "running"


def test_overall_status_matches_the_full_walk_under_random_changes() -> None:
    rng = random.Random(11)
    for size in (1, 2, 7, 50):
        run = make_run([f"h{i % 5}" for i in range(size)])
        for _ in range(600):
            step = rng.choice(run.steps)
            # Mostly closing, sometimes reopening (retries), as a real run goes.
            step.status = rng.choice(STATUSES[2:] * 3 + STATUSES[:2])
            assert run.overall_status() == overall_status(run.steps)
            assert run.any_open() == any(s.open for s in run.steps)


def test_a_run_without_timing_fields_takes_the_workflow_defaults() -> None:
    """A run built in memory (tests, a cluster peer's stub) or read from an older
    document that lacks them times out and retries as a workflow that left them out."""
    workflow = validate_workflow({"name": "w", "enable": False}, "UTC")
    expected = {k: workflow[k] for k in ("timeout_seconds", "retries", "retry_delay_seconds")}
    built = make_run(["a"])
    assert {k: getattr(built, k) for k in expected} == expected
    read = Run.from_doc({"run_id": "r" * 32, "workflow_id": 1})
    assert (read.timeout_seconds, read.retries) == (expected["timeout_seconds"], expected["retries"])
