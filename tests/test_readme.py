"""The README tells the same story as the code: its settings table names exactly the
settings, its command list every subcommand, its API table every REST route, and it
never points outside the repository. The code map (docs/architecture.md) names every
module, and every path it sends a change to exists."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from handlers.app import collect_routes
from tests.conftest import RunningServer
from tests.handlers.test_openapi import _is_rest
from tornado_sched.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, title
    return match.group(1)


def test_settings_table_matches_settings() -> None:
    table = [line for line in _section("Configuration").splitlines() if line.startswith("| `")]
    documented = {name for line in table for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1])}
    settings = {f.name.upper() for f in fields(Settings)} - {"SQL_URL_OVERRIDE"}
    assert documented == settings, {"undocumented": settings - documented, "unknown": documented - settings}
    static_row = next(line for line in table if "`STATIC_ROOT`" in line)
    assert "unset" in static_row and Settings().static_root == ""


def test_operator_commands_list_every_subcommand() -> None:
    shown = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60, check=True).stdout
    subcommands = set(re.search(r"\{([a-z,-]+)\}", shown).group(1).split(","))
    assert {"serve", "expire-modules", "list-jobs", "create-token"} <= subcommands
    section = _section("Operator commands")
    for name in subcommands:
        assert f"run.py {name}" in section, name
    assert "tornado-sched <command>" in section


def test_api_table_and_dashboard_paths_cover_the_routes() -> None:
    api = _section("API")
    for pattern, handler in collect_routes():
        if not _is_rest(handler):
            continue
        literal = re.split(r"[(\\]", pattern)[0].rstrip("/") or pattern
        assert literal in api, f"{pattern} not in the README's API section"
    assert "4050" in api and "409" in api
    dashboard = _section("Dashboard")
    for path in ("/modules", "/workflows", "/scheduler", "/history", "/outbox", "/dashboard/live"):
        assert f"`{path}" in dashboard, path


def test_readme_and_docs_stay_inside_the_repository() -> None:
    deploy = [p for p in ROOT.glob("deploy/**/*") if p.is_file()]  # deploy/cluster/ too
    for path in [ROOT / "README.md", *ROOT.glob("docs/*"), *deploy, ROOT / "examples" / "README.md"]:
        text = path.read_text()
        assert "../" not in re.sub(r"context: \.\.", "", text), path
        for link in re.findall(r"\]\(([^)#]+)", text) if path.suffix == ".md" else []:
            if not link.startswith(("http://", "https://")):
                assert (path.parent / link).exists(), (path, link)


async def test_metrics_section_names_every_metric(server: RunningServer) -> None:
    response = await server.fetch("/metrics")
    assert response.code == 200
    exposed = set()
    for name, kind in re.findall(r"^# TYPE (tsched_\w+) (\w+)", response.body.decode(), re.M):
        if not name.endswith("_created"):  # prometheus_client's own companion series
            exposed.add(name if kind != "counter" or name.endswith("_total") else name + "_total")
    section = _section("Metrics")
    named = set(re.findall(r"`(tsched_\w+)", section))
    assert len(exposed) >= 14
    assert exposed <= named, sorted(exposed - named)
    assert named - exposed == {"tsched_cluster_step_reports_dropped_total"}, named - exposed  # cluster only


def test_sdk_file_list_is_what_sdk_ships() -> None:
    section = _section("Module SDK")
    listed = re.search(r"copy the files of `sdk/src/tornado_sched/`\s*\(([^)]*)\)", section)
    assert listed, "the SDK's file list is gone from the README"
    shipped = {p.name for p in (ROOT / "sdk" / "src" / "tornado_sched").iterdir() if p.suffix == ".py"}
    assert set(re.findall(r"`([\w.]+\.py)`", listed.group(1))) == shipped


ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()


def test_architecture_map_names_every_module() -> None:
    """The code map's layer block lists each module of handlers/ (and its dashboard/)
    and tornado_sched/ under its package, and nothing that does not exist."""
    block = ARCHITECTURE.split("```")[1]
    named: set[str] = set()
    root = None
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            root = {"handlers/": "handlers", "tornado_sched/": "tornado_sched"}.get(line.split()[0] if line else "")
            continue
        if root is None or indent >= 20 or line.strip() == "dashboard/":
            continue  # outside the two packages, a description's continuation, a sub-heading
        where = "handlers/dashboard" if root == "handlers" and indent >= 4 else root
        named |= {f"{where}/{name}" for name in re.findall(r"(?<![/\w])([a-z_0-9]+\.py)\b", line)}
    modules = {p.relative_to(ROOT).as_posix() for package in ("handlers", "tornado_sched")
               for p in (ROOT / package).rglob("*.py") if p.name != "__init__.py"}
    assert named == modules, {"not in the map": sorted(modules - named), "no such module": sorted(named - modules)}


def test_architecture_paths_exist() -> None:
    """Every repository path the map names in backticks (where a change goes, which
    test checks it) exists."""
    paths = set(re.findall(r"`((?:handlers|tornado_sched|tests|templates|locale|docs|deploy|static)/[\w./-]*)`",
                           ARCHITECTURE))
    assert len(paths) > 15
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing
