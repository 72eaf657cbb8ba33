"""Cost of the data-ordered dispatch rule over a whole run, for 10 / 100 / 1,000 /
5,000-step workflows, beside a bare baseline in the same run: graphlib's
TopologicalSorter walking the same edges (prepare, get_ready, done) with no states,
no blocking rule and no inputs.

Ours replays a run the way RunTracker drives it: send the first stage, then for each
step in turn mark it success, call `DataOrder.advance` and build `meta.inputs`
(`DataOrder.inputs`) for every step it makes ready. "fail" rows fail the step with
the most consumers first, so the block travels through the graph in one call.
Workflows as in bench_solver (step i makes d{i}, needs up to 3 earlier outputs).
Medians of --repeats runs (default 15), GC off while timing.

    .venv/bin/python bench/bench_data_order.py [--repeats N]
"""

from __future__ import annotations

import argparse
import graphlib
import platform
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_solver import SIZES, edges_of, median_ms, random_workflow  # noqa: E402
from tornado_sched.dataorder import WAITING, DataOrder  # noqa: E402
from tornado_sched.solver import solve  # noqa: E402


@dataclass
class Outcome:
    status: str
    output: Any = None


def replay(rule: DataOrder, count: int, fail: int | None = None) -> int:
    """A whole run through the rule; returns how many steps were sent."""
    states = [WAITING] * count
    steps = [Outcome(WAITING) for _ in range(count)]
    queue = deque(rule.first())
    for index in queue:
        states[index] = "sent"
    sent = len(queue)
    while queue:
        index = queue.popleft()
        states[index] = "failure" if index == fail else "success"
        steps[index].status, steps[index].output = states[index], {"rows": index}
        ready, blocked = rule.advance(states, [index])
        for step, _cause in blocked:
            states[step] = "upstream_failed"
        for step in ready:
            rule.inputs(step, steps)
            states[step] = "sent"
            queue.append(step)
        sent += len(ready)
    return sent


def bare(graph: dict[int, set[int]]) -> int:
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    done = 0
    while sorter.is_active():
        for node in sorter.get_ready():
            sorter.done(node)
            done += 1
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"# bench_data_order  python {platform.python_version()}  repeats={args.repeats} (medians)")
    print(f"{'steps':>6} {'case':>5} {'edges':>6} {'sent':>6} {'rule ms':>9} {'us/step':>8} "
          f"{'graphlib ms':>12} {'ratio':>6}")
    for size in SIZES:
        steps = random_workflow(size, seed=size)
        plan = solve(steps)
        rule = DataOrder.from_plan(plan)
        graph = edges_of(steps)
        hub = max(range(size), key=lambda i: len(plan.downstream[i]))
        for case, fail in (("ok", None), ("fail", hub)):
            sent = replay(rule, size, fail)
            ours = median_ms(lambda r=rule, n=size, f=fail: replay(r, n, f), args.repeats)
            base = median_ms(lambda g=graph: bare(g), args.repeats)
            print(f"{size:>6} {case:>5} {len(plan.edges):>6} {sent:>6} {ours:>9.3f} {ours * 1000 / size:>8.1f} "
                  f"{base:>12.3f} {ours / base:>5.1f}x")


if __name__ == "__main__":
    main()
