"""docs/asyncapi.yaml describes the frames a real server really sends and accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from tests.conftest import RunningServer
from tests.flows.support import Module, create_workflow, execute, wait_run, workflow_body

ROOT = Path(__file__).resolve().parent.parent.parent


def _payload(doc: dict[str, Any], name: str) -> Draft202012Validator:
    return Draft202012Validator(doc["components"]["messages"][name]["payload"])


async def test_real_frames_match_the_asyncapi_document(server: RunningServer) -> None:
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.") and doc["channels"]["module"]["address"] == "/websocket"
    for message in doc["components"]["messages"].values():
        Draft202012Validator.check_schema(message["payload"])

    module = await Module.online(server, "async-api")
    wid = await create_workflow(server, workflow_body("协议", [module.hash]))
    run_id = await execute(server, wid)
    command = await module.recv_execute()
    assert not list(_payload(doc, "execute").iter_errors(command)), command

    assert module.ws is not None
    await module.ws.write_message(json.dumps({"type": "bogus"}))
    error = await module.recv()
    assert not list(_payload(doc, "error").iter_errors(error)), error

    meta = command["meta"]
    result = {"type": "result", "status": "success", "workflow_id": str(meta["workflow_id"]),
              "workflow_name": meta["workflow_name"], "module_name": module.name, "error": None,
              "message": "ok", "run_id": meta["run_id"]}
    assert not list(_payload(doc, "result").iter_errors(result))
    await module.ws.write_message(json.dumps(result))
    ack = await module.recv()
    assert not list(_payload(doc, "resultAck").iter_errors(ack)), ack
    assert (await wait_run(server, run_id))["status"] == "success"
    # A frame the document calls invalid is refused by the server too.
    assert list(_payload(doc, "result").iter_errors({"type": "result", "status": "done"}))
    await module.ws.write_message(json.dumps({"type": "result", "status": "done"}))
    assert (await module.recv())["type"] == "error"


async def test_data_ordered_frames_match_the_asyncapi_document(server: RunningServer) -> None:
    """`output` in a result and `meta.inputs` in the consumer's execute, as documented."""
    from tests.flows.test_data_order_runs import chain, result_with_output

    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    fetch, features, _model = await chain(server)
    wid = await create_workflow(server, workflow_body(modules=[fetch.hash, features.hash], order="data"))
    await execute(server, wid)
    first = await fetch.recv_execute()
    assert not list(_payload(doc, "execute").iter_errors(first)), first
    result = {"type": "result", "status": "success", "run_id": first["meta"]["run_id"], "output": {"rows": 3}}
    assert not list(_payload(doc, "result").iter_errors(result))
    assert await result_with_output(fetch, first, {"rows": 3}) == "receive result"
    second = await features.recv_execute()
    assert second["meta"]["inputs"] == {"prices": {"rows": 3}}
    assert not list(_payload(doc, "execute").iter_errors(second)), second
    assert list(_payload(doc, "execute").iter_errors({**second, "meta": {**second["meta"], "inputs": [1]}}))


def test_every_close_code_the_server_uses_is_documented() -> None:
    from tornado_sched import protocol

    description = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())["info"]["description"]
    codes = {value for name, value in vars(protocol).items() if name.startswith("CLOSE_")}
    assert {4000, 4008, 4401, 4404, 1001} <= codes
    assert not [code for code in codes if str(code) not in description], description
