"""Event kinds are written once, in tornado_sched/events.py: a publisher or listener
that spells a kind as a bare string keeps working until the kind is renamed, then
silently hears nothing. Also the bus itself: every listener hears every event, and
a listener that fails does not stop the others."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from tornado_sched import events
from tornado_sched.events import RUN_FINISHED, EventBus

ROOT = Path(__file__).resolve().parents[2]
KINDS = {value for name, value in vars(events).items() if name.isupper() and isinstance(value, str)}


def test_no_module_spells_an_event_kind_as_a_string() -> None:
    assert {"run.finished", "module.offline", "workflow.saved"} <= KINDS
    spelled = []
    for path in sorted([*(ROOT / "tornado_sched").rglob("*.py"), *(ROOT / "handlers").rglob("*.py")]):
        if path == ROOT / "tornado_sched" / "events.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in KINDS:
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not spelled, "use the constant from tornado_sched/events.py: " + ", ".join(spelled)


def test_every_listener_hears_an_event_even_after_one_fails() -> None:
    bus = EventBus()
    heard: list[tuple[str, Any]] = []

    def failing(kind: str, data: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    bus.subscribe(failing)
    unsubscribe = bus.subscribe(lambda kind, data: heard.append((kind, data["n"])))
    bus.publish(RUN_FINISHED, {"n": 1})
    unsubscribe()
    bus.publish(RUN_FINISHED, {"n": 2})
    assert heard == [(RUN_FINISHED, 1)]
