"""Roles over every route, and API tokens from creation to revocation.

The role matrix walks the real route table (as test_auth_matrix does): a viewer
reads every operator route but writes none, never reaches an admin route; an
admin is never refused. Tokens are real Bearer credentials against the real server.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from tornado.httpclient import HTTPResponse
from tornado.web import create_signed_value

from handlers.app import collect_routes
from handlers.auth import SESSION_COOKIE
from handlers.base import ApiHandler
from tests.conftest import (
    ADMIN,
    RunningServer,
    basic_auth,
    make_settings,
    start_server,
    stop_server,
)
from tests.handlers.test_auth_matrix import METHODS, _sample_path
from tests.support.history import count_runs
from tornado_sched.tables import api_tokens

VIEWER = ("viewer1", "viewer-pass-1")


def _role_cases() -> list[tuple[str, str, str]]:
    """(method, path, auth kind) for every route guarded by an operator role."""
    cases = []
    for pattern, handler in collect_routes():
        if handler.auth not in ("operator", "admin"):
            continue
        path = _sample_path(pattern)
        for method in METHODS:
            if getattr(handler, method) is not getattr(handler.__mro__[-2], method, None):
                cases.append((method.upper(), path, handler.auth, getattr(handler, "viewer_may_post", False)))
    return cases


ROLE_CASES = _role_cases()
API_PATHS = {
    _sample_path(pattern) for pattern, handler in collect_routes() if issubclass(handler, ApiHandler)
}
ADMIN_ONLY = {"/tokens", "/tokens/1", "/audit", "/sessions", "/sessions/1", "/admin/sessions",
              "/admin/sessions/1/end", "/module/abc/rotate", "/admin/audit", "/admin/tokens",
              "/admin/tokens/1/revoke"}
# Registering hands out a module's hash (its WebSocket credential): a write even by GET.
WRITES_BY_GET = {"/module/register"}


@pytest.fixture(scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory, docserver_uri: str) -> AsyncIterator[RunningServer]:
    """One server for the whole matrix, with a viewer account."""
    running, http_server = await start_server(make_settings(tmp_path_factory.mktemp("roles"), docserver_uri))
    await running.ctx.accounts.create(*VIEWER, "viewer")
    yield running
    await stop_server(running, http_server)


async def _fetch(server: RunningServer, path: str, method: str, auth: tuple[str, str]) -> HTTPResponse:
    """The route's own answer: redirects (pages post/redirect/get) are not followed."""
    return await server.http.fetch(
        server.base_url + path, method=method, headers={"Authorization": basic_auth(*auth)},
        body=b"" if method in ("POST", "PUT") else None, raise_error=False, follow_redirects=False,
        allow_nonstandard_methods=True,
    )


def _code(response: HTTPResponse) -> str | None:
    """The envelope code of an API answer; None for a page (HTML)."""
    if response.headers.get("Content-Type", "").startswith("application/json"):
        return json.loads(response.body)["code"]
    return None


def test_the_walk_covers_reads_writes_and_admin_routes() -> None:
    kinds = {(m == "GET", auth) for m, _, auth, _ in ROLE_CASES}
    assert kinds >= {(True, "operator"), (False, "operator"), (True, "admin"), (False, "admin")}
    assert {p for _, p, auth, _ in ROLE_CASES if auth == "admin"} == ADMIN_ONLY
    assert {"/module/list", "/workflow/create", "/tokens"} <= API_PATHS


@pytest.mark.parametrize(("method", "path", "kind", "viewer_may_post"), ROLE_CASES)
async def test_role_matrix(shared: RunningServer, method: str, path: str, kind: str, viewer_may_post: bool) -> None:
    viewer = await _fetch(shared, path, method, VIEWER)
    if kind == "admin" or path in WRITES_BY_GET or (method != "GET" and not viewer_may_post):
        assert viewer.code == 403, (method, path, viewer.code, viewer.body)
        assert _code(viewer) in ("4030", None), viewer.body  # API: the envelope; pages: HTML
    else:
        assert viewer.code not in (401, 403) and viewer.code < 500, (method, path, viewer.code, viewer.body)
    admin = await _fetch(shared, path, method, ADMIN)
    assert admin.code not in (401, 403) and admin.code < 500, (method, path, admin.code, admin.body)
    if path in API_PATHS:
        assert _code(viewer) and _code(admin), "API routes always answer with the envelope"


