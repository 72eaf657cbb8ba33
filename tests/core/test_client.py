"""The module SDK (`tornado_sched.client`) over real sockets.

Against the real server: registration, commands sent through the hub, acks,
reconnect, replaced / deleted / unknown hash. Against `peer`, a `websockets` server
that speaks the seed's protocol from the test's side, where the exact result frames,
their order, the backoff timing and the close code must be seen on the wire.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.conftest import ADMIN, RunningServer
from tests.support.rawclient import (
    REGISTRATION_TOKEN,
    eventually,
    open_socket,
    receive_json,
    wait_closed,
)
from tornado_sched.client import (
    ModuleClient,
    ModuleDeleted,
    ModuleReplaced,
    RegistrationError,
    UnknownModule,
    backoff_delay,
)
from tornado_sched.protocol import RESULT_ACK

ROOT = Path(__file__).resolve().parents[2]

EXECUTE = {
    "type": "execute",
    "meta": {
        "execution_time": "2024-01-01T10:00:00",
        "workflow_id": 7,
        "workflow_name": "盘中信号",
        "run_id": "run-0001",
    },
    "args": {"stock_list": ["600000", "000001"], "fund_list": []},
}


def execute(run_id: str, **args: Any) -> dict[str, Any]:
    return {
        **EXECUTE,
        "meta": {**EXECUTE["meta"], "run_id": run_id},
        "args": args or EXECUTE["args"],
    }


async def execute_real_run(server: RunningServer, module_hash: str, name: str) -> str:
    """A workflow of this one module, executed: the server acknowledges only results
    for steps it sent."""
    status, env = await server.api("/workflow/create", "POST", json_body={
        "name": name, "enable": False, "execute_cron_list": [],
        "execute_modules": [{"module_hash": module_hash, "args": EXECUTE["args"]}],
    })
    assert status == 200, env
    status, env = await server.api(f"/workflow/{env['result']['workflow_id']}/execute", "POST")
    assert status == 200, env
    return env["result"]["run_id"]


async def idle_handler(args: dict[str, Any], meta: dict[str, Any]) -> None:
    return None


# -- a protocol peer standing in for the server --------------------------------------------
@dataclass
class Peer:
    """A `websockets` server: each connection is handed to the test through `accepted`
    and stays open until the test (or the client) closes it. With `close_with` set,
    connections are closed at once with that code."""

    port: int = 0
    accepted: asyncio.Queue[ServerConnection] = field(default_factory=asyncio.Queue)
    opened: list[float] = field(default_factory=list)
    closed: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    close_with: int | None = None
    hold_then_close: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        self.opened.append(loop.time())
        self.paths.append(ws.request.path if ws.request else "")
        try:
            if self.hold_then_close:
                await asyncio.sleep(self.hold_then_close.pop(0))
                await ws.close(1011, "peer closes")
            elif self.close_with is not None:
                await ws.close(self.close_with, "peer closes")
            else:
                self.accepted.put_nowait(ws)
                await ws.wait_closed()
        finally:
            self.closed.append(loop.time())

    async def next_connection(self) -> ServerConnection:
        return await asyncio.wait_for(self.accepted.get(), 5)


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    server = await serve(
        p.handle, "127.0.0.1", 0, compression=None, ping_interval=None, close_timeout=1
    )
    p.port = next(iter(server.sockets)).getsockname()[1]
    yield p
    server.close()
    await server.wait_closed()


def peer_client(peer: Peer, handler: Any = idle_handler, **kwargs: Any) -> ModuleClient:
    kwargs.setdefault("backoff_base", 0.05)
    kwargs.setdefault("backoff_max", 0.2)
    return ModuleClient(peer.url, "peer-module", handler, module_hash="f" * 40, **kwargs)


# -- backoff -----------------------------------------------------------------------------
def test_backoff_delay_is_exponential_jittered_and_capped() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        step = min(8.0, 0.5 * 2**attempt)
        for _ in range(20):
            delay = backoff_delay(attempt, 0.5, 8.0, rng)
            assert step / 2 <= delay <= step, (attempt, delay)
    assert len({backoff_delay(3, 0.5, 8.0, rng) for _ in range(20)}) > 10, "no jitter"
    assert backoff_delay(10_000, 0.5, 8.0, rng) <= 8.0


async def test_backoff_grows_then_resets_after_a_long_lived_connection(
    peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    peer.close_with = 1011
    client = peer_client(peer, backoff_base=0.1, backoff_max=0.4, backoff_reset_after=0.3)
    task = client.start()
    with caplog.at_level(logging.WARNING, logger="tornado_sched.client"):
        try:
            await eventually(lambda: len(peer.closed) >= 4)
            # From here on the peer keeps a connection 0.5 s (longer than reset_after).
            peer.hold_then_close.extend([0.5, 0.5])
            await eventually(lambda: len(peer.closed) >= 6, within=5)
        finally:
            await client.stop()
    await task
    # The delays the client chose (wall-clock gaps only add machine latency to them).
    delays = [float(m) for m in re.findall(r"reconnecting in ([0-9.]+)s", caplog.text)]
    gaps = [peer.opened[i + 1] - peer.closed[i] for i in range(5)]
    # Attempts 0, 1, 2 wait 0.05-0.1, 0.1-0.2, 0.2-0.4 s.
    assert delays[0] <= 0.1 and 0.2 - 0.01 <= delays[2] <= 0.4, delays
    assert 0.2 - 0.01 <= delays[3] <= 0.4, delays  # capped at 0.4, still long
    # The fifth connection lived 0.5 s: back to the first step.
    assert delays[4] <= 0.1, delays
    # And the client really waited that long before each reconnect.
    assert all(gap >= delay - 0.02 for gap, delay in zip(gaps, delays, strict=False)), (gaps, delays)


# -- registration ---------------------------------------------------------------------------
async def test_registers_with_a_token_or_operator_credentials(server: RunningServer) -> None:
    inputs = [{"name": "stock_list"}]
    by_token = ModuleClient(
        server.base_url,
        "sdk-reg",
        idle_handler,
        token=REGISTRATION_TOKEN,
        description="v1",
        input_data=inputs,
    )
    h = await by_token.register()
    assert by_token.module_id == 1
    by_operator = ModuleClient(
        server.base_url,
        "sdk-reg",
        idle_handler,
        username=ADMIN[0],
        password=ADMIN[1],
        description="v2",
    )
    assert await by_operator.register() == h
    status, envelope = await server.api(f"/module/{h}")
    assert status == 200 and envelope["result"]["description"] == "v2"


async def test_a_token_only_host_keeps_its_module_by_the_hash_it_stored(server: RunningServer) -> None:
    first = ModuleClient(server.base_url, "sdk-keep", idle_handler, token=REGISTRATION_TOKEN, description="v1")
    module_hash = await first.register()
    # Registering again (as on every reconnect) sends the hash the client holds.
    assert await first.register() == module_hash
    # A restarted host passes the hash it stored from the first registration.
    restarted = ModuleClient(server.base_url, "sdk-keep", idle_handler, token=REGISTRATION_TOKEN,
                             module_hash=module_hash, description="v2")
    assert await restarted.register() == module_hash
    # Anyone else with the token does not learn it, and changes nothing.
    stranger = ModuleClient(server.base_url, "sdk-keep", idle_handler, token=REGISTRATION_TOKEN,
                            description="taken over")
    with pytest.raises(RegistrationError) as info:
        await stranger.register()
    assert info.value.status == 403 and info.value.field == "module_hash" and not info.value.transient
    assert stranger.module_hash is None
    status, envelope = await server.api(f"/module/{module_hash}")
    assert status == 200 and envelope["result"]["description"] == "v2", envelope


async def test_registration_refusals_are_raised_not_retried(server: RunningServer) -> None:
    wrong = ModuleClient(server.base_url, "sdk-bad", idle_handler, token="wrong", backoff_base=5)
    with pytest.raises(RegistrationError) as info:
        await asyncio.wait_for(wrong.run(), 3)
    assert info.value.status == 401 and not info.value.transient

    bad_inputs = ModuleClient(
        server.base_url,
        "sdk-bad",
        idle_handler,
        token=REGISTRATION_TOKEN,
        input_data=[{"type": "no name"}],
    )
    with pytest.raises(RegistrationError) as info:
        await bad_inputs.register()
    assert info.value.status == 400 and info.value.field == "input_data"
    assert "input_data" in str(info.value)


# -- commands against the real server -------------------------------------------------------
async def test_handler_gets_args_and_meta_and_results_are_acknowledged(
    server: RunningServer,
) -> None:
    calls: asyncio.Queue[tuple[dict[str, Any], dict[str, Any]]] = asyncio.Queue()
    other_frames: list[str] = []

    async def handler(args: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        calls.put_nowait((args, meta))
        if args.get("explode"):
            raise ValueError("bad input")
        return {"rows": len(args["stock_list"])}

    client = ModuleClient(
        server.base_url,
        "sdk-exec",
        handler,
        token=REGISTRATION_TOKEN,
        on_message=other_frames.append,
    )
    task = client.start()
    try:
        async with asyncio.timeout(5):
            await client.wait_connected()
        assert client.module_hash is not None
        # Real runs: the server acknowledges only results that match a step it sent.
        run_ids = []
        for args in (EXECUTE["args"], {"explode": True}):
            status, env = await server.api("/workflow/create", "POST", json_body={
                "name": f"sdk-{len(run_ids)}", "enable": False, "execute_cron_list": [],
                "execute_modules": [{"module_hash": client.module_hash, "args": args}],
            })
            assert status == 200, env
            status, env = await server.api(f"/workflow/{env['result']['workflow_id']}/execute", "POST")
            run_ids.append(env["result"]["run_id"])
            args_seen, meta = await asyncio.wait_for(calls.get(), 5)
            assert args_seen == args and meta["run_id"] == run_ids[-1]
            # The server answers only a well-formed result with the ack; a refused frame
            # would come back as {"type": "error"} and reach on_message.
            expected = len(run_ids)
            await eventually(lambda: client.results_acknowledged == expected)  # noqa: B023
        assert meta["workflow_name"] == "sdk-1" and meta["execution_time"]
        await eventually(lambda: client.results_acknowledged == 2)
        assert client.results_sent == 2
        await asyncio.sleep(0.05)
        assert other_frames == [], "acks are consumed quietly; nothing else was sent"
    finally:
        await client.stop()
    await task


async def test_reconnects_after_the_server_closes_the_socket(server: RunningServer) -> None:
    ran = asyncio.Event()

    async def handler(args: dict[str, Any], meta: dict[str, Any]) -> str:
        ran.set()
        return "ok"

    client = ModuleClient(
        server.base_url, "sdk-reconnect", handler, token=REGISTRATION_TOKEN, backoff_base=0.05
    )
    task = client.start()
    try:
        async with asyncio.timeout(5):
            await client.wait_connected()
        h = client.module_hash
        assert h is not None
        old = server.ctx.hub.session(h)
        assert old is not None
        old.connection.close(1011, "server trouble")
        await eventually(
            lambda: client.connections == 2 and server.ctx.hub.session(h) not in (None, old)
        )
        await execute_real_run(server, h, "sdk-reconnect")
        await asyncio.wait_for(ran.wait(), 5)
        await eventually(lambda: client.results_acknowledged == 1)
    finally:
        await client.stop()
    await task
    await eventually(lambda: not server.ctx.hub.is_online(h))


async def test_several_urls_fail_over_in_order_one_backoff_step_per_round(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The URLs of a cluster's instances, two of them dead: registration and every
    reconnect move to the next URL, and the backoff grows once per round of the list,
    so a live instance after dead ones is reached within about `backoff_base`."""
    dead = []
    for _ in range(2):
        with socket.socket() as probe:  # a port nothing listens on: refused at once
            probe.bind(("127.0.0.1", 0))
            dead.append(f"http://127.0.0.1:{probe.getsockname()[1]}")
    ran = asyncio.Event()

    async def handler(args: dict[str, Any], meta: dict[str, Any]) -> str:
        ran.set()
        return "ok"

    client = ModuleClient([*dead, server.base_url], "sdk-failover", handler, token=REGISTRATION_TOKEN,
                          backoff_base=0.2, backoff_max=5.0)
    with caplog.at_level(logging.WARNING, logger="tornado_sched.client"):
        task = client.start()
        try:
            async with asyncio.timeout(5):
                await client.wait_connected()
            assert client.server_url == server.base_url
            retries = re.findall(r"cannot reach (\S+): .*; retrying in", caplog.text)
            assert retries == dead, caplog.text
            h = client.module_hash
            assert h is not None
            old = server.ctx.hub.session(h)
            assert old is not None
            caplog.clear()
            old.connection.close(1011, "instance going away")
            await eventually(lambda: client.connections == 2 and server.ctx.hub.session(h) not in (None, old))
            await execute_real_run(server, h, "sdk-failover")
            await asyncio.wait_for(ran.wait(), 5)
        finally:
            await client.stop()
        await task
    # The round after the close: the two dead URLs, then the live one again, each
    # after the first backoff step (0.1-0.2 s), not 0.2, 0.4, 0.8 s.
    hops = re.findall(r"reconnecting in ([0-9.]+)s to (\S+)", caplog.text)
    assert [url for _delay, url in hops] == [*dead, server.base_url], caplog.text
    assert all(float(delay) <= 0.2 for delay, _url in hops), hops


