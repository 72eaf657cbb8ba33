"""Failure notifications end to end: a real server, real modules over WebSockets, and
a real HTTP sink on loopback standing in for the email API and a webhook.

The sink answers 200 (at once or after a delay), answers 503, hangs past the client
timeout or is stopped (so connections are refused); every body it receives is recorded with its answer, so
"delivered" means "answered 200" here. The notifier's retry and poll intervals are
shortened on the running notifier (`base_backoff`, `poll_seconds`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import RunningServer, make_settings, start_server, stop_server
from tests.flows.support import (
    Module,
    create_workflow,
    execute,
    register,
    wait_run,
    wait_until,
    workflow_body,
)
from tests.support.sink import Sink
from tornado_sched.config import Settings
from tornado_sched.tables import notification_outbox

EMAILS = ("ops@example.com", "oncall@example.com")
PUBLIC = "http://sched.example"
WINDOW = 0.3  # NOTIFY_AGGREGATE_SECONDS for most tests
TIMEOUT = 0.5  # EMAIL_TIMEOUT_SECONDS


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    sink = Sink()
    await sink.start()
    yield sink
    await sink.stop()


def notify_settings(tmp_path: Path, docserver_uri: str, sink: Sink, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "notification_email": EMAILS,
        "email_api_url": sink.url("/email"),
        "notify_aggregate_seconds": WINDOW,
        "email_timeout_seconds": TIMEOUT,
        "public_url": PUBLIC,
    }
    fields.update(overrides)
    return make_settings(tmp_path, docserver_uri, **fields)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[RunningServer]:
    server, http_server = await start_server(settings)
    notifier = server.ctx.notifier
    notifier.base_backoff = 0.2  # retries after 0.2, 0.4, 0.8 ... s
    notifier.poll_seconds = 0.2
    try:
        yield server
    finally:
        await stop_server(server, http_server)


@pytest.fixture
async def server(tmp_path: Path, docserver_uri: str, sink: Sink) -> AsyncIterator[RunningServer]:
    async with running(notify_settings(tmp_path, docserver_uri, sink)) as server:
        yield server


def on_demand(modules: list[str], **fields: Any) -> dict[str, Any]:
    """A workflow that only runs when asked (no schedule to interfere)."""
    return workflow_body(modules=modules, enable=False, execute_cron_list=[], **fields)


async def fail_run(server: RunningServer, module: Module, wid: int, error: str = "boom",
                   message: str = "it broke") -> tuple[str, dict[str, Any]]:
    """One run of `wid` whose (single) step reports failure; returns (run_id, command)."""
    run_id = await execute(server, wid)
    command = await module.recv_execute()
    assert await module.result(command, "failure", error=error, message=message) == "receive result"
    assert (await wait_run(server, run_id))["status"] == "failure"
    return run_id, command


async def succeed_run(server: RunningServer, module: Module, wid: int) -> str:
    run_id = await execute(server, wid)
    command = await module.recv_execute()
    assert await module.result(command, "success") == "receive result"
    assert (await wait_run(server, run_id))["status"] == "success"
    return run_id


async def outbox(server: RunningServer) -> list[dict[str, Any]]:
    """Every row of notification_outbox, oldest first."""
    async with server.ctx.sql.engine.connect() as conn:
        result = await conn.execute(select(notification_outbox).order_by(notification_outbox.c.id))
        return [dict(row._mapping) for row in result]


async def wait_rows(server: RunningServer, predicate: Any, within: float = 5.0) -> list[dict[str, Any]]:
    """Wait until predicate(rows) holds; returns the rows."""
    rows: list[dict[str, Any]] = []

    async def check() -> bool:
        rows[:] = await outbox(server)
        return bool(predicate(rows))

    try:
        await wait_until(check, within, 0.05)
    except AssertionError:
        raise AssertionError(f"outbox never matched; last rows: {rows}") from None
    return rows


async def wait_delivered(sink: Sink, count: int, path: str = "/email", within: float = 5.0) -> list[Any]:
    await wait_until(lambda: len(sink.bodies(path)) >= count, within)
    return sink.bodies(path)


async def test_failure_sends_one_email_with_the_facts(server: RunningServer, sink: Sink) -> None:
    module = await Module.online(server, "alpha")
    wid = await create_workflow(server, on_demand([module.hash], name="早盘 & <夜盘>", timezone="Asia/Tokyo"))
    run_id, command = await fail_run(server, module, wid, error="<script>alert(1)</script>", message="bad & worse")

    [email] = await wait_delivered(sink, 1)
    await asyncio.sleep(WINDOW + 0.3)  # nothing else follows
    assert len(sink.received) == 1
    assert email["to"] == list(EMAILS)
    assert "早盘 & <夜盘>" in email["subject"]  # the subject is plain text
    content = email["content"]
    assert "早盘 &amp; &lt;夜盘&gt;" in content
    assert "alpha" in content
    assert f'href="{PUBLIC}/runs/{run_id}"' in content
    assert run_id[:12] in content
    assert command["meta"]["execution_time"] in content and "Asia/Tokyo" in content
    assert "failure" in content
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in content and "<script>" not in content
    assert "bad &amp; worse" in content

    [row] = await wait_rows(server, lambda rows: rows and rows[0]["status"] == "sent")
    assert row["channel"] == "email" and row["kind"] == "failure" and row["workflow_id"] == wid
    assert row["attempts"] == 1 and row["last_error"] is None
    assert row["sent_at"] is not None and row["sent_at"] >= row["created_at"]
    module.close()


async def test_offline_disconnect_and_timeout_failures_notify(server: RunningServer, sink: Sink) -> None:
    offline_hash = await register(server, "sleeper")
    wid_offline = await create_workflow(server, on_demand([offline_hash], name="wf-offline"))
    run_offline = await execute(server, wid_offline)

    leaver = await Module.online(server, "leaver")
    wid_gone = await create_workflow(server, on_demand([leaver.hash], name="wf-gone"))
    run_gone = await execute(server, wid_gone)
    await leaver.recv_execute()
    leaver.close()

    silent = await Module.online(server, "silent")
    wid_slow = await create_workflow(server, on_demand([silent.hash], name="wf-slow", timeout_seconds=1))
    run_slow = await execute(server, wid_slow)
    await silent.recv_execute()

    emails = await wait_delivered(sink, 3, within=6)
    by_subject = {next(n for n in ("wf-offline", "wf-gone", "wf-slow") if n in e["subject"]): e for e in emails}
    assert len(by_subject) == 3
    offline = by_subject["wf-offline"]["content"]
    assert run_offline in offline and "sleeper" in offline
    assert "<td>offline</td>" in offline and "module was offline when the run started" in offline
    gone = by_subject["wf-gone"]["content"]
    assert run_gone in gone and "leaver" in gone and "disconnected during the run" in gone
    slow = by_subject["wf-slow"]["content"]
    assert run_slow in slow and "silent" in slow
    assert "<td>timeout</td>" in slow and "no result within 1 s" in slow
    assert len(await outbox(server)) == 3
    silent.close()


async def test_503_is_retried_with_backoff_and_delivered_once_back(server: RunningServer, sink: Sink) -> None:
    sink.set_mode("503")
    module = await Module.online(server)
    wid = await create_workflow(server, on_demand([module.hash]))
    await fail_run(server, module, wid)

    rows = await wait_rows(server, lambda rows: rows and rows[0]["attempts"] >= 3)
    assert rows[0]["status"] == "retrying" and rows[0]["last_error"] == "HTTP 503"
    assert rows[0]["sent_at"] is None
    # Exponential: the gaps between attempts grow (0.2 s, then 0.4 s).
    times = [r.at for r in sink.received]
    assert times[2] - times[1] > (times[1] - times[0]) * 1.4
    assert sink.bodies() == []

    sink.set_mode("ok")
    [row] = await wait_rows(server, lambda rows: rows[0]["status"] == "sent", within=5)
    assert row["attempts"] >= 4 and row["sent_at"] is not None
    delivered = sink.bodies()
    assert len(delivered) == 1 and delivered[0]["to"] == list(EMAILS)
    assert delivered[0] == sink.bodies(answer="503")[0]  # the same message, resent
    module.close()


async def test_refused_connection_is_retried_and_delivered_after_the_sink_returns(
    server: RunningServer, sink: Sink
) -> None:
    await sink.stop()
    module = await Module.online(server)
    wid = await create_workflow(server, on_demand([module.hash]))
    run_id, _ = await fail_run(server, module, wid)

    rows = await wait_rows(server, lambda rows: rows and rows[0]["attempts"] >= 2)
    assert rows[0]["status"] == "retrying"
    assert "refused" in rows[0]["last_error"].lower()
    assert sink.received == []

    await sink.start()  # the same port
    [row] = await wait_rows(server, lambda rows: rows[0]["status"] == "sent", within=5)
    assert row["attempts"] >= 3
    [email] = sink.bodies()
    assert run_id in email["content"]
    module.close()


async def test_a_sink_slower_than_the_timeout_is_a_failed_attempt_and_never_blocks(
    server: RunningServer, sink: Sink
) -> None:
    sink.set_mode("hang")
    module = await Module.online(server)
    wid = await create_workflow(server, on_demand([module.hash]))
    await fail_run(server, module, wid)
    await wait_until(lambda: len(sink.received) == 1)

    # While the sink holds the request, the server still serves and runs still close.
    started = time.monotonic()
    status, _ = await server.api("/notifications")
    assert status == 200 and time.monotonic() - started < TIMEOUT / 2
    await succeed_run(server, module, wid)

    rows = await wait_rows(server, lambda rows: rows[0]["attempts"] >= 1, within=3)
    assert rows[0]["status"] == "retrying"
    assert "timeout" in rows[0]["last_error"].lower(), rows[0]["last_error"]
    assert sink.bodies() == []

    sink.set_mode("ok")
    rows = await wait_rows(server, lambda rows: all(r["status"] == "sent" for r in rows) and len(rows) == 2,
                           within=5)
    failure, recovery = rows
    assert failure["kind"] == "failure" and failure["attempts"] >= 2
    assert recovery["kind"] == "recovery"
    assert ["recovered" in b["subject"] for b in sink.bodies()] == [False, True]  # in order
    module.close()


async def test_pending_notifications_survive_a_restart(tmp_path: Path, docserver_uri: str, sink: Sink) -> None:
    settings = notify_settings(tmp_path, docserver_uri, sink)
    await sink.stop()
    async with running(settings) as server:
        module = await Module.online(server, "mod")
        wid_a = await create_workflow(server, on_demand([module.hash], name="wf-a"))
        run_a, _ = await fail_run(server, module, wid_a)
        await wait_rows(server, lambda rows: rows and rows[0]["attempts"] >= 1)
        # A run still open when the server stops becomes interrupted at the next start.
        wid_b = await create_workflow(server, on_demand([module.hash], name="wf-b"))
        run_b = await execute(server, wid_b)
        await module.recv_execute()
        before = await outbox(server)
    assert [r["status"] for r in before] == ["retrying"]
    module.close()

    await sink.start()
    async with running(settings) as server:
        emails = await wait_delivered(sink, 2)
        rows = await wait_rows(server, lambda rows: len(rows) == 2 and all(r["status"] == "sent" for r in rows))
    assert rows[0]["id"] == before[0]["id"] and rows[0]["attempts"] >= 2
    [email_a] = [e for e in emails if "wf-a" in e["subject"]]
    [email_b] = [e for e in emails if "wf-b" in e["subject"]]
    assert run_a in email_a["content"]
    assert run_b in email_b["content"] and "<td>interrupted</td>" in email_b["content"]


async def test_first_failure_goes_out_at_once_and_the_rest_of_the_window_as_one_follow_up(
    tmp_path: Path, docserver_uri: str, sink: Sink
) -> None:
    window = 1.5
    async with running(notify_settings(tmp_path, docserver_uri, sink, notify_aggregate_seconds=window)) as server:
        module = await Module.online(server)
        wid_a = await create_workflow(server, on_demand([module.hash], name="wf-a"))
        wid_b = await create_workflow(server, on_demand([module.hash], name="wf-b"))
        started = time.monotonic()
        runs_a = [(await fail_run(server, module, wid_a, error=f"err-{i}"))[0] for i in range(3)]
        run_b, _ = await fail_run(server, module, wid_b)
        # The first failure of each workflow is news: delivered well inside the window.
        emails = await wait_delivered(sink, 2, within=window * 0.8)
        assert time.monotonic() - started < window, "the first notices waited for the window"
        [first_a] = [e for e in emails if "wf-a" in e["subject"]]
        [email_b] = [e for e in emails if "wf-b" in e["subject"]]
        assert "1 failed step(s)" in first_a["subject"] and f"/runs/{runs_a[0]}" in first_a["content"]
        assert runs_a[1] not in first_a["content"]
        assert run_b in email_b["content"] and runs_a[0] not in email_b["content"]

        # The other two failures of wf-a within the window: one follow-up, after it.
        emails = await wait_delivered(sink, 3, within=window + 3)
        assert time.monotonic() - started >= window * 0.9
        follow_up = emails[2]
        assert "wf-a" in follow_up["subject"] and "2 failed step(s)" in follow_up["subject"]
        for i in (1, 2):
            assert f"/runs/{runs_a[i]}" in follow_up["content"] and f"err-{i}" in follow_up["content"]
        assert follow_up["content"].count("<tr>") == 3  # the header and two failures
        await asyncio.sleep(0.5)
        assert len(sink.bodies()) == 3
        status, env = await server.api("/notifications")
        assert sorted(n["failures"] for n in env["result"]["notifications"]) == [1, 1, 2]

        # After a quiet window, the next failure is news again: at once.
        await asyncio.sleep(window)
        quiet_started = time.monotonic()
        late, _ = await fail_run(server, module, wid_a, error="late")
        emails = await wait_delivered(sink, 4, within=window * 0.8)
        assert time.monotonic() - quiet_started < window
        assert f"/runs/{late}" in emails[3]["content"] and "1 failed step(s)" in emails[3]["subject"]
        module.close()


async def test_recovery_sends_one_notice_after_the_failure(server: RunningServer, sink: Sink) -> None:
    module = await Module.online(server)
    wid = await create_workflow(server, on_demand([module.hash], name="wf-rec"))
    await fail_run(server, module, wid)
    ok_run = await succeed_run(server, module, wid)  # within the failure's window

    emails = await wait_delivered(sink, 2)
    await succeed_run(server, module, wid)  # no longer failing: no notice
    await asyncio.sleep(WINDOW + 0.4)
    assert len(sink.received) == 2
    failure, recovery = emails
    assert "recovered" not in failure["subject"]
    assert "恢复" in recovery["subject"] and "recovered" in recovery["subject"] and "wf-rec" in recovery["subject"]
    assert f'href="{PUBLIC}/runs/{ok_run}"' in recovery["content"]
    assert recovery["to"] == list(EMAILS)
    assert [r["kind"] for r in await outbox(server)] == ["failure", "recovery"]
    module.close()


async def test_webhook_gets_the_same_facts_as_json(tmp_path: Path, docserver_uri: str, sink: Sink) -> None:
    settings = notify_settings(tmp_path, docserver_uri, sink, webhook_url=sink.url("/hook"))
    async with running(settings) as server:
        module = await Module.online(server, "hooked")
        wid = await create_workflow(server, on_demand([module.hash], name="wf-hook"))
        run_id, command = await fail_run(server, module, wid, error="E42", message="M42")
        [hook] = await wait_delivered(sink, 1, "/hook")
        assert hook["kind"] == "failure" and hook["workflow_id"] == wid and hook["workflow_name"] == "wf-hook"
        [fact] = hook["failures"]
        assert fact["run_id"] == run_id and fact["module_name"] == "hooked" and fact["status"] == "failure"
        assert fact["error"] == "E42" and fact["message"] == "M42"
        assert fact["execution_time"] == command["meta"]["execution_time"] and fact["timezone"]
        assert "wf-hook" in hook["text"] and f"{PUBLIC}/runs/{run_id}" in hook["text"] and "E42" in hook["text"]
        await wait_delivered(sink, 1, "/email")

        ok_run = await succeed_run(server, module, wid)
        [_, recovery] = await wait_delivered(sink, 2, "/hook")
        assert recovery["kind"] == "recovery" and recovery["run_id"] == ok_run and recovery["workflow_id"] == wid
        assert f"{PUBLIC}/runs/{ok_run}" in recovery["text"]
        rows = await wait_rows(server, lambda rows: len(rows) == 4 and all(r["status"] == "sent" for r in rows))
        assert sorted((r["channel"], r["kind"]) for r in rows) == [
            ("email", "failure"), ("email", "recovery"), ("webhook", "failure"), ("webhook", "recovery")]
        module.close()


async def test_without_email_settings_rows_are_kept_as_not_configured(
    tmp_path: Path, docserver_uri: str, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, docserver_uri, debug=True, notify_aggregate_seconds=1.0)
    with caplog.at_level(logging.WARNING, logger="tornado_sched.notify"):
        async with running(settings) as server:
            assert any("not_configured" in r.getMessage() and r.levelno == logging.WARNING
                       for r in caplog.records if r.name == "tornado_sched.notify")
            module = await Module.online(server)
            wid = await create_workflow(server, on_demand([module.hash]))
            await fail_run(server, module, wid)
            await fail_run(server, module, wid)
            await fail_run(server, module, wid)
            # The first at once, the next two gathered into one follow-up.
            await wait_rows(server, lambda rows: len(rows) == 2)
            await asyncio.sleep(1.5)  # past the window and a poll
            rows = await outbox(server)
            assert len(rows) == 2
            for row in rows:
                assert row["status"] == "not_configured" and row["attempts"] == 0 and row["sent_at"] is None
            status, env = await server.api("/notifications?status=not_configured")
            assert env["result"]["total"] == 2
            assert [n["failures"] for n in env["result"]["notifications"]] == [2, 1]  # newest first
            assert all(n["next_attempt_at"] is None for n in env["result"]["notifications"])
            module.close()
    assert sink.received == []


async def test_notifications_api_lists_the_outbox(server: RunningServer, sink: Sink) -> None:
    sink.set_mode("503")
    module = await Module.online(server)
    wid_a = await create_workflow(server, on_demand([module.hash]))
    wid_b = await create_workflow(server, on_demand([module.hash]))
    await fail_run(server, module, wid_a)
    await wait_rows(server, lambda rows: rows and rows[0]["attempts"] >= 1)
    sink.set_mode("ok")
    await fail_run(server, module, wid_b)
    await wait_rows(server, lambda rows: len(rows) == 2 and rows[1]["status"] == "sent")

    status, env = await server.api("/notifications")
    assert status == 200, env
    result = env["result"]
    assert result["total"] == 2 and result["page"] == 1
    newest, oldest = result["notifications"]
    for item in (newest, oldest):
        assert {"channel", "status", "attempts", "last_error", "created_at", "sent_at"} <= set(item)
        assert item["channel"] == "email" and item["created_at"]
    assert newest["workflow_id"] == wid_b and newest["status"] == "sent" and newest["sent_at"]
    assert newest["attempts"] == 1 and newest["last_error"] is None
    # The older one failed once with 503 and is either still waiting or sent by now.
    assert oldest["workflow_id"] == wid_a and oldest["attempts"] >= 1
    assert oldest["status"] == "sent" or oldest["last_error"] == "HTTP 503"

    status, env = await server.api("/notifications?status=sent&page_size=1")
    assert status == 200 and env["result"]["notifications"][0]["status"] == "sent"
    assert len(env["result"]["notifications"]) == 1
    status, env = await server.api("/notifications?status=bogus")
    assert status == 400 and env["result"] == {"field": "status"}
    status, _ = await server.api("/notifications", auth=None)
    assert status == 401
    module.close()


async def test_no_row_is_ever_dropped(tmp_path: Path, docserver_uri: str, sink: Sink, sql_url: str) -> None:
    """Failures, aggregation, a failure after its row is already being retried,
    recovery, 503s, refusals and a restart: every notification created stays a row.
    On SQLite and on MariaDB."""
    settings = notify_settings(tmp_path, docserver_uri, sink, webhook_url=sink.url("/hook"),
                               notify_aggregate_seconds=1.5, sql_url_override=sql_url)
    sink.set_mode("503")
    async with running(settings) as server:
        module = await Module.online(server)
        wid_a = await create_workflow(server, on_demand([module.hash], name="wf-a"))
        wid_b = await create_workflow(server, on_demand([module.hash], name="wf-b"))
        await fail_run(server, module, wid_a)  # at once: 2 rows (email, webhook)
        await fail_run(server, module, wid_a)  # within the window: a follow-up, 2 rows
        await fail_run(server, module, wid_b)  # at once: 2 more
        await wait_rows(server, lambda rows: len(rows) == 6 and all(r["status"] == "retrying" for r in rows))
        await fail_run(server, module, wid_a)  # A's rows are being retried: 2 new rows
        await succeed_run(server, module, wid_a)  # recovery: 2 rows
        await wait_rows(server, lambda rows: len(rows) == 10)
        await sink.stop()
        await asyncio.sleep(0.3)
        module.close()
    assert await count_rows(settings) == 10

    await sink.start()
    sink.set_mode("ok")
    async with running(settings) as server:
        rows = await wait_rows(server, lambda rows: len(rows) == 10 and all(r["status"] == "sent" for r in rows),
                               within=8)
        status, env = await server.api("/notifications?page_size=500")
        assert env["result"]["total"] == 10
    assert [r["id"] for r in rows] == list(range(rows[0]["id"], rows[0]["id"] + 10))  # no gaps
    assert [(r["channel"], r["kind"]) for r in rows].count(("email", "failure")) == 4
    assert [(r["channel"], r["kind"]) for r in rows].count(("webhook", "recovery")) == 1
    # Each row was delivered exactly once.
    assert len(sink.bodies("/email")) == 5 and len(sink.bodies("/hook")) == 5
    assert sum(len(b["failures"]) for b in sink.bodies("/hook") if b["kind"] == "failure") == 4
    assert await count_rows(settings) == 10


async def test_every_failure_is_delivered_exactly_once(
    tmp_path: Path, docserver_uri: str, sink: Sink, sql_url: str
) -> None:
    """A stream of failures while messages are on the wire (the sink answers 200 after
    0.2 s): each failure is in exactly one delivered email, none lost to a message
    that was already being sent. On SQLite and MariaDB (whole-second DATETIME)."""
    sink.set_mode("slow")
    settings = notify_settings(tmp_path, docserver_uri, sink, notify_aggregate_seconds=0.5, sql_url_override=sql_url)
    async with running(settings) as server:
        module = await Module.online(server)
        wid = await create_workflow(server, on_demand([module.hash]))
        run_ids = []
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            run_ids.append((await fail_run(server, module, wid))[0])
            await asyncio.sleep(0.03)
        rows = await wait_rows(server, lambda rows: all(r["status"] == "sent" for r in rows))
        module.close()
    assert len(rows) >= 2  # the stream spanned several messages
    delivered = Counter(r for email in sink.bodies() for r in run_ids if f"/runs/{r}" in email["content"])
    assert delivered == Counter(run_ids)


async def count_rows(settings: Settings) -> int:
    """Rows in the outbox, read with an engine of our own (the server is stopped)."""
    engine = create_async_engine(settings.sql_url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(notification_outbox))).scalar_one())
    finally:
        await engine.dispose()


async def test_failures_as_long_as_a_result_may_carry_go_out_in_notices_that_fit_their_column(
    tmp_path: Path, docserver_uri: str, sink: Sink, sql_url: str
) -> None:
    """Results whose error and message are as long as the edge lets through (65,535
    bytes each) fail within one window: every failure reaches the sink in exactly one
    email, every stored notice fits MariaDB's TEXT column (65,535 bytes) and none is
    refused. On SQLite and MariaDB; MariaDB used to refuse such a notice, which was
    then retried forever and never sent."""
    settings = notify_settings(tmp_path, docserver_uri, sink, notify_aggregate_seconds=1.0, sql_url_override=sql_url)
    async with running(settings) as server:
        module = await Module.online(server)
        wid = await create_workflow(server, on_demand([module.hash]))
        run_ids = [(await fail_run(server, module, wid, error="e" * 65_535, message="消" * 21_845))[0]
                   for _ in range(5)]
        rows = await wait_rows(server, lambda rows: len(rows) >= 2 and all(r["status"] == "sent" for r in rows),
                               within=8)
        module.close()
        assert all(len(r["payload"].encode("utf-8")) <= 65_535 for r in rows), [len(r["payload"]) for r in rows]
        delivered = Counter(r for email in sink.bodies() for r in run_ids if f"/runs/{r}" in email["content"])
        assert delivered == Counter(run_ids)
        assert all("消消消" in email["content"] and "…" in email["content"] for email in sink.bodies())
        status, env = await server.api("/ready", auth=None)
        failed = env["result"]["failed_writes"]
        assert (failed["notification_outbox"], failed["notification_outbox_quarantined"]) == (0, 0), failed
