"""Server-side browser sessions against the real server: the login form, the id kept
only hashed in SQL, and every way a session ends (logout, password change, an admin,
idle and absolute lifetimes)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from http.cookies import SimpleCookie
from urllib.parse import urlencode

from sqlalchemy import select
from tornado.httpclient import HTTPResponse
from tornado.web import decode_signed_value

from handlers.base import SESSION_COOKIE
from tests.conftest import ADMIN, MakeServer, RunningServer
from tornado_sched.tables import browser_sessions

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _cookie_jar(response: HTTPResponse) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        jar.load(header)
    return jar


async def _login(server: RunningServer, password: str = ADMIN[1], next_path: str = "/modules") -> HTTPResponse:
    page = await server.fetch("/login?" + urlencode({"next": next_path}), auth=None)
    assert page.code == 200 and b'name="password"' in page.body, page.code
    xsrf = _cookie_jar(page)["_xsrf"].value
    field = re.search(rb'name="next" value="([^"]*)"', page.body)
    assert field is not None
    return await server.fetch(
        "/login", "POST", auth=None, follow_redirects=False, headers={**FORM, "Cookie": f"_xsrf={xsrf}"},
        body=urlencode({"username": ADMIN[0], "password": password, "_xsrf": xsrf,
                        "next": field.group(1).decode().replace("&amp;", "&")}),
    )


def _session_header(response: HTTPResponse) -> dict[str, str]:
    morsel = _cookie_jar(response)[SESSION_COOKIE]
    assert morsel["httponly"] is True and morsel["samesite"].lower() == "lax"
    return {"Cookie": f"{SESSION_COOKIE}={morsel.value}"}


async def _session_rows(server: RunningServer) -> list:  # noqa: ANN401 - SQLAlchemy rows
    async with server.ctx.sql.engine.connect() as conn:
        return (await conn.execute(select(browser_sessions).order_by(browser_sessions.c.id))).all()


async def test_login_form_starts_a_session_stored_only_as_a_digest(server: RunningServer) -> None:
    # Without the XSRF pair the form is refused, session or not.
    refused = await server.fetch("/login", "POST", auth=None, headers=FORM,
                                 body=urlencode({"username": ADMIN[0], "password": ADMIN[1]}))
    assert refused.code == 403
    wrong = await _login(server, "not-the-password")
    assert wrong.code == 401 and SESSION_COOKIE not in _cookie_jar(wrong)
    assert b"Wrong username or password" in wrong.body

    done = await _login(server, next_path="/workflows?x=1")
    assert done.code == 303 and done.headers["Location"] == "/workflows?x=1", done.code
    cookie = _session_header(done)
    assert (await server.fetch("/module/list", auth=None, headers=cookie)).code == 200
    assert (await server.fetch("/modules", auth=None, headers=cookie)).code == 200

    session_id = decode_signed_value(server.ctx.settings.secret_key, SESSION_COOKIE,
                                     cookie["Cookie"].split("=", 1)[1]).decode()
    rows = await _session_rows(server)
    assert len(rows) == 1 and rows[0].username == ADMIN[0]
    assert rows[0].token_hash == hashlib.sha256(session_id.encode()).hexdigest()
    assert session_id not in repr(rows[0])

    # An off-site `next` lands on the overview instead.
    assert (await _login(server, next_path="//evil.test/x")).headers["Location"] == "/"


async def test_a_login_posted_from_another_site_is_refused_even_with_a_planted_xsrf_pair(
    server: RunningServer,
) -> None:
    page = await server.fetch("/login", auth=None)
    xsrf = _cookie_jar(page)["_xsrf"].value
    form = {"username": ADMIN[0], "password": ADMIN[1], "_xsrf": xsrf, "next": "/"}
    for foreign in ({"Origin": "http://evil.sibling.test"}, {"Sec-Fetch-Site": "same-site"}):
        forged = await server.fetch("/login", "POST", auth=None, follow_redirects=False,
                                    headers={**FORM, "Cookie": f"_xsrf={xsrf}", **foreign}, body=urlencode(form))
        assert forged.code == 403 and SESSION_COOKIE not in _cookie_jar(forged), foreign
    assert await _session_rows(server) == []
    own = await server.fetch("/login", "POST", auth=None, follow_redirects=False,
                             headers={**FORM, "Cookie": f"_xsrf={xsrf}", "Origin": server.base_url,
                                      "Sec-Fetch-Site": "same-origin"}, body=urlencode(form))
    assert own.code == 303 and SESSION_COOKIE in _cookie_jar(own)


async def test_logout_ends_the_session_on_the_server(server: RunningServer) -> None:
    cookie = _session_header(await _login(server))
    page = await server.fetch("/modules", auth=None, headers=cookie)
    xsrf = _cookie_jar(page)["_xsrf"].value
    out = await server.fetch("/logout", "POST", auth=None, follow_redirects=False,
                             headers={**FORM, "Cookie": f"{cookie['Cookie']}; _xsrf={xsrf}"},
                             body=urlencode({"_xsrf": xsrf}))
    assert out.code == 303, out.body
    # The old cookie, replayed, no longer reads the API.
    assert (await server.fetch("/module/list", auth=None, headers=cookie)).code == 401
    assert [r.end_reason for r in await _session_rows(server)] == ["logout"]


async def test_password_change_and_an_admin_end_sessions(server: RunningServer) -> None:
    first = _session_header(await _login(server))
    second = _session_header(await _login(server))
    status, env = await server.api("/sessions")
    assert status == 200 and len(env["result"]) == 2, env
    assert all(set(s) >= {"id", "username", "created_at", "last_seen_at", "remote_ip"} for s in env["result"])
    target = env["result"][0]["id"]  # newest first: the second login
    page = await server.fetch("/admin/sessions")
    assert page.code == 200 and b"/admin/sessions/%d/end" % target in page.body

    status, env = await server.api(f"/sessions/{target}", "DELETE")
    assert status == 200 and env["result"]["active"] is False, env
    assert (await server.fetch("/module/list", auth=None, headers=second)).code == 401
    assert (await server.fetch("/module/list", auth=None, headers=first)).code == 200
    assert (await server.api(f"/sessions/{target}", "DELETE"))[0] == 409
    assert (await server.api("/sessions/999999", "DELETE"))[0] == 404
    entries = (await server.api("/audit"))[1]["result"]["entries"]
    assert ("end_session", f"session:{target}") in [(e["action"], e["target"]) for e in entries]

    await server.ctx.accounts.set_password(ADMIN[0], "a-brand-new-password")
    assert (await server.fetch("/module/list", auth=None, headers=first)).code == 401
    assert {"admin", "password"} <= {r.end_reason for r in await _session_rows(server)}
    assert (await server.api("/sessions", auth=(ADMIN[0], "a-brand-new-password")))[1]["result"] == [], \
        "sessions from before the change are not listed as live"


async def test_an_admin_ends_a_session_from_the_sessions_page(server: RunningServer) -> None:
    viewer = ("viewer-s", "viewer-s-pass-1")
    await server.ctx.accounts.create(*viewer, "viewer")
    admin = _session_header(await _login(server))
    other = _session_header(await _login(server))
    page = await server.fetch("/admin/sessions", auth=None, headers=admin)
    assert page.code == 200 and b'href="/admin/sessions"' in page.body  # the admin's nav entry
    target = (await server.api("/sessions"))[1]["result"][0]["id"]  # newest first: `other`
    assert b'action="/admin/sessions/%d/end"' % target in page.body
    xsrf = _cookie_jar(page)["_xsrf"].value
    cookies = f"{admin['Cookie']}; _xsrf={xsrf}"
    end = f"/admin/sessions/{target}/end"

    refused = await server.fetch(end, "POST", auth=None, follow_redirects=False, headers={**FORM, "Cookie": cookies},
                                 body="")
    assert refused.code == 403  # no XSRF token: nothing ended
    assert (await server.fetch("/module/list", auth=None, headers=other)).code == 200
    done = await server.fetch(end, "POST", auth=None, follow_redirects=False, headers={**FORM, "Cookie": cookies},
                              body=urlencode({"_xsrf": xsrf}))
    assert done.code == 303 and done.headers["Location"] == "/admin/sessions", done.body
    assert (await server.fetch("/module/list", auth=None, headers=other)).code == 401
    assert (await server.fetch("/module/list", auth=None, headers=admin)).code == 200
    listing = await server.fetch("/admin/sessions", auth=None, headers=admin)
    assert b"/admin/sessions/%d/end" % target not in listing.body
    entries = (await server.api("/audit"))[1]["result"]["entries"]
    assert ("admin", "end_session", f"session:{target}") in [(e["actor"], e["action"], e["target"]) for e in entries]

    zh = (await server.fetch("/admin/sessions", auth=None, headers={**admin, "Accept-Language": "zh-CN"})).body.decode()
    assert "会话" in zh and "结束" in zh
    assert (await server.fetch("/admin/sessions", auth=viewer)).code == 403
    assert b'href="/admin/sessions"' not in (await server.fetch("/", auth=viewer)).body


async def test_idle_and_absolute_lifetimes(make_server: MakeServer) -> None:
    idle = await make_server(session_idle_seconds=1.0, session_max_seconds=60)
    cookie = _session_header(await _login(idle))
    for _ in range(4):  # requests keep it alive past the idle limit
        await asyncio.sleep(0.4)
        assert (await idle.fetch("/module/list", auth=None, headers=cookie)).code == 200
    await asyncio.sleep(1.3)
    assert (await idle.fetch("/module/list", auth=None, headers=cookie)).code == 401
    assert [r.end_reason for r in await _session_rows(idle)] == ["idle"]

    absolute = await make_server(session_idle_seconds=60, session_max_seconds=1.5)
    cookie = _session_header(await _login(absolute))
    assert (await absolute.fetch("/module/list", auth=None, headers=cookie)).code == 200
    for _ in range(5):
        await asyncio.sleep(0.4)
        await absolute.fetch("/module/list", auth=None, headers=cookie)
    assert (await absolute.fetch("/module/list", auth=None, headers=cookie)).code == 401
    # (The signed cookie's own age limit may refuse it first; either way it is gone.)
    assert await absolute.ctx.sessions.list_active() == []
