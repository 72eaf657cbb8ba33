"""Data-ordered runs over real sockets: each step's `execute` is sent once its
producers succeeded, with their outputs in `meta.inputs`; a failed producer ends its
consumers `upstream_failed` without sending them (one notification, for the failure);
optional inputs do not block; a parallel workflow sends everything at once as before."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import select

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
from tests.flows.test_data_order_api import register_with
from tornado_sched.client import ModuleClient, StepResult, step_inputs
from tornado_sched.tables import notification_outbox

QUIET = 0.3  # long enough for a frame the server should not send to arrive


async def online(server: RunningServer, name: str, inputs: list[Any], outputs: list[Any]) -> Module:
    module = Module(server, name, await register_with(server, name, inputs, outputs))
    await module.connect()
    return module


async def chain(server: RunningServer) -> tuple[Module, Module, Module]:
    """fetch -[prices]-> features -[features]-> model, each its own module."""
    fetch = await online(server, "fetch", [], [{"name": "prices"}])
    features = await online(server, "features", [{"name": "prices"}], [{"name": "features"}])
    model = await online(server, "model", [{"name": "features"}], [{"name": "forecast"}])
    return fetch, features, model


async def chain_with_a_failed_middle(server: RunningServer) -> tuple[Module, Module, Module, int, str]:
    """A data-ordered `chain` workflow and its first run, ended partial: fetch gave
    "prices-v1", features failed ("flaky"), model was never sent."""
    fetch, features, model = await chain(server)
    wid = await create_workflow(server, workflow_body(modules=[fetch.hash, features.hash, model.hash], order="data"))
    first = await execute(server, wid)
    assert await result_with_output(fetch, await fetch.recv_execute(), "prices-v1") == "receive result"
    assert await features.result(await features.recv_execute(), "failure", error="flaky") == "receive result"
    assert (await wait_run(server, first))["status"] == "partial"
    return fetch, features, model, wid, first


async def result_with_output(module: Module, command: dict[str, Any], output: Any, status: str = "success") -> Any:
    """A result carrying `output` (our additive field); returns the server's answer."""
    meta = command["meta"]
    assert module.ws is not None
    await module.ws.write_message(json.dumps({
        "type": "result", "status": status, "workflow_id": str(meta["workflow_id"]),
        "workflow_name": meta["workflow_name"], "module_name": module.name, "run_id": meta["run_id"],
        "message": "done", "error": None if status == "success" else "boom", "output": output,
    }))
    return await module.recv()


async def failure_facts(server: RunningServer, workflow_id: int) -> list[dict[str, Any]]:
    async with server.ctx.sql.engine.connect() as conn:
        rows = (await conn.execute(
            select(notification_outbox.c.payload).where(notification_outbox.c.workflow_id == workflow_id)
        )).all()
    return [fact for row in rows for fact in json.loads(row.payload).get("failures", [])]


async def test_three_stage_chain_runs_in_order_with_outputs_passed_down(server: RunningServer) -> None:
    fetch, features, model = await chain(server)
    wid = await create_workflow(server, workflow_body(modules=[model.hash, fetch.hash, features.hash], order="data"))
    run_id = await execute(server, wid)

    first = await fetch.recv_execute()
    assert first["meta"]["run_id"] == run_id and first["meta"]["inputs"] == {}
    await features.no_message(QUIET)
    await model.no_message(QUIET)
    run = await get_run(server, run_id)
    assert [s["status"] for s in run["steps"]] == ["pending", "sent", "pending"]

    # A too-large output is refused with an error frame; the step stays open.
    answer = await result_with_output(fetch, first, "x" * (64 * 1024 + 1))
    assert answer["type"] == "error" and answer["error"].startswith("output:"), answer
    await features.no_message(QUIET)

    prices = {"path": "/data/prices/2026-12-02.parquet", "rows": 5000}
    assert await result_with_output(fetch, first, prices) == "receive result"
    second = await features.recv_execute()
    assert second["meta"]["inputs"] == {"prices": prices}
    await model.no_message(QUIET)

    assert await result_with_output(features, second, "warehouse.features_20261202") == "receive result"
    third = await model.recv_execute()
    assert third["meta"]["inputs"] == {"features": "warehouse.features_20261202"}
    assert await model.result(third) == "receive result"  # an old client: no output

    stored = await wait_run(server, run_id)
    assert stored["status"] == "success"
    run = await get_run(server, run_id)
    assert run["status"] == "success"
    assert [(s["module_name"], s["status"], s["output"]) for s in run["steps"]] == [
        ("model", "success", None),
        ("fetch", "success", prices),
        ("features", "success", "warehouse.features_20261202"),
    ]
    sent = {s["module_name"]: s["sent_at"] for s in run["steps"]}
    assert sent["fetch"] < sent["features"] < sent["model"]


