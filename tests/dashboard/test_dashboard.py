"""The operator dashboard: plain HTTP checks, the live socket, and a headless
Chromium (Debian's package, installed by .ci/browser.sh) driven with Playwright's
async API through the whole operator flow. Screenshots of every page go to
test-artifacts/screenshots/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.conftest import ADMIN, IN_CI, RunningServer, basic_auth

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PAGES = ["/", "/modules", "/workflows", "/workflows/new", "/scheduler", "/history", "/outbox"]


async def register(server: RunningServer, name: str) -> tuple[str, int]:
    query = urlencode({"name": name, "description": f"{name} test module", "input_data": '[{"name": "prices"}]',
                       "output_data": '[{"name": "signals"}]', "modelHash": "m1"})
    status, env = await server.api(f"/module/register?{query}")
    assert status == 200, env
    return env["result"]["hash"], env["result"]["module_id"]


async def connect_module(server: RunningServer, module_hash: str) -> WebSocketClientConnection:
    return await websocket_connect(f"{server.ws_url}/websocket?hash={module_hash}")


async def no_follow(server: RunningServer, path: str, method: str = "GET", *, body: str | None = None,
                    headers: dict[str, str] | None = None, auth: bool = True) -> Any:
    """One request, redirects not followed."""
    hdrs = dict(headers or {})
    if auth:
        hdrs["Authorization"] = basic_auth(*ADMIN)
    return await server.http.fetch(server.base_url + path, method=method, body=body, headers=hdrs,
                                   follow_redirects=False, raise_error=False)


async def session_cookie(server: RunningServer) -> str:
    """Log in with Basic once; return the Cookie header a browser would send back."""
    response = await server.fetch("/")
    assert response.code == 200
    cookies = [c.split(";", 1)[0] for c in response.headers.get_list("Set-Cookie")]
    assert any(c.startswith("tsched_session=") for c in cookies), cookies
    return "; ".join(cookies)


# -- plain HTTP ----------------------------------------------------------------------
async def test_pages_answer_with_credentials_and_challenge_without(server: RunningServer) -> None:
    for path in PAGES:
        response = await server.fetch(path)
        assert response.code == 200, (path, response.body[:300])
        assert response.headers["Content-Type"].startswith("text/html")
        csp = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
        assert "script-src 'self'" in csp or "default-src 'self'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"]
        body = response.body.decode()
        assert " style=" not in body and "<style" not in body, path  # no inline style either
        assert not re.search(r"<script(?![^>]*\bsrc=)", body), path  # no inline script
        assert not re.search(r"\son[a-z]+=", body), path  # no inline event handlers

        anonymous = await server.fetch(path, auth=None)
        assert anonymous.code == 401, path
        challenges = anonymous.headers.get_list("WWW-Authenticate")
        assert any(c.startswith("Basic") for c in challenges) and any(c.startswith("Digest") for c in challenges)
        assert anonymous.headers["Content-Type"].startswith("text/html")
        assert b"Traceback" not in anonymous.body


async def test_unknown_things_get_html_error_pages(server: RunningServer) -> None:
    response = await server.fetch("/workflows/999999/edit")
    assert response.code == 404
    assert response.headers["Content-Type"].startswith("text/html")
    assert b"workflow 999999 not found" in response.body
    response = await server.fetch("/history?status=bogus")
    assert response.code == 400 and b"status: must be one of" in response.body
    response = await server.fetch("/history?before=not-ours")
    assert response.code == 400 and b"before: not a history cursor" in response.body
    response = await server.fetch("/history?since=yesterday")
    assert response.code == 400 and b"since: expected a date" in response.body


async def test_history_pages_with_cursors_and_filters(server: RunningServer) -> None:
    """`/history` walks newest first by cursor ("Older" links), keeping its filters."""
    module_hash, _ = await register(server, "hist")
    status, env = await server.api("/workflow/create", "POST", json_body={
        "name": "hist", "enable": False, "execute_cron_list": [],
        "execute_modules": [{"module_hash": module_hash, "args": {}}],
    })
    wid = env["result"]["workflow_id"]
    run_ids = [(await server.api(f"/workflow/{wid}/execute", "POST"))[1]["result"]["run_id"] for _ in range(27)]
    path = f"/history?workflow_id={wid}&status=failed"
    seen = []
    for _ in range(3):
        body = (await server.fetch(path)).body.decode()
        seen += [r for r in run_ids if f"/history/{r}" in body]
        older = re.search(r'href="(/history\?[^"]*before=[^"]+)" rel="next"', body)
        if older is None:
            break
        assert f"workflow_id={wid}" in older.group(1) and "status=failed" in older.group(1)
        path = older.group(1).replace("&amp;", "&")
    assert sorted(seen) == sorted(run_ids) and len(seen) == 27
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    body = (await server.fetch(f"/history?workflow_id={wid}&since={today}&until={today}")).body.decode()
    assert "27 run(s)" in body


async def test_cookie_post_needs_the_xsrf_token(server: RunningServer) -> None:
    cookie = await session_cookie(server)
    # A cookie-authenticated form post without the token is refused with an HTML page.
    refused = await server.fetch("/scheduler", "POST", auth=None, body="", headers={"Cookie": cookie})
    assert refused.code == 403
    assert refused.headers["Content-Type"].startswith("text/html")
    # With the token from the page (and its cookie), the same post goes through.
    page = await server.fetch("/scheduler", auth=None, headers={"Cookie": cookie})
    token = re.search(rb'name="_xsrf" value="([^"]+)"', page.body).group(1).decode()
    xsrf_cookie = [c.split(";", 1)[0] for c in page.headers.get_list("Set-Cookie") if c.startswith("_xsrf=")]
    cookies = "; ".join([cookie, *xsrf_cookie])
    accepted = await no_follow(server, "/scheduler", "POST", auth=False, body=urlencode({"_xsrf": token}),
                               headers={"Cookie": cookies})
    assert accepted.code == 303 and accepted.headers["Location"].startswith("/scheduler?reloaded=")


async def test_workflow_form_shows_field_errors_and_saves(server: RunningServer) -> None:
    _hash, module_id = await register(server, "formmod")
    form = {"name": "form-wf", "execute_cron_list": "61 * * * *", "enable": "1", "execute_shift_time": "0",
            "execute_shift_unit": "s", "timezone": "", "module": str(module_id), "args": '{"a": 1}',
            "action": "save"}
    response = await server.fetch("/workflows/new", "POST", body=urlencode(form))
    assert response.code == 400
    body = response.body.decode()
    assert 'id="err-execute_cron_list"' in body and "Line 1: invalid crontab line" in body
    assert 'aria-invalid="true" aria-describedby="err-execute_cron_list"' in body
    assert "61 * * * *" in body and "form-wf" in body  # the input is kept

    bad_args = await server.fetch("/workflows/new", "POST", body=urlencode({**form, "execute_cron_list": "0 9 * * *",
                                                                            "args": "{nope"}))
    assert bad_args.code == 400 and b'id="err-execute_modules"' in bad_args.body

    saved = await server.fetch("/workflows/new", "POST", body=urlencode({**form, "execute_cron_list": "0 9 * * *"}))
    assert saved.code == 200  # followed the 303 to /workflows
    assert b"form-wf" in saved.body and b"0 9 * * *" in saved.body
    status, env = await server.api("/workflow/list")
    workflow = next(w for w in env["result"] if w["name"] == "form-wf")
    assert workflow["execute_modules"][0]["args"] == {"a": 1}
    edit = await server.fetch(f"/workflows/{workflow['workflow_id']}/edit")
    assert edit.code == 200 and b"0 9 * * *" in edit.body


async def test_language_from_accept_language_and_cookie(server: RunningServer) -> None:
    zh = await server.fetch("/", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert "概览" in zh.body.decode() and 'lang="zh-CN"' in zh.body.decode()
    en = await server.fetch("/", headers={"Accept-Language": "zh-CN,zh;q=0.9", "Cookie": "lang=en_US"})
    assert "Overview" in en.body.decode() and "概览" not in en.body.decode()
    switch = await no_follow(server, "/lang/zh_CN?next=/modules")
    assert switch.code == 303 and switch.headers["Location"] == "/modules"
    assert any(c.startswith("lang=zh_CN") for c in switch.headers.get_list("Set-Cookie"))
    evil = await no_follow(server, "/lang/en_US?next=//evil.example/")
    assert evil.headers["Location"] == "/"


async def test_logout_clears_the_session(server: RunningServer) -> None:
    cookie = await session_cookie(server)
    page = await server.fetch("/", auth=None, headers={"Cookie": cookie})
    token = re.search(rb'name="_xsrf" value="([^"]+)"', page.body).group(1).decode()
    xsrf = [c.split(";", 1)[0] for c in page.headers.get_list("Set-Cookie") if c.startswith("_xsrf=")]
    out = await no_follow(server, "/logout", "POST", auth=False, body=urlencode({"_xsrf": token}),
                          headers={"Cookie": "; ".join([cookie, *xsrf])})
    assert out.code == 303 and out.headers["Location"] == "/logged-out"
    assert any(c.startswith("tsched_session=;") or 'tsched_session=""' in c for c in out.headers.get_list("Set-Cookie"))
    gone = await server.fetch("/logged-out", auth=None)
    assert gone.code == 401 and not gone.headers.get_list("WWW-Authenticate")
    assert b"Logged out" in gone.body


# -- the live socket -----------------------------------------------------------------
def _live_request(server: RunningServer, headers: dict[str, str]) -> HTTPRequest:
    return HTTPRequest(f"{server.ws_url}/dashboard/live", headers=headers)


async def test_live_socket_authenticates_checks_origin_and_pushes_events(server: RunningServer) -> None:
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(_live_request(server, {}))
    assert refused.value.code == 401
    cookie = await session_cookie(server)
    with pytest.raises(HTTPClientError) as cross_site:
        await websocket_connect(_live_request(server, {"Cookie": cookie, "Origin": "http://evil.example"}))
    assert cross_site.value.code == 403

    own = f"http://127.0.0.1:{server.port}"
    live = await websocket_connect(_live_request(server, {"Cookie": cookie, "Origin": own}))
    assert json.loads(await asyncio.wait_for(live.read_message(), 5))["type"] == "hello"
    listeners = len(server.ctx.events._listeners)
    module_hash, module_id = await register(server, "livemod")
    module = await connect_module(server, module_hash)
    message = json.loads(await asyncio.wait_for(live.read_message(), 5))
    assert message["type"] == "module" and message["module_id"] == module_id and message["online"] is True
    assert module_hash not in json.dumps(message)  # hashes are credentials
    module.close()
    message = json.loads(await asyncio.wait_for(live.read_message(), 10))
    assert message["type"] == "module" and message["online"] is False
    live.close()
    for _ in range(50):  # the subscription ends with the connection
        if len(server.ctx.events._listeners) < listeners:
            break
        await asyncio.sleep(0.05)
    assert len(server.ctx.events._listeners) == listeners - 1


# -- the browser ---------------------------------------------------------------------
def _need_chromium() -> None:
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail("chromium is required in CI (.ci/browser.sh installs it)")
        pytest.skip("chromium not installed (run .ci/browser.sh)")


@contextlib.asynccontextmanager
async def admin_page(problems: list[str], width: int = 1366, height: int = 860) -> AsyncIterator[Any]:
    """A headless Chromium page signed in as the admin (Basic), in English. Console
    errors and page errors are appended to `problems`; the browser is closed after."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = await browser.new_context(http_credentials={"username": ADMIN[0], "password": ADMIN[1]},
                                                viewport={"width": width, "height": height}, locale="en-US")
            page = await context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            yield page
            await context.close()
        finally:
            await browser.close()


async def _answer_execute(module: WebSocketClientConnection) -> dict[str, Any]:
    """The test module: read one execute command, answer success echoing run_id."""
    command = json.loads(await asyncio.wait_for(module.read_message(), 10))
    assert command["type"] == "execute"
    meta = command["meta"]
    await module.write_message(json.dumps({
        "type": "result", "status": "success", "workflow_id": str(meta["workflow_id"]),
        "workflow_name": meta["workflow_name"], "module_name": "browsermod", "error": None,
        "message": f"processed {len(command['args'].get('stock_list', []))} stock(s)", "run_id": meta["run_id"],
    }))
    assert await asyncio.wait_for(module.read_message(), 5) == "receive result"
    return command


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_operator_flow_in_chromium(server: RunningServer) -> None:
    _need_chromium()
    from playwright.async_api import expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    base = server.base_url
    problems: list[str] = []
    async with admin_page(problems, 1440, 900) as page:

        async def shot(name: str) -> None:
            await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True, animations="disabled")

        async def live_open() -> None:
            await expect(page.locator("#live-state")).to_have_attribute("data-state", "open", timeout=10_000)

        # Log in (HTTP auth answered by the browser context) and see the overview.
        await page.goto(base + "/")
        await expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
        await live_open()
        # Keyboard: the first Tab lands on the skip link.
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.className") == "skip-link"
        await shot("overview-empty")

        # A module registers; the modules page shows it offline, then online live.
        module_hash, module_id = await register(server, "browsermod")
        await page.goto(base + "/modules")
        await live_open()
        row = page.locator(f'tr[data-module="{module_id}"]')
        await expect(row.locator(".badge")).to_have_attribute("data-status", "offline")
        await page.evaluate("window.__notReloaded = true")
        module = await connect_module(server, module_hash)
        await expect(row.locator(".badge")).to_have_attribute("data-status", "online", timeout=10_000)
        await expect(row.locator(".js-address")).to_have_text("127.0.0.1")
        assert await page.evaluate("window.__notReloaded === true")
        await shot("modules")

        # The create form: a bad crontab first, then a good one.
        await page.goto(base + "/workflows/new")
        await page.get_by_label("Name", exact=True).fill("Morning session")
        await page.get_by_label("Description").fill("A-share morning checks")
        await page.get_by_label("Crontab lines").fill("*/10 10 * * 1-5\n99 14 * * *")
        await page.get_by_label("Shift", exact=True).fill("-30")
        await page.get_by_label("Module 1", exact=True).select_option(str(module_id))
        await page.get_by_label("Args (JSON object) for module 1").fill('{"stock_list": ["600000", "000001"]}')
        await page.get_by_role("button", name="Create workflow").click()
        error = page.locator("#err-execute_cron_list")
        await expect(error).to_be_visible()
        await expect(error).to_contain_text("Line 2: invalid crontab line")
        await expect(page.get_by_label("Crontab lines")).to_have_attribute("aria-invalid", "true")
        await expect(page.get_by_label("Name", exact=True)).to_have_value("Morning session")
        await shot("workflow-form-error")
        await page.get_by_label("Crontab lines").fill("*/10 10 * * 1-5\n0 14 * * 1-5")
        await page.get_by_role("button", name="Create workflow").click()
        await expect(page).to_have_url(re.compile(r"/workflows#workflow-\d+$"))
        card = page.locator("article.workflow", has_text="Morning session")
        await expect(card.locator("ol.upcoming li")).to_have_count(5)
        await shot("workflows")

        # Run it now and watch the run page finish live.
        await card.get_by_role("link", name=re.compile("Run now")).click()
        await expect(page).to_have_url(re.compile(r"/workflows/\d+/run$"))  # the confirmation step
        await page.get_by_role("button", name="Yes, run Morning session now").click()
        await expect(page).to_have_url(re.compile(r"/history/[0-9a-f]{32}$"))
        await live_open()
        run_box = page.locator("[data-run-page]")
        await expect(run_box.locator(".js-status .badge").first).to_have_attribute("data-status", "running")
        await page.evaluate("window.__notReloaded = true")
        command = await _answer_execute(module)
        assert page.url.endswith(command["meta"]["run_id"])
        await expect(run_box.locator(".js-status .badge").first).to_have_attribute(
            "data-status", "success", timeout=10_000)
        step = run_box.locator('tr[data-step="0"]')
        await expect(step.locator(".badge")).to_have_attribute("data-status", "success")
        await expect(step.locator(".js-message")).to_have_text("processed 2 stock(s)")
        assert await page.evaluate("window.__notReloaded === true")
        await shot("run")

        # The remaining pages, with data in them.
        for name, path in (("overview", "/"), ("runs", "/history"), ("scheduler", "/scheduler"),
                           ("notifications", "/outbox"), ("module", f"/modules/{module_id}")):
            await page.goto(base + path)
            await expect(page.locator("h1")).to_be_visible()
            await shot(name)
        await expect(page.locator("body")).not_to_contain_text(module_hash)

        # The module goes away: offline, live.
        await page.goto(base + "/modules")
        await live_open()
        module.close()
        await expect(row.locator(".badge")).to_have_attribute("data-status", "offline", timeout=15_000)

        # Switch the language with the header link.
        await page.get_by_role("link", name="中文").click()
        await expect(page.get_by_role("heading", name="模块", level=1)).to_be_visible()
        await page.goto(base + "/")
        await shot("overview-zh")
    csp = [p for p in problems if "Content Security Policy" in p or "Refused" in p]
    assert not csp, csp
    # The one expected error: the form re-rendered with its validation message is a 400.
    unexpected = [p for p in problems if "status of 400" not in p]
    assert not unexpected, unexpected