async def test_replaced_client_stops(server: RunningServer) -> None:
    client = ModuleClient(
        server.base_url, "sdk-replaced", idle_handler, token=REGISTRATION_TOKEN, backoff_base=0.05
    )
    task = client.start()
    async with asyncio.timeout(5):
        await client.wait_connected()
    assert client.module_hash is not None
    other = await open_socket(server.ws_url, client.module_hash)
    try:
        with pytest.raises(ModuleReplaced, match="another connection"):
            await asyncio.wait_for(task, 5)
        await asyncio.sleep(0.3)
        assert client.connections == 1, "a replaced client must not fight back"
        session = server.ctx.hub.session(client.module_hash)
        assert session is not None and len(server.ctx.hub.sessions()) == 1
        await client.stop()  # harmless after run() ended
    finally:
        await other.close()


async def test_deleted_module_stops_the_client(server: RunningServer) -> None:
    client = ModuleClient(
        server.base_url, "sdk-deleted", idle_handler, token=REGISTRATION_TOKEN, backoff_base=0.05
    )
    task = client.start()
    async with asyncio.timeout(5):
        await client.wait_connected()
    status, _ = await server.api(f"/module/{client.module_hash}", "DELETE")
    assert status == 200
    with pytest.raises(ModuleDeleted):
        await asyncio.wait_for(task, 5)
    assert client.connections == 1


