"""Hostile bodies, parameters and frames (the issue's 1,417-request sweep): each is a
400 envelope naming the field, or an error frame with the session left open; nothing
is stored and nothing answers 500."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.conftest import RunningServer
from tests.support.rawclient import eventually, open_socket, receive_json, register
from tornado_sched.payload import MAX_DEPTH, PayloadError, read_json

DEEP = "[" * 10_000 + "]" * 10_000
DEEP_500 = "[" * 500 + "]" * 500


def _workflow(module_hash: str, args: str = "{}", **fields: str) -> bytes:
    """A workflow body as raw text, so that non-JSON-from-Python values fit in."""
    extra = "".join(f', "{k}": {v}' for k, v in fields.items())
    return (
        '{"name": "hostile", "enable": false, "execute_cron_list": ["0 10 * * 1-5"]'
        f', "execute_modules": [{{"module_hash": "{module_hash}", "args": {args}}}]{extra}}}'
    ).encode()


# (case, body builder, field named in the 400)
WORKFLOW_CASES = [
    ("nested 10,000 deep", lambda h: _workflow(h, DEEP), "body"),
    ("nested 500 deep", lambda h: _workflow(h, '{"a": ' + DEEP_500 + "}"), "execute_modules"),
    ("lone surrogate in name", lambda h: _workflow(h, name='"x\\ud800"').replace(b'"name": "hostile", ', b""), "name"),
    ("lone surrogate in args", lambda h: _workflow(h, '{"s": "\\udfff"}'), "execute_modules"),
    ("lone surrogate in a key", lambda h: _workflow(h, '{"\\ud800": 1}'), "execute_modules"),
    ("NUL in args", lambda h: _workflow(h, '{"s": "a\\u0000b"}'), "execute_modules"),
    ("args over 65,535 bytes as JSON", lambda h: _workflow(h, '{"s": "' + "x" * 70_000 + '"}'), "execute_modules"),
    ("20,000-character timezone", lambda h: _workflow(h, timezone=json.dumps("A" * 20_000)), "timezone"),
    ("1e30-sized integer in args", lambda h: _workflow(h, '{"n": ' + "1" + "0" * 30 + "}"), "body"),
    ("negative huge integer", lambda h: _workflow(h, '{"n": -' + "9" * 25 + "}"), "body"),
    ("NaN in args", lambda h: _workflow(h, '{"x": NaN}'), "body"),
    ("Infinity in args", lambda h: _workflow(h, '{"x": -Infinity}'), "body"),
    ("1e400 (overflows to inf)", lambda h: _workflow(h, '{"x": 1e400}'), "body"),
    ("invalid UTF-8", lambda h: _workflow(h, '{"x": "\xff"}'.encode("latin-1").decode("latin-1")).replace(
        b"\xc3\xbf", b"\xff"), "body"),
]


@pytest.mark.parametrize(("case", "build", "field"), WORKFLOW_CASES, ids=[c[0] for c in WORKFLOW_CASES])
async def test_hostile_workflow_bodies_are_400s_naming_the_field(
    server: RunningServer, case: str, build: object, field: str
) -> None:
    module_hash = (await register(server.base_url, "target"))["hash"]
    body = build(module_hash)  # type: ignore[operator]
    response = await server.fetch(
        "/workflow/create", "POST", body=body, headers={"Content-Type": "application/json"}
    )
    envelope = json.loads(response.body)
    assert response.code == 400, (case, response.code, envelope)
    assert envelope["code"] == "4000" and envelope["result"] == {"field": field}, (case, envelope)
    assert len(envelope["message"]) < 400, envelope  # names the problem, echoes no payload
    assert await server.ctx.docs["workflows"].count_documents({}) == 0
    # The same body through PUT on an existing workflow: refused and nothing changes.
    status, env = await server.api("/workflow/create", "POST", json_body={"name": "kept", "enable": False})
    assert status == 200, env
    workflow_id = env["result"]["workflow_id"]
    before = await server.ctx.docs["workflows"].find_one({"workflow_id": workflow_id}, {"_id": 0})
    response = await server.fetch(
        f"/workflow/{workflow_id}", "PUT", body=body, headers={"Content-Type": "application/json"}
    )
    assert response.code == 400, (case, response.code, response.body[:300])
    after = await server.ctx.docs["workflows"].find_one({"workflow_id": workflow_id}, {"_id": 0})
    assert after == before


@pytest.mark.parametrize(("message", "field"), [
    (DEEP, "body"),
    ('"\\ud800"', "message"),
    ('{"n": 1' + "0" * 30 + "}", "body"),
    ("NaN", "body"),
])
async def test_send_message_refuses_hostile_messages(server: RunningServer, message: str, field: str) -> None:
    module_hash = (await register(server.base_url, "target"))["hash"]
    body = f'{{"module_hash": "{module_hash}", "message": {message}}}'
    response = await server.fetch("/module/send_message", "POST", body=body,
                                  headers={"Content-Type": "application/json"})
    envelope = json.loads(response.body)
    assert response.code == 400 and envelope["result"] == {"field": field}, envelope


async def test_register_refuses_deep_requirements_and_nul(server: RunningServer) -> None:
    deep = quote("[" * 10_000 + "]" * 10_000)
    status, env = await server.api(f"/module/register?name=deep&input_data={deep}")
    assert status == 400 and env["result"] == {"field": "input_data"}, env
    status, env = await server.api("/module/register", "POST", body='{"name": "a\\u0000b"}',
                                   headers={"Content-Type": "application/json"})
    assert status == 400 and env["result"] == {"field": "name"}, env
    assert await server.ctx.docs["modules"].count_documents({}) == 0
    # In a query string Tornado already replaces control characters: no NUL gets through.
    status, env = await server.api("/module/register?name=a%00b")
    assert status == 200, env
    names = [doc["name"] async for doc in server.ctx.docs["modules"].find({}, {"name": 1})]
    assert len(names) == 1 and "\x00" not in names[0], names


HOSTILE_FRAMES = [
    ("nested 10,000 deep", '{"type": "result", "status": "success", "message": ' + DEEP + "}"),
    ("lone surrogate", '{"type": "result", "status": "success", "message": "\\ud800"}'),
    ("NUL in the message", '{"type": "result", "status": "success", "message": "a\\u0000b"}'),
    ("NaN", '{"type": "result", "status": "success", "message": NaN}'),
    ("1e30 integer", '{"type": "result", "status": "success", "workflow_id": 1' + "0" * 30 + "}"),
    ("1e400", '{"type": "result", "status": "success", "message": {"x": 1e400}}'),
]


async def test_hostile_frames_get_an_error_frame_and_the_session_stays(server: RunningServer) -> None:
    module_hash = (await register(server.base_url, "hostile-frames"))["hash"]
    conn = await open_socket(server.ws_url, module_hash)
    try:
        await eventually(lambda: server.ctx.hub.is_online(module_hash))
        session = server.ctx.hub.session(module_hash)
        for case, frame in HOSTILE_FRAMES:
            await conn.send(frame)
            reply = await receive_json(conn)
            assert reply["type"] == "error" and reply["error"], (case, reply)
            assert conn.close_code is None, case
        # Still the same session, still answering.
        assert server.ctx.hub.session(module_hash) is session
        await conn.send("not json")
        assert (await receive_json(conn))["error"] == "not JSON"
    finally:
        await conn.close()


def test_reader_rules_directly() -> None:
    """The reader itself: limits at their edges."""
    ok = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    read_json(ok)
    with pytest.raises(PayloadError, match="nested deeper"):
        read_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert read_json(str(2**63 - 1)) == 2**63 - 1
    with pytest.raises(PayloadError, match="64-bit"):
        read_json(str(2**63))
    with pytest.raises(PayloadError) as err:
        read_json('{"a": [0, {"b": "\\ud83d"}]}', where="")
    assert err.value.where == "a[1].b" and err.value.field == "a"
    assert read_json('"\\ud83d\\ude00"') == "😀"  # a proper pair is fine


@pytest.mark.parametrize("raw", [
    '{"a": [1, -2.5e3, true, null, "é\\u00e9"]}', b'{"a": 1}', '{"a": 1}'.encode("utf-16"),
    '{"a": 1}'.encode("utf-32-le"), b"\xef\xbb\xbf{}", "\ufeff{}", b'{"a": "\xff"}', "[1,]", '"x" 1',
])
def test_the_reader_takes_what_json_loads_takes(raw: str | bytes) -> None:
    # read_json keeps one decoder instead of json.loads' per-call one: same input
    # handling (encodings, BOM, errors), the same value.
    try:
        expected: object = json.loads(raw)
    except ValueError:
        expected = PayloadError
    try:
        got: object = read_json(raw)
    except PayloadError:
        got = PayloadError
    assert got == expected
