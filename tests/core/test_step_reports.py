"""StepReports: progress and log reports crossing cluster instances are merged per key
and sent as one batch per interval, bounded."""

from __future__ import annotations

import asyncio
from typing import Any

from tornado_sched.cluster_wiring import StepReports
from tornado_sched.run_state import LOG_LINE_CHARS, LOG_TAIL_LINES


async def test_reports_are_merged_and_sent_once_per_interval() -> None:
    sent: list[list[dict[str, Any]]] = []
    reports = StepReports(sent.append, interval=0.05)
    base = {"run_id": "r1", "hash": "h1"}
    for n in range(100):
        assert reports.add(("r1", "h1"), base, [f"line {n}"], {"percent": n, "message": None})
    assert reports.add(("r2", "h1"), {"run_id": "r2", "hash": "h1"}, ["other"])
    assert sent == []  # nothing before the interval
    await asyncio.sleep(0.2)
    assert len(sent) == 1
    first, second = sent[0]
    assert first["progress"] == {"percent": 99, "message": None}
    assert first["lines"] == [f"line {n}" for n in range(100)] and first["run_id"] == "r1"
    assert second == {"run_id": "r2", "hash": "h1", "lines": ["other"]}  # no progress frame: no progress


async def test_reports_are_bounded() -> None:
    sent: list[list[dict[str, Any]]] = []
    reports = StepReports(sent.append, interval=60, limit=2)
    long = "x" * (LOG_LINE_CHARS + 10)
    assert reports.add(("r", 1), {}, [long] * (LOG_TAIL_LINES + 5))
    assert reports.add(("r", 2), {}, ["b"])
    assert not reports.add(("r", 3), {}, ["c"])  # a third key waits nowhere
    assert reports.dropped == 1
    taken = reports.take(("r", 1))
    assert taken is not None and len(taken["lines"]) == LOG_TAIL_LINES
    assert all(len(line) == LOG_LINE_CHARS for line in taken["lines"])
    reports.flush()
    assert sent == [[{"lines": ["b"]}]]
    reports.close()