async def test_unknown_hash_stops_without_retrying(server: RunningServer) -> None:
    client = ModuleClient(
        server.base_url, "sdk-unknown", idle_handler, module_hash="0" * 40, backoff_base=5
    )
    with pytest.raises(UnknownModule, match="403"):
        await asyncio.wait_for(client.run(), 3)
    assert client.connections == 0


# -- the wire, seen from the peer -----------------------------------------------------------
async def test_result_frames_echo_run_id_and_report_failures(peer: Peer) -> None:
    async def handler(args: dict[str, Any], meta: dict[str, Any]) -> Any:
        if args.get("mode") == "fail":
            raise RuntimeError("disk full")
        if args.get("mode") == "none":
            return None
        return "done" if args.get("mode") == "text" else {"rows": 2}

    client = peer_client(peer, handler)
    task = client.start()
    try:
        ws = await peer.next_connection()
        assert peer.paths[0] == "/websocket?hash=" + "f" * 40
        cases = [
            ("dict", "success", {"rows": 2}, None),
            ("text", "success", "done", None),
            ("none", "success", None, None),
            ("fail", "failure", None, "RuntimeError: disk full"),
        ]
        for index, (mode, status, message, error) in enumerate(cases):
            await ws.send(json.dumps(execute(f"run-{index}", mode=mode)))
            frame = await receive_json(ws)
            assert frame == {
                "type": "result",
                "status": status,
                "workflow_id": 7,
                "workflow_name": "盘中信号",
                "module_name": "peer-module",
                "run_id": f"run-{index}",
                "message": message,
                "error": error,
            }, mode
            await ws.send(RESULT_ACK)
        await eventually(lambda: client.results_acknowledged == 4)
    finally:
        await client.stop()
    await task


