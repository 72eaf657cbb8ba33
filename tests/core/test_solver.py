"""The data requirement solver and model: pure functions, checked on hand-built graphs
(chains, diamonds, fan-in/out, cycles, ambiguous producers, optional inputs) and on
generated 1,000-module graphs against graphlib's independent topological order."""

from __future__ import annotations

import graphlib
import random

import pytest

from tornado_sched.errors import Invalid
from tornado_sched.requirements import (
    DataRequirement,
    parse_requirement_list,
    requirements_from_docs,
)
from tornado_sched.solver import Plan, StepRequirements, solve


def step(name: str, needs: str = "", makes: str = "", optional: str = "") -> StepRequirements:
    """A step from space-separated data names; `optional` names are optional inputs."""
    inputs = [DataRequirement(n) for n in needs.split()] + [DataRequirement(n, optional=True) for n in optional.split()]
    return StepRequirements(name, inputs, [DataRequirement(n) for n in makes.split()])


def edge_set(plan: Plan) -> set[tuple[int, int, str]]:
    return {(e.producer, e.consumer, e.data) for e in plan.edges}


def assert_layered(plan: Plan) -> None:
    """Every edge goes from an earlier stage to a later one; every step is placed once."""
    stage_of = {s: i for i, stage in enumerate(plan.stages) for s in stage}
    assert sum(len(stage) for stage in plan.stages) == len(stage_of)
    for e in plan.edges:
        assert stage_of[e.producer] < stage_of[e.consumer], e
    # Layers are tight: a step sits right after its latest producer.
    for s, stage in stage_of.items():
        expected = 1 + max((stage_of[p] for p in plan.upstream[s]), default=-1)
        assert stage == expected, (s, stage, expected)


# -- shapes --------------------------------------------------------------------------
def test_chain_in_any_listed_order() -> None:
    # Listed backwards: order in execute_modules does not matter, data does.
    plan = solve([
        step("publish", needs="forecast"),
        step("models", needs="features", makes="forecast"),
        step("features", needs="prices", makes="features"),
        step("fetch", makes="prices"),
    ])
    assert plan.ok and plan.unresolved == []
    assert plan.stages == [[3], [2], [1], [0]]
    assert edge_set(plan) == {(3, 2, "prices"), (2, 1, "features"), (1, 0, "forecast")}
    assert plan.upstream == [[1], [2], [3], []]
    assert plan.downstream == [[], [0], [1], [2]]
    assert plan.external_inputs == [] and plan.warnings() == []
    assert_layered(plan)


def test_diamond() -> None:
    plan = solve([
        step("fetch", makes="prices"),
        step("left", needs="prices", makes="a"),
        step("right", needs="prices", makes="b"),
        step("join", needs="a b"),
    ])
    assert plan.ok
    assert plan.stages == [[0], [1, 2], [3]]
    assert plan.upstream[3] == [1, 2] and plan.downstream[0] == [1, 2]
    assert_layered(plan)


def test_fan_out_and_fan_in_with_independent_steps() -> None:
    plan = solve([
        step("source", makes="x y z"),
        step("cx", needs="x", makes="rx"),
        step("cy", needs="y", makes="ry"),
        step("cz", needs="z", makes="rz"),
        step("sink", needs="rx ry rz"),
        step("loner"),  # no requirements: first stage, like the seed's parallel send
    ])
    assert plan.ok
    assert plan.stages == [[0, 5], [1, 2, 3], [4]]
    assert plan.downstream[0] == [1, 2, 3] and plan.upstream[4] == [1, 2, 3]
    assert len(plan.edges) == 6
    assert_layered(plan)


def test_one_producer_feeding_several_names_is_one_dependency() -> None:
    plan = solve([step("p", makes="a b"), step("c", needs="a b")])
    assert edge_set(plan) == {(0, 1, "a"), (0, 1, "b")}
    assert plan.upstream == [[], [0]] and plan.downstream == [[1], []]
    assert plan.stages == [[0], [1]]


def test_empty_and_requirement_free_workflows_are_one_stage() -> None:
    assert solve([]).stages == []
    plan = solve([step("a"), step("b"), step("c")])
    assert plan.stages == [[0, 1, 2]] and plan.edges == [] and plan.ok


# -- external inputs -----------------------------------------------------------------
def test_external_inputs_required_ones_warn_optional_ones_are_flagged() -> None:
    plan = solve([
        step("fetch", needs="calendar", makes="prices"),
        step("model", needs="prices", optional="holidays"),
    ])
    assert plan.ok and plan.stages == [[0], [1]]
    assert [(e.step, e.data, e.optional) for e in plan.external_inputs] == [
        (0, "calendar", False), (1, "holidays", True)
    ]
    warnings = plan.warnings()
    assert len(warnings) == 1 and "fetch (step 0)" in warnings[0] and "'calendar'" in warnings[0]


