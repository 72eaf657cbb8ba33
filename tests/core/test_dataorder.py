"""The dispatch rule of data-ordered runs (tornado_sched/dataorder.py) on plans from
the real solver: who is sent first, who becomes ready, who is blocked and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tornado_sched.dataorder import WAITING, DataOrder
from tornado_sched.requirements import DataRequirement
from tornado_sched.solver import StepRequirements, solve


@dataclass
class Done:
    status: str
    output: Any = None


def step(name: str, inputs: str = "", outputs: str = "", optional: str = "") -> StepRequirements:
    return StepRequirements(
        name,
        tuple(DataRequirement(n) for n in inputs.split()) + tuple(DataRequirement(n, optional=True)
                                                                  for n in optional.split()),
        tuple(DataRequirement(n) for n in outputs.split()),
    )


def order(*steps: StepRequirements) -> DataOrder:
    plan = solve(steps)
    assert plan.ok, plan.conflicts
    return DataOrder.from_plan(plan)


def test_chain_sends_one_stage_at_a_time() -> None:
    rule = order(step("c", "b"), step("a", outputs="a"), step("b", "a", "b"))
    assert rule.first() == [1]
    states = [WAITING, "success", WAITING]
    assert rule.advance(states, [1]) == ([2], [])
    states = [WAITING, "success", "sent"]
    assert rule.advance(states, [2]) == ([], [])  # still open: nothing moves
    states[2] = "success"
    assert rule.advance(states, [2]) == ([0], [])


def test_diamond_waits_for_every_producer() -> None:
    rule = order(step("src", outputs="x"), step("l", "x", "l"), step("r", "x", "r"), step("join", "l r"))
    assert rule.advance(["success", WAITING, WAITING, WAITING], [0]) == ([1, 2], [])
    assert rule.advance(["success", "success", "sent", WAITING], [1]) == ([], [])
    assert rule.advance(["success", "success", "success", WAITING], [2]) == ([3], [])


def test_a_failed_producer_blocks_everything_behind_it_at_once() -> None:
    rule = order(step("a", outputs="a"), step("b", "a", "b"), step("c", "b", "c"), step("d", "c"),
                 step("side", "a"))
    ready, blocked = rule.advance(["failure", WAITING, WAITING, WAITING, WAITING], [0])
    assert ready == []
    assert sorted(blocked) == [(1, 0), (2, 1), (3, 2), (4, 0)]


def test_a_failed_producer_blocks_a_join_even_while_its_other_producer_runs() -> None:
    rule = order(step("l", outputs="l"), step("r", outputs="r"), step("join", "l r"))
    assert rule.advance(["timeout", "sent", WAITING], [0]) == ([], [(2, 0)])


def test_optional_inputs_wait_for_their_producer_but_do_not_block() -> None:
    rule = order(step("hol", outputs="hol"), step("px", outputs="px"), step("model", "px", optional="hol"))
    assert rule.first() == [0, 1]
    assert rule.advance(["sent", "success", WAITING], [1]) == ([], [])
    assert rule.advance(["failure", "success", WAITING], [0]) == ([2], [])
    # Inputs carry only producers that succeeded.
    assert rule.inputs(2, [Done("failure", "h"), Done("success", "p"), Done(WAITING)]) == {"px": "p"}
    assert rule.inputs(2, [Done("success", "h"), Done("success", None), Done(WAITING)]) == {"px": None, "hol": "h"}


def test_a_step_being_retried_keeps_its_consumers_waiting() -> None:
    rule = order(step("a", outputs="a"), step("b", "a"))
    # A failed attempt with retries left leaves the step "pending" (open), not ended.
    assert rule.advance(["pending", WAITING], [0]) == ([], [])
    assert rule.advance(["success", WAITING], [0]) == ([1], [])


def test_steps_already_sent_or_ended_are_not_moved_again() -> None:
    rule = order(step("a", outputs="a"), step("b", "a"), step("c", "a"))
    assert rule.advance(["success", "sent", WAITING], [0]) == ([2], [])
    assert rule.advance(["failure", "failure", WAITING], [0]) == ([], [(2, 0)])
