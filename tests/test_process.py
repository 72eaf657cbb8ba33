"""run.py as an operator runs it: embedded defaults, restart, SIGTERM.

Starts the real entry point as a child process with no MongoDB or MySQL configured.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from tests.conftest import basic_auth

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class ServerProcess:
    """`python run.py` started from `workdir` on the embedded defaults, exactly as the
    README's run command does (DATA_DIR and LOG_DIR default to ./data and ./logs)."""

    def __init__(self, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("MYSQL_", "MONGODB_", "ADMIN_", "DATA_DIR", "LOG_DIR"))
        }
        self.env.update(SERVER_PORT="0", SERVER_HOST="127.0.0.1")
        self.env.update(extra_env or {})
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.output: list[str] = []

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "run.py"), cwd=self.workdir, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        async def read_until_listening() -> None:
            assert self.proc and self.proc.stdout
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError("server exited:\n" + "".join(self.output))
                self.output.append(line)
                if m := re.match(r"listening on port (\d+)", line):
                    self.port = int(m.group(1))
                    return
        await asyncio.wait_for(read_until_listening(), 10)
        self._drain = asyncio.ensure_future(self._drain_output())

    async def _drain_output(self) -> None:
        assert self.proc and self.proc.stdout
        async for line in self.proc.stdout:
            self.output.append(line.decode())

    async def stop(self) -> int:
        assert self.proc
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 15)
        await self._drain
        return code

    def generated_password(self) -> str | None:
        for line in self.output:
            if m := re.search(r"generated password: (\S+)", line):
                return m.group(1)
        return None


async def test_embedded_defaults_restart_and_clean_sigterm(tmp_path: Path) -> None:
    http = AsyncHTTPClient()
    server = ServerProcess(tmp_path / "data")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await server.start()
    health = await http.fetch(f"http://127.0.0.1:{server.port}/health")
    assert loop.time() - started < 10
    assert json.loads(health.body)["code"] == "2000"
    ready = await http.fetch(f"http://127.0.0.1:{server.port}/ready")
    assert json.loads(ready.body)["result"]["stores"] == {"mongodb": "ok", "sql": "ok"}

    password = server.generated_password()
    assert password, server.output
    registered = await http.fetch(
        f"http://127.0.0.1:{server.port}/module/register?name=survivor&input_data=[]",
        headers={"Authorization": basic_auth("admin", password)},
    )
    module = json.loads(registered.body)["result"]
    children = _children(server.proc.pid)
    assert children, "the embedded document server should be a child process"
    assert await server.stop() == 0
    assert not any(_alive(pid) for pid in children), "a child outlived SIGTERM"
    assert (tmp_path / "data" / "data" / "mongo").is_dir() and (tmp_path / "data" / "data" / "system.sqlite3").is_file()
    log_text = (tmp_path / "data" / "logs" / "tornado_sched.log").read_text()
    assert password not in log_text, "the generated password reached the log file"
    assert "stopped" in log_text

    # Same DATA_DIR: the admin created on the first start still logs in, and no new
    # password is generated.
    again = ServerProcess(tmp_path / "data")
    await again.start()
    try:
        assert again.generated_password() is None
        response = await http.fetch(
            f"http://127.0.0.1:{again.port}/module/list",
            headers={"Authorization": basic_auth("admin", password)},
            raise_error=False,
        )
        assert response.code == 200, response.body
        modules = json.loads(response.body)["result"]
        assert [(m["name"], m["hash"], m["module_id"]) for m in modules] == [
            ("survivor", module["hash"], module["module_id"])
        ]
    finally:
        assert await again.stop() == 0


async def test_bad_configuration_stops_with_one_line(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", {"SERVER_PORT": "not-a-port"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "run.py"), cwd=server.workdir, env=server.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == ["configuration error: SERVER_PORT: expected an integer, got 'not-a-port'"]


async def test_cluster_mode_without_a_shared_store_stops_with_one_line(tmp_path: Path) -> None:
    """REDIS_URL asks for a cluster, which shares MongoDB and MySQL: without either
    the process refuses to start, with one line (exit 2, as for any bad setting)."""
    for missing, env in (("MONGODB_HOST", {"MYSQL_HOST": "127.0.0.1"}),
                         ("MYSQL_HOST", {"MONGODB_HOST": "mongodb://127.0.0.1:1"})):
        server = ServerProcess(tmp_path / missing, {"REDIS_URL": "redis://127.0.0.1:1/0", **env})
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "run.py"), cwd=server.workdir, env=server.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 2, err
        assert err.decode().strip().splitlines() == [
            f"configuration error: {missing}: required when REDIS_URL is set (cluster mode shares MongoDB and MySQL)"
        ]


async def test_without_redis_url_nothing_imports_redis(tmp_path: Path) -> None:
    """A `redis` package that records any import and cannot be imported: a server
    without REDIS_URL starts, serves the API, the dashboard and a module socket, and
    stops, and nothing ever tried to import it."""
    marker = tmp_path / "redis-imported"
    shadow = tmp_path / "shadow" / "redis"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        f"open({str(marker)!r}, 'a').write('imported\\n')\n"
        "raise ImportError('redis is not installed')\n"
    )
    server = ServerProcess(tmp_path / "data", {"PYTHONPATH": str(shadow.parent)})
    server.env.pop("REDIS_URL", None)
    await server.start()
    try:
        password = server.generated_password()
        assert password, server.output
        auth = {"Authorization": basic_auth("admin", password)}
        http = AsyncHTTPClient()
        base = f"http://127.0.0.1:{server.port}"
        ready = json.loads((await http.fetch(base + "/ready")).body)["result"]
        assert "instances" not in ready and set(ready["stores"]) == {"mongodb", "sql"}
        registered = await http.fetch(base + "/module/register?name=plain&input_data=[]", headers=auth)
        module_hash = json.loads(registered.body)["result"]["hash"]
        socket = await websocket_connect(f"ws://127.0.0.1:{server.port}/websocket?hash={module_hash}")
        online = json.loads((await http.fetch(base + "/module/online", headers=auth)).body)["result"]
        assert [m["name"] for m in online] == ["plain"]
        assert (await http.fetch(base + "/modules", headers=auth)).code == 200
        socket.close()
    finally:
        assert await server.stop() == 0
    assert not marker.exists(), "something imported redis without REDIS_URL"
