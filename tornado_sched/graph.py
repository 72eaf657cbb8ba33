"""A data plan laid out for drawing: the dashboard renders it as an inline SVG
(server-side, no script or CDN needed to see it; live.js only recolours nodes).

Pure geometry: stages are columns left to right, a stage's steps stacked in it; an
edge runs from the producer's right side to the consumer's left side.
"""

from __future__ import annotations

from dataclasses import dataclass

from .solver import Plan

NODE_WIDTH = 150
NODE_HEIGHT = 34
COLUMN_GAP = 56
ROW_GAP = 14
MARGIN = 8
LABEL_CHARS = 20
# Past this many steps a drawing stops being readable (and the page stops being
# small); the steps table still lists every step.
MAX_GRAPH_STEPS = 200


@dataclass(frozen=True)
class GraphNode:
    """One step's box: top-left corner, its (shortened) label."""

    step: int
    x: int
    y: int
    label: str
    title: str


@dataclass(frozen=True)
class GraphEdge:
    """One producer -> consumer link, as an SVG path, with the data names it carries."""

    producer: int
    consumer: int
    path: str
    data: str
    optional: bool


@dataclass(frozen=True)
class PlanGraph:
    """A laid-out plan: the SVG's size, its nodes and edges."""

    width: int
    height: int
    node_width: int
    node_height: int
    nodes: list[GraphNode]
    edges: list[GraphEdge]


def layout(plan: Plan) -> PlanGraph | None:
    """The plan's drawing; None when it has conflicts (no order to draw) or is too big."""
    count = len(plan.names)
    if not plan.ok or count == 0 or count > MAX_GRAPH_STEPS:
        return None
    where: dict[int, tuple[int, int]] = {}
    nodes: list[GraphNode] = []
    for column, stage in enumerate(plan.stages):
        for row, step in enumerate(stage):
            x = MARGIN + column * (NODE_WIDTH + COLUMN_GAP)
            y = MARGIN + row * (NODE_HEIGHT + ROW_GAP)
            where[step] = (x, y)
            name = plan.names[step]
            label = f"{step + 1}. {name}"
            if len(label) > LABEL_CHARS:
                label = label[: LABEL_CHARS - 1] + "…"
            nodes.append(GraphNode(step, x, y, label, f"{step + 1}. {name}"))
    carried: dict[tuple[int, int], list[str]] = {}
    optional: dict[tuple[int, int], bool] = {}
    for edge in plan.edges:
        key = (edge.producer, edge.consumer)
        carried.setdefault(key, []).append(edge.data)
        optional[key] = optional.get(key, True) and edge.optional
    edges = []
    for (producer, consumer), names in carried.items():
        x1, y1 = where[producer]
        x2, y2 = where[consumer]
        x1, y1, y2 = x1 + NODE_WIDTH, y1 + NODE_HEIGHT // 2, y2 + NODE_HEIGHT // 2
        bend = (x2 - x1) // 2
        path = f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
        edges.append(GraphEdge(producer, consumer, path, ", ".join(names), optional[(producer, consumer)]))
    columns = len(plan.stages)
    rows = max(len(stage) for stage in plan.stages)
    return PlanGraph(
        width=2 * MARGIN + columns * NODE_WIDTH + (columns - 1) * COLUMN_GAP,
        height=2 * MARGIN + rows * NODE_HEIGHT + (rows - 1) * ROW_GAP,
        node_width=NODE_WIDTH,
        node_height=NODE_HEIGHT,
        nodes=nodes,
        edges=edges,
    )
