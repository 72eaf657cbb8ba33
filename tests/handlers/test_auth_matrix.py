"""Every route in the Application makes an auth decision, and keeps it.

Walks the real route table: apart from the public probes, each route answers 401
without credentials and with every malformed header tornado-http-auth 1.1.1 turned
into a 500, and never 5xx with valid Basic or Digest credentials.
"""

from __future__ import annotations

import base64
import json
import re

import pytest

from handlers.app import collect_routes
from handlers.base import AUTH_KINDS
from tests.conftest import ADMIN, RunningServer, basic_auth
from tests.support.httpauth import digest_header
from tests.support.rawhttp import raw_request

PUBLIC = {"/health", "/ready", "/websocket", "/lang/en_US", "/logged-out", "/login", "/openapi.json", "/docs"}
METHODS = ("get", "post", "put", "delete")


def _sample_path(pattern: str) -> str:
    """Fill each regex group of a route with a plausible value."""
    def sample(group: str) -> str:
        if group.endswith("?"):
            return ""  # an optional group: the shortest path
        body = group[1:-1]
        if "{24}" in body:
            return "0" * 24  # an ObjectId
        if r"\d" in body:
            return "1"
        if "|" in body and re.fullmatch(r"[\w|]+", body):
            return body.split("|")[0]
        return "abc"

    path = re.sub(r"\((?:[^()]|\([^()]*\))*\)\??", lambda m: sample(m.group(0)), pattern)
    return path.rstrip("$").replace("\\", "")


def _route_cases() -> list[tuple[str, str]]:
    cases = []
    for pattern, handler in collect_routes():
        path = _sample_path(pattern)
        for method in METHODS:
            if getattr(handler, method) is not getattr(handler.__mro__[-2], method, None):
                cases.append((method.upper(), path))
    return cases


PROTECTED = [(m, p) for m, p in _route_cases() if p not in PUBLIC]

MALFORMED = {
    "bad base64": b"Basic !!!not-base64!!!",
    "missing colon": b"Basic " + base64.b64encode(b"admin-without-colon"),
    "non-ascii bytes": b"Basic \xff\xfe\xfd",
    "non-utf8 credentials": b"Basic " + base64.b64encode(b"adm\xffin:pw\xfe"),
    "digest without nc/cnonce/realm": b'Digest username="admin", nonce="abc", uri="/", response="0", opaque="x"',
    "digest garbage": b"Digest ,,,==\xc3\x28",
    "unknown scheme": b"Negotiate abc",
    "wrong password": basic_auth(ADMIN[0], "wrong").encode(),
}


def assert_refusal(content_type: str, body: bytes) -> None:
    """API routes refuse with the envelope; pages with an HTML page. Never a traceback."""
    assert b"Traceback" not in body
    if "json" in content_type:
        assert json.loads(body)["code"] == "4010"
    else:
        assert content_type.startswith("text/html"), content_type


def test_every_route_has_an_auth_decision() -> None:
    for pattern, handler in collect_routes():
        assert getattr(handler, "auth", None) in AUTH_KINDS, pattern
    assert PROTECTED, "no protected routes found: the walk is broken"


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_protected_route_refuses_missing_and_malformed_credentials(
    server: RunningServer, method: str, path: str
) -> None:
    response = await server.fetch(path, method, auth=None)
    assert response.code == 401, (method, path, response.body)
    assert_refusal(response.headers.get("Content-Type", ""), response.body)
    challenges = response.headers.get_list("WWW-Authenticate")
    assert any(c.startswith("Digest ") for c in challenges)
    assert any(c.startswith("Basic ") for c in challenges)
    for label, header in MALFORMED.items():
        status, body = await raw_request(server.port, method, path, {"Authorization": header})
        assert status == 401, (label, method, path, body)
        assert b"Traceback" not in body, label


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_protected_route_accepts_basic_and_digest(
    server: RunningServer, method: str, path: str
) -> None:
    # Page actions redirect; a Digest response is bound to one method and URI.
    response = await server.fetch(path, method, follow_redirects=False)
    assert response.code < 500 and response.code != 401, (method, path, response.code, response.body)
    assert b"Traceback" not in response.body
    if "json" in response.headers.get("Content-Type", ""):
        json.loads(response.body)  # the API always answers with the envelope

    challenge = await server.fetch(path, method, auth=None)
    digest = next(c for c in challenge.headers.get_list("WWW-Authenticate") if c.startswith("Digest "))
    header = digest_header(digest, *ADMIN, method, path)
    response = await server.fetch(path, method, auth=None, headers={"Authorization": header}, follow_redirects=False)
    assert response.code < 500 and response.code != 401, (method, path, response.code, response.body)


async def test_public_probes_need_no_credentials(server: RunningServer) -> None:
    for path in ("/health", "/ready"):
        status, envelope = await server.api(path, auth=None)
        assert status == 200 and envelope["code"] == "2000", path


async def test_digest_with_wrong_password_or_tampered_opaque_is_refused(server: RunningServer) -> None:
    challenge = await server.fetch("/health", auth=None)  # public: no challenge here
    assert "WWW-Authenticate" not in challenge.headers
    path = "/module/list"
    first = await server.fetch(path, auth=None)
    digest = next(c for c in first.headers.get_list("WWW-Authenticate") if c.startswith("Digest "))
    bad = digest_header(digest, ADMIN[0], "not-the-password", "GET", path)
    assert (await server.fetch(path, auth=None, headers={"Authorization": bad})).code == 401
    good = digest_header(digest, *ADMIN, "GET", path)
    tampered = re.sub(r'opaque="([0-9a-f])', lambda m: 'opaque="' + ("0" if m.group(1) != "0" else "1"), good)
    assert (await server.fetch(path, auth=None, headers={"Authorization": tampered})).code == 401
    assert (await server.fetch(path, auth=None, headers={"Authorization": good})).code != 401


async def test_non_ascii_password_works_with_basic_and_digest(server: RunningServer) -> None:
    await server.ctx.accounts.create("操作员", "密码-pässwörd-1", "admin")
    path = "/module/list"
    response = await server.fetch(path, auth=("操作员", "密码-pässwörd-1"))
    assert response.code == 200, response.body
    first = await server.fetch(path, auth=None)
    digest = next(c for c in first.headers.get_list("WWW-Authenticate") if c.startswith("Digest "))
    header = digest_header(digest, "操作员", "密码-pässwörd-1", "GET", path)
    response = await server.fetch(path, auth=None, headers={"Authorization": header.encode().decode("latin-1")})
    assert response.code == 200, response.body


async def test_a_digest_response_cannot_be_replayed(server: RunningServer) -> None:
    path = "/module/list"
    first = await server.fetch(path, auth=None)
    digest = next(c for c in first.headers.get_list("WWW-Authenticate") if c.startswith("Digest "))
    header = digest_header(digest, *ADMIN, "GET", path)
    assert (await server.fetch(path, auth=None, headers={"Authorization": header})).code == 200
    # The very same header again (captured off the wire): refused.
    assert (await server.fetch(path, auth=None, headers={"Authorization": header})).code == 401
    # The same nonce with a fresh cnonce, as a real client does for its next request: fine.
    again = digest_header(digest, *ADMIN, "GET", path)
    assert (await server.fetch(path, auth=None, headers={"Authorization": again})).code == 200