def test_optional_input_with_a_producer_still_orders_and_is_marked() -> None:
    plan = solve([step("enrich", makes="extra"), step("model", optional="extra")])
    assert plan.stages == [[0], [1]]
    assert [(e.producer, e.consumer, e.optional) for e in plan.edges] == [(0, 1, True)]
    assert plan.external_inputs == []


def test_a_step_never_feeds_itself() -> None:
    # An incremental module reads back what it wrote last time: that is external.
    plan = solve([step("state", needs="cache", makes="cache")])
    assert plan.ok and plan.stages == [[0]] and plan.edges == []
    assert [(e.step, e.data) for e in plan.external_inputs] == [(0, "cache")]


# -- conflicts -----------------------------------------------------------------------
def test_two_producers_of_a_consumed_name_are_a_conflict_naming_both() -> None:
    plan = solve([
        step("fetch_a", makes="prices"),
        step("fetch_b", makes="prices"),
        step("model", needs="prices"),
    ])
    assert not plan.ok
    [conflict] = plan.conflicts
    assert conflict.kind == "duplicate_producer" and conflict.steps == (0, 1) and conflict.data == ("prices",)
    assert "fetch_a (step 0)" in conflict.message and "fetch_b (step 1)" in conflict.message
    assert "model (step 2)" in conflict.message
    # The consumer still waits for every candidate, so the stages stay meaningful.
    assert plan.stages == [[0, 1], [2]]


def test_the_same_module_twice_is_two_producers() -> None:
    plan = solve([step("fetch", makes="prices"), step("fetch", makes="prices"), step("m", needs="prices")])
    assert [c.kind for c in plan.conflicts] == ["duplicate_producer"]
    assert plan.conflicts[0].steps == (0, 1)


def test_two_producers_of_an_unconsumed_name_are_fine() -> None:
    # The seed's parallel use: one module listed twice with other args, nobody reads it.
    plan = solve([step("fetch", makes="prices"), step("fetch", makes="prices")])
    assert plan.ok and plan.stages == [[0, 1]]


def test_cycle_is_named_module_by_module_and_blocks_its_downstream() -> None:
    plan = solve([
        step("start", makes="seed"),
        step("a", needs="seed z", makes="x"),
        step("b", needs="x", makes="y"),
        step("c", needs="y", makes="z"),
        step("after", needs="z"),
        step("free", needs="seed"),
    ])
    assert not plan.ok
    [conflict] = plan.conflicts
    assert conflict.kind == "cycle"
    assert conflict.steps == (1, 2, 3) and conflict.data == ("x", "y", "z")
    assert conflict.message == "cycle: a (step 1) -[x]-> b (step 2) -[y]-> c (step 3) -[z]-> a (step 1)"
    assert plan.stages == [[0], [5]]
    assert plan.unresolved == [1, 2, 3, 4]


def test_two_step_cycle_and_two_separate_cycles() -> None:
    plan = solve([step("p", needs="b", makes="a"), step("q", needs="a", makes="b")])
    assert [(c.kind, c.steps) for c in plan.conflicts] == [("cycle", (0, 1))]
    assert plan.stages == [] and plan.unresolved == [0, 1]

    plan = solve([
        step("a1", needs="a2", makes="a1"), step("a2", needs="a1", makes="a2"),
        step("b1", needs="b3", makes="b1"), step("b2", needs="b1", makes="b2"), step("b3", needs="b2", makes="b3"),
    ])
    assert [c.steps for c in plan.conflicts] == [(0, 1), (2, 3, 4)]


def test_cycle_reported_is_a_real_shortest_cycle_inside_a_tangle() -> None:
    # 0 -> 1 -> 2 -> 0 and 1 -> 3 -> 0: one component, the cycle through 0 is 0,1,2 or 0,1,3.
    plan = solve([
        step("n0", needs="e20 e30", makes="e01"),
        step("n1", needs="e01", makes="e12 e13"),
        step("n2", needs="e12", makes="e20"),
        step("n3", needs="e13", makes="e30"),
    ])
    [conflict] = plan.conflicts
    assert conflict.steps[0] == 0 and len(conflict.steps) == 3
    edges = edge_set(plan)
    cycle = conflict.steps
    for i, s in enumerate(cycle):
        assert (s, cycle[(i + 1) % 3], conflict.data[i]) in edges


def test_duplicate_names_within_one_step_count_once() -> None:
    plan = solve([
        StepRequirements("p", outputs=[DataRequirement("a"), DataRequirement("a")]),
        StepRequirements("c", inputs=[DataRequirement("a"), DataRequirement("a")]),
    ])
    assert plan.ok and [(e.producer, e.consumer) for e in plan.edges] == [(0, 1)]


