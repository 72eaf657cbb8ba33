"""The run page's control and live step reports: Cancel and Re-run through their
confirmation pages and XSRF forms (no JavaScript needed), progress and log lines on
the page and live over /dashboard/live; and the same in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import urlencode

import pytest
from tornado.websocket import websocket_connect

from tests.conftest import RunningServer
from tests.dashboard.test_dashboard import (
    SHOTS,
    _live_request,
    _need_chromium,
    admin_page,
    no_follow,
    session_cookie,
)
from tests.flows.support import (
    Module,
    create_workflow,
    execute,
    get_run,
    wait_run,
    wait_until,
    workflow_body,
)
from tornado_sched.protocol import TEXT_LIMIT_BYTES


def on_demand(modules: list[str]) -> dict[str, Any]:
    return workflow_body(modules=modules, enable=False, execute_cron_list=[])


async def live_message(live: Any, kind: str) -> dict[str, Any]:
    """The next message of this type from the dashboard socket (others are skipped)."""
    while True:
        raw = await asyncio.wait_for(live.read_message(), 5)
        assert raw is not None, "live socket closed"
        message = json.loads(raw)
        if message["type"] == kind:
            return message


async def test_progress_and_log_live_then_cancel_and_rerun_from_the_page(server: RunningServer) -> None:
    module = await Module.online(server, "pagemod")
    wid = await create_workflow(server, on_demand([module.hash]))
    run_id = await execute(server, wid)
    command = await module.recv_execute()

    cookie = await session_cookie(server)
    live = await websocket_connect(_live_request(server, {"Cookie": cookie, "Origin": f"http://127.0.0.1:{server.port}"}))
    try:
        assert (await live_message(live, "hello"))["type"] == "hello"
        assert module.ws is not None
        await module.ws.write_message(json.dumps({"type": "progress", "run_id": run_id, "percent": 60, "message": "step <b>"}))
        step = await live_message(live, "step")
        assert step == {"type": "step", "run_id": run_id, "index": 0,
                        "progress": {"percent": 60.0, "message": "step <b>"}, "lines": []}
        await module.ws.write_message(json.dumps({"type": "log", "run_id": run_id, "lines": ["a <script>", "b"]}))
        step = await live_message(live, "step")
        assert step["lines"] == ["a <script>", "b"] and step["progress"]["percent"] == 60.0
    finally:
        live.close()

    # Server-rendered: the bar, the message and the tail (escaped), and a Cancel link.
    page = (await server.fetch(f"/history/{run_id}")).body.decode()
    assert 'value="60.0"' in page and "step &lt;b&gt;" in page and "a &lt;script&gt;\nb</pre>" in page
    assert re.search(rf'<a class="button js-when-open" href="/history/{run_id}/cancel">', page)

    # Cancel: a confirmation page whose form carries the XSRF token, posted with the cookie.
    confirm = await server.fetch(f"/history/{run_id}/cancel", auth=None, headers={"Cookie": cookie})
    assert confirm.code == 200 and b"Yes, cancel the run" in confirm.body
    token = re.search(rb'name="_xsrf" value="([^"]+)"', confirm.body).group(1).decode()
    xsrf = [c.split(";", 1)[0] for c in confirm.headers.get_list("Set-Cookie") if c.startswith("_xsrf=")]
    cookies = "; ".join([cookie, *xsrf])
    refused = await no_follow(server, f"/history/{run_id}/cancel", "POST", auth=False, body="",
                              headers={"Cookie": cookies})
    assert refused.code == 403  # no token: nothing cancelled
    assert (await get_run(server, run_id))["status"] == "running"
    done = await no_follow(server, f"/history/{run_id}/cancel", "POST", auth=False,
                           body=urlencode({"_xsrf": token}), headers={"Cookie": cookies})
    assert done.code == 303 and done.headers["Location"] == f"/history/{run_id}"
    assert (await module.recv())["type"] == "cancel"
    run = await wait_run(server, run_id)
    assert run["status"] == "cancelled" and run["steps"][0]["log"] == ["a <script>", "b"]
    again = await no_follow(server, f"/history/{run_id}/cancel", "POST", auth=False,
                            body=urlencode({"_xsrf": token}), headers={"Cookie": cookies})
    assert again.code == 409 and again.headers["Content-Type"].startswith("text/html")
    page = (await server.fetch(f"/history/{run_id}")).body.decode()
    assert 'class="button js-when-open hidden"' in page
    assert f'href="/history/{run_id}/rerun?steps=failed"' in page

    # Re-run: the confirmation offers failed/all; the post opens the new, linked run.
    confirm = await server.fetch(f"/history/{run_id}/rerun?steps=all")
    assert re.search(rb'value="all" checked', confirm.body)
    response = await no_follow(server, f"/history/{run_id}/rerun", "POST", body=urlencode({"steps": "failed"}))
    assert response.code == 303
    new_id = response.headers["Location"].rsplit("/", 1)[1]
    assert new_id != run_id
    again = await module.recv_execute()
    assert again["meta"]["run_id"] == new_id and again["args"] == command["args"]
    page = (await server.fetch(f"/history/{new_id}")).body.decode()
    assert f'href="/history/{run_id}"' in page and "Re-run of" in page
    assert await module.result(again) == "receive result"


async def test_a_chatty_module_does_not_flood_the_live_socket(server: RunningServer) -> None:
    """10,000 log frames of long lines in a burst while the page does not read: its
    step messages are merged (far fewer than frames), never a resync, in order,
    ending with the last line."""
    module = await Module.online(server, "chatty")
    wid = await create_workflow(server, on_demand([module.hash]))
    run_id = await execute(server, wid)
    command = await module.recv_execute()
    cookie = await session_cookie(server)
    live = await websocket_connect(_live_request(server, {"Cookie": cookie, "Origin": f"http://127.0.0.1:{server.port}"}))
    frames = 10000
    try:
        await live_message(live, "hello")
        assert module.ws is not None
        pad = "x" * 990
        for i in range(frames):
            module.ws.write_message(json.dumps({"type": "log", "run_id": run_id, "lines": [f"{i:05d} {pad}"]}))
        await module.ws.write_message(json.dumps({"type": "progress", "run_id": run_id, "percent": 100}))
        step = server.ctx.runs._open[run_id].steps[0]
        await wait_until(lambda: step.progress_percent == 100.0, within=10)
        received: list[str] = []
        messages = 0
        while not received or not received[-1].startswith(f"{frames - 1:05d}"):
            message = json.loads(await asyncio.wait_for(live.read_message(), 5))
            assert message["type"] != "resync"
            if message["type"] == "step":
                messages += 1
                received.extend(message["lines"])
        numbers = [int(line.split()[0]) for line in received]
        assert numbers == sorted(numbers)
        assert messages < frames / 2, messages
    finally:
        live.close()
    assert await module.result(command) == "receive result"
    # Stored, the tail keeps the newest lines that fit its column (1,000-character
    # lines: about 65 of the 200 kept in memory).
    stored_log = (await wait_run(server, run_id))["steps"][0]["log"]
    assert stored_log[-1].startswith(f"{frames - 1:05d}") and 50 < len(stored_log) < 200, len(stored_log)
    assert len(json.dumps(stored_log, ensure_ascii=False).encode()) <= TEXT_LIMIT_BYTES


async def test_a_fan_out_sends_the_live_page_each_step_a_few_times_not_every_step_per_result(
    server: RunningServer,
) -> None:
    """An open dashboard during a 150-module run: the run's messages carry the steps
    that changed (all of them at the start and the end), not every step for every
    result (150 x 150 before), and replayed in order they leave every step as stored."""
    count = 150
    modules = [await Module.online(server, f"fan-{i:03d}") for i in range(count)]
    wid = await create_workflow(server, on_demand([m.hash for m in modules]))
    cookie = await session_cookie(server)
    live = await websocket_connect(_live_request(server, {"Cookie": cookie, "Origin": f"http://127.0.0.1:{server.port}"}))
    try:
        await live_message(live, "hello")
        run_id = await execute(server, wid)
        commands = [await m.recv_execute() for m in modules]
        answers = await asyncio.gather(*(m.result(c) for m, c in zip(modules, commands, strict=True)))
        assert set(answers) == {"receive result"}
        messages: list[dict[str, Any]] = []
        while not messages or messages[-1]["run"]["open"]:  # an end may travel with other events
            message = await live_message(live, "run")
            if message["run"]["run_id"] == run_id:
                messages.append(message)
    finally:
        live.close()
    started = [m for m in messages if m["event"] == "run.started"]
    assert len(started) == 1 and len(started[0]["run"]["steps"]) == count
    assert len(messages[-1]["run"]["steps"]) == count
    sent = sum(len(m["run"]["steps"]) for m in messages)
    assert sent <= 4 * count, (sent, len(messages))
    shown: dict[int, str] = {}
    for message in messages:
        for step in message["run"]["steps"]:
            shown[step["index"]] = step["status"]["key"]
    stored = await wait_run(server, run_id)
    assert shown == {step["index"]: step["status"] for step in stored["steps"]} == dict.fromkeys(range(count), "success")
    assert messages[-1]["run"]["status"]["key"] == "success"


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_progress_moves_and_cancel_and_rerun_in_chromium(server: RunningServer) -> None:
    _need_chromium()
    from playwright.async_api import expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    module = await Module.online(server, "browser-progress")
    wid = await create_workflow(server, on_demand([module.hash]))
    run_id = await execute(server, wid)
    command = await module.recv_execute()
    assert module.ws is not None
    problems: list[str] = []
    async with admin_page(problems) as page:
        await page.goto(f"{server.base_url}/history/{run_id}")
        await expect(page.locator("#live-state")).to_have_attribute("data-state", "open", timeout=10_000)
        await page.evaluate("window.__notReloaded = true")
        report = page.locator('[data-step-report="0"]')
        for percent in (10, 55, 90):
            await module.ws.write_message(json.dumps(
                {"type": "progress", "run_id": run_id, "percent": percent, "message": f"at {percent}"}))
            await expect(report.locator(".js-progress-text")).to_have_text(f"{percent}%", timeout=5_000)
            assert await report.locator("progress").evaluate("el => el.value") == percent
        await expect(report.locator(".js-progress-message")).to_have_text("at 90")
        await module.ws.write_message(json.dumps({"type": "log", "run_id": run_id, "lines": ["first", "second"]}))
        await expect(report.locator(".js-log")).to_have_text("first\nsecond", timeout=5_000)
        assert await page.evaluate("window.__notReloaded === true")
        await page.screenshot(path=str(SHOTS / "run-progress.png"), full_page=True, animations="disabled")

        # Cancel through the confirmation page; back on the run page, Re-run replaces Cancel.
        await page.get_by_role("link", name="Cancel run").click()
        await page.get_by_role("button", name="Yes, cancel the run").click()
        await expect(page).to_have_url(re.compile(rf"/history/{run_id}$"))
        assert (await module.recv())["type"] == "cancel"
        await expect(page.locator("[data-run-page] .js-status .badge").first).to_have_attribute(
            "data-status", "cancelled")
        await expect(page.get_by_role("link", name="Cancel run")).to_be_hidden()
        await expect(report.locator(".js-log")).to_have_text("first\nsecond")  # stored with the cancel
        await page.get_by_role("link", name="Re-run failed steps").click()
        await page.get_by_role("button", name="Yes, re-run").click()
        await expect(page).to_have_url(re.compile(r"/history/[0-9a-f]{32}$"))
        new_id = page.url.rsplit("/", 1)[1]
        assert new_id != run_id
        again = await module.recv_execute()
        assert again["meta"]["run_id"] == new_id and again["args"] == command["args"]
        await expect(page.get_by_text("Re-run of")).to_be_visible()
        await page.screenshot(path=str(SHOTS / "run-rerun.png"), full_page=True, animations="disabled")
    assert not problems, problems
