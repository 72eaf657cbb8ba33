"""`/websocket?hash=...` against the real server with real sockets: the seed's client
flow with the raw client and with the SDK, hot switch, refusals, malformed frames,
ping/pong liveness and batched heartbeat writes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from tests.conftest import RunningServer, make_settings, start_server, stop_server
from tests.support.rawclient import (
    REGISTRATION_TOKEN,
    eventually,
    open_socket,
    receive,
    receive_json,
    refused_status,
    register,
    result_frame,
    send_result,
    wait_closed,
)
from tornado_sched.client import ModuleClient, ModuleReplaced
from tornado_sched.errors import Conflict
from tornado_sched.protocol import RESULT_ACK


async def online_hashes(server: RunningServer) -> list[str]:
    status, envelope = await server.api("/module/online")
    assert status == 200, envelope
    return [item["hash"] for item in envelope["result"]]


async def stored(server: RunningServer, module_hash: str) -> dict[str, Any]:
    doc = await server.ctx.docs["modules"].find_one({"hash": module_hash})
    assert doc is not None
    return doc


def sessions_for(server: RunningServer, module_hash: str) -> list[Any]:
    return [s for s in server.ctx.hub.sessions() if s.module_hash == module_hash]


async def send_message(server: RunningServer, module_hash: str, message: Any) -> None:
    status, envelope = await server.api(
        "/module/send_message", "POST", json_body={"module_hash": module_hash, "message": message}
    )
    assert status == 200, envelope


def async_true(fetch: Any, check: Any) -> Any:
    """A predicate for `eventually` that awaits `fetch()` and tests it with `check`."""

    async def predicate() -> bool:
        return bool(check(await fetch()))

    return predicate




async def answered_not_matched(conn: Any, **fields: Any) -> None:
    """Send a well-formed result for a run the server never started: the session is
    alive and parsed it when the answer is the "matches nothing" error frame."""
    reply = json.loads(await send_result(conn, **{"run_id": "f" * 32, **fields}))
    assert reply == {"type": "error", "error": "result not recorded: unknown run_id " + "f" * 32}, reply


async def answer_a_real_run(server: RunningServer, conn: Any, module_hash: str) -> str | bytes:
    """Execute a one-module workflow and answer its command on `conn` (echoing run_id);
    returns the server's answer."""
    status, env = await server.api("/workflow/create", "POST", json_body={
        "name": f"ws-{module_hash[:8]}-{len(server.ctx.hub.sessions())}-{id(conn)}", "enable": False,
        "execute_cron_list": [], "execute_modules": [{"module_hash": module_hash, "args": {}}],
    })
    assert status == 200, env
    status, env = await server.api(f"/workflow/{env['result']['workflow_id']}/execute", "POST")
    assert status == 200, env
    command = await receive_json(conn)
    assert command["type"] == "execute" and command["meta"]["run_id"] == env["result"]["run_id"]
    return await send_result(conn, run_id=command["meta"]["run_id"], workflow_id=str(command["meta"]["workflow_id"]))


@contextlib.asynccontextmanager
async def custom_server(
    tmp_path: Path, docserver_uri: str, **overrides: Any
) -> AsyncIterator[RunningServer]:
    running, http_server = await start_server(make_settings(tmp_path, docserver_uri, **overrides))
    try:
        yield running
    finally:
        await stop_server(running, http_server)


