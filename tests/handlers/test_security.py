"""Security hardening against the real server: browser sessions and XSRF, the Host
header, WebSocket origins, the login throttle, security headers, the audit log, and
secrets kept out of the logs."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from http.cookies import Morsel, SimpleCookie
from typing import Any
from urllib.parse import urlencode

import pytest
from tornado.httpclient import HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import create_signed_value
from websockets.exceptions import InvalidStatus

from handlers.app import make_app
from handlers.auth import SESSION_COOKIE, host_allowed
from handlers.base import ApiHandler
from tests.conftest import (
    ADMIN,
    MakeServer,
    RunningServer,
    basic_auth,
)
from tests.support.httpauth import digest_header
from tests.support.rawclient import REGISTRATION_TOKEN, open_socket, register

VIEWER = ("viewer1", "viewer-pass-1")


def _envelope(response: HTTPResponse) -> dict[str, Any]:
    return json.loads(response.body)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- browser session + XSRF ---------------------------------------------------------
class SessionProbe(ApiHandler):
    """Stands in for a dashboard page: operator auth, sets the session cookie."""

    auth = "operator"
    sets_session = True

    def get(self) -> None:
        self.write_envelope({"user": self.current_user.username, "via": self.auth_method,
                             "xsrf": self.xsrf_token.decode()})

    def post(self) -> None:
        self.write_envelope({"user": self.current_user.username, "via": self.auth_method})


@pytest.fixture
async def probe(server: RunningServer) -> AsyncIterator[RunningServer]:
    """The real Application (make_app's settings, routes and context) plus /probe."""
    app = make_app(server.ctx)
    app.add_handlers(r".*", [(r"/probe", SessionProbe, {"ctx": server.ctx})])
    sockets = bind_sockets(0, "127.0.0.1")
    http_server = HTTPServer(app)
    http_server.add_sockets(sockets)
    yield RunningServer(server.ctx, sockets[0].getsockname()[1], server.http)
    http_server.stop()
    await http_server.close_all_connections()


def _cookies(response: HTTPResponse) -> dict[str, Morsel]:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        jar.load(header)
    return dict(jar)


async def _session_cookie(server: RunningServer, username: str, **kwargs: Any) -> str:
    """A signed cookie naming a real server-side session (or, for an unknown user, a
    random id the store has never seen)."""
    operator = await server.ctx.accounts.get(username)
    session_id = (await server.ctx.sessions.start(operator, "127.0.0.1", "test") if operator
                  else uuid.uuid4().hex + uuid.uuid4().hex)
    value = create_signed_value(server.ctx.settings.secret_key, SESSION_COOKIE, session_id, **kwargs)
    return f"{SESSION_COOKIE}={value.decode()}"


async def test_http_auth_sets_a_signed_httponly_samesite_session_cookie(probe: RunningServer) -> None:
    response = await probe.fetch("/probe")
    assert response.code == 200, response.body
    assert _envelope(response)["result"]["via"] == "basic"
    session = _cookies(response)[SESSION_COOKIE]
    assert session["httponly"] is True
    assert session["samesite"].lower() in ("lax", "strict")
    assert not session["secure"], "plain http: a Secure cookie would never come back"
    assert not session["expires"] and not session["max-age"], "a browser-session cookie"
    assert ADMIN[1] not in session.value

    # The cookie alone now authenticates, on the page and on the API.
    cookie = f"{SESSION_COOKIE}={session.value}"
    again = await probe.fetch("/probe", auth=None, headers={"Cookie": cookie})
    assert again.code == 200, again.body
    assert _envelope(again)["result"] == {**_envelope(again)["result"], "user": ADMIN[0], "via": "cookie"}
    assert (await probe.fetch("/module/list", auth=None, headers={"Cookie": cookie})).code == 200

    # Digest logs a browser in too; a script's Bearer token gets no cookie.
    challenge = await probe.fetch("/probe", auth=None)
    assert challenge.code == 401 and SESSION_COOKIE not in _cookies(challenge)
    digest = next(c for c in challenge.headers.get_list("WWW-Authenticate") if c.startswith("Digest "))
    header = digest_header(digest, *ADMIN, "GET", "/probe")
    by_digest = await probe.fetch("/probe", auth=None, headers={"Authorization": header})
    assert by_digest.code == 200 and SESSION_COOKIE in _cookies(by_digest)
    _, token = await probe.ctx.tokens.create(ADMIN[0], "script")
    by_token = await probe.fetch("/probe", auth=None, headers=_bearer(token))
    assert by_token.code == 200 and SESSION_COOKIE not in _cookies(by_token)
    # Plain API routes never set it.
    assert SESSION_COOKIE not in _cookies(await probe.fetch("/module/list"))


async def test_tampered_forged_expired_or_orphan_session_cookies_are_refused(probe: RunningServer) -> None:
    good = await _session_cookie(probe, ADMIN[0])
    assert (await probe.fetch("/probe", auth=None, headers={"Cookie": good})).code == 200
    name, value = good.split("=", 1)
    last = value[-1]
    tampered = f"{name}={value[:-1]}{'0' if last != '0' else '1'}"
    other_user = good.replace(
        value, create_signed_value("another-secret-key-000000", SESSION_COOKIE, json.dumps({"u": ADMIN[0], "v": "0" * 16})).decode()
    )
    expired = await _session_cookie(probe, ADMIN[0], clock=lambda: time.time() - 2 * 86400)
    orphan = await _session_cookie(probe, "nobody-here")
    unsigned = f"{SESSION_COOKIE}=" + json.dumps({"u": ADMIN[0], "v": "0" * 16}).replace(" ", "")
    for label, cookie in (("tampered", tampered), ("forged", other_user), ("expired", expired),
                          ("unknown user", orphan), ("unsigned", unsigned)):
        response = await probe.fetch("/probe", auth=None, headers={"Cookie": cookie})
        assert response.code == 401, (label, response.body)
        assert _envelope(response)["code"] == "4010", label


async def test_cookie_posts_need_the_xsrf_token_and_header_auth_does_not(probe: RunningServer) -> None:
    first = await probe.fetch("/probe")
    cookies = _cookies(first)
    xsrf_cookie = cookies["_xsrf"]
    assert xsrf_cookie["samesite"].lower() == "strict"
    session = f"{SESSION_COOKIE}={cookies[SESSION_COOKIE].value}"
    with_xsrf_cookie = f"{session}; _xsrf={xsrf_cookie.value}"
    token = _envelope(first)["result"]["xsrf"]
    other_token = _envelope(await probe.fetch("/probe"))["result"]["xsrf"]  # a different browser's
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    refused = {
        "no token at all": ({"Cookie": session}, "a=1"),
        "cookie but no field": ({"Cookie": with_xsrf_cookie}, "a=1"),
        "field but no cookie": ({"Cookie": session}, urlencode({"_xsrf": token})),
        "mismatched field": ({"Cookie": with_xsrf_cookie}, urlencode({"_xsrf": other_token})),
        "mismatched header": ({"Cookie": with_xsrf_cookie, "X-XSRFToken": other_token}, "a=1"),
    }
    for label, (headers, body) in refused.items():
        for path in ("/probe", "/scheduler/reload"):
            response = await probe.fetch(path, "POST", auth=None, headers={**form, **headers}, body=body)
            assert response.code == 403, (label, path, response.body)
            assert _envelope(response)["code"] == "4030", (label, path)

    accepted = {
        "form field": ({"Cookie": with_xsrf_cookie}, urlencode({"_xsrf": token})),
        "X-XSRFToken header": ({"Cookie": with_xsrf_cookie, "X-XSRFToken": token}, "a=1"),
    }
    for label, (headers, body) in accepted.items():
        for path in ("/probe", "/scheduler/reload"):
            response = await probe.fetch(path, "POST", auth=None, headers={**form, **headers}, body=body)
            assert response.code == 200, (label, path, response.body)
        assert _envelope(await probe.fetch("/probe", "POST", auth=None, headers={**form, **headers},
                                           body=body))["result"]["via"] == "cookie"

    # Scripts: Basic and Bearer need no XSRF token, cookie or not.
    _, api_token = await probe.ctx.tokens.create(ADMIN[0], "script")
    for headers in ({}, {"Cookie": session}, _bearer(api_token)):
        response = await probe.fetch("/scheduler/reload", "POST", headers=headers)
        assert response.code == 200, (headers, response.body)


async def test_cross_site_posts_with_cached_basic_credentials_need_the_xsrf_token(probe: RunningServer) -> None:
    """Browsers resend cached Basic/Digest credentials on a cross-site form post, so a
    header-authenticated POST from a foreign page must not skip the XSRF check."""
    for headers in ({"Origin": "http://evil.com"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}, {"Origin": probe.base_url, "Sec-Fetch-Site": "cross-site"}):
        response = await probe.fetch("/scheduler/reload", "POST", headers=headers)
        assert response.code == 403, (headers, response.body)
        assert _envelope(response)["code"] == "4030"
    # Same-origin browser requests and scripts (which send neither header) go through.
    for headers in ({"Origin": probe.base_url}, {"Sec-Fetch-Site": "same-origin"}, {}):
        response = await probe.fetch("/scheduler/reload", "POST", headers=headers)
        assert response.code == 200, (headers, response.body)
    # A page cannot attach a Bearer token cross-site by itself: tokens stay exempt.
    _, token = await probe.ctx.tokens.create(ADMIN[0], "script")
    response = await probe.fetch("/scheduler/reload", "POST", auth=None,
                                 headers={**_bearer(token), "Origin": "http://evil.com"})
    assert response.code == 200, response.body


async def _page(server: RunningServer, path: str, method: str = "GET", *, cookie: str | None = None,
                body: str | None = None) -> HTTPResponse:
    """A browser-like request: Basic credentials only without a cookie; no redirects."""
    headers = {"Cookie": cookie} if cookie else {"Authorization": basic_auth(*ADMIN)}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    return await server.http.fetch(server.base_url + path, method=method, headers=headers, body=body,
                                   raise_error=False, follow_redirects=False)


async def test_dashboard_pages_session_xsrf_and_logout(server: RunningServer) -> None:
    page = await _page(server, "/scheduler")
    assert page.code == 200 and page.headers["Content-Type"].startswith("text/html"), page.code
    _check_security_headers("page", page)
    html = page.body.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script would need 'unsafe-inline'"
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
    cookies = _cookies(page)
    assert cookies[SESSION_COOKIE]["httponly"] is True
    field = re.search(r'name="_xsrf" value="([^"]+)"', html)
    assert field, "the page's form carries the XSRF token"
    jar = f"{SESSION_COOKIE}={cookies[SESSION_COOKIE].value}; _xsrf={cookies['_xsrf'].value}"

    assert (await _page(server, "/scheduler", cookie=jar)).code == 200
    refused = await _page(server, "/scheduler", "POST", cookie=jar, body="")
    assert refused.code == 403 and refused.headers["Content-Type"].startswith("text/html")
    _check_security_headers("page 403", refused)
    done = await _page(server, "/scheduler", "POST", cookie=jar, body=urlencode({"_xsrf": field.group(1)}))
    assert done.code == 303 and done.headers["Location"].startswith("/scheduler?reloaded="), done.code

    out = await _page(server, "/logout", "POST", cookie=jar, body=urlencode({"_xsrf": field.group(1)}))
    assert out.code == 303, out.body
    assert _cookies(out)[SESSION_COOKIE].value == "", "logout clears the session cookie"


# -- Host header --------------------------------------------------------------------
async def test_host_header_must_be_allowed_when_debug_is_off(make_server: MakeServer) -> None:
    strict = await make_server(debug=False, allowed_hosts=("example.com", ".example.org"))
    refused = ("evil.com", "example.com.evil.com", "evil.example.com", f"127.0.0.1:{strict.port}", "")
    for host in refused:
        for path, auth in (("/module/list", ADMIN), ("/health", None)):
            response = await strict.fetch(path, auth=auth, headers={"Host": host})
            assert response.code == 400, (host, path, response.body)
            envelope = _envelope(response)
            assert envelope["code"] == "4000" and "ALLOWED_HOSTS" in envelope["message"], envelope
    response = await strict.fetch("/scheduler/reload", "POST", headers={"Host": "evil.com"})
    assert response.code == 400
    # The WebSocket endpoints refuse a foreign Host too, before any upgrade or auth.
    for path in ("/dashboard/live", "/websocket?hash=abc"):
        response = await strict.fetch(path, headers={"Host": "evil.com"})
        assert response.code == 400 and b"ALLOWED_HOSTS" in response.body, (path, response.body)
    # The registration token path authenticates differently; the Host rule still holds.
    token = strict.ctx.settings.registration_token
    response = await strict.fetch("/module/register?name=h", auth=None,
                                  headers={"Host": "evil.com", "X-Registration-Token": token})
    assert response.code == 400, response.body
    response = await strict.fetch("/module/register?name=h", auth=None,
                                  headers={"Host": "example.com", "X-Registration-Token": token})
    assert response.code == 200, response.body
    for host in ("example.com", "example.com:8080", "EXAMPLE.COM", "example.org", "api.example.org:443"):
        response = await strict.fetch("/module/list", headers={"Host": host})
        assert response.code == 200, (host, response.body)

    lenient = await make_server(allowed_hosts=("example.com",))  # DEBUG=True
    response = await lenient.fetch("/module/list", headers={"Host": "evil.com"})
    assert response.code == 200, response.body


def test_host_allowed_patterns() -> None:
    assert host_allowed("example.com:80", ("example.com",))
    assert host_allowed("a.b.example.com", (".example.com",))
    assert not host_allowed("badexample.com", (".example.com",))
    assert host_allowed("anything", ("*",))
    assert not host_allowed("", ("example.com",))
    # IPv6 literals, with and without a port.
    assert host_allowed("[::1]", ("[::1]",))
    assert host_allowed("[::1]:8080", ("[::1]",))
    assert host_allowed("[::1]:8080", ("::1",))
    assert not host_allowed("[::2]:8080", ("[::1]",))


# -- WebSocket Origin ---------------------------------------------------------------
async def _origin_status(server: RunningServer, module_hash: str, origin: str | None) -> int:
    try:
        conn = await open_socket(server.ws_url, module_hash, origin=origin)
    except InvalidStatus as exc:
        return exc.response.status_code
    await conn.close()
    return 101


async def test_websocket_accepts_module_clients_and_refuses_foreign_origins(make_server: MakeServer) -> None:
    server = await make_server(allowed_hosts=("dash.example.com",))
    module_hash = (await register(server.base_url, "origin-probe"))["hash"]
    accepted = (None, f"http://127.0.0.1:{server.port}", "http://dash.example.com", "https://dash.example.com:8443")
    for origin in accepted:
        assert await _origin_status(server, module_hash, origin) == 101, origin
    refused = ("http://evil.com", "null", "http://dash.example.com.evil.com", "http://127.0.0.2", "file://")
    for origin in refused:
        assert await _origin_status(server, module_hash, origin) == 403, origin

    # "*" allows any Host for HTTP, but it is not a browser allow-list.
    default = await make_server()
    assert default.ctx.settings.allowed_hosts == ("*",)
    other_hash = (await register(default.base_url, "origin-probe"))["hash"]
    assert await _origin_status(default, other_hash, None) == 101
    assert await _origin_status(default, other_hash, "http://evil.com") == 403


# -- login throttle -----------------------------------------------------------------
async def test_failed_logins_are_slowed_then_refused_then_forgiven(make_server: MakeServer) -> None:
    server = await make_server(login_slow_after=2, login_block_after=4, login_block_seconds=2)
    wrong = (ADMIN[0], "not-the-password")
    _, token = await server.ctx.tokens.create(ADMIN[0], "script")
    assert (await server.fetch("/module/list")).code == 200

    # Four failures from 127.0.0.1, by Basic and by Bearer.
    attempts = [{"auth": wrong}, {"auth": None, "headers": _bearer("tsk_" + "x" * 43)}, {"auth": wrong}, {"auth": wrong}]
    elapsed = []
    for n, kwargs in enumerate(attempts, 1):
        started = time.monotonic()
        response = await server.fetch("/module/list", **kwargs)
        elapsed.append(time.monotonic() - started)
        assert response.code == 401, (n, response.body)
    # The block began when the 4th failure was recorded, before its 1 s delay.
    blocked_by = time.monotonic() - 1.0
    # LoginThrottle.delay: 0.25 s * 2**(failures - slow_after) once failures >= slow_after.
    for n, took in enumerate(elapsed, 1):
        expected = 0.0 if n < 2 else 0.25 * 2 ** (n - 2)
        assert took >= expected, (n, took, expected)
    assert elapsed[2] - elapsed[0] > 0.3, elapsed

    # Refused with 429 now, even with the right password or a valid token.
    for kwargs in ({}, {"auth": None, "headers": _bearer(token)}):
        response = await server.fetch("/module/list", **kwargs)
        assert response.code == 429, response.body
        assert _envelope(response)["code"] == "4290"
    assert (await server.fetch("/health", auth=None)).code == 200, "public probes are not throttled"

    # After LOGIN_BLOCK_SECONDS the right password works again.
    await asyncio.sleep(max(0.0, blocked_by + 2.1 - time.monotonic()))
    assert (await server.fetch("/module/list")).code == 200

    # A success resets the count: 2 + 2 failures around it never reach the block.
    for _ in range(2):
        assert (await server.fetch("/module/list", auth=wrong)).code == 401
    assert (await server.fetch("/module/list")).code == 200
    for _ in range(2):
        assert (await server.fetch("/module/list", auth=wrong)).code == 401
    assert (await server.fetch("/module/list")).code == 200


# -- security headers ---------------------------------------------------------------
def _check_security_headers(label: str, response: HTTPResponse) -> None:
    headers = response.headers
    csp = headers.get("Content-Security-Policy", "")
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives.get("frame-ancestors") == ["'none'"], (label, csp)
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, (label, csp)
    scripts = directives.get("script-src", directives.get("default-src"))
    assert scripts and "*" not in scripts and "data:" not in scripts, (label, csp)
    assert headers.get("X-Content-Type-Options") == "nosniff", label
    assert headers.get("Referrer-Policy") in (
        "no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin"
    ), label


async def test_security_headers_on_every_kind_of_api_response(server: RunningServer) -> None:
    await server.ctx.accounts.create(*VIEWER, "viewer")
    responses = {
        ("ok", 200): await server.fetch("/module/list"),
        ("public", 200): await server.fetch("/health", auth=None),
        ("bad request", 400): await server.fetch("/runs?page=x"),
        ("no credentials", 401): await server.fetch("/module/list", auth=None),
        ("wrong role", 403): await server.fetch("/audit", auth=VIEWER),
        ("unknown route", 404): await server.fetch("/no/such/thing"),
        ("unknown object", 404): await server.fetch("/workflow/424242"),
        ("wrong method", 405): await server.fetch("/module/list", "PATCH", body=b"{}"),
    }
    for (label, code), response in responses.items():
        assert response.code == code, (label, response.code, response.body)
        _check_security_headers(label, response)


# -- audit log ----------------------------------------------------------------------
async def test_every_kind_of_change_leaves_an_audit_row(server: RunningServer) -> None:
    await server.ctx.accounts.create(*VIEWER, "viewer")
    module = await register(server.base_url, "audited-module")
    # The module is offline: its step fails at once and the run finishes (a run left
    # open at shutdown would only add an "interrupted" notification to the teardown).
    status, env = await server.api("/workflow/create", "POST", json_body={
        "name": "audited", "execute_cron_list": ["0 3 * * *"],
        "execute_modules": [{"module_hash": module["hash"], "args": {}}],
    })
    assert status == 200, env
    wf = env["result"]["workflow_id"]
    steps = [
        ("PUT", f"/workflow/{wf}", {"description": "changed"}),
        ("POST", f"/workflow/{wf}/disable", None),
        ("POST", f"/workflow/{wf}/enable", None),
        ("POST", f"/workflow/{wf}/execute", None),
        ("DELETE", f"/workflow/{wf}", None),
        ("POST", "/scheduler/reload", None),
        ("DELETE", f"/module/{module['hash']}", None),
        ("POST", "/tokens", {"name": "audited token"}),
    ]
    results = []
    for method, path, body in steps:
        status, env = await server.api(path, method, json_body=body)
        assert status == 200, (method, path, env)
        results.append(env["result"])
    token_id = results[-1]["id"]
    run_id = results[3]["run_id"]
    assert (await server.api(f"/tokens/{token_id}", "DELETE"))[0] == 200

    # Refused changes leave nothing.
    assert (await server.api("/scheduler/reload", "POST", auth=VIEWER))[0] == 403
    assert (await server.api("/workflow/999/execute", "POST"))[0] == 404

    status, env = await server.api("/audit?page_size=100")
    assert status == 200, env
    entries = env["result"]["entries"]
    assert env["result"]["total"] == len(entries) == 11, entries
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True), "newest first"
    expected = [
        ("register", f"module:{module['module_id']}"),
        ("create", f"workflow:{wf}"), ("update", f"workflow:{wf}"), ("disable", f"workflow:{wf}"),
        ("enable", f"workflow:{wf}"), ("run", f"workflow:{wf}"), ("delete", f"workflow:{wf}"),
        ("reload", "scheduler"), ("delete", f"module:{module['module_id']}"),
        ("create", f"token:{token_id}"), ("revoke", f"token:{token_id}"),
    ]
    assert [(e["action"], e["target"]) for e in reversed(entries)] == expected
    now = datetime.now(UTC)
    for entry in entries:
        # The module registered with REGISTRATION_TOKEN alone; the rest is the admin's.
        actor = "registration-token" if entry["action"] == "register" else ADMIN[0]
        assert entry["actor"] == actor and entry["remote_ip"] == "127.0.0.1", entry
        at = datetime.fromisoformat(entry["at"])
        assert at.tzinfo is not None and now - timedelta(minutes=1) < at <= now + timedelta(seconds=1), entry
    details = {(e["action"], e["target"]): e["detail"] for e in entries}
    assert details[("run", f"workflow:{wf}")] == {"run_id": run_id}
    assert "description" in details[("update", f"workflow:{wf}")]["fields"]
    assert details[("create", f"token:{token_id}")]["name"] == "audited token"
    assert "token" not in json.dumps(details[("create", f"token:{token_id}")]).replace('"audited token"', "")

    status, env = await server.api("/audit?page=2&page_size=3")
    assert [e["id"] for e in env["result"]["entries"]] == [e["id"] for e in entries[3:6]]


