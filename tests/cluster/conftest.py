"""A real cluster: three `python run.py` processes on one Redis (logical database 14),
one fresh MariaDB database and ONE shared nx-27017 document server started here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import tornado.web
from sqlalchemy.engine import make_url
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from tests.conftest import ADMIN, _drop_mariadb, _fresh_mariadb, basic_auth
from tornado_sched.docserver import EmbeddedDocumentServer

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/14")
TOKEN = "registration-token-for-cluster-tests"
SECRET = "cluster-test-secret-key-0123456789"
NAMES = ("i1", "i2", "i3")
BLOCK_AFTER = 6
BLOCK_SECONDS = 2


async def clear_redis(url: str = REDIS_URL) -> None:
    """Delete this project's keys in the test database (never FLUSHALL)."""
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match="tsched:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


class Instance:
    """One cluster member: `python run.py` with its own INSTANCE_NAME and DATA_DIR."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.workdir = workdir
        self.env = {**env, "INSTANCE_NAME": name, "DATA_DIR": str(workdir / "data"), "LOG_DIR": str(workdir / "logs")}
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.output: list[str] = []
        self._drain: asyncio.Future[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.output = []
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "run.py"), cwd=ROOT, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )

        async def until_listening() -> None:
            assert self.proc and self.proc.stdout
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"{self.name} exited:\n" + "".join(self.output))
                self.output.append(line)
                if m := re.match(r"listening on port (\d+)", line):
                    self.port = int(m.group(1))
                    return

        await asyncio.wait_for(until_listening(), 30)
        self._drain = asyncio.ensure_future(self._read_rest())

    async def _read_rest(self) -> None:
        assert self.proc and self.proc.stdout
        async for line in self.proc.stdout:
            self.output.append(line.decode())

    async def stop(self) -> None:
        """SIGTERM; an instance still running 20 s later is killed (never left behind)
        and that is an error: a clean stop is part of what is tested."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"{self.name} did not stop within 20 s of SIGTERM:\n" + self.log_text()[-3000:]) from None
        finally:
            if self._drain:
                await self._drain

    async def kill(self) -> None:
        """kill -9: no shutdown step runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        if self._drain:
            await self._drain

    def log_text(self) -> str:
        path = self.workdir / "logs" / "tornado_sched.log"
        return path.read_text() if path.is_file() else ""


class WebhookReceiver(tornado.web.RequestHandler):
    """Stands in for the notification webhook: keeps every POST body."""

    def initialize(self, received: list[dict[str, Any]]) -> None:
        self.received = received

    def post(self) -> None:
        self.received.append(json.loads(self.request.body))
        self.write("ok")


class ClusterHarness:
    """Three instances plus helpers to call them."""

    def __init__(self, instances: dict[str, Instance], sql_url: str, mongodb: tuple[str, str]) -> None:
        self.webhooks: list[dict[str, Any]] = []
        self.instances = instances
        self.sql_url = sql_url
        self.mongodb = mongodb
        self.http = AsyncHTTPClient()

    def __getitem__(self, name: str) -> Instance:
        return self.instances[name]

    def urls(self, *names: str) -> list[str]:
        return [self.instances[n].url for n in (names or NAMES)]

    async def call(self, name: str, method: str, path: str, body: Any = None, *, auth: tuple[str, str] = ADMIN,
                   expect: int | None = 200) -> tuple[int, dict[str, Any]]:
        response: HTTPResponse = await self.http.fetch(
            self.instances[name].url + path, method=method,
            body=(None if method in ("GET", "DELETE") else "{}") if body is None else json.dumps(body),
            headers={"Authorization": basic_auth(*auth), "Content-Type": "application/json"},
            raise_error=False, request_timeout=30,
        )
        data = json.loads(response.body) if response.body else {}
        if expect is not None:
            assert response.code == expect, (name, method, path, response.code, data)
        return response.code, data

    async def wait_for(self, predicate: Any, timeout: float = 20.0, interval: float = 0.2, what: str = "") -> Any:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await predicate()
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what or predicate}")
            await asyncio.sleep(interval)

    async def online(self, name: str) -> dict[str, str]:
        """module name -> the instance holding it, as instance `name` sees it."""
        _code, data = await self.call(name, "GET", "/module/online")
        return {m["name"]: m.get("instance", "") for m in data["result"]}


@contextlib.asynccontextmanager
async def running_cluster(
    root: Path, mariadb_admin_url: str, names: tuple[str, ...] = NAMES, redis_url: str = REDIS_URL,
) -> AsyncIterator[ClusterHarness]:
    """Instances `names` on one Redis, a fresh MariaDB database and one nx-27017."""
    docserver = EmbeddedDocumentServer(root / "docserver")
    mongo_uri = await docserver.start()
    db_name, sql_url = await _fresh_mariadb(mariadb_admin_url)
    await clear_redis(redis_url)
    webhooks: list[dict[str, Any]] = []
    sockets = bind_sockets(0, "127.0.0.1")
    receiver = HTTPServer(tornado.web.Application([(r"/hook", WebhookReceiver, {"received": webhooks})]))
    receiver.add_sockets(sockets)
    url = make_url(mariadb_admin_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "MONGODB_", "ADMIN_", "REDIS_"))}
    env.update(
        DEBUG="true", SECRET_KEY=SECRET, SERVER_HOST="127.0.0.1", SERVER_PORT="0",
        ADMIN_USERNAME=ADMIN[0], ADMIN_PASSWORD=ADMIN[1], REGISTRATION_TOKEN=TOKEN,
        MONGODB_HOST=mongo_uri, MONGODB_NAME=f"c{uuid.uuid4().hex[:12]}",
        MYSQL_HOST=url.host or "127.0.0.1", MYSQL_PORT=str(url.port or 3306), MYSQL_USER=url.username or "root",
        MYSQL_PASSWORD=url.password or "", MYSQL_DB=db_name, REDIS_URL=redis_url,
        WEBSOCKET_PING_INTERVAL="1", WEBSOCKET_PING_TIMEOUT="1", HEARTBEAT_FLUSH_SECONDS="0.2",
        LOGIN_SLOW_AFTER="1000", LOGIN_BLOCK_AFTER=str(BLOCK_AFTER), LOGIN_BLOCK_SECONDS=str(BLOCK_SECONDS),
        NOTIFY_AGGREGATE_SECONDS="0", MISFIRE_SETTLE_SECONDS="1", LOG_LEVEL="INFO",
        WEBHOOK_URL=f"http://127.0.0.1:{sockets[0].getsockname()[1]}/hook",
    )
    instances = {name: Instance(name, root / name, env) for name in names}
    try:
        # All at once: concurrent schema creation and admin creation must hold.
        await asyncio.gather(*(i.start() for i in instances.values()))
        harness = ClusterHarness(instances, sql_url, (mongo_uri, env["MONGODB_NAME"]))
        harness.webhooks = webhooks
        await harness.wait_for(lambda: _all_see_all(harness), what="every instance sees the others", timeout=20)
        yield harness
    finally:
        stopped = await asyncio.gather(*(i.stop() for i in instances.values()), return_exceptions=True)
        receiver.stop()
        await docserver.stop()
        await _drop_mariadb(mariadb_admin_url, db_name)
        with contextlib.suppress(Exception):
            await clear_redis(redis_url)
        for outcome in stopped:
            if isinstance(outcome, AssertionError):
                raise outcome


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory, mariadb_admin_url: str) -> AsyncIterator[ClusterHarness]:
    async with running_cluster(tmp_path_factory.mktemp("cluster"), mariadb_admin_url) as harness:
        yield harness


async def _all_see_all(harness: ClusterHarness) -> bool:
    names = sorted(harness.instances)
    for name in names:
        _code, data = await harness.call(name, "GET", "/ready", expect=None)
        if sorted((data.get("result") or {}).get("instances") or []) != names:
            return False
    return True