async def test_failing_middle_stage_marks_downstream_upstream_failed_and_notifies_once(
    server: RunningServer,
) -> None:
    fetch, features, model = await chain(server)
    publish = await online(server, "publish", [{"name": "forecast"}], [])
    wid = await create_workflow(
        server, workflow_body(modules=[fetch.hash, features.hash, model.hash, publish.hash], order="data")
    )
    run_id = await execute(server, wid)
    assert await result_with_output(fetch, await fetch.recv_execute(), "p") == "receive result"
    second = await features.recv_execute()
    assert await features.result(second, "failure", error="no prices for today") == "receive result"

    stored = await wait_run(server, run_id)
    assert stored["status"] == "partial"
    run = await get_run(server, run_id)
    assert [s["status"] for s in run["steps"]] == ["success", "failure", "upstream_failed", "upstream_failed"]
    assert [s["attempts"] for s in run["steps"]] == [1, 1, 0, 0]
    assert run["steps"][2]["error"] == "not sent: features (step 1) ended failure"
    assert run["steps"][3]["error"] == "not sent: model (step 2) ended upstream_failed"
    await model.no_message(QUIET)
    await publish.no_message(QUIET)

    await wait_until(lambda: failure_facts(server, wid))
    # A notice per blocked step would be written right behind the first: give it time.
    await asyncio.sleep(QUIET)
    facts = await failure_facts(server, wid)
    assert [(f["module_name"], f["status"]) for f in facts] == [("features", "failure")]


async def test_parallel_workflow_sends_every_step_at_once_as_before(server: RunningServer) -> None:
    fetch, features, model = await chain(server)
    wid = await create_workflow(server, workflow_body(modules=[fetch.hash, features.hash, model.hash]))
    run_id = await execute(server, wid)
    commands = [await m.recv_execute() for m in (fetch, features, model)]
    for command in commands:
        # The seed's shape plus our run_id/fired_at/timezone; no inputs in a parallel run.
        assert set(command) == {"type", "meta", "args"}
        assert set(command["meta"]) == {"execution_time", "workflow_id", "workflow_name", "run_id", "fired_at",
                                        "timezone"}
    # A consumer may finish before its producer: nothing waits in a parallel run.
    assert await model.result(commands[2]) == "receive result"
    assert await features.result(commands[1], "failure", error="x") == "receive result"
    assert await fetch.result(commands[0]) == "receive result"
    stored = await wait_run(server, run_id)
    assert stored["status"] == "partial"
    run = await get_run(server, run_id)
    assert [s["status"] for s in run["steps"]] == ["success", "failure", "success"]


async def test_optional_input_does_not_block(server: RunningServer) -> None:
    holidays = await online(server, "holidays", [], [{"name": "holidays"}])
    prices = await online(server, "prices", [], [{"name": "prices"}])
    model = await online(server, "model", [{"name": "prices"}, {"name": "holidays", "optional": True}], [])
    wid = await create_workflow(server, workflow_body(modules=[holidays.hash, prices.hash, model.hash], order="data"))
    run_id = await execute(server, wid)
    h, p = await holidays.recv_execute(), await prices.recv_execute()
    assert await result_with_output(prices, p, [1, 2]) == "receive result"
    # The optional producer is still running: its output is worth waiting for.
    await model.no_message(QUIET)
    assert await holidays.result(h, "failure", error="calendar down") == "receive result"
    command = await model.recv_execute()
    assert command["meta"]["inputs"] == {"prices": [1, 2]}
    assert await model.result(command) == "receive result"
    stored = await wait_run(server, run_id)
    assert stored["status"] == "partial"
    run = await get_run(server, run_id)
    assert [s["status"] for s in run["steps"]] == ["failure", "success", "success"]


