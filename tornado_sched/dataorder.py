"""The dispatch rule of a data-ordered run (workflow `order: "data"`).

Pure: no I/O, no clock; the run tracker (`runs.py`) applies what it returns. Built
from the solver's `Plan` once per run. A step is *waiting* until it is sent for the
first time. A waiting step is:

- **ready** (send it now) once every producer in `plan.upstream` has ended and every
  producer that feeds at least one of its *required* inputs succeeded. A producer that
  feeds only optional inputs is waited for (its output is worth having) but its
  failure does not block: the input is simply absent from `meta.inputs`.
- **blocked** (it ends `upstream_failed`, never sent) as soon as one producer of a
  required input ended without success (failure, timeout, offline, interrupted, or
  itself upstream_failed); the block travels down the graph in the same call.

Retries are not the rule's business: a step that is retried stays open (not ended), so
its consumers keep waiting until its last attempt decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .solver import Plan

WAITING = "waiting"
OPEN_STATES = ("pending", "sent", WAITING)
UPSTREAM_FAILED = "upstream_failed"


class StepOutcome(Protocol):
    """What `DataOrder.inputs` reads of a step (run_state.Step has it)."""

    status: str
    output: Any


@dataclass(frozen=True)
class DataOrder:
    """A data-ordered run's graph: for each step its producers, its consumers, the
    producers it cannot run without, and which data name each producer feeds it."""

    upstream: list[list[int]]
    downstream: list[list[int]]
    required: list[frozenset[int]]
    feeds: list[list[tuple[int, str]]]  # consumer -> [(producer, data name)]

    @classmethod
    def from_plan(cls, plan: Plan) -> DataOrder:
        count = len(plan.names)
        required: list[set[int]] = [set() for _ in range(count)]
        feeds: list[list[tuple[int, str]]] = [[] for _ in range(count)]
        for edge in plan.edges:
            feeds[edge.consumer].append((edge.producer, edge.data))
            if not edge.optional:
                required[edge.consumer].add(edge.producer)
        return cls(
            upstream=[list(u) for u in plan.upstream],
            downstream=[list(d) for d in plan.downstream],
            required=[frozenset(r) for r in required],
            feeds=feeds,
        )

    def first(self) -> list[int]:
        """Steps to send when the run starts: those with no producer in the workflow."""
        return [i for i, producers in enumerate(self.upstream) if not producers]

    def advance(self, states: Sequence[str], ended: Iterable[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """After the steps in `ended` reached a final state: (steps now ready, in index
        order; [(blocked step, the producer that blocked it)], in the order found).
        `states[i]` is "waiting" for a step never sent, else its status; blocked steps
        count as ended (upstream_failed) for the steps behind them."""
        # Steps blocked in this call, over `states`: no copy, so one call costs the
        # edges it walks, not the size of the run.
        overlay: dict[int, str] = {}

        def state(index: int) -> str:
            return overlay.get(index) or states[index]

        blocked: list[tuple[int, int]] = []
        candidates: set[int] = set()
        work = list(ended)
        while work:
            producer = work.pop()
            if state(producer) in OPEN_STATES:
                continue
            failed = state(producer) != "success"
            for consumer in self.downstream[producer]:
                if state(consumer) != WAITING:
                    continue
                if failed and producer in self.required[consumer]:
                    overlay[consumer] = UPSTREAM_FAILED
                    blocked.append((consumer, producer))
                    candidates.discard(consumer)
                    work.append(consumer)
                else:
                    candidates.add(consumer)
        ready = [
            step for step in sorted(candidates)
            if state(step) == WAITING and all(state(p) not in OPEN_STATES for p in self.upstream[step])
        ]
        return ready, blocked

    def inputs(self, step: int, steps: Sequence[StepOutcome]) -> dict[str, Any]:
        """`meta.inputs` for `step`: data name -> its producer's output, for every
        producer that succeeded (None when the producer sent no output). Reads only
        the step's producers: sending one step costs its in-degree, not the run's size."""
        return {
            data: steps[producer].output for producer, data in self.feeds[step]
            if steps[producer].status == "success"
        }
