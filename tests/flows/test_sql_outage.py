"""SQL unreachable mid-run: execution-log and audit rows are kept and written later;
results of open runs are acknowledged once SQL has them; a WebSocket handshake that
needs SQL is refused with 503 and the envelope; SQL that hangs is a bounded 503 and
a bounded stop.

The server reaches the shared MariaDB through a TCP proxy that the test cuts (or
hangs) and restores, so MariaDB itself is never stopped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import make_url, select
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import (
    ADMIN,
    _drop_mariadb,
    _fresh_mariadb,
    make_settings,
    start_server,
    stop_server,
)
from tests.flows.support import (
    Module,
    create_workflow,
    execute,
    log_rows,
    wait_run,
    wait_until,
    workflow_body,
)
from tests.support.history import stored_run
from tests.support.tcpproxy import TcpProxy
from tornado_sched.stores import SQL_WAIT_SECONDS
from tornado_sched.tables import audit_log

pytestmark = pytest.mark.mariadb


@pytest.fixture
async def proxied_mariadb(mariadb_admin_url: str) -> AsyncIterator[tuple[str, TcpProxy]]:
    name, url = await _fresh_mariadb(mariadb_admin_url)
    target = make_url(url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 3306)
    await proxy.start()
    yield str(target.set(port=proxy.port).render_as_string(hide_password=False)), proxy
    await proxy.close()
    await _drop_mariadb(mariadb_admin_url, name)


async def test_rows_written_while_sql_is_down_arrive_when_it_returns(
    tmp_path: Path, docserver_uri: str, proxied_mariadb: tuple[str, TcpProxy]
) -> None:
    """Runs live in SQL: a run open when SQL goes away gets its result acknowledged
    only once SQL has it; firings during the outage cannot create their run (503,
    nothing dispatched) but their execution-log rows are kept and written later."""
    url, proxy = proxied_mariadb
    running, http_server = await start_server(make_settings(tmp_path, docserver_uri, sql_url_override=url))
    ctx = running.ctx
    ctx.scheduler.execution_log.retry_seconds = 0.2
    ctx.audit.pending.retry_seconds = 0.2
    try:
        module = await Module.online(running)
        workflow_id = await create_workflow(running, workflow_body(modules=[module.hash], overlap="allow"))
        before = len(await log_rows(running, workflow_id))
        open_run = await execute(running, workflow_id)
        command = await module.recv_execute()

        await proxy.cut()
        # The open run's result: not acknowledged while it cannot be stored.
        assert module.ws is not None
        await module.ws.write_message(json.dumps({
            "type": "result", "status": "success", "run_id": open_run, "workflow_id": str(workflow_id),
            "workflow_name": command["meta"]["workflow_name"], "module_name": module.name,
            "error": None, "message": "done",
        }))
        await module.no_message(1.0)
        for _ in range(3):
            status, env = await running.api(f"/workflow/{workflow_id}/execute", "POST")
            assert status == 503 and env["code"] == "5030" and "could not start the run" in env["message"], env
        await module.no_message(0.3)  # nothing was dispatched for runs that do not exist
        # An audited change made during the outage (the operator is in the auth cache).
        status, env = await running.api(f"/workflow/{workflow_id}/disable", "POST")
        assert status == 200, env

        status, env = await running.api("/ready", auth=None)
        assert status == 503 and env["code"] == "5030" and "sql" in env["message"], env
        waiting = env["result"]["failed_writes"]
        assert waiting["execution_log_kept"] == 3, waiting
        assert waiting["audit_log_kept"] >= 1, waiting  # the disable

        await proxy.restore()
        assert await module.recv(10) == "receive result"
        await wait_until(lambda: ctx.scheduler.execution_log.kept == 0 and ctx.audit.pending.kept == 0, 10)
        rows = await log_rows(running, workflow_id)
        assert [r["run_id"] for r in rows[before:]] == [open_run, None, None, None]
        assert [r["outcome"] for r in rows[before:]] == ["started", "error", "error", "error"]
        assert (await wait_run(running, open_run))["status"] == "success"
        async with ctx.sql.engine.connect() as conn:
            actions = (await conn.execute(
                select(audit_log.c.action).where(audit_log.c.target == f"workflow:{workflow_id}")
            )).scalars().all()
        assert "disable" in actions, actions
        status, env = await running.api("/ready", auth=None)
        assert status == 200 and env["result"]["failed_writes"]["execution_log_kept"] == 0
        assert env["result"]["failed_writes"]["execution_log_dropped"] == 0
    finally:
        await stop_server(running, http_server)


async def test_a_row_the_store_refuses_is_set_aside_and_the_rest_written(
    tmp_path: Path, docserver_uri: str, proxied_mariadb: tuple[str, TcpProxy]
) -> None:
    """A poisoned row (a lone surrogate the driver cannot encode) among kept ones:
    quarantined and counted, the others written."""
    url, proxy = proxied_mariadb
    running, http_server = await start_server(make_settings(tmp_path, docserver_uri, sql_url_override=url))
    pending = running.ctx.audit.pending
    pending.retry_seconds = 0.2
    try:
        await proxy.cut()
        await running.ctx.audit.record("admin", "a1", "t:1")
        await running.ctx.audit.record("admin", "a2", "t:\ud800")
        await running.ctx.audit.record("admin", "a3", "t:3")
        assert pending.kept == 3
        await proxy.restore()
        await wait_until(lambda: pending.kept == 0, 10)
        assert pending.quarantined == 1
        async with running.ctx.sql.engine.connect() as conn:
            actions = (await conn.execute(select(audit_log.c.action).order_by(audit_log.c.id))).scalars().all()
        assert [a for a in actions if a.startswith("a")][-2:] == ["a1", "a3"], actions
    finally:
        await stop_server(running, http_server)


async def test_a_websocket_handshake_that_needs_sql_is_a_503_with_the_envelope(
    tmp_path: Path, docserver_uri: str, proxied_mariadb: tuple[str, TcpProxy]
) -> None:
    """The WebSocket base (handlers/base.py SocketHandler) maps a store outage during
    the handshake as the request handlers do: /dashboard/live checks a Bearer token in
    SQL, so with SQL cut it answers 503 with code 5030, not a 500 or a hang."""
    url, proxy = proxied_mariadb
    running, http_server = await start_server(make_settings(tmp_path, docserver_uri, sql_url_override=url))
    try:
        _, token = await running.ctx.tokens.create(ADMIN[0], "live page")
        bearer = {"Authorization": f"Bearer {token}"}
        live = await websocket_connect(HTTPRequest(f"{running.ws_url}/dashboard/live", headers=bearer))
        assert json.loads(await live.read_message())["type"] == "hello"
        live.close()

        await proxy.cut()
        try:
            with pytest.raises(HTTPClientError) as refused:
                await websocket_connect(HTTPRequest(f"{running.ws_url}/dashboard/live", headers=bearer))
            assert refused.value.code == 503
            response = await running.fetch("/dashboard/live", auth=None, headers=bearer)
            envelope = json.loads(response.body)
            assert response.code == 503 and envelope["code"] == "5030" and "sql" in envelope["message"], envelope
        finally:
            await proxy.restore()
    finally:
        await stop_server(running, http_server)


async def test_a_result_resent_during_an_outage_is_acknowledged_only_once_stored(
    tmp_path: Path, docserver_uri: str, proxied_mariadb: tuple[str, TcpProxy]
) -> None:
    """The issue's case: a result sent while SQL is down, then re-sent (as the error
    frame asks). Neither is acknowledged until SQL has it; the acknowledgement of the
    re-send after SQL returns means the step row is stored, not just set in memory."""
    url, proxy = proxied_mariadb
    running, http_server = await start_server(make_settings(tmp_path, docserver_uri, sql_url_override=url))
    running.ctx.runs._writer.commit_timeout = 3.0  # 30 s by default; the retry is every 1 s
    try:
        module = await Module.online(running)
        workflow_id = await create_workflow(running, workflow_body(modules=[module.hash]))
        run_id = await execute(running, workflow_id)
        command = await module.recv_execute()

        await proxy.cut()
        unavailable = {"type": "error", "error": "result not stored (server unavailable); send it again later"}
        assert await module.result(command, message="done") == unavailable
        assert await module.result(command, message="done") == unavailable  # the re-send: still not stored
        await proxy.restore()
        assert await module.result(command, message="done") == "receive result"
        # Acknowledged means stored: the row is there at once, with the result.
        stored = await stored_run(running, run_id)
        assert stored["status"] == "success" and stored["steps"][0]["message"] == "done", stored
        assert running.ctx.runs.quarantined == 0
    finally:
        await stop_server(running, http_server)


async def test_shutdown_with_sql_gone_is_bounded_and_what_waited_is_lost(
    tmp_path: Path, docserver_uri: str, proxied_mariadb: tuple[str, TcpProxy]
) -> None:
    """SQL unreachable with rows kept, a result waiting and a run open: the process
    stops within 5 s. What waited in memory is lost, as the README says: at the next
    start the run is interrupted, the result sent again is refused saying so, and the
    kept execution-log row is not there."""
    url, proxy = proxied_mariadb
    settings = make_settings(tmp_path, docserver_uri, sql_url_override=url)
    running, http_server = await start_server(settings)
    stopped = False
    try:
        module = await Module.online(running)
        workflow_id = await create_workflow(running, workflow_body(modules=[module.hash], overlap="allow"))
        run_id = await execute(running, workflow_id)
        command = await module.recv_execute()
        await proxy.cut()
        assert (await running.api(f"/workflow/{workflow_id}/execute", "POST"))[0] == 503
        assert (await running.api(f"/workflow/{workflow_id}/disable", "POST"))[0] == 200
        assert running.ctx.scheduler.execution_log.kept == 1 and running.ctx.audit.pending.kept >= 1
        assert module.ws is not None
        await module.ws.write_message(json.dumps({
            "type": "result", "status": "success", "run_id": run_id, "message": "done"}))
        await module.no_message(0.3)
        started = time.monotonic()
        await stop_server(running, http_server)
        stopped = True
        took = time.monotonic() - started
        assert took <= 5.0, f"shutdown took {took:.1f} s"
    finally:
        if not stopped:
            await stop_server(running, http_server)

    await proxy.restore()
    running, http_server = await start_server(settings)
    try:
        stored = await stored_run(running, run_id)
        assert stored is not None and stored["status"] == "interrupted", stored
        module = Module(running, module.name, module.hash)
        await module.connect()
        assert await module.result(command, message="done") == {
            "type": "error", "error": f"result not recorded: run {run_id} is closed (interrupted)"}
        assert [r["outcome"] for r in await log_rows(running, workflow_id)] == ["started"]
    finally:
        await stop_server(running, http_server)


async def test_with_sql_hung_calls_answer_503_in_bounded_time_and_the_stop_stays_within_5_s(
    tmp_path: Path, docserver_uri: str, proxied_mariadb: tuple[str, TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    """SQL that stops answering without closing anything (a stopped or blackholed
    server: the proxy holds every byte, sockets stay open). An execute and a REST read
    answer 503 within the SQL wait bound, a failure notice waits in memory (counted on
    /ready), and the stop, with a run open, the notice kept and an execute still
    waiting on SQL, takes under 5 s. At the next start the open run is interrupted."""
    url, proxy = proxied_mariadb
    settings = make_settings(tmp_path, docserver_uri, sql_url_override=url)
    running, http_server = await start_server(settings)
    ctx = running.ctx
    ctx.sql.wait_seconds = 2.0  # SQL_WAIT_SECONDS by default; restored before the stop
    bound = ctx.sql.wait_seconds + 3.0  # margin for a loaded machine
    stopped = False
    try:
        holder, failing = await Module.online(running), await Module.online(running)
        on_demand = {"enable": False, "execute_cron_list": [], "overlap": "allow"}
        open_wid = await create_workflow(running, workflow_body(modules=[holder.hash], **on_demand))
        failing_wid = await create_workflow(running, workflow_body(modules=[failing.hash], **on_demand))
        open_run = await execute(running, open_wid)
        await holder.recv_execute()
        failing_run = await execute(running, failing_wid)
        await failing.recv_execute()

        await proxy.hang()
        assert failing.ws is not None
        await failing.ws.write_message(json.dumps({
            "type": "result", "status": "failure", "run_id": failing_run, "error": "boom", "message": "it broke"}))
        for path, method in ((f"/workflow/{open_wid}/execute", "POST"), ("/runs", "GET")):
            started = time.monotonic()
            status, env = await running.api(path, method)
            took = time.monotonic() - started
            assert status == 503 and env["code"] == "5030", (path, env)
            assert took < bound, f"{method} {path} answered after {took:.1f} s"
        await wait_until(lambda: ctx.notifier.kept == 1, bound)
        status, env = await running.api("/ready", auth=None)
        assert status == 503 and "sql" in env["message"], env
        assert env["result"]["failed_writes"]["notification_outbox_kept"] == 1, env

        # The stop with waits under way that have the default bound: cut, not waited out.
        ctx.sql.wait_seconds = SQL_WAIT_SECONDS
        waiting = asyncio.ensure_future(running.api(f"/workflow/{open_wid}/execute", "POST"))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await stop_server(running, http_server)
        stopped = True
        took = time.monotonic() - started
        assert took < 8.0, f"shutdown took {took:.1f} s"  # 5 s by design
        status, env = await asyncio.wait_for(waiting, 1.0)
        assert status == 503 and env["code"] == "5030", env
        assert "1 notification(s) not written to the outbox at shutdown" in caplog.text
    finally:
        if not stopped:
            await stop_server(running, http_server)

    await proxy.restore()
    running, http_server = await start_server(settings)
    try:
        stored = await stored_run(running, open_run)
        assert stored is not None and stored["status"] == "interrupted", stored
    finally:
        await stop_server(running, http_server)