# -- the seed's client flow, end to end -------------------------------------------------
async def test_seed_client_flow_with_the_raw_client(server: RunningServer) -> None:
    created = await register(server.base_url, "raw-flow", input_data=[{"name": "stock_list"}])
    h = created["hash"]
    first = await open_socket(server.ws_url, h)
    await eventually(lambda: server.ctx.hub.is_online(h))
    assert await online_hashes(server) == [h]
    await eventually(async_true(lambda: stored(server, h), lambda d: d["online"] is True))

    await send_message(server, h, "start")
    assert await receive(first) == "start"

    # Hot switch: the newer connection becomes the session, the old one is told why.
    second = await open_socket(server.ws_url, h)
    assert await wait_closed(first) == (4000, "replaced")
    assert len(sessions_for(server, h)) == 1
    assert await online_hashes(server) == [h]
    await send_message(server, h, "to the new one")
    assert await receive(second) == "to the new one"
    assert await answer_a_real_run(server, second, h) == RESULT_ACK
    await answered_not_matched(second)
    await asyncio.sleep(0.3)  # the replaced socket's close must not mark the module offline
    assert server.ctx.hub.is_online(h)
    assert (await stored(server, h))["online"] is True

    await second.close()
    await eventually(lambda: not server.ctx.hub.is_online(h))
    assert await online_hashes(server) == []
    await eventually(async_true(lambda: stored(server, h), lambda d: d["online"] is False))


async def test_seed_client_flow_with_the_sdk(server: RunningServer) -> None:
    received: asyncio.Queue[str] = asyncio.Queue()

    async def handler(args: dict[str, Any], meta: dict[str, Any]) -> str:
        return "unused"

    first = ModuleClient(
        server.base_url,
        "sdk-flow",
        handler,
        token=REGISTRATION_TOKEN,
        on_message=received.put_nowait,
    )
    first_task = first.start()
    second: ModuleClient | None = None
    try:
        async with asyncio.timeout(5):
            await first.wait_connected()
        h = first.module_hash
        assert h is not None
        await eventually(lambda: server.ctx.hub.is_online(h))
        assert await online_hashes(server) == [h]

        await send_message(server, h, {"note": "hello"})
        assert json.loads(await asyncio.wait_for(received.get(), 5)) == {"note": "hello"}

        second = ModuleClient(
            server.base_url, "sdk-flow", handler, module_hash=h, backoff_base=0.05
        )
        second.start()
        with pytest.raises(ModuleReplaced):
            await asyncio.wait_for(first_task, 5)
        async with asyncio.timeout(5):
            await second.wait_connected()
        assert len(sessions_for(server, h)) == 1
        assert await online_hashes(server) == [h]
        await asyncio.sleep(0.3)
        assert server.ctx.hub.is_online(h) and first.connections == 1

        await second.stop()
        await eventually(lambda: not server.ctx.hub.is_online(h))
        assert await online_hashes(server) == []
        await eventually(async_true(lambda: stored(server, h), lambda d: d["online"] is False))
    finally:
        await first.stop()
        if second is not None:
            await second.stop()


# -- handshake ---------------------------------------------------------------------------
async def test_missing_or_unknown_hash_is_refused_before_a_session_exists(
    server: RunningServer,
) -> None:
    await register(server.base_url, "known")
    assert await refused_status(server.ws_url, None) == 401
    assert await refused_status(server.ws_url, "") == 401
    assert await refused_status(server.ws_url, "a" * 200) == 401
    assert await refused_status(server.ws_url, "0" * 40) == 403
    assert server.ctx.hub.sessions() == []
    assert await online_hashes(server) == []