async def test_a_slow_command_blocks_neither_others_nor_pings(peer: Peer) -> None:
    release = asyncio.Event()

    async def handler(args: dict[str, Any], meta: dict[str, Any]) -> str:
        if args["name"] == "slow":
            await release.wait()
        return args["name"]

    client = peer_client(peer, handler)
    task = client.start()
    try:
        ws = await peer.next_connection()
        await ws.send(json.dumps(execute("run-slow", name="slow")))
        await ws.send(json.dumps(execute("run-fast", name="fast")))
        first = await receive_json(ws)
        assert (first["run_id"], first["message"]) == ("run-fast", "fast")
        pong = await ws.ping()
        await asyncio.wait_for(pong, 2)  # answered while the slow handler still runs
        release.set()
        second = await receive_json(ws)
        assert (second["run_id"], second["message"]) == ("run-slow", "slow")
    finally:
        release.set()
        await client.stop()
    await task


async def test_other_frames_go_to_on_message(peer: Peer) -> None:
    seen: asyncio.Queue[str] = asyncio.Queue()

    async def on_message(text: str) -> None:
        seen.put_nowait(text)

    client = peer_client(peer, on_message=on_message)
    task = client.start()
    try:
        ws = await peer.next_connection()
        for frame in (
            "plain text from send_message",
            RESULT_ACK,
            '{"note": 1}',
            '{"type": "error", "error": "x"}',
        ):
            await ws.send(frame)
        got = [await asyncio.wait_for(seen.get(), 5) for _ in range(3)]
        assert got == [
            "plain text from send_message",
            '{"note": 1}',
            '{"type": "error", "error": "x"}',
        ]
        assert client.results_acknowledged == 1
    finally:
        await client.stop()
    await task


