"""Hostile input against the real server: no write by GET with a cookie, the Origin
check on cookie-authenticated changes, redirect targets, control characters in names
and subjects and log lines, trusted proxies and Secure cookies, hostile static paths."""

from __future__ import annotations

import io
import json
import logging
import re
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest
from tornado.httpclient import HTTPResponse

from handlers.app import collect_routes
from handlers.base import SESSION_COOKIE
from handlers.dashboard.views import LANG_COOKIE
from tests.conftest import ADMIN, MakeServer, RunningServer
from tests.handlers.test_auth_matrix import _sample_path
from tests.support.rawclient import REGISTRATION_TOKEN, register
from tornado_sched.logs import SafeFormatter
from tornado_sched.notify import _subject
from tornado_sched.proxies import ProxyPolicy

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _jar(response: HTTPResponse) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        jar.load(header)
    return jar


async def _browser(server: RunningServer) -> tuple[str, str]:
    """A logged-in browser: (Cookie header with session and _xsrf, xsrf token)."""
    page = await server.fetch("/modules")
    jar = _jar(page)
    token = re.search(rb'name="_xsrf" value="([^"]+)"', page.body).group(1).decode()
    return f"{SESSION_COOKIE}={jar[SESSION_COOKIE].value}; _xsrf={jar['_xsrf'].value}", token


# -- 5: no state change by GET with a cookie; Origin on cookie changes ----------------
async def test_get_registration_with_only_a_session_cookie_is_refused(server: RunningServer) -> None:
    cookie, token = await _browser(server)
    response = await server.fetch("/module/register?name=csrf-made", auth=None, headers={"Cookie": cookie})
    assert response.code == 403 and json.loads(response.body)["code"] == "4030", response.body
    assert await server.ctx.docs["modules"].count_documents({"name": "csrf-made"}) == 0
    # The seed's GET contract holds for the token and for Basic credentials.
    assert (await register(server.base_url, "by-token"))["hash"]
    assert (await server.api("/module/register?name=by-basic"))[0] == 200
    # A browser session may still register by POST with the XSRF token.
    response = await server.fetch("/module/register", "POST", auth=None, headers={**FORM, "Cookie": cookie},
                                  body=urlencode({"name": "by-post", "_xsrf": token}))
    assert response.code == 200, response.body


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.sibling.test"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site"},
])
async def test_cookie_changes_from_another_site_are_refused_even_with_a_planted_xsrf_pair(
    server: RunningServer, headers: dict[str, str]
) -> None:
    cookie, token = await _browser(server)
    response = await server.fetch("/scheduler/reload", "POST", auth=None,
                                  headers={**FORM, "Cookie": cookie, **headers}, body=urlencode({"_xsrf": token}))
    assert response.code == 403, (headers, response.body)
    same = await server.fetch("/scheduler/reload", "POST", auth=None,
                              headers={**FORM, "Cookie": cookie, "Origin": server.base_url},
                              body=urlencode({"_xsrf": token}))
    assert same.code == 200, same.body


# -- 6: redirect targets -------------------------------------------------------------
@pytest.mark.parametrize(("raw_next", "expected"), [
    ("/%09/evil.test", "/"), ("/%0a/evil.test", "/"), ("/%0d%0aSet-Cookie:%20x=1", "/"), ("//evil.test", "/"),
    ("/%5Cevil.test", "/"), ("https://evil.test/", "/"), ("/%E2%80%A8x", "/"),
    ("/%00x", "/ x"),  # Tornado turns NUL in a query argument into a space: a local path
    ("/workflows?page=2", "/workflows?page=2"),
])
async def test_language_redirects_stay_on_site_and_never_fail(server: RunningServer, raw_next: str,
                                                              expected: str) -> None:
    response = await server.fetch(f"/lang/en_US?next={raw_next}", auth=None, follow_redirects=False)
    assert response.code == 303, (raw_next, response.code, response.body)
    assert response.headers["Location"] == expected