# -- large graphs --------------------------------------------------------------------
def random_dag(count: int, seed: int, fan_in: int = 3) -> list[StepRequirements]:
    """Step i makes d{i}; it needs up to `fan_in` outputs of earlier steps, plus an
    external input now and then; then the list is shuffled."""
    rng = random.Random(seed)
    steps = []
    for i in range(count):
        needs = {f"d{rng.randrange(i)}" for _ in range(rng.randint(0, fan_in))} if i else set()
        if rng.random() < 0.05:
            needs.add(f"ext{i}")
        steps.append(step(f"m{i}", needs=" ".join(sorted(needs)), makes=f"d{i}"))
    rng.shuffle(steps)
    return steps


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_1000_module_dag_matches_graphlib(seed: int) -> None:
    steps = random_dag(1000, seed)
    plan = solve(steps)
    assert plan.ok and plan.unresolved == []
    assert_layered(plan)
    # Independently: graphlib's ready-sets over the same producer relation give the same layers.
    producer = {o.name: i for i, s in enumerate(steps) for o in s.outputs}
    graph = {i: {producer[r.name] for r in s.inputs if r.name in producer} for i, s in enumerate(steps)}
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    layers = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        layers.append(ready)
        sorter.done(*ready)
    assert plan.stages == layers
    assert {(e.step, e.data) for e in plan.external_inputs} == {
        (i, r.name) for i, s in enumerate(steps) for r in s.inputs if r.name not in producer
    }


def test_1000_module_chain_closed_into_a_cycle() -> None:
    # The deepest case for the iterative cycle search (recursion would overflow).
    count = 1000
    steps = [step(f"m{i}", needs=f"d{(i - 1) % count}", makes=f"d{i}") for i in range(count)]
    plan = solve(steps)
    [conflict] = plan.conflicts
    assert conflict.kind == "cycle" and conflict.steps == tuple(range(count))
    assert plan.stages == [] and len(plan.unresolved) == count
    # Opened again, it is a 1,000-stage chain.
    steps[0] = step("m0", makes="d0")
    plan = solve(steps)
    assert plan.ok and plan.stages == [[i] for i in range(count)]


def test_5000_module_dag_with_one_injected_cycle() -> None:
    steps = random_dag(5000, 7)
    names = {s.outputs[0].name: i for i, s in enumerate(steps)}
    # d10 and d4000 now need each other's output: the only cycle in an otherwise acyclic graph.
    a, b = names["d10"], names["d4000"]
    steps[a] = StepRequirements(steps[a].name, [*steps[a].inputs, DataRequirement("d4000")], steps[a].outputs)
    steps[b] = StepRequirements(steps[b].name, [*steps[b].inputs, DataRequirement("d10")], steps[b].outputs)
    plan = solve(steps)
    cycles = [c for c in plan.conflicts if c.kind == "cycle"]
    assert len(cycles) == 1 and set(cycles[0].steps) >= {a, b}
    assert a in plan.unresolved and b in plan.unresolved
    placed = {s for stage in plan.stages for s in stage}
    assert placed.isdisjoint(plan.unresolved) and len(placed) + len(plan.unresolved) == 5000


# -- the model -----------------------------------------------------------------------
def test_requirement_details_are_typed_and_round_trip() -> None:
    raw = [
        {"name": "prices", "fields": ["open", "close"], "frequency": "1d", "source": "db.prices",
         "optional": True, "description": "daily bars", "type": "table"},
        {"name": "trade_date"},
    ]
    parsed = parse_requirement_list("input_data", raw)
    assert parsed[0] == DataRequirement("prices", ("open", "close"), "1d", "db.prices", True, "daily bars")
    assert parsed[0].extra == {"type": "table"}
    assert [r.to_doc() for r in parsed] == raw
    assert parse_requirement_list("input_data", '[{"name": "x"}]') == [DataRequirement("x")]
    assert parse_requirement_list("input_data", "") == [] and parse_requirement_list("input_data", None) == []


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ([{"name": "x", "optional": "yes"}], "input_data[0].optional"),
        ([{"name": "x", "fields": "close"}], "input_data[0].fields"),
        ([{"name": "x", "fields": ["close", 3]}], "input_data[0].fields[1]"),
        ([{"name": "x", "frequency": 5}], "input_data[0].frequency"),
        ([{"name": "x", "source": ["a"]}], "input_data[0].source"),
        ([{"name": "x", "description": {"a": 1}}], "input_data[0].description"),
        ([{"name": "x"}, {"name": "x"}], "input_data[1].name"),
        ([{"name": "x", "meta": {"$gt": 1}}], "input_data[0]"),
        ([{"name": "  "}], "input_data[0]"),
        ([{"name": "x" * 201}], "input_data[0].name"),
    ],
)
def test_bad_details_name_the_entry_and_key(raw: list[dict], names: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_requirement_list("input_data", raw)
    assert caught.value.field == "input_data"
    assert caught.value.message.startswith(names + ":"), caught.value.message


def test_stored_documents_read_leniently() -> None:
    # Registered before details were validated: wrong types are ignored, not fatal.
    stored = [{"name": "a", "optional": "yes", "fields": "x"}, {"nope": 1}, "junk", {"name": "a"}, {"name": "b", "optional": True}]
    assert requirements_from_docs(stored) == (DataRequirement("a"), DataRequirement("b", optional=True))
    assert requirements_from_docs(None) == ()
