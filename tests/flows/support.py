"""Helpers for the flow tests: real modules over real WebSockets, real REST calls."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from sqlalchemy import select
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.conftest import RunningServer
from tests.support.history import HistoryProbe
from tornado_sched.tables import execution_log

READ_TIMEOUT = 5.0
# Every client socket a test opens; tests/flows/conftest.py closes them after each test,
# so a failing assertion never leaks one (ResourceWarning is an error here).
OPEN_SOCKETS: list[WebSocketClientConnection] = []


async def register(server: RunningServer, name: str | None = None) -> str:
    """Register a module over the seed's GET /module/register; returns its hash."""
    name = name or f"m-{uuid.uuid4().hex[:8]}"
    status, env = await server.api(
        f"/module/register?name={name}&description=d&input_data=[]&output_data=[]&modelHash=m"
    )
    assert status == 200, env
    return env["result"]["hash"]


class Module:
    """A test module: a real WebSocket client speaking the seed's protocol."""

    def __init__(self, server: RunningServer, name: str, module_hash: str) -> None:
        self.server = server
        self.name = name
        self.hash = module_hash
        self.ws: WebSocketClientConnection | None = None

    @classmethod
    async def online(cls, server: RunningServer, name: str | None = None) -> Module:
        name = name or f"m-{uuid.uuid4().hex[:8]}"
        module = cls(server, name, await register(server, name))
        await module.connect()
        return module

    async def connect(self) -> None:
        self.ws = await websocket_connect(f"{self.server.ws_url}/websocket?hash={self.hash}")
        OPEN_SOCKETS.append(self.ws)
        # The hub attaches in open(), which runs before the handshake completes on our
        # side; wait until the server lists us, so a dispatch cannot race the attach.
        await wait_until(lambda: self.server.ctx.hub.is_online(self.hash))

    async def recv(self, within: float = READ_TIMEOUT) -> Any:
        assert self.ws is not None
        raw = await asyncio.wait_for(self.ws.read_message(), within)
        assert raw is not None, "socket closed"
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    async def recv_execute(self, within: float = READ_TIMEOUT) -> dict[str, Any]:
        message = await self.recv(within)
        assert isinstance(message, dict) and message.get("type") == "execute", message
        return message

    async def no_message(self, seconds: float) -> None:
        """Fail if anything arrives within `seconds`."""
        assert self.ws is not None
        try:
            raw = await asyncio.wait_for(self.ws.read_message(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message: {raw!r}")

    async def result(
        self,
        command: dict[str, Any] | None,
        status: str = "success",
        *,
        run_id: str | None | bool = True,
        message: str = "done",
        error: str | None = None,
        workflow_id: Any = None,
    ) -> str:
        """Send a result for `command` (the seed's shape); returns the server's answer.

        run_id=True echoes meta.run_id, None/False leaves it out (a seed client)."""
        meta = (command or {}).get("meta", {})
        body: dict[str, Any] = {
            "type": "result",
            "status": status,
            "workflow_id": str(workflow_id if workflow_id is not None else meta.get("workflow_id")),
            "workflow_name": meta.get("workflow_name"),
            "module_name": self.name,
            "error": error,
            "message": message,
        }
        if run_id is True:
            body["run_id"] = meta["run_id"]
        elif isinstance(run_id, str):
            body["run_id"] = run_id
        assert self.ws is not None
        await self.ws.write_message(json.dumps(body))
        return await self.recv()

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None


async def wait_until(predicate: Any, within: float = 5.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def workflow_body(name: str | None = None, modules: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name or f"wf-{uuid.uuid4().hex[:8]}",
        "description": "d",
        "enable": True,
        "execute_cron_list": ["*/10 10 * * 1-5", "*/10 14 * * 1-5"],
        "execute_shift_time": -30,
        "execute_shift_unit": "s",
        "execute_modules": [{"module_hash": h, "args": {"stock_list": ["600000"]}} for h in modules or []],
    }
    body.update(fields)
    return body


async def create_workflow(server: RunningServer, body: dict[str, Any]) -> int:
    status, env = await server.api("/workflow/create", "POST", json_body=body)
    assert status == 200, env
    return env["result"]["workflow_id"]


async def execute(server: RunningServer, workflow_id: int) -> str:
    status, env = await server.api(f"/workflow/{workflow_id}/execute", "POST")
    assert status == 200, env
    return env["result"]["run_id"]


async def get_run(server: RunningServer, run_id: str) -> dict[str, Any]:
    status, env = await server.api(f"/runs/{run_id}")
    assert status == 200, env
    return env["result"]


async def wait_run(server: RunningServer, run_id: str, within: float = 5.0) -> dict[str, Any]:
    """Wait until the run is closed in the store (not just in memory); returns it."""
    found: dict[str, Any] = {}

    probe = HistoryProbe(server.ctx.settings.sql_url)

    async def closed() -> bool:
        doc = await probe.stored(run_id)
        if doc is not None and doc.get("status") != "running":
            found.update(doc)
            return True
        return False

    try:
        await wait_until(closed, within, 0.05)
    finally:
        await probe.close()
    return found


async def log_rows(server: RunningServer, workflow_id: int) -> list[dict[str, Any]]:
    """The workflow's rows in the SQL execution log, oldest first."""
    async with server.ctx.sql.engine.connect() as conn:
        result = await conn.execute(
            select(execution_log).where(execution_log.c.workflow_id == workflow_id).order_by(execution_log.c.id)
        )
        return [dict(row._mapping) for row in result]
