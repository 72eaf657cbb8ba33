"""The data requirement solver: which step's outputs feed which step's inputs.

Pure and synchronous: no I/O, no clock. Input is a workflow's steps in order (a
step is one entry of `execute_modules`; the same module may appear twice with other
args, so nodes are step indexes, not modules). Each input is matched by name to the
output of another step of the same workflow; a step's own outputs never feed its
own inputs (a module that reads back what it wrote last time reads it from outside).

The result (`Plan`):
- `edges`: producer step -> consumer step, one per data name;
- `stages`: topological layers; every producer of a step is in an earlier stage, so
  a stage can start once the previous ones have succeeded;
- `external_inputs`: inputs no step produces (they must come from outside; optional
  ones are flagged, and only required ones are warnings);
- `conflicts`: a consumed name with two or more producers (which one feeds it is
  ambiguous), and cycles, each named step by step. Steps on or behind a cycle are in
  `unresolved`, not in a stage.

Linear in steps + requirements (Kahn's layering, Tarjan's components only for what
Kahn cannot place).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .requirements import DataRequirement


@dataclass(frozen=True)
class StepRequirements:
    """One step of a workflow as the solver sees it: a label and its data requirements."""

    name: str
    inputs: Sequence[DataRequirement] = ()
    outputs: Sequence[DataRequirement] = ()


@dataclass(frozen=True, slots=True)
class Edge:
    """`producer`'s output `data` feeds `consumer` (step indexes)."""

    producer: int
    consumer: int
    data: str
    optional: bool = False  # the consumer declared this input optional


@dataclass(frozen=True, slots=True)
class ExternalInput:
    """An input of `step` that no other step of the workflow produces."""

    step: int
    data: str
    optional: bool


@dataclass(frozen=True)
class PlanConflict:
    """Why a workflow cannot run in data order: `kind` is "duplicate_producer" (data
    has several producers) or "cycle" (steps, in order, each feeding the next and the
    last feeding the first; data[i] flows from steps[i] to steps[i+1])."""

    kind: str
    steps: tuple[int, ...]
    data: tuple[str, ...]
    message: str


@dataclass
class Plan:
    """The solver's result for one workflow; see the module docstring."""

    names: list[str]
    stages: list[list[int]]
    edges: list[Edge]
    external_inputs: list[ExternalInput]
    conflicts: list[PlanConflict]
    unresolved: list[int]
    upstream: list[list[int]] = field(default_factory=list)  # step -> its producers
    downstream: list[list[int]] = field(default_factory=list)  # step -> its consumers

    @property
    def ok(self) -> bool:
        return not self.conflicts

    def warnings(self) -> list[str]:
        """Required inputs nothing in the workflow produces: allowed (they may come from
        outside), but worth telling the operator."""
        return [
            f"{self.label(e.step)} needs {e.data!r}, which no module in this workflow produces"
            for e in self.external_inputs
            if not e.optional
        ]

    def label(self, step: int) -> str:
        return f"{self.names[step]} (step {step})"

    def public(self) -> dict[str, Any]:
        return {
            "stages": self.stages,
            "edges": [
                {"from": e.producer, "to": e.consumer, "data": e.data, "optional": e.optional} for e in self.edges
            ],
            "external_inputs": [
                {"step": e.step, "module_name": self.names[e.step], "data": e.data, "optional": e.optional}
                for e in self.external_inputs
            ],
            "conflicts": [
                {"kind": c.kind, "steps": list(c.steps), "modules": [self.names[s] for s in c.steps],
                 "data": list(c.data), "message": c.message}
                for c in self.conflicts
            ],
            "unresolved": self.unresolved,
            "warnings": self.warnings(),
        }


