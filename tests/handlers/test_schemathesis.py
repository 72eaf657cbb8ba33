"""Schemathesis against a live server (a real `run.py` child process): bounded,
deterministic generation from /openapi.json; no 5xx, and every status, content type,
header and body conforms to the document.

Not checked: positive_data_acceptance / negative_data_rejection. Some rules are
semantic (input_data must be JSON text of a list, an enabled workflow needs crontab
lines, a module hash must exist) and a schema cannot say them all; those answers are
documented 400s, which status_code_conformance does check.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from tests.test_process import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance")


async def test_schemathesis_finds_no_5xx_and_no_nonconformance(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "site", {"ADMIN_PASSWORD": "schemathesis-pw-1"})
    server.env.pop("REGISTRATION_TOKEN", None)
    await server.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "schemathesis"), "run",
            f"http://127.0.0.1:{server.port}/openapi.json", "--auth", "admin:schemathesis-pw-1",
            "--max-examples", "10", "--checks", CHECKS, "--phases", "examples,coverage,fuzzing",
            "--generation-deterministic", "--workers", "1", "--no-color", "--request-timeout", "20",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 280)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-6000:]
        tested = re.search(r"Tested: (\d+)", text)
        assert tested and int(tested.group(1)) >= 25, text[-2000:]  # every operation was exercised
        assert not any(" 500 " in line or "[500]" in line for line in text.splitlines())
    finally:
        assert await server.stop() == 0
    assert "Traceback" not in "".join(server.output)
