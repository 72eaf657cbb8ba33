"""/ready reports each store and the writes that failed since start."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from tornado.websocket import websocket_connect

from tests.conftest import RunningServer, make_settings, start_server, stop_server
from tornado_sched.docserver import EmbeddedDocumentServer


async def test_ready_names_failed_writes_and_the_overview_shows_them(server: RunningServer) -> None:
    status, env = await server.api("/ready", auth=None)
    assert status == 200
    assert set(env["result"]["failed_writes"]) == {
        "module_state_flush", "run_state_flush", "run_state_quarantined", "execution_log", "tick_claim", "notification_outbox", "audit_log",
        "execution_log_kept", "execution_log_dropped", "execution_log_quarantined",
        "audit_log_kept", "audit_log_dropped", "audit_log_quarantined",
        "notification_outbox_kept", "notification_outbox_dropped", "notification_outbox_quarantined",
    }
    assert not any(env["result"]["failed_writes"].values())
    page = await server.fetch("/")
    assert b"writes to the stores failed" not in page.body

    # A real failure: the relational store points at a file that cannot exist for a
    # moment; the audit write fails and is counted, not silent.
    sql = server.ctx.sql
    broken = create_async_engine("sqlite+aiosqlite:////nonexistent-dir/x.sqlite3")
    real, sql.engine = sql.engine, broken
    try:
        await server.ctx.audit.record("admin", "create", "workflow:1")
    finally:
        sql.engine = real
        await broken.dispose()
    status, env = await server.api("/ready", auth=None)
    assert env["result"]["failed_writes"]["audit_log"] == 1
    page = await server.fetch("/")
    assert b"writes to the stores failed" in page.body and b"audit_log: 1" in page.body


async def test_a_store_that_goes_away_is_a_503_naming_it(
    tmp_path: Path, docserver_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its own document server, stopped under a running server: /ready names
    MongoDB, and an API call that needs it answers 503 with the envelope, not 500."""
    own = EmbeddedDocumentServer(tmp_path / "own")
    uri = await own.start()
    running, http_server = await start_server(make_settings(tmp_path, docserver_uri, mongodb_host=uri))
    try:
        assert (await running.api("/ready", auth=None))[0] == 200
        module_hash = (await running.api("/module/register?name=outage"))[1]["result"]["hash"]
        await own.stop()
        status, env = await running.api("/ready", auth=None)
        assert status == 503 and env["code"] == "5030" and "mongodb" in env["message"], env
        status, env = await running.api("/workflow/list")
        assert status == 503 and env["message"] == "store unavailable: mongodb", env
        assert (await running.api("/health", auth=None))[0] == 200
        # A module reconnecting during the outage is authenticated from memory (no
        # store read per handshake), and its hash (its credential) is not written to
        # the log with the failed state write.
        socket = await websocket_connect(f"{running.ws_url}/websocket?hash={module_hash}")
        assert running.ctx.hub.is_online(module_hash)
        socket.close()
        assert module_hash not in caplog.text
    finally:
        await stop_server(running, http_server)
        await own.stop()
