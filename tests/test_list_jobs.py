"""`run.py list-jobs` (the seed's scheduled-jobs listing) agrees with the jobs the
running server had: same ids, same next run times (UTC); disabled workflows absent."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import basic_auth
from tests.test_process import ROOT, ServerProcess

pytestmark = pytest.mark.slow


async def test_list_jobs_matches_the_servers_jobs(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "site", {"ADMIN_PASSWORD": "list-jobs-pw-1"})
    await server.start()
    http = AsyncHTTPClient()
    base = f"http://127.0.0.1:{server.port}"
    auth = {"Authorization": basic_auth("admin", "list-jobs-pw-1"), "Content-Type": "application/json"}
    try:
        registered = await http.fetch(f"{base}/module/register?name=lister", headers=auth)
        module_hash = json.loads(registered.body)["result"]["hash"]
        ids = {}
        for name, enable in (("每日", True), ("草稿", False)):
            body = {"name": name, "enable": enable, "execute_cron_list": ["30 9 * * 1-5"], "timezone": "Asia/Shanghai",
                    "execute_modules": [{"module_hash": module_hash, "args": {}}]}
            response = await http.fetch(f"{base}/workflow/create", method="POST", body=json.dumps(body), headers=auth)
            ids[name] = json.loads(response.body)["result"]["workflow_id"]
        jobs = json.loads((await http.fetch(f"{base}/scheduler/jobs", headers=auth)).body)["result"]
        expected = {j["id"]: j["next_run_time"] for j in jobs if j["workflow_id"] is not None}
        # The running server owns the embedded document store: one line pointing at REST.
        busy = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "run.py"), "list-jobs", cwd=server.workdir, env=server.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(busy.communicate(), 30)
        assert busy.returncode == 1 and out == b"", (out, err)
        assert len(err.splitlines()) == 1 and b"GET /scheduler/jobs" in err, err
    finally:
        assert await server.stop() == 0
    assert list(expected) == [f"workflow-{ids['每日']}"]

    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "run.py"), "list-jobs", cwd=server.workdir, env=server.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    lines = out.decode().strip().splitlines()
    assert lines[0].split("\t")[:4] == ["job_id", "workflow_id", "name", "next_run_time"]
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert set(rows) == set(expected), lines
    for job_id, row in rows.items():
        assert row[3] == expected[job_id] and row[3].endswith("+00:00"), (row, expected)
        assert row[2] == "每日" and "30 9 * * 1-5" in row[4]
