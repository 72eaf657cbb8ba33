"""A module client written only from the seed's README, on the `websockets` library.

It shares no code with `tornado_sched.client`, so the server is tested against an
independent reading of the protocol: `GET /module/register` -> `{hash, module_id}`,
`ws://host:port/websocket?hash=<hash>`, `execute` in, `result` out, `receive result`
back.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

REGISTRATION_TOKEN = "registration-token-for-tests"  # make_settings' REGISTRATION_TOKEN


async def register(
    base_url: str,
    name: str,
    *,
    description: str = "",
    input_data: Any = (),
    output_data: Any = (),
    model_hash: str = "",
    token: str = REGISTRATION_TOKEN,
) -> dict[str, Any]:
    """The seed's `GET /module/register`; returns the envelope's result {hash, module_id}."""
    query = urlencode(
        {
            "name": name,
            "description": description,
            "input_data": json.dumps(list(input_data)),
            "output_data": json.dumps(list(output_data)),
            "modelHash": model_hash,
            "token": token,
        }
    )
    response = await AsyncHTTPClient().fetch(
        f"{base_url}/module/register?{query}", raise_error=False
    )
    envelope = json.loads(response.body)
    assert response.code == 200 and envelope["code"] == "2000", (response.code, envelope)
    return envelope["result"]


async def open_socket(ws_base: str, module_hash: str | None, **kwargs: Any) -> ClientConnection:
    """`ws://host:port/websocket?hash=...`; websockets answers pings by itself."""
    url = f"{ws_base}/websocket" + (
        "" if module_hash is None else "?" + urlencode({"hash": module_hash})
    )
    kwargs.setdefault("ping_interval", None)  # liveness is the server's pings
    kwargs.setdefault("open_timeout", 5)
    kwargs.setdefault("close_timeout", 2)
    return await connect(url, proxy=None, compression=None, **kwargs)


async def refused_status(ws_base: str, module_hash: str | None) -> int:
    """The HTTP status of a refused handshake (fails if the handshake succeeds)."""
    try:
        conn = await open_socket(ws_base, module_hash)
    except InvalidStatus as exc:
        return exc.response.status_code
    await conn.close()
    raise AssertionError("the handshake was accepted")


async def receive(conn: ClientConnection, within: float = 5.0) -> str | bytes:
    return await asyncio.wait_for(conn.recv(), within)


async def receive_json(conn: ClientConnection, within: float = 5.0) -> Any:
    return json.loads(await receive(conn, within))


async def eventually(predicate: Any, within: float = 5.0, interval: float = 0.02) -> None:
    """Poll a sync or async predicate until it is true (fails with the last value)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition still false after {within}s: {predicate}")
        await asyncio.sleep(interval)


def result_frame(
    status: str = "success",
    *,
    workflow_id: Any = "1",
    workflow_name: Any = "wf",
    module_name: Any = "raw",
    error: Any = None,
    message: Any = "ok",
    **extra: Any,
) -> str:
    """The seed's result message, as JSON text."""
    return json.dumps(
        {
            "type": "result",
            "status": status,
            "workflow_id": workflow_id,
            "workflow_name": workflow_name,
            "module_name": module_name,
            "error": error,
            "message": message,
            **extra,
        },
        ensure_ascii=False,
    )


async def send_result(
    conn: ClientConnection, status: str = "success", **fields: Any
) -> str | bytes:
    """Send a result and return the server's answer (the seed's `receive result`)."""
    await conn.send(result_frame(status, **fields))
    return await receive(conn)


async def wait_closed(conn: ClientConnection, within: float = 5.0) -> tuple[int | None, str | None]:
    """Read until the server closes; returns (close code, reason)."""
    async with asyncio.timeout(within):
        try:
            while True:
                await conn.recv()
        except ConnectionClosed:
            pass
        await conn.wait_closed()
    return conn.close_code, conn.close_reason