VIEWPORTS = {"desktop": {"width": 1440, "height": 900}, "phone": {"width": 390, "height": 844}}
# How far the page is wider than the window (0: no horizontal page scroll).
OVERFLOW_JS = "document.documentElement.scrollWidth - document.documentElement.clientWidth"


async def _fail_once(server: RunningServer, module: WebSocketClientConnection, workflow_id: int, error: str) -> str:
    status, env = await server.api(f"/workflow/{workflow_id}/execute", "POST")
    assert status == 200, env
    command = json.loads(await asyncio.wait_for(module.read_message(), 10))
    meta = command["meta"]
    await module.write_message(json.dumps({
        "type": "result", "status": "failure", "workflow_id": str(meta["workflow_id"]),
        "workflow_name": meta["workflow_name"], "module_name": "x", "error": error, "message": None,
        "run_id": meta["run_id"],
    }))
    assert await asyncio.wait_for(module.read_message(), 5) == "receive result"
    return meta["run_id"]


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_layout_at_desktop_and_phone_and_failing_now_live(server: RunningServer) -> None:
    """Every page at 1440x900 and 390x844 with data in it: no horizontal page
    overflow (wide tables scroll in their own box). Then, on the phone, the
    overview's failing-now block and card change live as a workflow fails; and the
    local-time switch rewrites times."""
    _need_chromium()
    from playwright.async_api import async_playwright, expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    # Data: an online module, several offline ones (one needed), workflows (one
    # disabled), a failed run with a long error, an outbox row.
    module_hash, module_id = await register(server, "layout-worker-with-a-rather-long-module-name")
    for i in range(4):
        await register(server, f"offline-module-{i}")
    needed_hash, _ = await register(server, "needed-but-offline")
    module = await connect_module(server, module_hash)
    body = {"name": "Layout workflow with a long descriptive name", "description": "d", "enable": True,
            "execute_cron_list": ["*/10 10 * * 1-5", "0 14 * * 1-5"], "execute_shift_time": -30,
            "execute_shift_unit": "s", "execute_modules": [{"module_hash": module_hash, "args": {"k": 1}}]}
    status, env = await server.api("/workflow/create", "POST", json_body=body)
    assert status == 200, env
    wid = env["result"]["workflow_id"]
    status, env = await server.api("/workflow/create", "POST", json_body={
        **body, "name": "Needs the offline one", "execute_modules": [{"module_hash": needed_hash, "args": {}}]})
    assert status == 200, env
    status, env = await server.api("/workflow/create", "POST", json_body={**body, "name": "Paused one", "enable": False})
    assert status == 200, env
    long_error = "ConnectionError: " + "upstream-quote-service-unreachable-" * 6
    run_id = await _fail_once(server, module, wid, long_error)
    await _answer_execute_after(server, module, wid)  # a success: the workflow is fine again
    pages = ["/", "/modules", "/modules?state=offline&sort=state", f"/modules/{module_id}",
             f"/modules/{module_id}?status=failed", "/workflows", "/workflows?q=layout&state=enabled&sort=success_rate",
             "/workflows/new", f"/workflows/{wid}/edit", f"/workflows/{wid}/run",
             f"/workflows/{wid}/delete", f"/workflows/{wid}/clone", "/scheduler", "/history",
             "/history?status=failed", "/history?q=layout&sort=oldest", f"/history/{run_id}", "/outbox",
             "/admin/audit", "/admin/tokens", "/admin/sessions"]

    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            for label, viewport in VIEWPORTS.items():
                context = await browser.new_context(
                    http_credentials={"username": ADMIN[0], "password": ADMIN[1]}, viewport=viewport,
                    locale="en-US", timezone_id="America/New_York")
                page = await context.new_page()
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                overflowing = {}
                for path in pages:
                    await page.goto(server.base_url + path)
                    await expect(page.locator("h1")).to_be_visible()
                    extra = await page.evaluate(OVERFLOW_JS)
                    if extra > 0:
                        overflowing[path] = extra
                    name = re.sub(r"[^a-z0-9]+", "-", path.strip("/").lower()).strip("-") or "overview"
                    await page.screenshot(path=str(SHOTS / f"{label}-{name}.png"), full_page=True,
                                          animations="disabled")
                assert not overflowing, f"{label}: page wider than the window by px: {overflowing}"
                if label == "phone":
                    # The header's navigation is reachable and the live indicator is in it.
                    await expect(page.locator("header #live-state")).to_have_count(0)  # /outbox is not live
                    await page.goto(server.base_url + "/")
                    await expect(page.locator("header #live-state")).to_have_attribute(
                        "data-state", "open", timeout=10_000)
                    await expect(page.locator("header nav").get_by_role("link", name="Runs")).to_be_visible()
                    await expect(page.locator('[data-count="failing"]')).to_have_text("0")
                    await page.evaluate("window.__notReloaded = true")
                    failed = await _fail_once(server, module, wid, "feed down again")
                    item = page.locator(f'[data-failing-workflow="{wid}"]')
                    await expect(item).to_be_visible(timeout=10_000)
                    await expect(item).to_contain_text("1 failed run in a row")
                    await expect(item).to_contain_text("feed down again")
                    await expect(item).to_contain_text("layout-worker-with-a-rather-long-module-name")
                    await expect(item.get_by_role("link", name=re.compile("Latest failed run"))).to_have_attribute(
                        "href", f"/history/{failed}")
                    await expect(page.locator('[data-count="failing"]')).to_have_text("1")
                    await _fail_once(server, module, wid, "and again")
                    await expect(item).to_contain_text("2 failed runs in a row", timeout=10_000)
                    assert await page.evaluate("window.__notReloaded === true")
                    assert await page.evaluate(OVERFLOW_JS) <= 0
                    await page.screenshot(path=str(SHOTS / "phone-overview-failing-live.png"), full_page=True,
                                          animations="disabled")
                    # The recent-runs table stays bounded however many runs arrive.
                    assert await page.locator("[data-prepend-runs] tbody tr[data-run]").count() <= 20

                    # Browser-local time: the switch rewrites every <time> to New York time.
                    first_time = page.locator("main time[datetime]").first
                    server_text = await first_time.text_content()
                    iso = await first_time.get_attribute("datetime")
                    await page.get_by_role("button", name="Show my local time").click()
                    expected = await page.evaluate(
                        "(iso) => { const d = new Date(iso); const p = n => String(n).padStart(2, '0');"
                        " return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + ' ' +"
                        " p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds()); }", iso)
                    await expect(first_time).to_have_text(expected)
                    assert expected != server_text  # New York is not Shanghai
                    await expect(page.locator("#zone-note")).to_contain_text("America/New_York")
                    await page.get_by_role("button", name=re.compile("Show server time")).click()
                    await expect(first_time).to_have_text(server_text)
                await context.close()
        finally:
            await browser.close()
    module.close()
    csp = [p for p in problems if "Content Security Policy" in p or "Refused" in p]
    assert not csp, csp
    assert not problems, problems


async def _answer_execute_after(server: RunningServer, module: WebSocketClientConnection, workflow_id: int) -> None:
    status, env = await server.api(f"/workflow/{workflow_id}/execute", "POST")
    assert status == 200, env
    await _answer_execute(module)