async def test_retry_resends_only_the_failed_step_and_timeout_covers_the_chain(server: RunningServer) -> None:
    fetch, features, model = await chain(server)
    wid = await create_workflow(server, workflow_body(
        modules=[fetch.hash, features.hash, model.hash], order="data", retries=1, retry_delay_seconds=1,
        timeout_seconds=3,
    ))
    run_id = await execute(server, wid)
    first = await fetch.recv_execute()
    assert await fetch.result(first, "failure", error="flaky") == "receive result"
    again = await fetch.recv_execute()
    assert again["meta"]["run_id"] == run_id
    await features.no_message(QUIET)
    assert await result_with_output(fetch, again, "p2") == "receive result"
    second = await features.recv_execute()
    assert second["meta"]["inputs"] == {"prices": "p2"}
    await fetch.no_message(QUIET)  # only the failed step was re-sent, once
    # features never answers: the run's timeout ends it, and model was never sent.
    stored = await wait_run(server, run_id, within=8)
    assert stored["status"] == "partial"
    run = await get_run(server, run_id)
    assert [s["status"] for s in run["steps"]] == ["success", "timeout", "upstream_failed"]
    assert [s["attempts"] for s in run["steps"]] == [2, 1, 0]
    await model.no_message(QUIET)


async def test_conflicting_plan_at_start_fails_the_run_at_once(server: RunningServer) -> None:
    fetch, features, model = await chain(server)
    wid = await create_workflow(server, workflow_body(modules=[fetch.hash, features.hash, model.hash], order="data"))
    # model re-registers as a second producer of "prices": the plan is now ambiguous.
    status, env = await server.api("/module/register", "POST", json_body={
        "name": "model", "input_data": json.dumps([{"name": "features"}]),
        "output_data": json.dumps([{"name": "forecast"}, {"name": "prices"}]), "modelHash": model.hash,
    })
    assert status == 200 and env["result"]["hash"] == model.hash, env
    run_id = await execute(server, wid)
    stored = await wait_run(server, run_id)
    assert stored["status"] == "failure"
    run = await get_run(server, run_id)
    assert run["reason"].startswith('order "data": the modules cannot be ordered: ') and "'prices'" in run["reason"]
    assert [s["status"] for s in run["steps"]] == ["skipped"] * 3
    for module in (fetch, features, model):
        await module.no_message(QUIET)


async def test_sdk_handlers_return_outputs_and_read_inputs(server: RunningServer) -> None:
    """Two real ModuleClients: the producer returns a StepResult with an output, the
    consumer reads it with step_inputs(meta); an oversized output fails the step."""
    seen: list[dict[str, Any]] = []

    async def fetch(args: dict[str, Any], meta: dict[str, Any]) -> StepResult:
        assert step_inputs(meta) == {}
        return StepResult(message="prices ready", output={"path": "/data/p.parquet"})

    async def features(args: dict[str, Any], meta: dict[str, Any]) -> StepResult:
        seen.append(step_inputs(meta))
        return StepResult(output="x" * (64 * 1024))  # over the bound once JSON-quoted

    clients = [
        ModuleClient(server.base_url, "sdk-fetch", fetch, username=ADMIN[0], password=ADMIN[1],
                     output_data=[{"name": "prices"}]),
        ModuleClient(server.base_url, "sdk-features", features, username=ADMIN[0], password=ADMIN[1],
                     input_data=[{"name": "prices"}], output_data=[{"name": "features"}]),
    ]
    tasks = [c.start() for c in clients]
    try:
        for client in clients:
            await asyncio.wait_for(client.wait_connected(), 5)
        wid = await create_workflow(
            server, workflow_body(modules=[c.module_hash for c in clients], order="data")
        )
        run_id = await execute(server, wid)
        stored = await wait_run(server, run_id)
        assert stored["status"] == "partial"
        run = await get_run(server, run_id)
        assert [(s["status"], s["output"]) for s in run["steps"]] == [
            ("success", {"path": "/data/p.parquet"}), ("failure", None),
        ]
        assert run["steps"][0]["message"] == "prices ready"
        assert run["steps"][1]["error"].startswith("output: 65538 bytes encoded, more than 65536")
        assert seen == [{"prices": {"path": "/data/p.parquet"}}]
    finally:
        for client in clients:
            await client.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_offline_producer_blocks_its_consumers_and_overlap_still_applies(server: RunningServer) -> None:
    # The producer is registered but never connects: its step fails offline at dispatch.
    fetch = Module(server, "fetch", await register_with(server, "fetch", [], [{"name": "prices"}]))
    features = await online(server, "features", [{"name": "prices"}], [])
    wid = await create_workflow(server, workflow_body(modules=[fetch.hash, features.hash], order="data"))
    run_id = await execute(server, wid)
    stored = await wait_run(server, run_id)
    assert stored["status"] == "failure"
    run = await get_run(server, run_id)
    assert [s["status"] for s in run["steps"]] == ["offline", "upstream_failed"]
    assert run["steps"][1]["error"] == "not sent: fetch (step 0) ended offline"
    await features.no_message(QUIET)

    # overlap=forbid (the default) holds for a data-ordered run while any stage is open.
    other = await online(server, "other", [], [{"name": "x"}])
    user = await online(server, "user", [{"name": "x"}], [])
    wid = await create_workflow(server, workflow_body(modules=[other.hash, user.hash], order="data",
                                                      overlap="forbid"))
    first = await execute(server, wid)
    command = await other.recv_execute()
    assert await other.result(command) == "receive result"
    await user.recv_execute()  # the second stage is open now
    second = await execute(server, wid)
    skipped = await wait_run(server, second)
    assert skipped["status"] == "skipped"
    assert (await get_run(server, first))["status"] == "running"


