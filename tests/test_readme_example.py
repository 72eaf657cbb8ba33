"""The README's SDK example against the README's start command: `python run.py` with
no REGISTRATION_TOKEN, an API token from `run.py create-token`, and the example
module registering with it (Bearer) and answering an execute command."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import basic_auth
from tests.test_process import ROOT, ServerProcess

pytestmark = pytest.mark.slow


async def test_sdk_example_registers_with_an_api_token(tmp_path) -> None:  # noqa: ANN001
    server = ServerProcess(tmp_path / "site")
    server.env.pop("REGISTRATION_TOKEN", None)
    await server.start()
    module = None
    try:
        password = server.generated_password()
        assert password
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "run.py"), "create-token", "admin", "--name", "echo module",
            cwd=server.workdir, env=server.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        token = out.decode().split()[-1]  # the README reads it the same way: the last word
        assert token.startswith("tsk_")

        module = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "examples.echo_module", "--server", f"http://127.0.0.1:{server.port}",
            "--name", "echo", "--api-token", token,
            cwd=ROOT, env=server.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        http = AsyncHTTPClient()
        auth = {"Authorization": basic_auth("admin", password)}
        online: list[dict] = []
        for _ in range(100):
            response = await http.fetch(f"http://127.0.0.1:{server.port}/module/online", headers=auth)
            online = json.loads(response.body)["result"]
            if online:
                break
            await asyncio.sleep(0.1)
        assert [m["name"] for m in online] == ["echo"], online

        body = json.dumps({"name": "readme", "execute_cron_list": ["0 3 * * *"], "enable": False,
                           "execute_modules": [{"module_hash": online[0]["hash"], "args": {"hello": 1}}]})
        created = await http.fetch(f"http://127.0.0.1:{server.port}/workflow/create", method="POST",
                                   body=body, headers={**auth, "Content-Type": "application/json"})
        wid = json.loads(created.body)["result"]["workflow_id"]
        started = await http.fetch(f"http://127.0.0.1:{server.port}/workflow/{wid}/execute", method="POST",
                                   body=b"", headers=auth)
        run_id = json.loads(started.body)["result"]["run_id"]
        run: dict = {}
        for _ in range(100):
            response = await http.fetch(f"http://127.0.0.1:{server.port}/runs/{run_id}", headers=auth)
            run = json.loads(response.body)["result"]
            if run["status"] != "running":
                break
            await asyncio.sleep(0.1)
        assert run["status"] == "success", run
        module.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(module.wait(), 15) == 0
    finally:
        if module is not None and module.returncode is None:
            module.kill()
            await module.wait()
        assert await server.stop() == 0
