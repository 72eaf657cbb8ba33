"""Shared fixtures: the embedded document server, SQL backends, a running server.

Everything here is real: an nx-27017 child process, SQLite files, MariaDB, and the
Application listening on a free loopback port, reached with Tornado's HTTP client.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from handlers.app import make_app
from tornado_sched.config import Settings
from tornado_sched.context import AppContext, open_context
from tornado_sched.docserver import EmbeddedDocumentServer
from tornado_sched.eventloop import new_event_loop

ADMIN = ("admin", "admin-password-1")
MARIADB_URL = os.environ.get("MYSQL_TEST_URL", "mysql+aiomysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Every async test runs on the loop run.py serves on (timers first, a capped poll)."""
    return {"server-loop": new_event_loop}


@pytest.fixture(scope="session")
async def docserver_uri(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server = EmbeddedDocumentServer(tmp_path_factory.mktemp("docserver"))
    uri = await server.start()
    yield uri
    await server.stop()


def _mariadb_reachable() -> str | None:
    # A plain TCP probe: this runs in a sync fixture, before any loop is involved.
    url = make_url(MARIADB_URL)
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 3306), timeout=2):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def mariadb_admin_url() -> str:
    problem = _mariadb_reachable()
    if problem:
        if IN_CI:
            pytest.fail(f"MariaDB is required in CI and not reachable at MYSQL_TEST_URL: {problem}")
        pytest.skip(f"MariaDB not reachable at MYSQL_TEST_URL ({problem}); CI never skips this")
    return MARIADB_URL


async def _fresh_mariadb(admin_url: str) -> tuple[str, str]:
    name = f"tsched_{uuid.uuid4().hex[:12]}"
    engine = create_async_engine(admin_url)
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    await engine.dispose()
    base = admin_url.rsplit("/", 1)[0]
    return name, f"{base}/{name}?charset=utf8mb4"


async def _drop_mariadb(admin_url: str, name: str) -> None:
    engine = create_async_engine(admin_url)
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    await engine.dispose()


@contextlib.asynccontextmanager
async def proxied_mariadb_store(admin_url: str) -> AsyncIterator[tuple[Any, Any]]:
    """(SqlStore, TcpProxy): a fresh MariaDB database with its schema, reached through
    a proxy a test can cut or hang; closed and dropped afterwards."""
    from tests.support.tcpproxy import TcpProxy
    from tornado_sched.stores import SqlStore

    name, url = await _fresh_mariadb(admin_url)
    target = make_url(url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 3306)
    await proxy.start()
    sql = SqlStore(target.set(port=proxy.port).render_as_string(hide_password=False))
    try:
        await sql.create_schema()
        yield sql, proxy
    finally:
        await sql.close()
        await proxy.close()
        await _drop_mariadb(admin_url, name)


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
async def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each relational test runs on SQLite and on MariaDB."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'system.sqlite3'}"
        return
    admin_url = request.getfixturevalue("mariadb_admin_url")
    name, url = await _fresh_mariadb(admin_url)
    yield url
    await _drop_mariadb(admin_url, name)

@pytest.fixture(autouse=True)
def _close_client_sockets() -> Iterator[None]:
    """Close every module socket a test opened through tests.flows.support, pass or fail."""
    yield
    from tests.flows.support import OPEN_SOCKETS  # support imports this module

    while OPEN_SOCKETS:
        OPEN_SOCKETS.pop().close()


def make_settings(tmp_path: Path, docserver_uri: str, **overrides: Any) -> Settings:
    base = Settings(
        debug=True,
        secret_key="test-secret-key-0123456789",
        server_host="127.0.0.1",
        server_port=0,
        mongodb_host=docserver_uri,
        mongodb_name=f"t{uuid.uuid4().hex[:16]}",
        data_dir=tmp_path / "data",
        log_dir=tmp_path / "logs",
        admin_username=ADMIN[0],
        admin_password=ADMIN[1],
        registration_token="registration-token-for-tests",
        sql_url_override=f"sqlite+aiosqlite:///{tmp_path / 'system.sqlite3'}",
        heartbeat_flush_seconds=0.2,
        heartbeat_store_seconds=0.2,
        misfire_settle_seconds=0.5,
        # The auth matrix sends hundreds of bad credentials from 127.0.0.1; the
        # throttle has its own tests with low limits.
        login_slow_after=100_000,
        login_block_after=100_000,
    )
    return replace(base, **overrides)


@pytest.fixture
def settings(tmp_path: Path, docserver_uri: str) -> Settings:
    return make_settings(tmp_path, docserver_uri)


def basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass
class RunningServer:
    """The real Application on a free port, plus a thin HTTP helper."""

    ctx: AppContext
    port: int
    http: AsyncHTTPClient

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def fetch(
        self,
        path: str,
        method: str = "GET",
        *,
        json_body: Any = None,
        body: str | bytes | None = None,
        auth: tuple[str, str] | None = ADMIN,
        headers: dict[str, str] | None = None,
        follow_redirects: bool = True,
    ) -> HTTPResponse:
        hdrs = dict(headers or {})
        if auth is not None:
            hdrs.setdefault("Authorization", basic_auth(*auth))
        if json_body is not None:
            body = json.dumps(json_body)
            hdrs.setdefault("Content-Type", "application/json")
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        return await self.http.fetch(
            self.base_url + path,
            method=method,
            body=body,
            headers=hdrs,
            raise_error=False,
            allow_nonstandard_methods=True,
            follow_redirects=follow_redirects,
            request_timeout=20,
        )

    async def api(self, path: str, method: str = "GET", **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """Fetch and decode the envelope; returns (status, envelope)."""
        response = await self.fetch(path, method, **kwargs)
        return response.code, json.loads(response.body)


async def start_server(settings: Settings) -> tuple[RunningServer, HTTPServer]:
    ctx = await open_context(settings)
    app = make_app(ctx)
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    return RunningServer(ctx, sockets[0].getsockname()[1], AsyncHTTPClient()), server


async def stop_server(running: RunningServer, server: HTTPServer) -> None:
    server.stop()
    await running.ctx.close()
    await server.close_all_connections()


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    running, http_server = await start_server(settings)
    yield running
    await stop_server(running, http_server)


MakeServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def make_server(tmp_path: Path, docserver_uri: str) -> AsyncIterator[MakeServer]:
    """Start servers with settings overrides; all are stopped at teardown."""
    started: list[tuple[RunningServer, HTTPServer]] = []

    async def make(**overrides: Any) -> RunningServer:
        path = tmp_path / f"s{len(started)}"
        path.mkdir()
        running, http_server = await start_server(make_settings(path, docserver_uri, **overrides))
        started.append((running, http_server))
        return running

    yield make
    for running, http_server in reversed(started):
        await stop_server(running, http_server)