# -- secrets in logs ----------------------------------------------------------------
async def test_hashes_and_tokens_never_reach_the_logs_in_full(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    module_hash = (await register(server.base_url, "secretive"))["hash"]
    unknown = uuid.uuid4().hex + "0badc0de"
    status, env = await server.api("/tokens", "POST", json_body={"name": "logged?"})
    token = env["result"]["token"]
    bad_token = "tsk_" + uuid.uuid4().hex + uuid.uuid4().hex[:11]
    wrong_registration = "wrong-registration-" + uuid.uuid4().hex

    conn = await open_socket(server.ws_url, module_hash)
    await conn.close()
    with pytest.raises(InvalidStatus):
        await open_socket(server.ws_url, unknown)
    assert (await server.fetch(f"/module/{module_hash}")).code == 200
    assert (await server.fetch(f"/module/{unknown}")).code == 404
    assert (await server.fetch(f"/module/{unknown}", "DELETE")).code == 404
    status, env = await server.api("/module/send_message", "POST", json_body={"module_hash": unknown, "message": "hi"})
    assert status == 404 and unknown not in env["message"], env
    status, env = await server.api(f"/module/send_message?module_hash={unknown}&message=hi", "POST")
    assert status == 404, env
    assert (await server.fetch("/module/list", auth=None, headers=_bearer(token))).code == 200
    assert (await server.fetch("/module/list", auth=None, headers=_bearer(bad_token))).code == 401
    query = urlencode({"name": "x", "token": wrong_registration})
    assert (await server.fetch(f"/module/register?{query}", auth=None)).code == 401
    # A browser POST refused by the XSRF check (Tornado logs those itself).
    cookie = await _session_cookie(server, ADMIN[0])
    response = await server.fetch(f"/module/send_message?module_hash={module_hash}&message=x&token={token}",
                                  "POST", auth=None, headers={"Cookie": cookie})
    assert response.code == 403, response.body

    records = caplog.records
    assert any(r.name == "tornado.access" for r in records), "the flow produced no access log"
    texts = [r.getMessage() for r in records] + [r.exc_text or "" for r in records]
    for secret in (module_hash, unknown, token, bad_token, REGISTRATION_TOKEN, wrong_registration):
        leaks = [t for t in texts if secret in t]
        assert not leaks, (secret, leaks)
    assert any(module_hash[:6] in t for t in texts), "a short prefix is still logged"


async def test_password_change_ends_browser_sessions(probe: RunningServer) -> None:
    login = await probe.fetch("/probe")
    session = _cookies(login)[SESSION_COOKIE].value
    cookie = {"Cookie": f"{SESSION_COOKIE}={session}"}
    assert (await probe.fetch("/probe", auth=None, headers=cookie)).code == 200
    await probe.ctx.accounts.set_password(ADMIN[0], "a-brand-new-password")
    assert (await probe.fetch("/probe", auth=None, headers=cookie)).code == 401