async def test_viewer_sees_module_hashes_only_shortened(shared: RunningServer) -> None:
    status, env = await shared.api("/module/register?name=hashcheck")
    full = env["result"]["hash"]
    for path in ("/module/list", f"/module/{full}"):
        _, as_admin = await shared.api(path)
        _, as_viewer = await shared.api(path, auth=VIEWER)
        assert full in json.dumps(as_admin), path
        assert full not in json.dumps(as_viewer) and full[:6] in json.dumps(as_viewer), path


async def test_viewer_writes_change_nothing(shared: RunningServer) -> None:
    server = shared
    status, env = await server.api("/workflow/create", "POST", auth=VIEWER, json_body={
        "name": "viewer-made", "enable": False,
    })
    assert status == 403 and env["code"] == "4030", env
    status, env = await server.api("/tokens", "POST", auth=VIEWER, json_body={"name": "mine"})
    assert status == 403, env
    assert await server.ctx.docs["workflows"].count_documents({"name": "viewer-made"}) == 0
    assert not await server.ctx.tokens.list()
    # The same body from an admin works: the 403 was the role, not the body.
    status, env = await server.api("/workflow/create", "POST", json_body={"name": "viewer-made", "enable": False})
    assert status == 200, env
    wf = env["result"]["workflow_id"]
    for method, path in (("PUT", f"/workflow/{wf}"), ("POST", f"/workflow/{wf}/execute"),
                         ("POST", f"/workflow/{wf}/disable"), ("DELETE", f"/workflow/{wf}")):
        status, env = await server.api(path, method, auth=VIEWER, json_body={"description": "x"})
        assert status == 403 and env["code"] == "4030", (method, path, env)
    doc = await server.ctx.docs["workflows"].find_one({"workflow_id": wf})
    assert doc is not None and doc["description"] == ""
    assert await count_runs(server, workflow_id=wf) == 0
    assert (await server.api(f"/workflow/{wf}", auth=VIEWER))[0] == 200
    assert (await server.api(f"/workflow/{wf}", "DELETE"))[0] == 200


async def test_viewer_role_holds_for_a_session_cookie(shared: RunningServer) -> None:
    """However the viewer authenticates (here: a valid session cookie with the XSRF
    token), writes stay refused."""
    secret = shared.ctx.settings.secret_key
    session_id = await shared.ctx.sessions.start(await shared.ctx.accounts.get(VIEWER[0]), "127.0.0.1", "test")
    session = create_signed_value(secret, SESSION_COOKIE, session_id).decode()
    xsrf = "2|00000000|" + "0" * 32 + "|1"
    cookie = f"{SESSION_COOKIE}={session}; _xsrf={xsrf}"
    read = await shared.fetch("/module/list", auth=None, headers={"Cookie": cookie})
    assert read.code == 200, read.body
    write = await shared.fetch("/scheduler/reload", "POST", auth=None,
                               headers={"Cookie": cookie, "X-XSRFToken": xsrf})
    assert write.code == 403 and json.loads(write.body)["code"] == "4030", write.body


