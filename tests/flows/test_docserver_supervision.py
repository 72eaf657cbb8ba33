"""The embedded document server killed with SIGKILL under a running server: it is
restarted on the same port, /ready tells the truth meanwhile, the run's result is
stored, /health fails only when it stays dead, shutdown stays bounded."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tests.conftest import RunningServer, make_settings, start_server, stop_server
from tests.flows.support import (
    Module,
    create_workflow,
    execute,
    wait_run,
    wait_until,
    workflow_body,
)
from tornado_sched.protocol import RESULT_ACK


@asynccontextmanager
async def embedded_server(tmp_path: Path, docserver_uri: str) -> AsyncIterator[RunningServer]:
    """A server that starts and supervises its own nx-27017 child (MONGODB_HOST unset)."""
    running, http_server = await start_server(make_settings(tmp_path, docserver_uri, mongodb_host=None))
    try:
        assert running.ctx.docserver is not None and running.ctx.docserver.running
        yield running
    finally:
        await stop_server(running, http_server)


def _kill_child(running: RunningServer) -> int:
    docserver = running.ctx.docserver
    assert docserver is not None and docserver.pid is not None
    pid = docserver.pid
    os.kill(pid, signal.SIGKILL)
    return pid


def _port(running: RunningServer) -> str:
    """Where the driver connects (the socket path in the URI)."""
    assert running.ctx.docserver is not None and running.ctx.docserver.uri is not None
    return running.ctx.docserver.uri


async def _hold_pid_file(running: RunningServer) -> asyncio.subprocess.Process:
    """Keep the child from restarting: its pid file names a live process that looks
    like a server using it, so a start refuses ("already running")."""
    docserver = running.ctx.docserver
    assert docserver is not None
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(120)", str(docserver.pid_file))
    docserver.pid_file.write_text(str(holder.pid))
    return holder


async def _ready(running: RunningServer) -> int:
    return (await running.api("/ready", auth=None))[0]


async def test_a_killed_document_server_is_restarted_and_the_run_completes(
    tmp_path: Path, docserver_uri: str
) -> None:
    async with embedded_server(tmp_path, docserver_uri) as running:
        docserver = running.ctx.docserver
        assert docserver is not None
        port = _port(running)
        module = await Module.online(running)
        workflow_id = await create_workflow(running, workflow_body(modules=[module.hash]))
        run_id = await execute(running, workflow_id)
        command = await module.recv_execute()
        assert running.ctx.docs.connections_lost == 0

        old_pid = _kill_child(running)
        await wait_until(lambda: not docserver.running or docserver.pid != old_pid, 5)
        # The result arrives while the store is down (or just restarting).
        assert module.ws is not None
        await module.ws.write_message(json.dumps({
            "type": "result", "status": "success", "workflow_id": str(workflow_id), "module_name": module.name,
            "message": "done", "run_id": command["meta"]["run_id"],
        }))
        # The stale pid file was replaced and the child is back on the same socket.
        # (/ready's 503 meanwhile is the next test's: here the restart may win the race.)

        async def ready_again() -> bool:
            return await _ready(running) == 200

        await wait_until(ready_again, 30, 0.2)
        assert docserver.restarts == 1 and docserver.pid != old_pid and _port(running) == port
        assert docserver.pid_file.read_text().strip() == str(docserver.pid)
        assert (await running.api("/health", auth=None))[0] == 200
        # The result is acknowledged once it is stored, and the run closes in the store.
        assert await module.recv(within=30) == RESULT_ACK
        run = await wait_run(running, run_id, within=15)
        assert run["status"] == "success", run
        assert (await running.api("/workflow/list"))[0] == 200
        # /metrics shows the loss (and the driver's reconnect behind it).
        metrics = (await running.fetch("/metrics")).body.decode()
        lost = re.search(r'^tsched_store_connection_losses_total\{store="mongodb"\} (\S+)$', metrics, re.M)
        assert lost and float(lost.group(1)) >= 1, metrics


async def test_ready_is_503_while_it_is_down_and_health_fails_only_past_the_bound(
    tmp_path: Path, docserver_uri: str
) -> None:
    async with embedded_server(tmp_path, docserver_uri) as running:
        docserver = running.ctx.docserver
        assert docserver is not None
        running.ctx.docserver_dead_seconds = 1.5
        _kill_child(running)
        await wait_until(lambda: not docserver.running, 5)
        blocker = await _hold_pid_file(running)
        try:
            await wait_until(lambda: not docserver.running, 5)
            status, env = await running.api("/ready", auth=None)
            assert status == 503 and "mongodb" in env["message"], env
            assert (await running.api("/health", auth=None))[0] == 200  # not dead long enough yet
            await asyncio.sleep(1.6)
            status, env = await running.api("/health", auth=None)
            assert status == 503 and env["code"] == "5030" and "embedded document server down" in env["message"], env
        finally:
            blocker.kill()
            await blocker.wait()

        async def ready_again() -> bool:
            return await _ready(running) == 200

        await wait_until(ready_again, 40, 0.25)
        assert (await running.api("/health", auth=None))[0] == 200


async def test_shutdown_is_bounded_when_the_document_store_is_gone(tmp_path: Path, docserver_uri: str) -> None:
    running, http_server = await start_server(make_settings(tmp_path, docserver_uri, mongodb_host=None))
    stopped = False
    try:
        module = await Module.online(running)
        workflow_id = await create_workflow(running, workflow_body(modules=[module.hash]))
        await execute(running, workflow_id)
        await module.recv_execute()
        _kill_child(running)
        await wait_until(lambda: running.ctx.docserver is not None and not running.ctx.docserver.running, 5)
        blocker = await _hold_pid_file(running)
        try:
            await wait_until(lambda: running.ctx.docserver is not None and not running.ctx.docserver.running, 5)
            module.close()  # a disconnect to write, and an open run to flush
            started = time.monotonic()
            await stop_server(running, http_server)
            stopped = True
            took = time.monotonic() - started
        finally:
            blocker.kill()
            await blocker.wait()
        assert took <= 5.0, f"shutdown took {took:.1f} s"
    finally:
        if not stopped:
            await stop_server(running, http_server)