# -- 7: log hygiene ------------------------------------------------------------------
def test_log_records_cannot_forge_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.forged")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        forged = "r1\n2026-12-02 00:00:00 ERROR [tornado_sched] admin logged in\r\x1b[2J\u2028x"
        logger.warning("result for run %s", forged)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed %s", "a\nb")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "WARNING result for run r1\\n2026-12-02 00:00:00 ERROR [tornado_sched] admin logged in" \
                       "\\r\\x1b[2J\\u2028x", lines
    assert lines[1] == "ERROR failed a\\nb"
    assert lines[2].startswith("Traceback"), "tracebacks keep their own lines"


async def test_a_run_id_with_a_newline_does_not_forge_the_log_file(server: RunningServer, tmp_path) -> None:  # noqa: ANN001
    from tornado_sched.logs import configure_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("INFO", tmp_path / "logs")
    try:
        logging.getLogger("tornado_sched.runs").warning("unmatched result (run_id %s)",
                                                          "abc\n2026-01-01 ERROR [x] forged")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    text = (tmp_path / "logs" / "tornado_sched.log").read_text()
    assert "\n2026-01-01 ERROR [x] forged" not in text and "abc\\n2026-01-01" in text


# -- 10: control characters in names and subjects -------------------------------------
@pytest.mark.parametrize("name", ["evil\r\nBcc: victim@example.com", "tab\tname", "nul\x00", "bell\x07"])
async def test_control_characters_are_refused_in_names(server: RunningServer, name: str) -> None:
    status, env = await server.api("/workflow/create", "POST", json_body={"name": name})
    assert status == 400 and env["result"] == {"field": "name"}, env
    # (Tornado itself turns NUL and most C0 characters in query arguments into spaces;
    # a JSON body hands them over as they are.)
    # The token in the header: a NUL is refused by the edge reader with the whole body
    # (as a lone surrogate is), so a token inside that body would not be read.
    status, env = await server.api("/module/register", "POST", auth=None, json_body={"name": name},
                                   headers={"X-Registration-Token": REGISTRATION_TOKEN})
    assert status == 400 and env["result"] == {"field": "name"}, env
    if any(c in name for c in "\t\r\n"):
        status, env = await server.api("/module/register?" + urlencode({"name": name, "token": REGISTRATION_TOKEN}),
                                       auth=None)
        assert status == 400 and env["result"] == {"field": "name"}, env
    assert await server.ctx.docs["workflows"].count_documents({}) == 0
    assert await server.ctx.docs["modules"].count_documents({}) == 0


def test_an_email_subject_is_one_line_whatever_was_stored() -> None:
    payload = {"kind": "failure", "workflow_name": "old\r\nBcc: victim@example.com", "failures": [], "run_id": "r"}
    subject = _subject(payload)
    assert "\r" not in subject and "\n" not in subject and "Bcc: victim" in subject


# -- 8: trusted proxies and Secure cookies --------------------------------------------
def test_forwarded_headers_count_only_from_trusted_proxies() -> None:
    policy = ProxyPolicy(["10.0.0.0/8", "::1"])
    assert policy.client("203.0.113.9", "1.2.3.4", "https") == ("203.0.113.9", None)
    assert policy.client("10.1.1.1", "1.2.3.4", "https") == ("1.2.3.4", "https")
    # Hops left of the first untrusted one are the client's own claims.
    assert policy.client("10.1.1.1", "6.6.6.6, 1.2.3.4, 10.2.2.2", "http") == ("1.2.3.4", "http")
    assert policy.client("::1", "garbage", "gopher") == ("::1", None)
    assert ProxyPolicy().client("10.1.1.1", "1.2.3.4", "https") == ("10.1.1.1", None)


async def test_throttle_and_cookies_follow_trusted_proxy_headers(make_server: MakeServer) -> None:
    untrusted = await make_server(login_slow_after=100, login_block_after=2)
    wrong = (ADMIN[0], "wrong-password")
    # Not a trusted proxy: a changing X-Forwarded-For does not dodge the block.
    for n in range(2):
        await untrusted.fetch("/module/list", auth=wrong, headers={"X-Forwarded-For": f"198.51.100.{n}"})
    assert (await untrusted.fetch("/module/list", headers={"X-Forwarded-For": "198.51.100.77"})).code == 429
    page = await untrusted.fetch("/login", auth=None, headers={"X-Forwarded-Proto": "https"})
    assert not _jar(page)["_xsrf"]["secure"]

    proxied = await make_server(login_slow_after=100, login_block_after=2, trusted_proxies=("127.0.0.1",))
    for _ in range(2):
        await proxied.fetch("/module/list", auth=wrong, headers={"X-Forwarded-For": "198.51.100.1"})
    assert (await proxied.fetch("/module/list", headers={"X-Forwarded-For": "198.51.100.1"})).code == 429
    assert (await proxied.fetch("/module/list", headers={"X-Forwarded-For": "198.51.100.2"})).code == 200
    https = await proxied.fetch("/modules", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.3"})
    assert _jar(https)[SESSION_COOKIE]["secure"] is True
    assert _jar(https)["_xsrf"]["secure"] is True, "every cookie set over https is Secure"
    lang = await proxied.fetch("/lang/zh_CN", auth=None, follow_redirects=False,
                               headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.3"})
    assert _jar(lang)[LANG_COOKIE]["secure"] is True
    plain = await proxied.fetch("/modules", headers={"X-Forwarded-For": "198.51.100.3"})
    assert not _jar(plain)[SESSION_COOKIE]["secure"] and not _jar(plain)["_xsrf"]["secure"]
    entries = (await proxied.api("/audit", headers={"X-Forwarded-For": "198.51.100.3"}))[1]
    assert entries["code"] == "2000"

    configured = await make_server(cookie_secure=True)
    assert _jar(await configured.fetch("/modules"))[SESSION_COOKIE]["secure"] is True


# -- 11: hostile static paths -------------------------------------------------------
@pytest.mark.parametrize("path", ["/static/css/app.css%00", "/static/css/app.css%0a", "/static/%00",
                                  "/static/..%2f..%2fetc/passwd", "/static/css/app.css%00.png"])
async def test_hostile_static_paths_get_4xx_not_500(server: RunningServer, path: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    response = await server.fetch(path, auth=None)
    assert 400 <= response.code < 500, (path, response.code)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no traceback logged"
    assert (await server.fetch("/static/css/app.css", auth=None)).code == 200


async def test_hostile_paths_and_queries_on_every_route_get_no_5xx_and_no_error_log(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Every route of the real table, as the auth matrix fills it in, with NUL, CR/LF,
    # U+2028, bad UTF-8 and a long segment in the path and in the usual query fields.
    paths = sorted({_sample_path(pattern) for pattern, _handler in collect_routes()} | {"/static/css/app.css"})
    query = "?next=/%0d%0a&page=%00&status=%E2%80%A8&q=%ff%fe&before=%00&page_size=%0a"
    server_errors = []
    for path in paths:
        for hostile in (path + "%00", path + "/%0a" + "x" * 300, path + "%E2%80%A8%C0%AF", path + query):
            for method in ("GET", "POST"):
                for auth in (None, ADMIN):
                    response = await server.fetch(hostile, method, auth=auth, follow_redirects=False)
                    if response.code >= 500:
                        server_errors.append((method, hostile, auth is not None, response.code))
    assert len(paths) > 40, "the route walk found too few routes"
    assert not server_errors, server_errors
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("path", ["/websocket", "/websocket?hash=" + "0" * 40, "/dashboard/live"])
async def test_other_methods_on_socket_routes_get_4xx_without_an_error_traceback(
    server: RunningServer, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Tornado refuses these itself (missing _xsrf, 405): the client's mistake, so a
    # warning line at most, never one ERROR traceback per anonymous request.
    for method in ("POST", "PUT", "DELETE", "HEAD"):
        for auth in (None, ADMIN):
            caplog.clear()
            response = await server.fetch(path, method, auth=auth)
            assert 400 <= response.code < 500, (method, path, response.code)
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert not errors, (method, path, errors)
    assert not [r for r in caplog.records if "0" * 40 in r.getMessage()], "the hash stays out of the log"


async def test_static_files_apply_the_host_check(make_server: MakeServer) -> None:
    server = await make_server(debug=False, allowed_hosts=("app.example.com",))
    wrong = await server.fetch("/static/css/app.css", auth=None, headers={"Host": "evil.test"})
    assert wrong.code == 400
    right = await server.fetch("/static/css/app.css", auth=None, headers={"Host": "app.example.com"})
    assert right.code == 200