async def test_hostile_outputs_get_an_error_frame_and_change_nothing(server: RunningServer) -> None:
    """An output breaking the edge reader's rules (payload.py) or the size bound is
    refused with an error frame; the step stays open and the session too."""
    fetch, features, _model = await chain(server)
    wid = await create_workflow(server, workflow_body(modules=[fetch.hash, features.hash], order="data"))
    run_id = await execute(server, wid)
    command = await fetch.recv_execute()
    meta = command["meta"]
    head = (f'{{"type": "result", "status": "success", "run_id": "{meta["run_id"]}", '
            f'"workflow_id": "{meta["workflow_id"]}", "output": ')
    assert fetch.ws is not None
    for raw in (head + "NaN}", head + '"\\ud800"}', head + "[" * 40 + "]" * 40 + "}",
                head + '"' + "x" * 70_000 + '"}'):
        await fetch.ws.write_message(raw)
        answer = await fetch.recv()
        assert isinstance(answer, dict) and answer["type"] == "error", answer
    assert answer["error"].startswith("output: 70002 bytes encoded, more than 65536"), answer
    run = await get_run(server, run_id)
    assert [(s["status"], s["output"]) for s in run["steps"]] == [("sent", None), ("pending", None)]
    assert await result_with_output(fetch, command, "ok") == "receive result"
    assert (await features.recv_execute())["meta"]["inputs"] == {"prices": "ok"}


async def test_rerun_of_failed_steps_reruns_the_chain_behind_them_with_carried_outputs(
    server: RunningServer,
) -> None:
    fetch, features, model, wid, first = await chain_with_a_failed_middle(server)

    status, env = await server.api(f"/runs/{first}/rerun", "POST", json_body={"steps": "failed"})
    assert status == 200, env
    rerun = env["result"]
    # The producer that succeeded is carried over, not sent again; the failed step gets
    # its output in meta.inputs, and the step behind it runs once it succeeds.
    second = await features.recv_execute()
    assert second["meta"]["run_id"] == rerun["run_id"]
    assert second["meta"]["inputs"] == {"prices": "prices-v1"}
    await fetch.no_message(QUIET)
    assert await result_with_output(features, second, "features-v2") == "receive result"
    third = await model.recv_execute()
    assert third["meta"]["inputs"] == {"features": "features-v2"}
    assert await model.result(third) == "receive result"
    assert (await wait_run(server, rerun["run_id"]))["status"] == "success"
    run = await get_run(server, rerun["run_id"])
    assert [(s["module_name"], s["status"], s["attempts"]) for s in run["steps"]] == [
        ("fetch", "success", 0), ("features", "success", 1), ("model", "success", 1),
    ]
    assert run["steps"][0]["message"] == f"carried over from run {first}"
    assert run["rerun_of"] == first


