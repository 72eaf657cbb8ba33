"""The seed's module API against the real server: register, online, send_message, plus
list / detail / delete. Sockets are real (the raw `websockets` client)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import RunningServer
from tests.support.rawclient import (
    REGISTRATION_TOKEN,
    eventually,
    open_socket,
    receive,
    refused_status,
    register,
    wait_closed,
)

REQUIREMENTS = [{"name": "stock_list", "type": "list"}, {"name": "trade_date"}]


async def register_get(server: RunningServer, **params: Any) -> tuple[int, dict[str, Any]]:
    """`GET /module/register` with the token parameter (no operator credentials)."""
    query = {"token": REGISTRATION_TOKEN, **params}
    for key in ("input_data", "output_data"):
        if key in query and not isinstance(query[key], str):
            query[key] = json.dumps(query[key])
    return await server.api("/module/register?" + urlencode(query), auth=None)


async def module_docs(server: RunningServer) -> list[dict[str, Any]]:
    return [d async for d in server.ctx.docs["modules"].find({}, {"_id": 0}).sort("module_id", 1)]


# -- register -------------------------------------------------------------------------
async def test_register_by_get_returns_a_random_hash_and_sequential_ids(
    server: RunningServer,
) -> None:
    status, first = await register_get(
        server,
        name="alpha",
        description="d",
        input_data=REQUIREMENTS,
        output_data=[],
        modelHash="m1",
    )
    assert status == 200 and first["code"] == "2000" and first["message"] == "成功!", first
    status, second = await register_get(server, name="beta")
    assert status == 200, second
    a, b = first["result"], second["result"]
    assert set(a) == {"hash", "module_id"}
    assert b["module_id"] == a["module_id"] + 1
    for h in (a["hash"], b["hash"]):
        assert re.fullmatch(r"[0-9a-f]{32,}", h), h  # at least 128 bits of hex
    assert a["hash"] != b["hash"]

    # Not derived from public fields: the same name registered afresh gets a new hash.
    assert (await server.api(f"/module/{a['hash']}", "DELETE"))[0] == 200
    _, again = await register_get(
        server, name="alpha", description="d", input_data=REQUIREMENTS, modelHash="m1"
    )
    assert again["result"]["hash"] != a["hash"]
    assert again["result"]["module_id"] == b["module_id"] + 1


async def test_registering_again_updates_fields_and_keeps_identity(server: RunningServer) -> None:
    _, first = await register_get(
        server, name="gamma", description="old", input_data=REQUIREMENTS, modelHash="m1"
    )
    new_inputs = [{"name": "fund_list"}]
    status, second = await server.api(
        "/module/register",
        "POST",
        json_body={
            "name": "gamma",
            "description": "new",
            "input_data": new_inputs,
            "output_data": json.dumps([{"name": "signal"}]),
            "modelHash": "m2",
        },
    )
    assert status == 200, second
    assert second["result"] == first["result"]
    status, detail = await server.api(f"/module/{first['result']['hash']}")
    assert status == 200
    item = detail["result"]
    assert item["description"] == "new" and item["modelHash"] == "m2"
    assert item["input_data"] == new_inputs and item["output_data"] == [{"name": "signal"}]
    assert len(await module_docs(server)) == 1


async def test_concurrent_registrations_of_one_name_make_one_module(server: RunningServer) -> None:
    results = await asyncio.gather(
        *(register_get(server, name="burst", description=str(i)) for i in range(6))
    )
    # With the token alone, exactly one caller creates it; the others do not hold its
    # hash and are refused (403) without learning it.
    winners = [envelope["result"] for status, envelope in results if status == 200]
    assert len(winners) == 1, results
    assert {status for status, _ in results} == {200, 403}, results
    assert all(winners[0]["hash"] not in json.dumps(envelope) for status, envelope in results if status == 403)
    docs = await module_docs(server)
    assert [d["name"] for d in docs] == ["burst"]
    assert docs[0]["module_id"] == winners[0]["module_id"]
    # Operator credentials keep the seed's "same name -> same hash", concurrently too.
    by_admin = await asyncio.gather(*(server.api("/module/register?name=burst") for _ in range(4)))
    assert {(status, envelope["result"]["hash"]) for status, envelope in by_admin} == {(200, winners[0]["hash"])}

    # HTTP requests tend to arrive one after another; the core's own race (every
    # caller sees no document, all insert, the unique index picks one) needs
    # coroutines started together.
    records = await asyncio.gather(
        *(server.ctx.registry.register("burst-2", str(i), [], [], "") for i in range(6))
    )
    assert len({(r.hash, r.module_id) for r in records}) == 1
    assert [d["name"] for d in await module_docs(server)] == ["burst", "burst-2"]


async def test_register_by_post_form_and_json(server: RunningServer) -> None:
    form = urlencode(
        {
            "name": "form-module",
            "description": "by form",
            "input_data": json.dumps(REQUIREMENTS),
            "modelHash": "f",
        }
    )
    status, by_form = await server.api(
        "/module/register",
        "POST",
        body=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200, by_form
    status, by_json = await server.api(
        "/module/register",
        "POST",
        json_body={"name": "json-module", "input_data": json.dumps(REQUIREMENTS)},
    )
    assert status == 200, by_json
    docs = {d["name"]: d for d in await module_docs(server)}
    assert docs["form-module"]["description"] == "by form"
    assert docs["form-module"]["input_data"] == REQUIREMENTS
    assert docs["json-module"]["input_data"] == REQUIREMENTS
    assert docs["form-module"]["hash"] == by_form["result"]["hash"]


async def test_registration_needs_a_token_or_operator_credentials(server: RunningServer) -> None:
    path = "/module/register?" + urlencode({"name": "cred"})
    status, envelope = await server.api(path + "&token=" + REGISTRATION_TOKEN, auth=None)
    assert status == 200, envelope
    current = envelope["result"]["hash"]
    status, by_header = await server.api(
        path, auth=None, headers={"X-Registration-Token": REGISTRATION_TOKEN, "X-Module-Hash": current}
    )
    assert status == 200 and by_header["result"] == envelope["result"]
    status, by_operator = await server.api(path)  # fixture default: admin Basic credentials
    assert status == 200 and by_operator["result"] == envelope["result"]

    refused = [
        await server.api(path + "&token=wrong-token", auth=None),
        await server.api(path, auth=None, headers={"X-Registration-Token": "wrong-token"}),
        await server.api(path, auth=None),
        await server.api(
            "/module/register", "POST", auth=None, json_body={"name": "cred", "token": "nope"}
        ),
    ]
    for status, body in refused:
        assert status == 401 and body["code"] == "4010", body
    assert [d["name"] for d in await module_docs(server)] == ["cred"]


@pytest.mark.parametrize("field", ["input_data", "output_data"])
@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        '{"name": "an object, not a list"}',
        '"text"',
        "[1, 2]",
        '[{"type": "no name"}]',
        '[{"name": 5}]',
        '[{"name": ""}]',
        '[{"name": "x", "$where": "1"}]',
    ],
    ids=[
        "malformed",
        "object",
        "string",
        "numbers",
        "no-name",
        "int-name",
        "empty-name",
        "dollar-key",
    ],
)
async def test_bad_data_requirements_are_refused_naming_the_field(
    server: RunningServer, field: str, raw: str
) -> None:
    status, envelope = await register_get(server, name="bad", **{field: raw})
    assert status == 400, envelope
    assert envelope["code"] == "4000"
    assert envelope["result"] == {"field": field}
    assert field in envelope["message"]
    assert await module_docs(server) == []


async def test_operator_objects_in_json_fields_are_refused(server: RunningServer) -> None:
    _, created = await register_get(server, name="target", description="keep")
    module_hash = created["result"]["hash"]
    before = await module_docs(server)
    cases = [
        ("/module/register", {"name": {"$ne": None}}, "name"),
        ("/module/register", {"name": "target", "description": {"$gt": ""}}, "description"),
        ("/module/register", {"name": "target", "modelHash": {"$ne": None}}, "modelHash"),
        ("/module/send_message", {"module_hash": {"$ne": None}, "message": "hi"}, "module_hash"),
        ("/module/send_message", {"module_hash": module_hash, "message": {"$ne": None}}, "message"),
        (
            "/module/send_message",
            {"module_hash": module_hash, "message": {"a": [{"$set": 1}]}},
            "message",
        ),
    ]
    for path, body, field in cases:
        status, envelope = await server.api(path, "POST", json_body=body)
        assert status == 400, (body, envelope)
        assert envelope["code"] == "4000" and envelope["result"] == {"field": field}, (
            body,
            envelope,
        )
    assert await module_docs(server) == before


# -- online / list / detail -------------------------------------------------------------
async def test_online_lists_connected_modules_with_their_details(server: RunningServer) -> None:
    a = await register(server.base_url, "online-a", description="first")
    await register(server.base_url, "offline-b")
    status, envelope = await server.api("/module/online")
    assert status == 200 and envelope["result"] == []

    conn = await open_socket(server.ws_url, a["hash"])
    try:
        await eventually(lambda: server.ctx.hub.is_online(a["hash"]))
        status, envelope = await server.api("/module/online")
        assert status == 200
        [item] = envelope["result"]
        assert {
            "hash",
            "module_id",
            "name",
            "description",
            "connected_at",
            "last_heartbeat",
            "remote_address",
        } <= set(item)
        assert item["hash"] == a["hash"] and item["module_id"] == a["module_id"]
        assert item["name"] == "online-a" and item["description"] == "first"
        assert item["remote_address"] == "127.0.0.1"
        connected = datetime.fromisoformat(item["connected_at"])
        assert connected.tzinfo is not None
        assert datetime.fromisoformat(item["last_heartbeat"]) >= connected

        _, listing = await server.api("/module/list")
        flags = {m["name"]: m["online"] for m in listing["result"]}
        assert flags == {"online-a": True, "offline-b": False}
    finally:
        await conn.close()
    await eventually(lambda: not server.ctx.hub.is_online(a["hash"]))
    _, envelope = await server.api("/module/online")
    assert envelope["result"] == []


async def test_module_detail_found_and_not_found(server: RunningServer) -> None:
    created = await register(server.base_url, "detail", description="x", input_data=REQUIREMENTS)
    status, envelope = await server.api(f"/module/{created['hash']}")
    assert status == 200
    item = envelope["result"]
    assert item["name"] == "detail" and item["module_id"] == created["module_id"]
    assert item["online"] is False and item["input_data"] == REQUIREMENTS
    status, envelope = await server.api("/module/" + "0" * 40)
    assert status == 404 and envelope["code"] == "4040"


# -- delete -----------------------------------------------------------------------------
async def test_delete_closes_the_session_with_4404_and_forgets_the_module(
    server: RunningServer,
) -> None:
    created = await register(server.base_url, "doomed")
    conn = await open_socket(server.ws_url, created["hash"])
    await eventually(lambda: server.ctx.hub.is_online(created["hash"]))

    status, envelope = await server.api(f"/module/{created['hash']}", "DELETE")
    assert status == 200 and envelope["result"]["deleted"] is True, envelope
    assert await wait_closed(conn) == (4404, "module deleted")
    await eventually(lambda: not server.ctx.hub.is_online(created["hash"]))
    assert (await server.api(f"/module/{created['hash']}"))[0] == 404
    assert (await server.api(f"/module/{created['hash']}", "DELETE"))[0] == 404
    assert await module_docs(server) == []
    # The hash is no credential any more.
    assert await refused_status(server.ws_url, created["hash"]) == 403


async def test_delete_is_refused_while_a_workflow_uses_the_module(server: RunningServer) -> None:
    created = await register(server.base_url, "in-use")
    await server.ctx.docs["workflows"].insert_one(
        {"workflow_id": 1, "name": "w", "module_hashes": [created["hash"]]}
    )
    status, envelope = await server.api(f"/module/{created['hash']}", "DELETE")
    assert status == 409 and envelope["code"] == "4090", envelope
    assert (await server.api(f"/module/{created['hash']}"))[0] == 200


# -- send_message -----------------------------------------------------------------------
async def test_send_message_delivers_text_and_json_to_the_socket(server: RunningServer) -> None:
    created = await register(server.base_url, "listener")
    conn = await open_socket(server.ws_url, created["hash"])
    try:
        await eventually(lambda: server.ctx.hub.is_online(created["hash"]))
        status, envelope = await server.api(
            "/module/send_message",
            "POST",
            body=urlencode({"module_hash": created["hash"], "message": "你好, module"}),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 200 and envelope["code"] == "2000" and "message" in envelope["result"], (
            envelope
        )
        assert await receive(conn) == "你好, module"

        payload = {
            "type": "execute",
            "meta": {"workflow_id": 3},
            "args": {"stock_list": ["600000"]},
        }
        status, envelope = await server.api(
            "/module/send_message",
            "POST",
            json_body={"module_hash": created["hash"], "message": payload},
        )
        assert status == 200, envelope
        assert json.loads(await receive(conn)) == payload
    finally:
        await conn.close()


async def test_send_message_errors(server: RunningServer) -> None:
    created = await register(server.base_url, "quiet")
    cases = [
        (
            {"module_hash": created["hash"], "message": "hi"},
            409,
            "4090",
        ),  # registered, not connected
        ({"module_hash": "f" * 40, "message": "hi"}, 404, "4040"),
        ({"module_hash": created["hash"]}, 400, "4000"),
        ({"module_hash": created["hash"], "message": ""}, 400, "4000"),
        ({"message": "hi"}, 400, "4000"),
    ]
    for body, want_status, want_code in cases:
        status, envelope = await server.api("/module/send_message", "POST", json_body=body)
        assert (status, envelope["code"]) == (want_status, want_code), (body, envelope)
    status, envelope = await server.api(
        "/module/send_message", "POST", json_body={"module_hash": created["hash"]}
    )
    assert envelope["result"] == {"field": "message"}
