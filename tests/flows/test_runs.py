"""Runs over real WebSockets: offline at dispatch, disconnect mid-run, run timeout,
duplicate and late results, result routing with and without run_id, overlap,
retries, partial outcomes."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tests.conftest import RunningServer
from tests.flows.support import (
    Module,
    create_workflow,
    execute,
    get_run,
    log_rows,
    register,
    wait_run,
    wait_until,
    workflow_body,
)
from tests.support.history import stored_run


def on_demand(modules: list[str], **fields: Any) -> dict[str, Any]:
    """A workflow that only runs when asked (no schedule to interfere)."""
    return workflow_body(modules=modules, enable=False, execute_cron_list=[], **fields)


async def test_module_offline_at_dispatch_fails_at_once(server: RunningServer) -> None:
    online = await Module.online(server, "on")
    offline_hash = await register(server, "off")
    wid = await create_workflow(server, on_demand([offline_hash], timeout_seconds=600))
    started = time.monotonic()
    run_id = await execute(server, wid)
    run = await wait_run(server, run_id, within=2)
    assert time.monotonic() - started < 2
    assert run["status"] == "failure"
    assert [s["status"] for s in run["steps"]] == ["offline"]
    assert run["steps"][0]["error"] == "module was offline when the run started"

    # Mixed: the online module still gets its command and the run ends partial.
    wid2 = await create_workflow(server, on_demand([online.hash, offline_hash], timeout_seconds=600))
    run_id = await execute(server, wid2)
    command = await online.recv_execute()
    assert (await get_run(server, run_id))["steps"][1]["status"] == "offline"
    assert await online.result(command) == "receive result"
    run = await wait_run(server, run_id)
    assert run["status"] == "partial"
    assert [s["status"] for s in run["steps"]] == ["success", "offline"]
    online.close()


async def test_disconnect_mid_run_fails_open_steps_at_once(server: RunningServer) -> None:
    stays = await Module.online(server, "stays")
    leaves = await Module.online(server, "leaves")
    wid = await create_workflow(server, on_demand([stays.hash, leaves.hash, leaves.hash], timeout_seconds=600))
    run_id = await execute(server, wid)
    command = await stays.recv_execute()
    await leaves.recv_execute()
    await leaves.recv_execute()
    assert await stays.result(command) == "receive result"

    started = time.monotonic()
    leaves.close()
    run = await wait_run(server, run_id, within=3)
    assert time.monotonic() - started < 3  # not the 600 s run timeout
    assert run["status"] == "partial"
    assert [s["status"] for s in run["steps"]] == ["success", "failure", "failure"]
    assert "disconnected" in run["steps"][1]["error"]
    stays.close()


async def test_dropped_connection_mid_run_fails_the_step(server: RunningServer) -> None:
    """No close frame: the TCP connection just goes away."""
    module = await Module.online(server, "dropped")
    wid = await create_workflow(server, on_demand([module.hash], timeout_seconds=600))
    run_id = await execute(server, wid)
    await module.recv_execute()
    assert module.ws is not None
    started = time.monotonic()
    module.ws.protocol.stream.close()  # type: ignore[union-attr]
    run = await wait_run(server, run_id, within=3)
    assert time.monotonic() - started < 3
    assert run["status"] == "failure"
    assert run["steps"][0]["status"] == "failure" and "disconnected" in run["steps"][0]["error"]


async def test_run_timeout_closes_open_steps_and_late_results_change_nothing(server: RunningServer) -> None:
    fast = await Module.online(server, "fast")
    slow = await Module.online(server, "slow")
    wid = await create_workflow(server, on_demand([fast.hash, slow.hash], timeout_seconds=1))
    run_id = await execute(server, wid)
    fast_cmd = await fast.recv_execute()
    slow_cmd = await slow.recv_execute()
    assert await fast.result(fast_cmd) == "receive result"
    run = await wait_run(server, run_id, within=4)
    assert run["status"] == "partial"
    assert [s["status"] for s in run["steps"]] == ["success", "timeout"]
    assert "1 s" in run["steps"][1]["error"]

    # A late result (after its step closed) changes nothing and is not acknowledged:
    # an error frame says why, with or without run_id.
    assert _refusal(await slow.result(slow_cmd, "success", message="late")) == f"run {run_id} is closed (partial)"
    assert "no open step for this module" in _refusal(await slow.result(slow_cmd, "success", run_id=None, message="late"))
    after = await get_run(server, run_id)
    assert after["status"] == "partial"
    assert [s["status"] for s in after["steps"]] == ["success", "timeout"]
    assert after["steps"][1]["message"] is None
    stored = await stored_run(server, run_id)
    assert [s["status"] for s in stored["steps"]] == ["success", "timeout"]
    fast.close()
    slow.close()


async def test_duplicate_result_does_not_change_a_closed_step(server: RunningServer) -> None:
    module = await Module.online(server, "dup")
    other = await Module.online(server, "other")
    wid = await create_workflow(server, on_demand([module.hash, other.hash], timeout_seconds=600))
    run_id = await execute(server, wid)
    command = await module.recv_execute()
    other_cmd = await other.recv_execute()
    assert await module.result(command, "success", message="first") == "receive result"
    # Run still open (other has not answered): a re-send of the stored result is
    # acknowledged; a different result for the closed step is refused, saying why.
    assert await module.result(command, "success", message="first") == "receive result"
    assert await module.result(command, "success", run_id=None, message="first") == "receive result"
    assert "not awaiting a result (success)" in _refusal(
        await module.result(command, "failure", error="boom", message="second"))
    assert "no open step" in _refusal(
        await module.result(command, "failure", run_id=None, error="boom", message="third"))
    run = await get_run(server, run_id)
    assert run["status"] == "running"
    assert run["steps"][0]["status"] == "success" and run["steps"][0]["message"] == "first"
    assert run["steps"][0]["error"] is None
    assert run["steps"][1]["status"] == "sent"
    # A result for another module's step is not taken by this module (its own step in
    # that run is closed), nor is one for a run it has no step in.
    assert "not awaiting a result (success)" in _refusal(await module.result(other_cmd, "failure"))
    stranger = await Module.online(server, "stranger")
    assert f"run {run_id} has no step for this module" == _refusal(await stranger.result(other_cmd, "failure"))
    stranger.close()
    assert _refusal(await module.result(other_cmd | {"meta": other_cmd["meta"] | {"run_id": "f" * 32}}, "failure")) \
        == "unknown run_id " + "f" * 32
    assert (await get_run(server, run_id))["steps"][1]["status"] == "sent"

    assert await other.result(other_cmd) == "receive result"
    run = await wait_run(server, run_id)
    assert run["status"] == "success"
    assert run["steps"][0]["message"] == "first"
    module.close()
    other.close()


async def test_result_routing_with_and_without_run_id(server: RunningServer) -> None:
    module = await Module.online(server, "router")
    wid = await create_workflow(server, on_demand([module.hash], overlap="allow", timeout_seconds=600))
    runs = []
    commands = []
    for _ in range(3):
        runs.append(await execute(server, wid))
        commands.append(await module.recv_execute())
    assert [c["meta"]["run_id"] for c in commands] == runs

    # With run_id: exactly that run, even though it is the oldest.
    assert await module.result(commands[0], message="r0") == "receive result"
    statuses = [(await get_run(server, r))["status"] for r in runs]
    assert statuses == ["success", "running", "running"]

    # Without run_id (a seed client): the newest open run of that workflow.
    assert await module.result(commands[1], run_id=None, message="no-id-1") == "receive result"
    statuses = [(await get_run(server, r))["status"] for r in runs]
    assert statuses == ["success", "running", "success"]
    assert (await get_run(server, runs[2]))["steps"][0]["message"] == "no-id-1"

    # Without run_id and for another workflow id: nothing matches, and the module is told.
    assert f"no open step for this module in workflow {wid + 1000}" in _refusal(
        await module.result(commands[1], run_id=None, workflow_id=wid + 1000))
    assert (await get_run(server, runs[1]))["status"] == "running"

    assert await module.result(commands[1], run_id=None, message="no-id-2") == "receive result"
    run = await wait_run(server, runs[1])
    assert run["status"] == "success" and run["steps"][0]["message"] == "no-id-2"
    module.close()


async def test_overlap_forbid_records_skipped_run(server: RunningServer) -> None:
    module = await Module.online(server, "busy")
    wid = await create_workflow(server, on_demand([module.hash], timeout_seconds=600))
    first = await execute(server, wid)
    command = await module.recv_execute()
    second = await execute(server, wid)
    skipped = await get_run(server, second)
    assert skipped["status"] == "skipped"
    assert "overlap" in skipped["reason"]
    assert [s["status"] for s in skipped["steps"]] == ["skipped"]
    await module.no_message(0.3)  # the skipped firing sent nothing

    assert await module.result(command) == "receive result"
    assert (await wait_run(server, first))["status"] == "success"
    third = await execute(server, wid)
    command = await module.recv_execute()
    assert command["meta"]["run_id"] == third
    assert await module.result(command) == "receive result"

    rows = await log_rows(server, wid)
    assert [(r["run_id"], r["outcome"], r["trigger"]) for r in rows] == [
        (first, "started", "manual"), (second, "skipped", "manual"), (third, "started", "manual"),
    ]
    status, env = await server.api(f"/runs?workflow_id={wid}&status=skipped")
    assert env["result"]["total"] == 1
    module.close()


async def test_overlap_allow_runs_both(server: RunningServer) -> None:
    module = await Module.online(server, "parallel")
    wid = await create_workflow(server, on_demand([module.hash], overlap="allow", timeout_seconds=600))
    first = await execute(server, wid)
    second = await execute(server, wid)
    commands = [await module.recv_execute(), await module.recv_execute()]
    assert {c["meta"]["run_id"] for c in commands} == {first, second}
    for command in commands:
        assert await module.result(command) == "receive result"
    assert (await wait_run(server, first))["status"] == "success"
    assert (await wait_run(server, second))["status"] == "success"
    module.close()


async def _send_and_collect(module: Module, body: dict[str, Any], count: int) -> list[Any]:
    """Send a raw result and read `count` messages (the ack and a re-sent command may
    arrive in either order)."""
    assert module.ws is not None
    await module.ws.write_message(json.dumps(body))
    return [await module.recv() for _ in range(count)]


async def test_failed_step_is_retried_and_success_closes_it(server: RunningServer) -> None:
    module = await Module.online(server, "flaky")
    wid = await create_workflow(server, on_demand([module.hash], retries=1, retry_delay_seconds=0, timeout_seconds=600))
    status, env = await server.api(f"/workflow/{wid}")
    assert env["result"]["retries"] == 1 and env["result"]["retry_delay_seconds"] == 0
    run_id = await execute(server, wid)
    command = await module.recv_execute()
    result = {"type": "result", "status": "failure", "workflow_id": str(wid), "run_id": run_id,
              "module_name": "flaky", "error": "first try failed", "message": None}
    replies = await _send_and_collect(module, result, 2)
    assert "receive result" in replies
    again = next(r for r in replies if isinstance(r, dict))
    assert again["type"] == "execute" and again["meta"]["run_id"] == run_id
    assert again["args"] == command["args"]
    assert (await get_run(server, run_id))["status"] == "running"

    assert await module.result(again, "success", message="second try") == "receive result"
    run = await wait_run(server, run_id)
    assert run["status"] == "success"
    assert run["steps"][0]["attempts"] == 2 and run["steps"][0]["message"] == "second try"
    module.close()


async def test_retries_exhausted_is_failure(server: RunningServer) -> None:
    module = await Module.online(server, "broken")
    wid = await create_workflow(server, on_demand([module.hash], retries=1, retry_delay_seconds=0, timeout_seconds=600))
    run_id = await execute(server, wid)
    await module.recv_execute()
    result = {"type": "result", "status": "failure", "workflow_id": str(wid), "run_id": run_id, "error": "no"}
    replies = await _send_and_collect(module, result, 2)
    assert "receive result" in replies
    assert await _send_and_collect(module, result | {"error": "still no"}, 1) == ["receive result"]
    run = await wait_run(server, run_id)
    assert run["status"] == "failure"
    assert run["steps"][0]["attempts"] == 2 and run["steps"][0]["error"] == "still no"
    await module.no_message(0.3)
    module.close()


async def test_one_success_one_failure_is_partial(server: RunningServer) -> None:
    good = await Module.online(server, "good")
    bad = await Module.online(server, "bad")
    wid = await create_workflow(server, on_demand([good.hash, bad.hash], timeout_seconds=600))
    run_id = await execute(server, wid)
    good_cmd, bad_cmd = await good.recv_execute(), await bad.recv_execute()
    assert good_cmd["args"] == {"stock_list": ["600000"]}
    assert await bad.result(bad_cmd, "failure", error="数据缺失") == "receive result"
    assert (await get_run(server, run_id))["status"] == "running"
    assert await good.result(good_cmd) == "receive result"
    run = await wait_run(server, run_id)
    assert run["status"] == "partial"
    assert [(s["status"], s["error"]) for s in run["steps"]] == [("success", None), ("failure", "数据缺失")]
    # The workflow's last_run summary follows.
    await wait_until(lambda: _last_run_status(server, wid, "partial"))
    good.close()
    bad.close()


async def _last_run_status(server: RunningServer, wid: int, status: str) -> bool:
    doc = await server.ctx.docs["workflows"].find_one({"workflow_id": wid})
    return bool(doc and doc.get("last_run") and doc["last_run"].get("status") == status)


async def test_execute_message_is_the_seeds_plus_our_fields(server: RunningServer) -> None:
    module = await Module.online(server, "shape")
    wid = await create_workflow(server, on_demand([module.hash], timezone="Europe/Berlin"))
    run_id = await execute(server, wid)
    assert module.ws is not None
    raw = await asyncio.wait_for(module.ws.read_message(), 5)
    command = json.loads(raw)
    assert set(command) == {"type", "meta", "args"}
    assert set(command["meta"]) == {"execution_time", "workflow_id", "workflow_name", "run_id", "fired_at", "timezone"}
    assert command["meta"]["timezone"] == "Europe/Berlin"
    run = await get_run(server, run_id)
    assert command["meta"]["execution_time"] == run["execution_time"]
    assert await module.result(command) == "receive result"
    module.close()


async def test_overlap_forbid_holds_for_simultaneous_firings(server: RunningServer) -> None:
    """Two executes at the same moment: the second must see the first as open even
    while the first is still being written (it used to start two runs)."""
    module = await Module.online(server, "simultaneous")
    wid = await create_workflow(server, on_demand([module.hash], timeout_seconds=600))
    first, second = await asyncio.gather(execute(server, wid), execute(server, wid))
    statuses = sorted([(await get_run(server, first))["status"], (await get_run(server, second))["status"]])
    assert statuses == ["running", "skipped"], statuses
    command = await module.recv_execute()
    await module.no_message(0.3)
    assert await module.result(command) == "receive result"
    module.close()


def _refusal(reply: str | dict) -> str:
    """The reason in an error frame (and not `receive result`)."""
    frame = json.loads(reply) if isinstance(reply, str) else reply
    assert frame["type"] == "error", frame
    prefix = "result not recorded: "
    assert frame["error"].startswith(prefix), frame
    return frame["error"][len(prefix):]


async def test_a_run_dispatched_in_slices_sends_each_step_once(server: RunningServer, monkeypatch: Any) -> None:
    # Dispatch yields to the loop every DISPATCH_SLICE_SECONDS; with a zero slice it
    # yields before every send, and a five-step run (one module twice, one offline)
    # still sends each step once.
    import tornado_sched.runs

    monkeypatch.setattr(tornado_sched.runs, "DISPATCH_SLICE_SECONDS", 0.0)
    modules = [await Module.online(server, f"slice-{i}") for i in range(3)]
    offline_hash = await register(server, "slice-off")
    hashes = [modules[0].hash, modules[1].hash, offline_hash, modules[2].hash, modules[0].hash]
    wid = await create_workflow(server, on_demand(hashes, timeout_seconds=600))
    run_id = await execute(server, wid)
    for module, times in ((modules[0], 2), (modules[1], 1), (modules[2], 1)):
        commands = [await module.recv_execute() for _ in range(times)]
        for command in commands:
            assert await module.result(command) == "receive result"
        await module.no_message(0.2)  # nothing sent twice
    run = await wait_run(server, run_id)
    assert [s["status"] for s in run["steps"]] == ["success", "success", "offline", "success", "success"]
    assert [s["attempts"] for s in run["steps"]] == [1, 1, 1, 1, 1]
    for module in modules:
        module.close()


async def test_a_started_run_is_stored_as_dispatched(server: RunningServer) -> None:
    # The first wave's rows are inserted already "sent" (one write per step, not an
    # insert and then a "sent" update); a step whose module is offline is stored as
    # such once execute has answered. Read from the store, not the server's memory.
    online = await Module.online(server, "stored-sent")
    offline_hash = await register(server, "stored-off")
    wid = await create_workflow(server, on_demand([online.hash, offline_hash], timeout_seconds=600))
    run_id = await execute(server, wid)
    command = await online.recv_execute()
    stored = await stored_run(server, run_id)
    assert stored is not None and stored["status"] == "running"
    sent, offline = stored["steps"]
    assert (sent["status"], sent["attempts"]) == ("sent", 1) and sent["sent_at"] is not None
    assert (offline["status"], offline["attempts"]) == ("offline", 1)
    assert offline["error"] == "module was offline when the run started"
    assert await online.result(command) == "receive result"
    stored = await stored_run(server, run_id)
    assert stored["status"] == "partial"
    assert [s["status"] for s in stored["steps"]] == ["success", "offline"]
    online.close()


async def test_a_run_longer_than_one_slice_reads_back_whole_and_in_order(server: RunningServer) -> None:
    """GET /runs/<id> encodes a long step list in slices (serialize.to_json_sliced):
    over HTTP the answer is every step, in order, as one canonical JSON text."""
    from tornado_sched.serialize import ITEMS_PER_SLICE, to_json

    hashes = await asyncio.gather(*(register(server, f"slice-{i}") for i in range(ITEMS_PER_SLICE + 51)))
    wid = await create_workflow(server, on_demand(list(hashes)))
    run_id = await execute(server, wid)
    await wait_run(server, run_id)  # every module is offline: the run fails at once
    response = await server.fetch(f"/runs/{run_id}")
    assert response.code == 200
    text = response.body.decode()
    envelope = json.loads(text)
    steps = envelope["result"]["steps"]
    assert [s["module_hash"] for s in steps] == list(hashes)
    assert [s["index"] for s in steps] == list(range(len(hashes)))
    assert to_json(envelope) == text
