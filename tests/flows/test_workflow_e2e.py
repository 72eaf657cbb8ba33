"""A workflow end to end: create over REST, a module connected over a real
WebSocket receives the seed's execute command, answers, and the run closes."""

from __future__ import annotations

import asyncio
import json

from tornado.websocket import websocket_connect

from tests.conftest import RunningServer
from tests.support.history import stored_run


async def register(server: RunningServer, name: str) -> str:
    status, env = await server.api(f"/module/register?name={name}&description=d&input_data=[]&output_data=[]&modelHash=m")
    assert status == 200, env
    return env["result"]["hash"]


async def test_manual_run_reaches_module_and_result_closes_it(server: RunningServer) -> None:
    module_hash = await register(server, "alpha")
    ws = await websocket_connect(f"{server.ws_url}/websocket?hash={module_hash}")
    status, env = await server.api("/workflow/create", "POST", json_body={
        "name": "早盘", "description": "d", "enable": True,
        "execute_cron_list": ["*/10 10 * * 1-5", "*/10 14 * * 1-5"],
        "execute_shift_time": -30, "execute_shift_unit": "s",
        "execute_modules": [{"module_hash": module_hash, "args": {"stock_list": ["600000"]}}],
    })
    assert status == 200, env
    assert set(env["result"]) == {"id", "workflow_id", "name"}
    wid = env["result"]["workflow_id"]

    status, env = await server.api(f"/workflow/{wid}/execute", "POST")
    assert status == 200, env
    assert env["result"]["message"] == "工作流执行已启动"
    run_id = env["result"]["run_id"]

    command = json.loads(await asyncio.wait_for(ws.read_message(), 5))
    assert command["type"] == "execute"
    assert command["args"] == {"stock_list": ["600000"]}
    assert command["meta"]["workflow_id"] == wid and command["meta"]["workflow_name"] == "早盘"
    assert command["meta"]["run_id"] == run_id
    assert len(command["meta"]["execution_time"]) == 19

    ws.write_message(json.dumps({
        "type": "result", "status": "success", "workflow_id": str(wid), "workflow_name": "早盘",
        "module_name": "alpha", "error": None, "message": "done",
    }))
    assert await asyncio.wait_for(ws.read_message(), 5) == "receive result"

    status, env = await server.api(f"/runs/{run_id}")
    assert env["result"]["status"] == "success"
    assert env["result"]["steps"][0]["status"] == "success"
    assert env["result"]["steps"][0]["message"] == "done"
    stored = await stored_run(server, run_id)
    assert stored["status"] == "success"

    status, env = await server.api("/scheduler/jobs")
    assert [j["workflow_id"] for j in env["result"] if j["workflow_id"]] == [wid]
    status, env = await server.api("/scheduler/reload", "POST")
    assert env["result"]["removed_count"] == 1 and env["result"]["current_count"] == 1
    ws.close()
