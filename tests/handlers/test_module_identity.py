"""The module hash is a credential: the registration token alone does not reveal an
existing module's hash, an admin can rotate it, and every registration, rotation and
send_message leaves an audit row. Against the real server and real sockets."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode

from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import MakeServer, RunningServer
from tests.support.rawclient import REGISTRATION_TOKEN, open_socket, register


async def _by_token(server: RunningServer, name: str, **headers: str) -> tuple[int, dict[str, Any]]:
    return await server.api("/module/register?" + urlencode({"name": name, "description": "taken over"}),
                            auth=None, headers={"X-Registration-Token": REGISTRATION_TOKEN, **headers})


async def _module_doc(server: RunningServer, name: str) -> dict[str, Any]:
    doc = await server.ctx.docs["modules"].find_one({"name": name})
    assert doc is not None
    return doc


async def test_the_token_alone_does_not_reveal_an_existing_modules_hash(server: RunningServer) -> None:
    victim = await register(server.base_url, "victim", description="original")

    status, envelope = await _by_token(server, "victim")
    assert status == 403 and envelope["code"] == "4030", envelope
    assert envelope["result"] == {"field": "module_hash"}
    assert victim["hash"] not in json.dumps(envelope)
    # A wrong guess is refused the same way, and nothing changed.
    status, envelope = await _by_token(server, "victim", **{"X-Module-Hash": "0" * 40})
    assert status == 403, envelope
    assert (await _module_doc(server, "victim"))["description"] == "original"

    # The holder of the hash re-registers (header or parameter) and keeps its identity.
    status, envelope = await _by_token(server, "victim", **{"X-Module-Hash": victim["hash"]})
    assert status == 200 and envelope["result"] == victim, envelope
    status, envelope = await server.api("/module/register?" + urlencode(
        {"name": "victim", "token": REGISTRATION_TOKEN, "module_hash": victim["hash"]}), auth=None)
    assert status == 200 and envelope["result"] == victim, envelope
    # Operator credentials keep the seed's "same name -> same hash".
    status, envelope = await server.api("/module/register?name=victim")
    assert status == 200 and envelope["result"] == victim, envelope

    # Every registration is audited under who made it; the refused ones changed nothing.
    entries = (await server.api("/audit?page_size=100"))[1]["result"]["entries"]
    actors = [e["actor"] for e in entries if e["action"] == "register" and e["target"] == f"module:{victim['module_id']}"]
    assert actors == ["admin", "registration-token", "registration-token", "registration-token"], actors


async def test_hash_guesses_on_registration_count_in_the_login_throttle(make_server: MakeServer) -> None:
    server = await make_server(login_slow_after=100, login_block_after=3)
    victim = await register(server.base_url, "victim")
    for _ in range(3):
        status, _envelope = await _by_token(server, "victim", **{"X-Module-Hash": "f" * 40})
        assert status == 403
    status, envelope = await _by_token(server, "victim", **{"X-Module-Hash": victim["hash"]})
    assert status == 429 and envelope["code"] == "4290", envelope


async def test_admin_rotates_a_hash_the_old_socket_closes_and_workflows_follow(server: RunningServer) -> None:
    module = await register(server.base_url, "rotating")
    status, env = await server.api("/workflow/create", "POST", json_body={
        "name": "uses-rotating", "execute_cron_list": ["0 3 * * *"],
        "execute_modules": [{"module_hash": module["hash"], "args": {"a": 1}},
                            {"module_hash": module["hash"], "args": {"a": 2}}],
    })
    assert status == 200, env
    workflow_id = env["result"]["workflow_id"]
    old_socket = await open_socket(server.ws_url, module["hash"])
    for _ in range(50):
        if server.ctx.hub.is_online(module["hash"]):
            break
        await asyncio.sleep(0.02)

    # Viewers and the registration token cannot rotate.
    await server.ctx.accounts.create("viewer1", "viewer-pass-1", "viewer")
    assert (await server.api(f"/module/{module['hash']}/rotate", "POST", auth=("viewer1", "viewer-pass-1")))[0] == 403
    assert (await server.api(f"/module/{module['hash']}/rotate", "POST", auth=None,
                             headers={"X-Registration-Token": REGISTRATION_TOKEN}))[0] == 401

    status, env = await server.api(f"/module/{module['hash']}/rotate", "POST")
    assert status == 200, env
    new_hash = env["result"]["hash"]
    assert new_hash != module["hash"] and env["result"]["module_id"] == module["module_id"]

    # The old socket is closed, the old hash opens nothing, the new one does.
    try:
        await asyncio.wait_for(old_socket.recv(), 5)
        raise AssertionError("the old socket stayed open")
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 4401, closed
    try:
        await open_socket(server.ws_url, module["hash"])
        raise AssertionError("the old hash still opens a socket")
    except InvalidStatus as refused:
        assert refused.response.status_code == 403
    new_socket = await open_socket(server.ws_url, new_hash)
    for _ in range(50):
        if server.ctx.hub.is_online(new_hash):
            break
        await asyncio.sleep(0.02)

    workflow = (await server.api(f"/workflow/{workflow_id}"))[1]["result"]
    assert [m["module_hash"] for m in workflow["execute_modules"]] == [new_hash, new_hash]
    assert [m["args"] for m in workflow["execute_modules"]] == [{"a": 1}, {"a": 2}]
    # The schedule follows too: a tick (what APScheduler runs) sends to the new hash.
    await server.ctx.scheduler._fire(workflow_id)
    commands = [json.loads(await asyncio.wait_for(new_socket.recv(), 5)) for _ in range(2)]
    assert sorted(c["args"]["a"] for c in commands) == [1, 2]
    await new_socket.close()
    assert (await server.api(f"/module/{module['hash']}/rotate", "POST"))[0] == 404

    status, env = await server.api("/audit?page_size=100")
    rows = [(e["actor"], e["action"], e["target"]) for e in env["result"]["entries"]]
    assert ("admin", "rotate_hash", f"module:{module['module_id']}") in rows
    assert ("registration-token", "register", f"module:{module['module_id']}") in rows
    assert new_hash not in json.dumps(env) and module["hash"] not in json.dumps(env)


async def test_send_message_leaves_an_audit_row(server: RunningServer) -> None:
    module = await register(server.base_url, "listener")
    socket = await open_socket(server.ws_url, module["hash"])
    for _ in range(50):
        if server.ctx.hub.is_online(module["hash"]):
            break
        await asyncio.sleep(0.02)
    status, env = await server.api("/module/send_message", "POST",
                                   json_body={"module_hash": module["hash"], "message": "hello"})
    assert status == 200, env
    assert await asyncio.wait_for(socket.recv(), 5) == "hello"
    await socket.close()
    entries = (await server.api("/audit"))[1]["result"]["entries"]
    sent = [e for e in entries if e["action"] == "send_message"]
    assert len(sent) == 1 and sent[0]["actor"] == "admin", entries
    assert module["hash"] not in json.dumps(sent) and sent[0]["detail"] == {"bytes": 5}
