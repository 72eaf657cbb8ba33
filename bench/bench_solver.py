"""Solve time of the data requirement solver for 10 / 100 / 1,000 / 5,000-step workflows,
beside a bare baseline in the same run: graphlib.TopologicalSorter layering the same
edges (given ready-made, so the baseline does no name matching at all).

Graphs: step i makes `d{i}` and needs up to 3 outputs of earlier steps (plus, 1 in 20,
an input nothing makes); the list is shuffled. "cycle" rows add one 2-step cycle.
Each figure is the median of --repeats runs (default 15), GC off while timing.

    .venv/bin/python bench/bench_solver.py [--repeats N]
"""

from __future__ import annotations

import argparse
import gc
import graphlib
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tornado_sched.requirements import DataRequirement  # noqa: E402
from tornado_sched.solver import StepRequirements, solve  # noqa: E402

SIZES = (10, 100, 1000, 5000)


def random_workflow(count: int, seed: int, cycle: bool = False) -> list[StepRequirements]:
    rng = random.Random(seed)
    steps = []
    for i in range(count):
        needs = {f"d{rng.randrange(i)}" for _ in range(rng.randint(0, 3))} if i else set()
        if rng.random() < 0.05:
            needs.add(f"ext{i}")
        if cycle and i == 1:
            needs.add(f"d{count - 1}")
        if cycle and i == count - 1:
            needs.add("d1")
        steps.append(StepRequirements(
            f"m{i}", [DataRequirement(n) for n in sorted(needs)], [DataRequirement(f"d{i}")]
        ))
    rng.shuffle(steps)
    return steps


def edges_of(steps: list[StepRequirements]) -> dict[int, set[int]]:
    producer = {o.name: i for i, s in enumerate(steps) for o in s.outputs}
    return {i: {producer[r.name] for r in s.inputs if r.name in producer} for i, s in enumerate(steps)}


def bare_layers(graph: dict[int, set[int]]) -> int:
    """graphlib's layered order over ready-made edges; returns the number of layers."""
    sorter = graphlib.TopologicalSorter(graph)
    try:
        sorter.prepare()
    except graphlib.CycleError:
        return -1
    layers = 0
    while sorter.is_active():
        ready = sorter.get_ready()
        sorter.done(*ready)
        layers += 1
    return layers


def median_ms(fn: object, repeats: int) -> float:
    """Median wall time; the cyclic GC is off while timing (as timeit does), so a
    collection triggered by the other side's garbage does not land in this figure."""
    times = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append((time.perf_counter() - start) * 1000)
        finally:
            gc.enable()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"# bench_solver  python {platform.python_version()}  repeats={args.repeats} (medians)")
    print(f"{'steps':>6} {'case':>6} {'edges':>6} {'stages':>6} {'solve ms':>9} {'graphlib ms':>12} {'ratio':>6}")
    for size in SIZES:
        for cycle in (False, True):
            steps = random_workflow(size, seed=size, cycle=cycle)
            graph = edges_of(steps)
            plan = solve(steps)
            # Alternate which one runs first, so neither always gets the warm cache.
            if cycle:
                bare = median_ms(lambda g=graph: bare_layers(g), args.repeats)
                ours = median_ms(lambda s=steps: solve(s), args.repeats)
            else:
                ours = median_ms(lambda s=steps: solve(s), args.repeats)
                bare = median_ms(lambda g=graph: bare_layers(g), args.repeats)
            print(
                f"{size:>6} {'cycle' if cycle else 'dag':>6} {len(plan.edges):>6} {len(plan.stages):>6} "
                f"{ours:>9.3f} {bare:>12.3f} {ours / bare:>5.1f}x"
            )


if __name__ == "__main__":
    main()
