"""Back-pressure for modules that stop reading: real sockets that complete the
handshake and never read. Past WEBSOCKET_MAX_QUEUED_BYTES the module is closed with
4008, its open step fails with that reason, and send_message answers 409 instead of
queueing more; a module that reads is not affected. The same for a fleet of twenty
in one run."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from tests.conftest import make_settings, start_server, stop_server
from tests.flows.support import wait_until
from tests.support.rawclient import eventually, open_socket, receive, register
from tests.support.stalled import open_stalled, read_to_end
from tornado_sched.config import ConfigError, Settings
from tornado_sched.protocol import CLOSE_TOO_SLOW

CAP = 256 * 1024
CHUNK = "x" * (64 * 1024)


async def test_a_module_that_stops_reading_is_closed_with_4008(tmp_path: Path, docserver_uri: str) -> None:
    running, http_server = await start_server(
        make_settings(tmp_path, docserver_uri, websocket_max_queued_bytes=CAP)
    )
    sock = None
    reader = None
    try:
        stalled_hash = (await register(running.base_url, "stalled"))["hash"]
        reader_hash = (await register(running.base_url, "reader"))["hash"]
        sock = await asyncio.to_thread(open_stalled, running.port, stalled_hash)
        reader = await open_socket(running.ws_url, reader_hash)
        await eventually(lambda: running.ctx.hub.is_online(stalled_hash) and running.ctx.hub.is_online(reader_hash))

        status, env = await running.api("/workflow/create", "POST", json_body={
            "name": "slow", "enable": False,
            "execute_modules": [{"module_hash": stalled_hash, "args": {}}],
        })
        assert status == 200, env
        status, env = await running.api(f"/workflow/{env['result']['workflow_id']}/execute", "POST")
        assert status == 200, env
        run_id = env["result"]["run_id"]

        accepted = 0
        refused = None
        for _ in range(1000):  # at most 64 MB: far beyond any kernel buffer
            status, env = await running.api("/module/send_message", "POST",
                                            json_body={"module_hash": stalled_hash, "message": CHUNK})
            if status != 200:
                refused = (status, env)
                break
            accepted += 1
        assert refused is not None, f"{accepted} messages accepted, none refused"
        status, env = refused
        assert status == 409 and env["code"] == "4090" and "too slow" in env["message"], env
        assert not running.ctx.hub.is_online(stalled_hash)
        assert running.ctx.hub.too_slow_disconnects == 1
        # Refused at once from now on, without queueing.
        status, env = await running.api("/module/send_message", "POST",
                                        json_body={"module_hash": stalled_hash, "message": "more"})
        assert status == 409, env

        # Its open step failed with the reason.
        async def step_failed() -> bool:
            status, env = await running.api(f"/runs/{run_id}")
            steps = env["result"]["steps"]
            return steps[0]["status"] == "failure" and "too slow" in (steps[0]["error"] or "")

        await wait_until(step_failed, 5, 0.1)

        # The module that reads is untouched and still gets large messages.
        status, env = await running.api("/module/send_message", "POST",
                                        json_body={"module_hash": reader_hash, "message": CHUNK})
        assert status == 200, env
        assert await receive(reader) == CHUNK

        # Reading at last, the stalled module finds the close frame with code 4008
        # after what was queued before the cap.
        data = await asyncio.to_thread(read_to_end, sock)
        close_payload = CLOSE_TOO_SLOW.to_bytes(2, "big") + b"too slow"
        assert close_payload in data[-64:], data[-64:]
    finally:
        if reader is not None:
            await reader.close()
        if sock is not None:
            sock.close()
        await stop_server(running, http_server)


def test_the_cap_is_a_setting_with_bounds() -> None:
    assert Settings.from_env({}, dotenv_path=None).websocket_max_queued_bytes == 1024 * 1024
    assert Settings.from_env({"WEBSOCKET_MAX_QUEUED_BYTES": "131072"}, dotenv_path=None).websocket_max_queued_bytes == 131072
    with pytest.raises(ConfigError, match="WEBSOCKET_MAX_QUEUED_BYTES"):
        Settings.from_env({"WEBSOCKET_MAX_QUEUED_BYTES": "10"}, dotenv_path=None)


async def test_a_fleet_of_stalled_modules_is_cut_off_and_the_rest_carries_on(
    tmp_path: Path, docserver_uri: str
) -> None:
    """Twenty modules that stop reading, in one run with a module that reads: each is
    closed with 4008 once its queue passes the cap (what it holds stays bounded by
    cap + one message, whatever callers send), its step fails saying why, and the
    reading module's result still closes the run."""
    fleet = 20
    message = "y" * (512 * 1024)  # larger than the cap: one queued message is the limit
    running, http_server = await start_server(
        make_settings(tmp_path, docserver_uri, websocket_max_queued_bytes=CAP)
    )
    socks = []
    reader = None
    try:
        hashes = [(await register(running.base_url, f"stalled-{i}"))["hash"] for i in range(fleet)]
        reader_hash = (await register(running.base_url, "fleet-reader"))["hash"]
        socks = await asyncio.gather(*(asyncio.to_thread(open_stalled, running.port, h) for h in hashes))
        reader = await open_socket(running.ws_url, reader_hash)
        await eventually(lambda: all(running.ctx.hub.is_online(h) for h in [*hashes, reader_hash]))
        status, env = await running.api("/workflow/create", "POST", json_body={
            "name": "fleet", "enable": False,
            "execute_modules": [{"module_hash": h, "args": {}} for h in [*hashes, reader_hash]],
        })
        assert status == 200, env
        status, env = await running.api(f"/workflow/{env['result']['workflow_id']}/execute", "POST")
        assert status == 200, env
        run_id = env["result"]["run_id"]
        execute = json.loads(await receive(reader))
        assert execute["type"] == "execute"

        async def push(module_hash: str) -> tuple[int, dict]:
            return await running.api("/module/send_message", "POST",
                                     json_body={"module_hash": module_hash, "message": message})

        accepted = dict.fromkeys(hashes, 0)
        refusals: dict[str, dict] = {}
        for _ in range(64):  # 32 MB per module at most: far beyond any loopback buffer
            waiting = [h for h in hashes if h not in refusals]
            if not waiting:
                break
            for module_hash, (status, env) in zip(waiting, await asyncio.gather(*map(push, waiting)), strict=True):
                if status == 200:
                    accepted[module_hash] += 1
                else:
                    assert status == 409 and "too slow" in env["message"], env
                    refusals[module_hash] = env
        assert set(refusals) == set(hashes), f"{len(refusals)} of {fleet} cut off"
        assert running.ctx.hub.too_slow_disconnects == fleet
        assert not any(running.ctx.hub.is_online(h) for h in hashes) and running.ctx.hub.is_online(reader_hash)
        for env in refusals.values():
            queued = int(re.search(r"\((\d+) bytes not read\)", env["message"])[1])
            assert 0 < queued <= CAP + len(message) + 1024, env["message"]  # the server's share, bounded
        # Before the cap mattered the kernel's socket buffers took their share (a few MB
        # on loopback; 6 messages here): not the server's memory, and bounded too.
        assert max(accepted.values()) * len(message) < 16 * 1024 * 1024, accepted

        status, env = await running.api("/module/send_message", "POST",
                                        json_body={"module_hash": reader_hash, "message": "still here"})
        assert status == 200, env
        assert await receive(reader) == "still here"
        await reader.send(json.dumps({"type": "result", "status": "success", "run_id": run_id, "message": "ok"}))
        assert await receive(reader) == "receive result"

        async def run_closed() -> bool:
            return (await running.api(f"/runs/{run_id}"))[1]["result"]["status"] == "partial"

        await wait_until(run_closed, 10, 0.1)
        steps = (await running.api(f"/runs/{run_id}"))[1]["result"]["steps"]
        assert [s["status"] for s in steps] == ["failure"] * fleet + ["success"]
        assert all("too slow" in s["error"] for s in steps[:fleet]), steps[0]
    finally:
        if reader is not None:
            await reader.close()
        for sock in socks:
            sock.close()
        await stop_server(running, http_server)
