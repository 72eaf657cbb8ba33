"""Run control and live step reports over real sockets: cancel reaches the module and
ends the run, re-run repeats only the chosen steps in a linked run, progress and log
frames reach GET /runs/<id> (and the store with the step's next write), bad frames get
error frames and the socket stays open; the SDK reports and cancels a running handler."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import yaml

from tests.conftest import ADMIN, RunningServer
from tests.flows.support import (
    Module,
    create_workflow,
    execute,
    get_run,
    wait_run,
    wait_until,
    workflow_body,
)
from tests.flows.test_asyncapi import ROOT, _payload
from tests.support.history import stored_run
from tornado_sched.client import ModuleClient, StepContext, current_step
from tornado_sched.run_state import LOG_LINE_CHARS, LOG_TAIL_LINES


def on_demand(modules: list[str], **fields: Any) -> dict[str, Any]:
    return workflow_body(modules=modules, enable=False, execute_cron_list=[], **fields)


async def send(module: Module, frame: dict[str, Any]) -> None:
    assert module.ws is not None
    await module.ws.write_message(json.dumps(frame))


async def test_cancel_reaches_the_module_and_ends_the_run(server: RunningServer) -> None:
    busy = await Module.online(server, "busy")
    quick = await Module.online(server, "quick")
    wid = await create_workflow(server, on_demand([busy.hash, quick.hash], timeout_seconds=600))
    run_id = await execute(server, wid)
    command = await busy.recv_execute()
    assert await quick.result(await quick.recv_execute()) == "receive result"

    status, env = await server.api(f"/runs/{run_id}/cancel", "POST")
    assert status == 200, env
    assert env["result"]["status"] == "cancelled"
    cancel = await busy.recv()
    assert cancel == {
        "type": "cancel",
        "meta": {"run_id": run_id, "workflow_id": wid, "workflow_name": command["meta"]["workflow_name"]},
    }
    spec = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert not list(_payload(spec, "cancel").iter_errors(cancel)), cancel
    await quick.no_message(0.2)  # its step had ended: nothing to stop there
    run = await wait_run(server, run_id)
    assert run["status"] == "cancelled"
    assert [s["status"] for s in run["steps"]] == ["cancelled", "success"]
    assert "admin" in run["reason"]

    # The module's answer to the cancel is acknowledged, and changes nothing.
    assert await busy.result(command, "failure", error="cancelled") == "receive result"
    assert (await get_run(server, run_id))["steps"][0]["status"] == "cancelled"

    # A closed run: 409; unknown: 404; both change nothing.
    status, env = await server.api(f"/runs/{run_id}/cancel", "POST")
    assert status == 409 and env["code"] == "4090", env
    status, env = await server.api(f"/runs/{'0' * 32}/cancel", "POST")
    assert status == 404, env
    status, audit = await server.api("/audit")
    assert any(r["action"] == "cancel" and r["target"] == f"run:{run_id}" for r in audit["result"]["entries"]), audit


async def test_rerun_failed_steps_makes_a_linked_run_with_only_those(server: RunningServer) -> None:
    good = await Module.online(server, "good")
    bad = await Module.online(server, "bad")
    body = on_demand([good.hash, bad.hash])
    body["execute_modules"][1]["args"] = {"day": "2026-12-01"}
    wid = await create_workflow(server, body)
    first = await execute(server, wid)
    assert await good.result(await good.recv_execute()) == "receive result"
    assert await bad.result(await bad.recv_execute(), "failure", error="boom") == "receive result"
    assert (await wait_run(server, first))["status"] == "partial"

    status, env = await server.api(f"/runs/{first}/rerun", "POST", json_body={})
    assert status == 200, env
    rerun = env["result"]
    assert rerun["rerun_of"] == first and rerun["trigger"] == "rerun"
    assert [s["module_hash"] for s in rerun["steps"]] == [bad.hash]
    command = await bad.recv_execute()
    assert command["args"] == {"day": "2026-12-01"} and command["meta"]["run_id"] == rerun["run_id"]
    await good.no_message(0.2)
    assert await bad.result(command) == "receive result"
    done = await wait_run(server, rerun["run_id"])
    assert done["status"] == "success" and done["rerun_of"] == first

    # Nothing failed in the re-run: 409; "all" repeats every step of the original.
    status, env = await server.api(f"/runs/{rerun['run_id']}/rerun", "POST", json_body={"steps": "failed"})
    assert status == 409, env
    status, env = await server.api(f"/runs/{first}/rerun", "POST", json_body={"steps": "all"})
    assert status == 200, env
    assert [s["module_hash"] for s in env["result"]["steps"]] == [good.hash, bad.hash]
    await good.recv_execute()
    await bad.recv_execute()
    status, env = await server.api(f"/runs/{first}/rerun", "POST", json_body={"steps": "some"})
    assert status == 400 and "steps" in env["message"], env

    # The workflow is gone: 409.
    status, _ = await server.api(f"/workflow/{wid}", "DELETE")
    assert status == 200
    status, env = await server.api(f"/runs/{first}/rerun", "POST", json_body={"steps": "all"})
    assert status == 409 and "no longer exists" in env["message"], env


async def test_progress_and_log_frames_reach_the_run_and_its_next_write(server: RunningServer) -> None:
    module = await Module.online(server, "reporter")
    wid = await create_workflow(server, on_demand([module.hash]))
    run_id = await execute(server, wid)
    command = await module.recv_execute()
    progress = {"type": "progress", "run_id": run_id, "percent": 40, "message": "half way"}
    lines = {"type": "log", "run_id": run_id, "lines": ["line 1", "line 2"]}
    spec = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert not list(_payload(spec, "progress").iter_errors(progress))
    assert not list(_payload(spec, "log").iter_errors(lines))
    await send(module, progress)
    await send(module, lines)
    await send(module, {"type": "log", "run_id": run_id, "lines": [f"n{i}" for i in range(300)] + ["x" * 5000]})

    async def reported() -> bool:
        step = (await get_run(server, run_id))["steps"][0]
        return len(step["log"]) == LOG_TAIL_LINES

    await wait_until(reported)
    step = (await get_run(server, run_id))["steps"][0]
    assert step["progress"] == {"percent": 40.0, "message": "half way"}
    assert step["log"][-1] == "x" * LOG_LINE_CHARS and step["log"][0] == "n101"
    # Memory only until the step's next state write: the store has none of it yet.
    stored = await stored_run(server, run_id)
    assert stored["steps"][0]["progress"] is None and stored["steps"][0]["log"] == []

    assert await module.result(command) == "receive result"
    stored = await wait_run(server, run_id)
    assert stored["steps"][0]["progress"] == {"percent": 40.0, "message": "half way"}
    assert stored["steps"][0]["log"][-1] == "x" * LOG_LINE_CHARS and len(stored["steps"][0]["log"]) == LOG_TAIL_LINES


async def test_bad_progress_and_log_frames_get_error_frames(server: RunningServer) -> None:
    module = await Module.online(server, "sloppy")
    wid = await create_workflow(server, on_demand([module.hash]))
    run_id = await execute(server, wid)
    command = await module.recv_execute()
    bad = [
        ({"type": "progress", "run_id": run_id, "percent": 140}, "percent"),
        ({"type": "progress", "run_id": run_id, "percent": True}, "percent"),
        ({"type": "progress", "run_id": run_id, "percent": "50"}, "percent"),
        ({"type": "progress", "run_id": run_id}, "progress"),
        ({"type": "progress", "percent": 5}, "run_id"),
        ({"type": "log", "run_id": run_id, "lines": "one line"}, "lines"),
        ({"type": "log", "run_id": run_id, "lines": ["ok", 3]}, "lines"),
        ({"type": "log", "run_id": "f" * 32, "lines": ["x"]}, "not running"),
    ]
    for frame, word in bad:
        await send(module, frame)
        reply = await module.recv()
        assert reply["type"] == "error" and word in reply["error"], (frame, reply)
    # Still open, and nothing was kept.
    step = (await get_run(server, run_id))["steps"][0]
    assert step["progress"] is None and step["log"] == []
    assert await module.result(command) == "receive result"
    await wait_run(server, run_id)
    # After the step ended its reports are refused too.
    await send(module, {"type": "progress", "run_id": run_id, "percent": 100})
    reply = await module.recv()
    assert reply["type"] == "error" and "not running" in reply["error"]


async def test_sdk_reports_progress_and_logs_and_cancels_a_running_handler(server: RunningServer) -> None:
    started = asyncio.Event()
    seen_cancel: list[bool] = []

    async def handler(args: dict[str, Any], meta: dict[str, Any], step: StepContext) -> str:
        assert current_step() is step
        step.progress(25, "loading")
        step.logger.info("read %d rows", 10)
        step.log("second line")
        started.set()
        try:
            await asyncio.Event().wait()  # works until cancelled
        except asyncio.CancelledError:
            seen_cancel.append(True)
            raise
        return "never"

    client = ModuleClient(server.base_url, "sdk-cancel", handler, username=ADMIN[0], password=ADMIN[1])
    task = client.start()
    try:
        await asyncio.wait_for(client.wait_connected(), 5)
        wid = await create_workflow(server, on_demand([client.module_hash or ""]))
        run_id = await execute(server, wid)
        await asyncio.wait_for(started.wait(), 5)

        async def reported() -> bool:
            step = (await get_run(server, run_id))["steps"][0]
            return step["progress"] is not None and len(step["log"]) == 2

        await wait_until(reported)
        step = (await get_run(server, run_id))["steps"][0]
        assert step["progress"] == {"percent": 25.0, "message": "loading"}
        assert step["log"][0].endswith("INFO read 10 rows") and step["log"][1] == "second line"

        acked = client.results_acknowledged
        status, env = await server.api(f"/runs/{run_id}/cancel", "POST")
        assert status == 200, env
        await wait_until(lambda: client.results_acknowledged == acked + 1)
        assert seen_cancel == [True] and client.results_sent == 1
        run = await wait_run(server, run_id)
        assert run["status"] == "cancelled" and run["steps"][0]["status"] == "cancelled"
        assert run["steps"][0]["log"][1] == "second line"  # written with the cancel

        # A handler with two parameters still works; its result is a success.
        async def old_style(args: dict[str, Any], meta: dict[str, Any]) -> str:
            assert current_step() is not None
            return "ok"

        client.handler = old_style
        client._handler_takes_step = False
        run_id = await execute(server, wid)
        run = await wait_run(server, run_id)
        assert run["status"] == "success" and run["steps"][0]["message"] == "ok"
    finally:
        await client.stop(grace=1)
        await asyncio.wait_for(task, 5)
