"""/metrics scraped from a real server while a real module runs a scheduled and a
manual workflow: every family the issue names is present and moves with the facts."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import RunningServer, Settings, make_settings, start_server, stop_server
from tests.flows.support import (
    Module,
    create_workflow,
    execute,
    wait_run,
    wait_until,
    workflow_body,
)
from tests.flows.test_notifications import fail_run, notify_settings, on_demand, running, wait_rows
from tests.flows.test_scheduling import _schedule_two_seconds_ahead
from tests.flows.test_sql_outage import proxied_mariadb  # noqa: F401 - a fixture used below
from tests.support.sink import Sink
from tests.support.tcpproxy import TcpProxy

METRICS_TOKEN = "scrape-token-0123456789"


@pytest.fixture
async def metered(settings: Settings, tmp_path: Path) -> AsyncIterator[RunningServer]:
    running, http_server = await start_server(replace(settings, metrics_token=METRICS_TOKEN))
    yield running
    await stop_server(running, http_server)


def sample(text: str, name: str, labels: str = "") -> float:
    """The value of one sample line, e.g. sample(t, "tsched_runs_finished_total", 'status="success"')."""
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)$"
    match = re.search(pattern, text, re.M)
    assert match, f"{name}{{{labels}}} missing from:\n{text}"
    return float(match.group(1))


async def scrape(server: RunningServer) -> str:
    response = await server.fetch("/metrics", auth=None, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.code == 200, response.body
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.body.decode()


async def test_metrics_are_protected(metered: RunningServer) -> None:
    assert (await metered.fetch("/metrics", auth=None)).code == 401
    wrong = await metered.fetch("/metrics", auth=None, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.code == 401
    assert (await metered.fetch("/metrics")).code == 200  # operator credentials, as for the API
    # Without METRICS_TOKEN set, a bearer that is no API token gets nothing.
    plain = await AsyncHTTPClient().fetch(f"{metered.base_url}/metrics", raise_error=False)
    assert plain.code == 401


async def test_metrics_follow_modules_runs_and_scheduling(metered: RunningServer) -> None:
    before = await scrape(metered)
    assert sample(before, "tsched_modules_online") == 0
    assert sample(before, "tsched_outbox_pending") == 0
    assert sample(before, "tsched_outbox_oldest_pending_age_seconds") == 0
    assert sample(before, "tsched_store_write_failures_total", 'writer="run_state_flush"') == 0
    assert sample(before, "tsched_store_connections_opened_total", 'store="sql"') >= 1
    assert sample(before, "tsched_store_connections_opened_total", 'store="mongodb"') >= 1
    assert sample(before, "tsched_store_connection_losses_total", 'store="sql"') == 0
    assert sample(before, "tsched_store_connection_losses_total", 'store="mongodb"') == 0

    module = await Module.online(metered, "metered")
    wid = await create_workflow(metered, workflow_body("计量", [module.hash]))
    run_id = await execute(metered, wid)
    command = await module.recv_execute()
    assert await module.result(command) == "receive result"
    await wait_run(metered, run_id)

    # A failing step fills the outbox (no email configured in tests: not_configured,
    # which is not "pending"); the step histogram gets a failure sample.
    run_id = await execute(metered, wid)
    command = await module.recv_execute()
    assert await module.result(command, "failure", error="boom") == "receive result"
    await wait_run(metered, run_id)

    # One scheduled firing for the lateness histogram.
    _fire, _tick, shift = _schedule_two_seconds_ahead()
    scheduled = await create_workflow(metered, workflow_body(
        "计划", [module.hash], execute_cron_list=["* * * * *"], execute_shift_time=shift, timezone="UTC",
    ))
    command = await module.recv_execute(within=6)
    assert await module.result(command) == "receive result"
    await wait_run(metered, command["meta"]["run_id"])
    await metered.api(f"/workflow/{scheduled}/disable", "POST")

    text = await scrape(metered)
    assert sample(text, "tsched_modules_online") == 1
    assert sample(text, "tsched_module_connects_total") == 1
    assert sample(text, "tsched_websocket_frames_total", 'direction="in"') == 3
    assert sample(text, "tsched_websocket_frames_total", 'direction="out"') == 6  # 3 execute + 3 acks
    assert sample(text, "tsched_runs_started_total", 'trigger="manual"') == 2
    assert sample(text, "tsched_runs_started_total", 'trigger="schedule"') == 1
    assert sample(text, "tsched_runs_finished_total", 'status="success"') == 2
    assert sample(text, "tsched_runs_finished_total", 'status="failure"') == 1
    assert sample(text, "tsched_runs_open") == 0
    assert sample(text, "tsched_step_duration_seconds_count", 'status="success"') == 2
    assert sample(text, "tsched_step_duration_seconds_count", 'status="failure"') == 1
    assert sample(text, "tsched_scheduling_lateness_seconds_count") == 1
    assert sample(text, "tsched_scheduling_lateness_seconds_bucket", 'le="1.0"') == 1

    module.close()
    await wait_until(lambda: not metered.ctx.hub.is_online(module.hash))
    text = await scrape(metered)
    assert sample(text, "tsched_modules_online") == 0
    assert sample(text, "tsched_module_disconnects_total") == 1


async def test_outbox_gauges_follow_an_undelivered_notification(tmp_path: Path, docserver_uri: str) -> None:
    """The mail API answers 503: the row waits (pending 1, an age that grows), and
    both gauges fall back to 0 once it is delivered."""
    sink = Sink()
    await sink.start()
    sink.set_mode("503")
    try:
        async with running(notify_settings(tmp_path, docserver_uri, sink, metrics_token=METRICS_TOKEN)) as server:
            module = await Module.online(server)
            wid = await create_workflow(server, on_demand([module.hash]))
            await fail_run(server, module, wid)
            await wait_rows(server, lambda rows: rows and rows[0]["status"] == "retrying")
            text = await scrape(server)
            assert sample(text, "tsched_outbox_pending") == 1
            first_age = sample(text, "tsched_outbox_oldest_pending_age_seconds")
            assert first_age > 0
            await wait_until(lambda: len(sink.received) >= 2)
            later = await scrape(server)
            assert sample(later, "tsched_outbox_oldest_pending_age_seconds") > first_age
            assert sample(later, "tsched_outbox_read_ok") == 1

            sink.set_mode("ok")
            await wait_rows(server, lambda rows: rows[0]["status"] == "sent")
            text = await scrape(server)
            assert sample(text, "tsched_outbox_pending") == 0
            assert sample(text, "tsched_outbox_oldest_pending_age_seconds") == 0
            module.close()
    finally:
        await sink.stop()


@pytest.mark.mariadb
async def test_store_failures_and_reconnects_show_while_sql_is_cut(
    tmp_path: Path, docserver_uri: str, proxied_mariadb: tuple[str, TcpProxy],  # noqa: F811 - the fixture
) -> None:
    """SQL cut under a running server: failed writes and waiting rows count up, the
    outbox read reports its failure, and the reconnect shows as lost and new SQL
    connections."""
    url, proxy = proxied_mariadb
    settings = make_settings(tmp_path, docserver_uri, sql_url_override=url, metrics_token=METRICS_TOKEN)
    server, http_server = await start_server(settings)
    server.ctx.audit.pending.retry_seconds = 0.2
    try:
        module = await Module.online(server)
        wid = await create_workflow(server, workflow_body(modules=[module.hash]))
        before = await scrape(server)
        opened = sample(before, "tsched_store_connections_opened_total", 'store="sql"')
        assert sample(before, "tsched_store_write_failures_total", 'writer="audit_log"') == 0
        assert sample(before, "tsched_store_connection_losses_total", 'store="sql"') == 0

        await proxy.cut()
        # An audited change while SQL is away (the operator is in the auth cache).
        status, env = await server.api(f"/workflow/{wid}/disable", "POST")
        assert status == 200, env
        during = await scrape(server)  # the scraper's token needs no SQL
        assert sample(during, "tsched_store_write_failures_total", 'writer="audit_log"') >= 1
        assert sample(during, "tsched_sql_rows_waiting", 'table="audit_log"') == 1
        assert sample(during, "tsched_outbox_read_ok") == 0

        await proxy.restore()
        await wait_until(lambda: server.ctx.audit.pending.kept == 0, 10)
        after = await scrape(server)
        assert sample(after, "tsched_sql_rows_waiting", 'table="audit_log"') == 0
        assert sample(after, "tsched_outbox_read_ok") == 1
        assert sample(after, "tsched_store_connections_opened_total", 'store="sql"') > opened
        assert sample(after, "tsched_store_connection_losses_total", 'store="sql"') >= 1
        assert sample(after, "tsched_store_connection_losses_total", 'store="mongodb"') == 0
        module.close()
    finally:
        await stop_server(server, http_server)