# -- API tokens ---------------------------------------------------------------------
@pytest.fixture
async def server_with_viewer(tmp_path: Path, docserver_uri: str) -> AsyncIterator[RunningServer]:
    running, http_server = await start_server(make_settings(tmp_path, docserver_uri))
    await running.ctx.accounts.create(*VIEWER, "viewer")
    yield running
    await stop_server(running, http_server)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_token_lifecycle(server_with_viewer: RunningServer) -> None:
    server = server_with_viewer
    status, env = await server.api("/tokens", "POST", json_body={"name": "nightly export"})
    assert status == 200 and env["code"] == "2000", env
    created = env["result"]
    token = created["token"]
    assert token.startswith("tsk_") and len(token) >= 40
    assert created["name"] == "nightly export" and created["username"] == ADMIN[0]
    assert created["prefix"] == token[:10] and created["revoked"] is False
    assert created["last_used_at"] is None
    digest = hashlib.sha256(token.encode()).hexdigest()

    # Shown once: the list never carries the token or its digest.
    listing = await server.fetch("/tokens")
    assert listing.code == 200
    assert token not in listing.body.decode() and digest not in listing.body.decode()
    (entry,) = json.loads(listing.body)["result"]
    assert entry["id"] == created["id"] and "token" not in entry and "token_hash" not in entry

    # Stored as a digest only.
    async with server.ctx.sql.engine.connect() as conn:
        row = (await conn.execute(select(api_tokens).where(api_tokens.c.id == created["id"]))).one()
    assert row.token_hash == digest
    assert token not in [str(v) for v in row]

    # Works as Bearer for reads and for writes, without any XSRF token.
    status, env = await server.api("/module/list", auth=None, headers=_bearer(token))
    assert status == 200, env
    status, env = await server.api("/scheduler/reload", "POST", auth=None, headers=_bearer(token))
    assert status == 200, env
    (entry,) = (await server.api("/tokens"))[1]["result"]
    assert entry["last_used_at"] is not None, "last_used_at is set by the first use"

    # Near misses are refused.
    for bad in (token[:-1], token + "x", token[4:], "tsk_" + "A" * 43, token.upper()):
        status, env = await server.api("/module/list", auth=None, headers=_bearer(bad))
        assert status == 401 and env["code"] == "4010", bad

    # Revocation is immediate, and only once.
    status, env = await server.api(f"/tokens/{created['id']}", "DELETE")
    assert status == 200 and env["result"]["revoked"] is True and env["result"]["revoked_at"], env
    status, env = await server.api("/module/list", auth=None, headers=_bearer(token))
    assert status == 401 and env["code"] == "4010", env
    status, env = await server.api(f"/tokens/{created['id']}", "DELETE")
    assert status == 409 and env["code"] == "4090", env
    status, env = await server.api("/tokens/999999", "DELETE")
    assert status == 404 and env["code"] == "4040", env
    (entry,) = (await server.api("/tokens"))[1]["result"]
    assert entry["revoked"] is True


async def test_a_token_carries_its_operators_role(server_with_viewer: RunningServer) -> None:
    server = server_with_viewer
    status, env = await server.api("/tokens", "POST", json_body={"name": "dash", "username": VIEWER[0]})
    assert status == 200 and env["result"]["username"] == VIEWER[0], env
    viewer_token = env["result"]["token"]
    status, env = await server.api("/tokens", "POST", json_body={"name": "admin script"})
    admin_token = env["result"]["token"]

    assert (await server.api("/workflow/list", auth=None, headers=_bearer(viewer_token)))[0] == 200
    for method, path in (("POST", "/scheduler/reload"), ("GET", "/tokens"), ("POST", "/tokens"), ("GET", "/audit")):
        status, env = await server.api(path, method, auth=None, headers=_bearer(viewer_token),
                                       json_body={"name": "x"} if method == "POST" else None)
        assert status == 403 and env["code"] == "4030", (method, path, env)

    # An admin's token may do admin things, including making more tokens.
    status, env = await server.api("/tokens", "POST", auth=None, headers=_bearer(admin_token),
                                   json_body={"name": "made by a script"})
    assert status == 200, env
    assert len((await server.api("/tokens"))[1]["result"]) == 3

    # Tokens only for existing operators; a name is required.
    status, env = await server.api("/tokens", "POST", json_body={"name": "ghost", "username": "nobody"})
    assert status == 404 and env["code"] == "4040", env
    status, env = await server.api("/tokens", "POST", json_body={"name": "  "})
    assert status == 400 and env["code"] == "4000", env
    assert len((await server.api("/tokens"))[1]["result"]) == 3