async def test_connections_racing_for_one_hash_end_with_one_session(server: RunningServer) -> None:
    h = (await register(server.base_url, "racer"))["hash"]
    for _round in range(3):
        a, b = await asyncio.gather(open_socket(server.ws_url, h), open_socket(server.ws_url, h))
        watchers = {asyncio.ensure_future(wait_closed(c)): c for c in (a, b)}
        done, pending = await asyncio.wait(watchers, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        assert len(done) == 1, "exactly one of the two must be replaced"
        loser = watchers[next(iter(done))]
        survivor = b if loser is a else a
        assert (loser.close_code, loser.close_reason) == (4000, "replaced")
        assert len(sessions_for(server, h)) == 1
        await answered_not_matched(survivor)
        assert await online_hashes(server) == [h]
        await survivor.close()
        await eventually(lambda: not server.ctx.hub.is_online(h))


async def test_sending_to_a_closing_socket_is_a_conflict_not_a_crash(server: RunningServer) -> None:
    h = (await register(server.base_url, "closing"))["hash"]
    conn = await open_socket(server.ws_url, h)
    try:
        await eventually(lambda: server.ctx.hub.is_online(h))
        session = server.ctx.hub.session(h)
        assert session is not None
        session.connection.close(1001, "going away")
        # on_close has not run yet: the session is still the module's, its socket is not.
        assert server.ctx.hub.session(h) is session
        with pytest.raises(Conflict, match="offline"):
            server.ctx.hub.send(h, "too late")
        assert await wait_closed(conn) == (1001, "going away")
    finally:
        await conn.close()
    await eventually(lambda: not server.ctx.hub.is_online(h))


# -- frames from the module --------------------------------------------------------------
MALFORMED = {
    "not json": "hello",
    "json array": "[1, 2]",
    "json null": "null",
    "unknown type": '{"type": "bogus"}',
    "missing type": '{"status": "success"}',
    "missing status": '{"type": "result"}',
    "bad status": '{"type": "result", "status": "done"}',
    "workflow_name object": result_frame(workflow_name={"$ne": None}),
    "workflow_id list": result_frame(workflow_id=[1]),
    "module_name bool": result_frame(module_name=True),
    "error object": result_frame("failure", error={"e": 1}),
    "binary frame": result_frame().encode(),
}


@pytest.mark.parametrize("frame", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_frames_get_an_error_reply_and_the_session_stays(
    server: RunningServer, frame: str | bytes
) -> None:
    h = (await register(server.base_url, "sloppy"))["hash"]
    conn = await open_socket(server.ws_url, h)
    try:
        await eventually(lambda: server.ctx.hub.is_online(h))
        session = server.ctx.hub.session(h)
        await conn.send(frame)
        reply = await receive_json(conn)
        assert reply["type"] == "error" and isinstance(reply["error"], str) and reply["error"], (
            reply
        )
        await answered_not_matched(conn)
        assert server.ctx.hub.session(h) is session
    finally:
        await conn.close()


async def test_frames_over_the_size_limit_get_an_error_reply(
    tmp_path: Path, docserver_uri: str
) -> None:
    async with custom_server(tmp_path, docserver_uri, websocket_max_message_size=2048) as running:
        h = (await register(running.base_url, "chatty"))["hash"]
        conn = await open_socket(running.ws_url, h)
        try:
            ascii_big = result_frame(message="x" * 3000)
            cjk_big = result_frame(message="数" * 1000)  # 1,000 characters, 3,000 bytes
            assert len(cjk_big) < 2048 < len(cjk_big.encode())
            for frame in (ascii_big, cjk_big):
                await conn.send(frame)
                reply = await receive_json(conn)
                assert reply["type"] == "error" and "2048" in reply["error"], reply
            just_fits = result_frame(message="y" * 1800)
            assert len(just_fits.encode()) <= 2048
            await answered_not_matched(conn, message="y" * 1800)
            assert running.ctx.hub.is_online(h)
        finally:
            await conn.close()


async def test_heartbeat_message_gets_no_reply_and_refreshes_last_heartbeat(
    server: RunningServer,
) -> None:
    h = (await register(server.base_url, "old-client"))["hash"]
    conn = await open_socket(server.ws_url, h)
    try:
        await eventually(lambda: server.ctx.hub.is_online(h))
        session = server.ctx.hub.session(h)
        assert session is not None
        before = session.last_heartbeat
        await asyncio.sleep(0.05)
        await conn.send(json.dumps({"type": "heartbeat"}))
        # The next frame from the server answers the result: nothing answered the heartbeat.
        await answered_not_matched(conn)
        assert session.last_heartbeat > before
        await eventually(
            async_true(lambda: stored(server, h), lambda d: d["last_heartbeat"] is not None)
        )
    finally:
        await conn.close()


# -- liveness ------------------------------------------------------------------------------
async def _dead_peer(
    port: int, module_hash: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A real WebSocket handshake over a bare TCP socket that then never reads or
    writes again: pings go unanswered, exactly like a hung module process."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /websocket?hash={module_hash} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


@pytest.mark.slow
async def test_ping_pong_liveness_and_batched_heartbeat_writes(
    tmp_path: Path, docserver_uri: str
) -> None:
    flush = 1.0
    async with custom_server(
        tmp_path,
        docserver_uri,
        websocket_ping_interval=0.2,
        websocket_ping_timeout=0.2,
        heartbeat_flush_seconds=flush,
    ) as running:
        live_hash = (await register(running.base_url, "live"))["hash"]
        dead_hash = (await register(running.base_url, "hung"))["hash"]
        live = await open_socket(running.ws_url, live_hash)  # websockets answers pings itself
        _reader, writer = await _dead_peer(running.port, dead_hash)
        try:
            await eventually(
                lambda: (
                    running.ctx.hub.is_online(live_hash) and running.ctx.hub.is_online(dead_hash)
                )
            )
            dead_session = running.ctx.hub.session(dead_hash)
            assert dead_session is not None
            dead_heartbeat = dead_session.last_heartbeat

            # Watch the live module for 3 s: memory follows every pong, the store
            # sees about one write per flush interval.
            in_memory: list[Any] = []
            in_store: list[Any] = []
            loop = asyncio.get_running_loop()
            window = 3.0
            end = loop.time() + window
            while loop.time() < end:
                session = running.ctx.hub.session(live_hash)
                assert session is not None, "a live client must not be dropped"
                in_memory.append(session.last_heartbeat)
                in_store.append((await stored(running, live_hash)).get("last_heartbeat"))
                await asyncio.sleep(0.02)
            memory_values = list(dict.fromkeys(in_memory))
            store_values = [v for v in dict.fromkeys(in_store) if v is not None]
            assert memory_values == sorted(memory_values)
            assert len(memory_values) >= 8, (
                f"pongs every 0.2 s should refresh it ~15 times, saw {len(memory_values)}"
            )
            assert 2 <= len(store_values) <= window / flush + 2, store_values
            assert dead_session.last_heartbeat == dead_heartbeat
            # Timed out but not yet dropped: the socket is closing, and a message for
            # it is refused as "offline", not a server error.
            assert running.ctx.hub.is_online(dead_hash)
            status, envelope = await running.api(
                "/module/send_message",
                "POST",
                json_body={"module_hash": dead_hash, "message": "anyone?"},
            )
            assert (status, envelope["code"]) == (409, "4090"), envelope

            # Tornado closes the silent peer after interval + timeout and gives it 5 s
            # to finish the close handshake before dropping the socket.
            await eventually(lambda: not running.ctx.hub.is_online(dead_hash), within=8)
            assert running.ctx.hub.is_online(live_hash)
            assert await online_hashes(running) == [live_hash]
            await eventually(
                async_true(lambda: stored(running, dead_hash), lambda d: d["online"] is False),
                within=3,
            )
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            await live.close()


async def test_every_module_is_offline_at_start(tmp_path: Path, docserver_uri: str) -> None:
    settings = make_settings(tmp_path, docserver_uri)
    client: AsyncMongoClient = AsyncMongoClient(docserver_uri, tz_aware=True)
    try:
        await client[settings.mongodb_name]["modules"].insert_one(
            {
                "module_id": 1,
                "name": "left-online",
                "hash": "ab" * 20,
                "online": True,
                "description": "",
                "input_data": [],
                "output_data": [],
                "modelHash": "",
            }
        )
        running, http_server = await start_server(settings)
        try:
            doc = await running.ctx.docs["modules"].find_one({"hash": "ab" * 20})
            assert doc is not None and doc["online"] is False
            status, envelope = await running.api("/module/list")
            assert status == 200 and [m["online"] for m in envelope["result"]] == [False]
            assert await online_hashes(running) == []
        finally:
            await stop_server(running, http_server)
    finally:
        await client.close()
