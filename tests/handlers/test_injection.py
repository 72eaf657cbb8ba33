"""Operator objects (`{"$ne": null}`, `{"$gt": ""}`) in every JSON field that reaches a
query are refused with 400 and change nothing.

Each case is sent to the real server; the stores are compared before and after.
Register cases reuse the name of an existing, online module, so a field that slipped
through would update it, and send_message cases would reach its socket.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection

from tests.conftest import RunningServer
from tests.support.history import stored_run
from tests.support.rawclient import REGISTRATION_TOKEN, eventually, open_socket, register
from tornado_sched.tables import api_tokens, audit_log, operators

OPERATORS: list[Any] = [{"$ne": None}, {"$gt": ""}]
VOLATILE = ("online", "last_heartbeat", "connected_at", "remote_address")


@dataclass
class Target:
    server: RunningServer
    module_name: str
    module_hash: str
    workflow_id: int
    socket: ClientConnection


@pytest.fixture
async def target(server: RunningServer) -> AsyncIterator[Target]:
    module = await register(server.base_url, "victim", input_data=[{"name": "stock_list"}], model_hash="m1")
    socket = await open_socket(server.ws_url, module["hash"])

    async def stored_online() -> bool:
        doc = await server.ctx.docs["modules"].find_one({"hash": module["hash"]})
        return bool(doc and doc.get("online"))

    await eventually(stored_online)
    status, env = await server.api("/workflow/create", "POST", json_body={
        "name": "baseline", "execute_cron_list": ["0 3 * * *"],
        "execute_modules": [{"module_hash": module["hash"], "args": {"k": "v"}}],
    })
    assert status == 200, env
    await server.ctx.tokens.create("admin", "existing")
    yield Target(server, "victim", module["hash"], env["result"]["workflow_id"], socket)
    await socket.close()


async def _snapshot(server: RunningServer) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name in ("modules", "workflows", "runs", "counters"):
        docs = [d async for d in server.ctx.docs[name].find({}).sort("_id", 1)]
        state[name] = [{k: v for k, v in d.items() if k not in VOLATILE} for d in docs]
    async with server.ctx.sql.engine.connect() as conn:
        for table in (api_tokens, audit_log, operators):
            state[table.name] = (await conn.execute(select(table).order_by(table.c.id))).all()
    return state


async def _refused(target: Target, cases: list[tuple[str, str, Any]]) -> None:
    """Every case answers 400 with the envelope; the stores are unchanged after all."""
    server = target.server
    before = await _snapshot(server)
    assert before["modules"] and before["workflows"] and before["api_tokens"]
    for method, path, body in cases:
        kwargs: dict[str, Any] = {"json_body": body} if body is not None else {}
        status, env = await server.api(path, method, **kwargs)
        assert status == 400, (method, path, body, status, env)
        assert env["code"] == "4000", env
        assert env["result"] is None or set(env["result"]) == {"field"}, env
    after = await _snapshot(server)
    for key in before:
        assert after[key] == before[key], key


def _with(base: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    return {**base, field: value}


async def test_module_register(target: Target) -> None:
    base = {"name": target.module_name, "description": "new", "modelHash": "m2",
            "input_data": [{"name": "x"}], "output_data": []}
    cases: list[tuple[str, str, Any]] = []
    for op in OPERATORS:
        for field in ("name", "description", "modelHash", "input_data", "output_data"):
            cases.append(("POST", "/module/register", _with(base, field, op)))
        for field in ("input_data", "output_data"):
            cases.append(("POST", "/module/register", _with(base, field, [op])))
            cases.append(("POST", "/module/register", _with(base, field, [{"name": op}])))
            cases.append(("POST", "/module/register", _with(base, field, [{"name": "x", "$where": "1"}])))
            cases.append(("POST", "/module/register", _with(base, field, json.dumps([{"name": op}]))))
            cases.append(("POST", "/module/register", _with(base, field, json.dumps(op))))
    cases.append(("POST", "/module/register", [{"name": {"$ne": None}}]))
    # The seed's GET form: brackets are not parsed into objects, values stay strings.
    for query in ({"name[$ne]": "x"}, {"name": target.module_name, "input_data": json.dumps([{"name": {"$ne": None}}])},
                  {"name": target.module_name, "output_data": json.dumps({"$gt": ""})}):
        cases.append(("GET", "/module/register?" + urlencode({**query, "token": REGISTRATION_TOKEN}), None))
    await _refused(target, cases)


async def test_module_send_message(target: Target) -> None:
    base = {"module_hash": target.module_hash, "message": "hello"}
    cases: list[tuple[str, str, Any]] = []
    for op in OPERATORS:
        cases.append(("POST", "/module/send_message", _with(base, "module_hash", op)))
        cases.append(("POST", "/module/send_message", _with(base, "message", op)))
        cases.append(("POST", "/module/send_message", _with(base, "message", {"data": [op]})))
        cases.append(("POST", "/module/send_message", _with(base, "module_hash", [target.module_hash])))
    cases.append(("POST", "/module/send_message?" + urlencode({"module_hash[$ne]": "x", "message": "hi"}), None))
    await _refused(target, cases)
    with pytest.raises(TimeoutError):
        message = await asyncio.wait_for(target.socket.recv(), 0.3)
        raise AssertionError(f"a refused send_message reached the module: {message!r}")
    # The same call with plain values goes through: the refusals were the operators.
    status, env = await target.server.api("/module/send_message", "POST", json_body=base)
    assert status == 200, env
    assert await asyncio.wait_for(target.socket.recv(), 5) == "hello"


WORKFLOW_FIELDS = ("name", "description", "enable", "execute_cron_list", "execute_shift_time",
                   "execute_shift_unit", "execute_modules", "timezone", "timeout_seconds", "overlap",
                   "misfire", "misfire_grace_seconds", "retries", "retry_delay_seconds")


def _workflow_cases(method: str, path: str, base: dict[str, Any], module_hash: str) -> list[tuple[str, str, Any]]:
    cases: list[tuple[str, str, Any]] = []
    for op in OPERATORS:
        for field in WORKFLOW_FIELDS:
            cases.append((method, path, _with(base, field, op)))
        nested = {
            "execute_cron_list": [["0 3 * * *", op], [op]],
            "execute_modules": [
                [{"module_hash": op, "args": {}}],
                [{"module_hash": module_hash, "args": op}],
                [{"module_hash": module_hash, "args": {"stock_list": op}}],
                [op],
            ],
            "name": [[op]],
        }
        for field, values in nested.items():
            for value in values:
                cases.append((method, path, _with(base, field, value)))
    cases.append((method, path, [{"name": {"$ne": None}}]))
    return cases


async def test_workflow_create(target: Target) -> None:
    base = {"name": "injected", "execute_cron_list": ["0 4 * * *"],
            "execute_modules": [{"module_hash": target.module_hash, "args": {}}]}
    await _refused(target, _workflow_cases("POST", "/workflow/create", base, target.module_hash))
    # Control: the base body itself is accepted.
    assert (await target.server.api("/workflow/create", "POST", json_body=base))[0] == 200


async def test_workflow_update(target: Target) -> None:
    path = f"/workflow/{target.workflow_id}"
    await _refused(target, _workflow_cases("PUT", path, {}, target.module_hash))
    assert (await target.server.api(path, "PUT", json_body={"description": "fine"}))[0] == 200


async def test_tokens(target: Target) -> None:
    cases: list[tuple[str, str, Any]] = []
    for op in OPERATORS:
        cases.append(("POST", "/tokens", {"name": op}))
        cases.append(("POST", "/tokens", {"name": "x", "username": op}))
        cases.append(("POST", "/tokens", {"name": [op]}))
    await _refused(target, cases)


async def test_query_string_filters(target: Target) -> None:
    """Query strings only carry strings: bracket keys are unknown parameters (ignored),
    and JSON text where a number or a status belongs is a 400."""
    server = target.server
    # Its module is offline: the run finishes at once, so none is left open.
    offline = await register(server.base_url, "never-connected")
    status, env = await server.api("/workflow/create", "POST", json_body={
        "name": "empty", "enable": False, "execute_modules": [{"module_hash": offline["hash"], "args": {}}]})
    assert status == 200, env
    empty = env["result"]["workflow_id"]
    status, env = await server.api(f"/workflow/{empty}/execute", "POST")
    assert status == 200, env
    run_id = env["result"]["run_id"]

    async def closed() -> bool:
        doc = await stored_run(server, run_id)
        return doc is not None and doc["status"] != "running"

    await eventually(closed)
    unfiltered = (await server.api("/runs"))[1]["result"]
    assert unfiltered["total"] == 1
    for query in ("workflow_id[$ne]=1", "status[$ne]=running", "workflow_id[%24gt]=", "page_size[$gt]=1"):
        status, env = await server.api(f"/runs?{query}")
        assert status == 200 and env["result"]["total"] == unfiltered["total"], (query, env)
    other = (await server.api(f"/runs?workflow_id={target.workflow_id}"))[1]["result"]
    assert other["total"] == 0, "the real filter works, so ignoring brackets is a choice"
    cases: list[tuple[str, str, Any]] = []
    for op in OPERATORS:
        text = urlencode({"v": json.dumps(op)})[2:]
        cases += [("GET", f"/runs?workflow_id={text}", None), ("GET", f"/runs?status={text}", None),
                  ("GET", f"/notifications?status={text}", None), ("GET", f"/audit?page={text}", None),
                  ("GET", f"/workflow/{target.workflow_id}/runs?page_size={text}", None)]
    await _refused(target, cases)