def solve(steps: Sequence[StepRequirements]) -> Plan:
    """Match inputs to outputs among `steps` and layer them; see the module docstring."""
    count = len(steps)
    names = [s.name for s in steps]
    producers: dict[str, list[int]] = {}
    for index, step in enumerate(steps):
        seen: set[str] = set()
        for output in step.outputs:
            if output.name not in seen:  # a name listed twice by one step is one producer
                seen.add(output.name)
                producers.setdefault(output.name, []).append(index)

    edges: list[Edge] = []
    external: list[ExternalInput] = []
    ambiguous: dict[str, list[int]] = {}  # data -> its consumers, where several steps produce it
    upstream: list[list[int]] = [[] for _ in range(count)]
    downstream: list[list[int]] = [[] for _ in range(count)]
    for consumer, step in enumerate(steps):
        seen = set()
        feeders: set[int] = set()
        for requirement in step.inputs:
            if requirement.name in seen:
                continue
            seen.add(requirement.name)
            found = [p for p in producers.get(requirement.name, ()) if p != consumer]
            if not found:
                external.append(ExternalInput(consumer, requirement.name, requirement.optional))
                continue
            if len(found) > 1:
                ambiguous.setdefault(requirement.name, []).append(consumer)
            # Ambiguous names still order the consumer after every candidate, so the
            # stages stay meaningful while the conflict is reported.
            for producer in found:
                edges.append(Edge(producer, consumer, requirement.name, requirement.optional))
                if producer not in feeders:
                    feeders.add(producer)
                    upstream[consumer].append(producer)
                    downstream[producer].append(consumer)

    conflicts: list[PlanConflict] = []
    for data, consumers in ambiguous.items():
        found = producers[data]
        conflicts.append(PlanConflict(
            kind="duplicate_producer",
            steps=tuple(found),
            data=(data,),
            message=(
                f"{data!r} is produced by {_and(names, found)} and needed by "
                f"{_and(names, consumers)}: which one feeds it is ambiguous"
            ),
        ))

    stages, unresolved = _layers(count, upstream, downstream)
    if unresolved:
        edge_data = {(e.producer, e.consumer): e.data for e in edges}
        for cycle in _cycles(unresolved, downstream):
            data = tuple(edge_data[(cycle[i], cycle[(i + 1) % len(cycle)])] for i in range(len(cycle)))
            path = " ".join(f"{names[s]} (step {s}) -[{d}]->" for s, d in zip(cycle, data, strict=True))
            conflicts.append(PlanConflict(
                kind="cycle", steps=tuple(cycle), data=data,
                message=f"cycle: {path} {names[cycle[0]]} (step {cycle[0]})",
            ))
    for step_list in upstream:
        step_list.sort()
    for step_list in downstream:
        step_list.sort()
    return Plan(names, stages, edges, external, conflicts, unresolved, upstream, downstream)


def _and(names: list[str], steps: list[int]) -> str:
    return ", ".join(f"{names[s]} (step {s})" for s in steps)


def _layers(count: int, upstream: list[list[int]], downstream: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Kahn's algorithm by layers; steps never reaching in-degree 0 are on or behind a cycle."""
    indegree = [len(u) for u in upstream]
    layer = [i for i in range(count) if indegree[i] == 0]
    stages: list[list[int]] = []
    placed = 0
    while layer:
        stages.append(layer)
        placed += len(layer)
        following: list[int] = []
        for step in layer:
            for consumer in downstream[step]:
                indegree[consumer] -= 1
                if indegree[consumer] == 0:
                    following.append(consumer)
        following.sort()
        layer = following
    unresolved = [i for i in range(count) if indegree[i] > 0] if placed < count else []
    return stages, unresolved


def _cycles(nodes: list[int], downstream: list[list[int]]) -> list[list[int]]:
    """One concrete cycle per strongly connected component (of `nodes`) that has one,
    starting at the component's lowest step. Iterative Tarjan: 5,000 steps would
    overflow Python's recursion limit."""
    members = set(nodes)
    index_of: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    components: list[list[int]] = []
    counter = 0
    for root in nodes:
        if root in index_of:
            continue
        work = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index_of[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = downstream[node]
            advanced = False
            while position < len(targets):
                target = targets[position]
                position += 1
                if target not in members:
                    continue
                if target not in index_of:
                    work.append((node, position))
                    work.append((target, 0))
                    advanced = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index_of[target])
            if advanced:
                continue
            if low[node] == index_of[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:  # self-loops cannot occur: a step never feeds itself
                    components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    cycles = [_cycle_through(min(c), set(c), downstream) for c in components]
    return sorted(cycles, key=lambda c: c[0])


def _cycle_through(start: int, component: set[int], downstream: list[list[int]]) -> list[int]:
    """The shortest cycle through `start` inside its component (breadth-first)."""
    parent: dict[int, int] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in downstream[node]:
                if target not in component:
                    continue
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return path[::-1]
                if target not in parent:
                    parent[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError("a strongly connected component always has a cycle through each member")
