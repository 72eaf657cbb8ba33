"""The operator pages over plain HTTP against a real server, real stores and real
module sockets: failing now (rendered and pushed live), the workflow form's errors
and preview, modules filter/sort/needed, paused workflows, the outbox, the history
filters, the run confirmation and gzip."""

from __future__ import annotations

import asyncio
import gzip
import html
import json
import re
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.conftest import ADMIN, RunningServer, basic_auth
from tests.flows.support import (
    OPEN_SOCKETS,
    Module,
    create_workflow,
    execute,
    register,
    wait_run,
    workflow_body,
)


def on_demand(modules: list[str], **fields: Any) -> dict[str, Any]:
    return workflow_body(modules=modules, enable=False, execute_cron_list=[], **fields)


async def fail_run(server: RunningServer, module: Module, wid: int, error: str = "boom") -> str:
    run_id = await execute(server, wid)
    command = await module.recv_execute()
    assert await module.result(command, "failure", error=error) == "receive result"
    assert (await wait_run(server, run_id))["status"] == "failure"
    return run_id


async def succeed_run(server: RunningServer, module: Module, wid: int) -> str:
    run_id = await execute(server, wid)
    command = await module.recv_execute()
    assert await module.result(command, "success") == "receive result"
    assert (await wait_run(server, run_id))["status"] == "success"
    return run_id


async def live_socket(server: RunningServer) -> WebSocketClientConnection:
    request = HTTPRequest(f"{server.ws_url}/dashboard/live",
                          headers={"Authorization": basic_auth(*ADMIN), "Origin": f"http://127.0.0.1:{server.port}"})
    live = await websocket_connect(request)
    OPEN_SOCKETS.append(live)
    assert json.loads(await asyncio.wait_for(live.read_message(), 5))["type"] == "hello"
    return live


async def next_of_type(live: WebSocketClientConnection, kind: str, within: float = 5.0) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        while True:
            raw = await live.read_message()
            assert raw is not None, "live socket closed"
            message = json.loads(raw)
            if message["type"] == kind:
                return message
    return await asyncio.wait_for(read(), within)


def text(response: Any) -> str:
    return response.body.decode()


# -- failing now ---------------------------------------------------------------------
async def test_failing_now_shows_since_streak_module_error_and_updates_live(server: RunningServer) -> None:
    module = await Module.online(server, "pricer")
    wid = await create_workflow(server, on_demand([module.hash], name="wf-prices"))
    await succeed_run(server, module, wid)
    live = await live_socket(server)

    first = await fail_run(server, module, wid, error="quote feed down")
    pushed = await next_of_type(live, "failing")
    assert pushed["count"] == 1
    [item] = pushed["items"]
    assert item["workflow_name"] == "wf-prices" and item["modules"] == "pricer"
    assert item["error"] == "quote feed down" and item["run_url"] == f"/history/{first}"
    assert item["streak"] == "1 failed run in a row"

    second = await fail_run(server, module, wid, error="still down")
    [item] = (await next_of_type(live, "failing"))["items"]
    assert item["streak"] == "2 failed runs in a row" and item["run_url"] == f"/history/{second}"
    first_run = await server.api(f"/runs/{first}")
    assert item["since_iso"].startswith(first_run[1]["result"]["started_at"][:19])  # the streak's first failure

    page = text(await server.fetch("/"))
    block = page[page.index('data-failing-list'):page.index('id="recent-title"')]
    assert "wf-prices" in block and "2 failed runs in a row" in block and "still down" in block
    assert "pricer" in block and f'href="/history/{second}"' in block and "Failing since" in block
    assert '<span class="card-value" data-count="failing">1</span>' in page

    await succeed_run(server, module, wid)
    assert (await next_of_type(live, "failing"))["count"] == 0
    page = text(await server.fetch("/"))
    assert '<span class="card-value" data-count="failing">0</span>' in page
    assert "wf-prices" not in page[page.index('data-failing-list'):page.index('id="recent-title"')]