async def test_cancel_mid_chain_stops_the_sent_step_and_never_sends_the_waiting_ones(server: RunningServer) -> None:
    fetch, features, model = await chain(server)
    wid = await create_workflow(server, workflow_body(modules=[fetch.hash, features.hash, model.hash], order="data"))
    run_id = await execute(server, wid)
    assert await result_with_output(fetch, await fetch.recv_execute(), "prices-v1") == "receive result"
    command = await features.recv_execute()

    status, env = await server.api(f"/runs/{run_id}/cancel", "POST")
    assert status == 200 and env["result"]["status"] == "cancelled", env
    # Only the step running now is told to stop; the waiting one was never sent.
    assert (await features.recv())["type"] == "cancel"
    await fetch.no_message(QUIET)
    stored = await wait_run(server, run_id)
    assert stored["status"] == "cancelled"
    run = await get_run(server, run_id)
    assert [(s["status"], s["attempts"]) for s in run["steps"]] == [("success", 1), ("cancelled", 1), ("cancelled", 0)]

    # A late success from the cancelled step is acknowledged but moves nothing on.
    assert await result_with_output(features, command, "late") == "receive result"
    await model.no_message(QUIET)
    run = await get_run(server, run_id)
    assert [(s["status"], s["output"]) for s in run["steps"]] == [
        ("success", "prices-v1"), ("cancelled", None), ("cancelled", None),
    ]

    # Re-running what did not succeed runs the cancelled step and the one behind it,
    # fed the output carried over from the cancelled run.
    status, env = await server.api(f"/runs/{run_id}/rerun", "POST", json_body={"steps": "failed"})
    assert status == 200, env
    again = await features.recv_execute()
    assert again["meta"]["run_id"] == env["result"]["run_id"] and again["meta"]["inputs"] == {"prices": "prices-v1"}
    await fetch.no_message(QUIET)
    assert await result_with_output(features, again, "features-v2") == "receive result"
    last = await model.recv_execute()
    assert last["meta"]["inputs"] == {"features": "features-v2"}
    assert await model.result(last) == "receive result"
    assert (await wait_run(server, env["result"]["run_id"]))["status"] == "success"


async def test_overlap_allow_runs_two_chains_side_by_side_each_fed_its_own_outputs(server: RunningServer) -> None:
    fetch, features, _model = await chain(server)
    wid = await create_workflow(server, workflow_body(modules=[fetch.hash, features.hash], order="data",
                                                      overlap="allow"))
    first = await execute(server, wid)
    one = await fetch.recv_execute()
    second = await execute(server, wid)
    two = await fetch.recv_execute()
    assert {one["meta"]["run_id"], two["meta"]["run_id"]} == {first, second}
    # The later run's producer answers first: only its own consumer is sent, with its output.
    assert await result_with_output(fetch, two, f"out-{two['meta']['run_id']}") == "receive result"
    fed = await features.recv_execute()
    assert fed["meta"]["run_id"] == two["meta"]["run_id"]
    assert fed["meta"]["inputs"] == {"prices": f"out-{two['meta']['run_id']}"}
    await features.no_message(QUIET)
    assert await result_with_output(fetch, one, f"out-{one['meta']['run_id']}") == "receive result"
    other = await features.recv_execute()
    assert other["meta"]["run_id"] == one["meta"]["run_id"]
    assert other["meta"]["inputs"] == {"prices": f"out-{one['meta']['run_id']}"}
    for command in (fed, other):
        assert await features.result(command) == "receive result"
    for run_id in (first, second):
        assert (await wait_run(server, run_id))["status"] == "success"


async def test_rerun_after_the_module_list_changed_runs_only_the_failed_steps_in_their_own_order(
    server: RunningServer,
) -> None:
    fetch, features, model, wid, first = await chain_with_a_failed_middle(server)
    # The steps are listed in another order now: the original run's steps no longer
    # line up with the workflow's, so nothing is carried over.
    status, env = await server.api(f"/workflow/{wid}", "PUT", json_body={"execute_modules": [
        {"module_hash": h, "args": {}} for h in (model.hash, features.hash, fetch.hash)
    ]})
    assert status == 200, env

    status, env = await server.api(f"/runs/{first}/rerun", "POST", json_body={"steps": "failed"})
    assert status == 200, env
    rerun = env["result"]["run_id"]
    # features' producer is not in the re-run: its input is external now, so it is sent
    # at once without it; model still waits for features.
    again = await features.recv_execute()
    assert again["meta"]["run_id"] == rerun and again["meta"]["inputs"] == {}
    await model.no_message(QUIET)
    await fetch.no_message(QUIET)
    assert await result_with_output(features, again, "features-v2") == "receive result"
    last = await model.recv_execute()
    assert last["meta"]["inputs"] == {"features": "features-v2"}
    assert await model.result(last) == "receive result"
    assert (await wait_run(server, rerun))["status"] == "success"
    run = await get_run(server, rerun)
    assert [(s["module_name"], s["status"]) for s in run["steps"]] == [("features", "success"), ("model", "success")]
