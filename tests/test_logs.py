"""LOG_FORMAT=json and the absence of periodic INFO noise, on a real `run.py`; the
instance name on every line in cluster mode."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.test_process import ServerProcess
from tornado_sched.logs import configure_logging

pytestmark = pytest.mark.slow


async def test_json_log_lines_from_a_real_server(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "site", {"LOG_FORMAT": "json", "METRICS_TOKEN": "scrape-token-12345"})
    await server.start()
    http = AsyncHTTPClient()
    base = f"http://127.0.0.1:{server.port}"
    # What health checks and Prometheus ask all day long, then a page and a refusal.
    for _ in range(3):
        await http.fetch(f"{base}/health")
        await http.fetch(f"{base}/ready")
        await http.fetch(f"{base}/metrics", headers={"Authorization": "Bearer scrape-token-12345"})
    await http.fetch(f"{base}/openapi.json")
    assert (await http.fetch(f"{base}/metrics", raise_error=False)).code == 401
    assert await server.stop() == 0
    lines = (tmp_path / "site" / "logs" / "tornado_sched.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert entries[0]["time"].endswith("+00:00")
    assert sum("listening on" in e["message"] for e in entries) == 1
    access = [(e["level"], e["message"].split()[2]) for e in entries if e["logger"] == "tornado.access"]
    assert access == [("INFO", "/openapi.json"), ("WARNING", "/metrics")], access
    console = [line for line in server.output if line.startswith("{")]
    assert console and all(json.loads(line)["message"] for line in console)


def test_apscheduler_job_lines_are_debug_only(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", tmp_path)
        logging.getLogger("apscheduler.executors.default").info('Running job "scheduler liveness mark"')
        logging.getLogger("apscheduler.executors.default").warning("Run time of job was missed")
        for handler in root.handlers:
            handler.flush()
        text = (tmp_path / "tornado_sched.log").read_text()
        assert "liveness" not in text and "was missed" in text
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("apscheduler.executors").setLevel(logging.NOTSET)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_line_names_the_instance_in_a_cluster(tmp_path: Path, log_format: str) -> None:
    """Merged logs of several instances (compose, a shipper) say which wrote each line;
    one process keeps the seed's format."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        lines: dict[str, list[str]] = {}
        for instance in ("api-1%s", ""):
            directory = tmp_path / (instance or "single")
            configure_logging("INFO", directory, log_format, instance)
            logging.getLogger("tornado_sched.test").warning("hello %s", "there")
            for handler in root.handlers:
                handler.flush()
            lines[instance] = (directory / "tornado_sched.log").read_text().splitlines()
        if log_format == "json":
            assert json.loads(lines["api-1%s"][0])["instance"] == "api-1%s"
            assert "instance" not in json.loads(lines[""][0])
        else:
            assert lines["api-1%s"][0].endswith(" WARNING api-1%s [tornado_sched.test] hello there")
            assert lines[""][0].endswith(" WARNING [tornado_sched.test] hello there")
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("apscheduler.executors").setLevel(logging.NOTSET)