async def test_failing_now_is_rebuilt_from_history_at_start(server: RunningServer) -> None:
    module = await Module.online(server, "rebuilt")
    wid = await create_workflow(server, on_demand([module.hash], name="wf-rebuilt"))
    await succeed_run(server, module, wid)
    first = await fail_run(server, module, wid)
    await fail_run(server, module, wid, error="third")
    await server.ctx.failing.close()
    from tornado_sched.failing import FailingNow

    fresh = FailingNow(server.ctx.workflows, server.ctx.runs, server.ctx.events)
    await fresh.start()
    try:
        [item] = fresh.list()
        assert item.workflow_id == wid and item.streak == 2 and not item.streak_capped
        assert item.error == "third" and item.modules == ["rebuilt"]
        assert item.since == (await server.ctx.runs.get(first)).started_at
    finally:
        await fresh.close()


# -- the workflow form -----------------------------------------------------------------
FORM = {"name": "", "execute_cron_list": "0 25 * * *", "enable": "1", "execute_shift_time": "0",
        "execute_shift_unit": "s", "timezone": "Asia/Shangai", "module": "", "args": "", "action": "save"}


async def test_form_reports_every_error_at_once_translated_with_focus(server: RunningServer) -> None:
    response = await server.fetch("/workflows/new", "POST", body=urlencode(FORM))
    assert response.code == 400
    body = text(response)
    for field in ("name", "execute_cron_list", "timezone"):
        assert f'id="err-{field}"' in body, field
        assert f'aria-describedby="err-{field}"' in body
    assert 'id="err-execute_modules"' in body and "an enabled workflow needs at least one module" in body
    assert "4 problem(s)" in body
    # Focus goes to the first field in error, without a script.
    assert re.search(r'id="f-name"[^>]*aria-invalid="true"[^>]*autofocus', body)
    assert body.count(" autofocus") == 1

    zh = html.unescape(text(await server.fetch("/workflows/new", "POST", body=urlencode(FORM),
                                               headers={"Cookie": "lang=zh_CN"})))
    assert "必填" in zh and "未知时区" in zh and "启用的工作流至少需要一个模块" in zh and "第 1 行：无效的 crontab 行 '0 25 * * *'：有数值超出范围" in zh
    assert "required string" not in zh and "unknown time zone" not in zh

    # Time zone is a select of IANA zones; the typo is kept as the selected value.
    assert re.search(r'<select id="f-timezone" name="timezone"', body)
    assert "<option selected>Asia/Shangai</option>" in body and "<option>Europe/Berlin</option>" in body


async def test_form_row_errors_come_with_the_other_fields(server: RunningServer) -> None:
    form = {**FORM, "name": "ok-name", "timezone": "UTC", "module": "", "args": '{"a": 1}'}
    body = text(await server.fetch("/workflows/new", "POST", body=urlencode(form)))
    assert 'id="err-execute_modules"' in body and "Row 1: choose a module" in body
    assert 'id="err-execute_cron_list"' in body and 'id="err-name"' not in body


async def test_form_refuses_args_too_large_to_store_translated(server: RunningServer) -> None:
    module_hash = await register(server, "big-args")
    module_id = (await server.ctx.registry.get(module_hash)).module_id
    form = {**FORM, "name": "big", "execute_cron_list": "0 10 * * *", "timezone": "UTC",
            "module": str(module_id), "args": json.dumps({"s": "x" * 70_000})}
    response = await server.fetch("/workflows/new", "POST", body=urlencode(form))
    assert response.code == 400
    assert "Row 1: 70009 bytes as JSON, more than 65535" in text(response)
    zh = html.unescape(text(await server.fetch("/workflows/new", "POST", body=urlencode(form),
                                               headers={"Cookie": "lang=zh_CN"})))
    assert "第 1 行：JSON 编码后 70009 字节，超过上限 65535" in zh