async def test_a_result_finished_while_disconnected_is_sent_after_reconnect(peer: Peer) -> None:
    release = asyncio.Event()

    async def handler(args: dict[str, Any], meta: dict[str, Any]) -> str:
        await release.wait()
        return "late"

    client = peer_client(peer, handler)
    task = client.start()
    try:
        ws = await peer.next_connection()
        await ws.send(json.dumps(execute("run-late")))
        await asyncio.sleep(0.05)
        await ws.close(1011, "gone")
        await eventually(lambda: not client.connected)
        release.set()
        await asyncio.sleep(0.01)
        again = await peer.next_connection()
        frame = await receive_json(again)
        assert (frame["run_id"], frame["message"]) == ("run-late", "late")
    finally:
        await client.stop()
    await task


async def test_stop_waits_for_running_handlers_then_closes_cleanly(peer: Peer) -> None:
    started = asyncio.Event()

    async def handler(args: dict[str, Any], meta: dict[str, Any]) -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "finished"

    client = peer_client(peer, handler)
    task = client.start()
    ws = await peer.next_connection()
    await ws.send(json.dumps(execute("run-stop")))
    await asyncio.wait_for(started.wait(), 5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await client.stop()
    assert loop.time() - began >= 0.25, "stop() returned before the handler finished"
    frame = await receive_json(ws)
    assert (frame["status"], frame["message"]) == ("success", "finished")
    assert await wait_closed(ws) == (1000, "module stopping")
    await asyncio.wait_for(task, 1)  # run() returned normally
    assert len(peer.opened) == 1, "no reconnect after stop()"


async def test_stop_cancels_handlers_that_overrun_the_grace_period(peer: Peer) -> None:
    async def handler(args: dict[str, Any], meta: dict[str, Any]) -> str:
        await asyncio.Event().wait()
        return "never"

    client = peer_client(peer, handler)
    task = client.start()
    ws = await peer.next_connection()
    await ws.send(json.dumps(execute("run-hung")))
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await client.stop(grace=0.2)
    assert loop.time() - began < 1.5
    frame = await receive_json(ws)
    assert (frame["status"], frame["run_id"]) == ("failure", "run-hung")
    assert "cancelled" in frame["error"]
    assert (await wait_closed(ws))[0] == 1000
    await asyncio.wait_for(task, 1)


# -- the example module, as a real process ----------------------------------------------------
async def test_example_module_runs_answers_and_stops_on_sigterm(server: RunningServer) -> None:
    # Given a cluster's URLs (`--server` repeated) whose first instance is down, the
    # example fails over to the next one.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.echo_module",
        "--server",
        dead,
        "--server",
        server.base_url,
        "--name",
        "example-echo",
        "--token",
        REGISTRATION_TOKEN,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []

    async def collect() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            lines.append(line.decode(errors="replace"))

    reader = asyncio.ensure_future(collect())
    try:

        def online() -> list[str]:
            return [s.module_hash for s in server.ctx.hub.sessions() if s.name == "example-echo"]

        await eventually(online, within=10)
        [h] = online()
        assert any(f"cannot reach {dead}" in line for line in lines), "".join(lines)
        server.ctx.hub.send(h, execute("run-example", hello="world"))
        await eventually(lambda: any("run run-example" in line for line in lines))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0, "".join(lines)
        await eventually(lambda: not server.ctx.hub.is_online(h))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.wait_for(reader, 5)
