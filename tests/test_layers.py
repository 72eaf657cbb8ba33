"""The layering docs/architecture.md describes, checked on the source: the core never
imports Tornado's server side, handlers never import a store driver (outages reach
them as the core's `Unavailable`), never keep the schedule in step by hand and never
touch the document store; and no handler module grows past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE_DRIVERS = {"pymongo", "bson", "motor", "gridfs", "sqlalchemy", "aiomysql", "pymysql", "aiosqlite",
                 "redis", "apscheduler"}
HANDLER_MODULE_MAX_LINES = 420  # "~400": a module past this wants splitting along a seam


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_the_core_never_imports_tornados_server_side() -> None:
    offending = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path) if n.split(".")[:2] == ["tornado", "web"])
        for path in _modules("tornado_sched")
    }
    assert not {k: v for k, v in offending.items() if v}


def test_handlers_import_no_store_driver_and_keep_no_schedule_by_hand() -> None:
    problems = []
    for path in _modules("handlers"):
        drivers = sorted(n for n in _imports(path) if n.split(".")[0] in STORE_DRIVERS)
        if drivers:
            problems.append(f"{path.relative_to(ROOT)} imports {drivers}")
        text = path.read_text()
        problems += [f"{path.relative_to(ROOT)} uses {word}" for word in ("scheduler.sync", "ctx.docs") if word in text]
    assert not problems


def test_no_handler_module_is_over_about_400_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules("handlers")}
    assert not {k: n for k, n in sizes.items() if n > HANDLER_MODULE_MAX_LINES}