async def test_fire_time_preview_server_rendered_and_json(server: RunningServer) -> None:
    form = {**FORM, "name": "p", "execute_cron_list": "0 9 * * *", "timezone": "Asia/Tokyo", "action": "preview"}
    page = text(await server.fetch("/workflows/new", "POST", body=urlencode(form)))
    times = re.findall(r'<time datetime="([^"]+)" data-keep-zone>([^<]+)</time>', page)
    assert len(times) == 5 and all(" 09:00:00 " in shown for _iso, shown in times)
    assert 'id="err-' not in page  # a preview does not validate the rest

    query = urlencode({"execute_cron_list": "30 14 * * 1-5", "execute_shift_time": "-30",
                       "execute_shift_unit": "s", "timezone": "Asia/Shanghai"})
    response = await server.fetch(f"/workflows/preview?{query}")
    assert response.code == 200 and response.headers["Content-Type"].startswith("application/json")
    data = json.loads(response.body)
    assert data["errors"] == {} and len(data["fire_times"]) == 5
    assert all(t["text"][11:19] == "14:29:30" for t in data["fire_times"])

    bad = json.loads((await server.fetch("/workflows/preview?" + urlencode(
        {"execute_cron_list": "0 25 * * *", "timezone": "Mars/Base"}))).body)
    assert bad["fire_times"] == [] and set(bad["errors"]) == {"execute_cron_list", "timezone"}
    assert (await server.fetch("/workflows/preview", auth=None)).code == 401


async def test_rest_create_still_reports_one_error_in_the_envelope(server: RunningServer) -> None:
    status, env = await server.api("/workflow/create", "POST",
                                   json_body={"name": "", "execute_cron_list": ["0 25 * * *"], "timezone": "X/Y"})
    assert status == 400 and env["result"] == {"field": "name"} and env["message"].startswith("name:")


# -- modules ---------------------------------------------------------------------------
async def test_modules_filter_sort_last_seen_and_needed_offline(server: RunningServer) -> None:
    online = await Module.online(server, "alpha-online")
    needed_hash = await register(server, "beta-needed")
    await register(server, "gamma-idle")
    await create_workflow(server, workflow_body(name="wf-needs-beta", modules=[needed_hash, online.hash]))

    page = text(await server.fetch("/modules"))
    assert "1 offline module(s) are needed by enabled workflows" in page
    beta_row = re.search(r'<tr data-module="\d+" class="row--alert">.*?</tr>', page, re.S).group(0)
    assert "beta-needed" in beta_row and "Needed, offline" in beta_row and "wf-needs-beta" in beta_row
    assert "Last seen" in beta_row and "Connected since" not in beta_row
    alpha_row = re.search(r'<tr data-module="\d+">(?:(?!</tr>).)*alpha-online.*?</tr>', page, re.S).group(0)
    assert "Connected since" in alpha_row

    offline = text(await server.fetch("/modules?state=offline&sort=name"))
    assert "beta-needed" in offline and "gamma-idle" in offline and "alpha-online" not in offline
    assert offline.index("beta-needed") < offline.index("gamma-idle")
    named = text(await server.fetch("/modules?q=GAMMA"))
    assert "gamma-idle" in named and "beta-needed" not in named and "1 of 3 module(s)" in named
    by_state = text(await server.fetch("/modules?sort=state"))
    tbody = by_state[by_state.index("<tbody>"):]
    assert tbody.index("beta-needed") < tbody.index("alpha-online")  # offline first
    nothing = text(await server.fetch("/modules?q=zzz"))
    assert "No modules match." in nothing
    assert (await server.fetch("/modules?state=sideways")).code == 400
    assert (await server.fetch("/modules?sort=bogus")).code == 400


async def test_offline_step_is_a_failure_with_a_human_message(server: RunningServer) -> None:
    sleeper = await register(server, "sleeper")
    wid = await create_workflow(server, on_demand([sleeper]))
    run_id = await execute(server, wid)
    run = await wait_run(server, run_id)
    assert run["steps"][0]["status"] == "offline"
    assert run["steps"][0]["error"] == "module was offline when the run started"
    page = text(await server.fetch(f"/history/{run_id}"))
    step = re.search(r'<tr data-step="0">.*?</tr>', page, re.S).group(0)
    assert 'class="badge badge--bad" data-status="offline"' in step
    assert "module was offline when the run started" in step and "Conflict" not in page


# -- workflows, scheduler ----------------------------------------------------------------
async def test_disabled_workflows_have_no_fire_times_and_show_paused(server: RunningServer) -> None:
    module_hash = await register(server, "m-paused")
    on = await create_workflow(server, workflow_body(name="wf-on", modules=[module_hash]))
    off = await create_workflow(server, workflow_body(name="wf-off", modules=[module_hash], enable=False))
    page = text(await server.fetch("/workflows"))
    card_on = page[page.index(f'id="workflow-{on}"'):page.index(f'id="workflow-{off}"')]
    card_off = page[page.index(f'id="workflow-{off}"'):]
    assert card_on.count("<li><time") == 5
    assert "<li><time" not in card_off and "Paused" in card_off
    assert f'href="/workflows/{off}/run"' in card_off  # run now goes through a confirmation
    scheduler = text(await server.fetch("/scheduler"))
    row = re.search(r'<tr class="row--paused">.*?</tr>', scheduler, re.S).group(0)
    assert "wf-off" in row and 'data-status="paused"' in row
    assert "wf-on" in scheduler and 'data-status="scheduled"' in scheduler


async def test_run_now_asks_for_confirmation_first(server: RunningServer) -> None:
    module_hash = await register(server, "m-confirm")
    wid = await create_workflow(server, on_demand([module_hash], name="wf-confirm"))
    confirm = await server.fetch(f"/workflows/{wid}/run")
    assert confirm.code == 200
    body = text(confirm)
    assert "Run wf-confirm now?" in body and f'action="/workflows/{wid}/run"' in body and 'method="post"' in body
    assert (await server.fetch(f"/workflows/{wid}/enable")).code == 405
    status, env = await server.api(f"/runs?workflow_id={wid}")
    assert status == 200 and env["result"]["total"] == 0  # a GET started nothing


# -- history ---------------------------------------------------------------------------
async def test_history_failed_group_and_empty_messages(server: RunningServer) -> None:
    assert "No runs yet." in text(await server.fetch("/history"))
    module = await Module.online(server, "m-history")
    wid = await create_workflow(server, on_demand([module.hash], name="wf-history"))
    failed = await fail_run(server, module, wid)
    ok = await succeed_run(server, module, wid)
    response = await server.fetch("/history?status=failed")
    assert response.code == 200
    body = text(response)
    assert failed in body and ok not in body and "1 run(s)" in body
    assert '<option value="failed" selected>Failed (any)</option>' in body
    empty = text(await server.fetch("/history?status=skipped"))
    assert "No runs match these filters." in empty and "No runs yet." not in empty


# -- outbox ----------------------------------------------------------------------------
async def test_outbox_banner_names_and_no_next_attempt_when_not_configured(server: RunningServer) -> None:
    module = await Module.online(server, "m-outbox")
    wid = await create_workflow(server, on_demand([module.hash], name="wf-outbox"))
    run_id = await fail_run(server, module, wid)

    async def listed() -> bool:
        return (await server.api("/notifications"))[1]["result"]["total"] >= 1

    for _ in range(100):
        if await listed():
            break
        await asyncio.sleep(0.05)
    page = text(await server.fetch("/outbox"))
    assert "Alerting is off." in page
    row = page[page.index("<tbody>"):page.index("</tbody>")]
    assert f'<a href="/history?workflow_id={wid}">wf-outbox</a>' in row
    assert f'href="/history/{run_id}"' in row and "Failure notice" in row and "Not configured" in row
    cells = re.findall(r"<td>(.*?)</td>", row, re.S)
    assert cells[7].strip() == "—"  # next attempt
    zh = text(await server.fetch("/outbox", headers={"Cookie": "lang=zh_CN"}))
    assert "失败通知" in zh and "告警未开启" in zh
    status, env = await server.api("/notifications")
    [item] = env["result"]["notifications"]
    assert item["next_attempt_at"] is None and item["workflow_name"] == "wf-outbox" and item["run_id"] == run_id


# -- transport -------------------------------------------------------------------------
async def test_pages_are_gzipped_and_live_status_is_in_the_header(server: RunningServer) -> None:
    response = await server.http.fetch(
        server.base_url + "/workflows/new", headers={"Authorization": basic_auth(*ADMIN), "Accept-Encoding": "gzip"},
        decompress_response=False, raise_error=False)
    assert response.code == 200 and response.headers.get("Content-Encoding") == "gzip"
    page = gzip.decompress(response.body).decode()
    assert len(response.body) * 3 < len(page)  # the zone list compresses well
    overview = text(await server.fetch("/"))
    header = overview[overview.index("<header"):overview.index("</header>")]
    assert 'id="live-state"' in header
