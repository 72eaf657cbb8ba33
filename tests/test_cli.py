"""run.py's operator commands as an operator runs them: child processes on an
embedded DATA_DIR, then a real server started on the same directory."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from tests.conftest import basic_auth

ROOT = Path(__file__).resolve().parent.parent
ALICE = ("alice", "alice-password-1")
BOB = ("bob", "bob-password-1")
TOKEN_LINE = re.compile(r"token (\d+) for 'bob' \(shown once\): (tsk_\S+)")


class Cli:
    """`python run.py <command>` with the environment ServerProcess uses."""

    def __init__(self, data_dir: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "MONGODB_", "ADMIN_"))}
        self.env.update(DATA_DIR=str(data_dir), LOG_DIR=str(data_dir / "logs"))

    async def __call__(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "run.py", *args, cwd=ROOT, env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


class Server:
    """`python run.py` (serve) with the CLI's environment, on a free port."""

    def __init__(self, cli: Cli) -> None:
        self.env = {**cli.env, "SERVER_PORT": "0", "SERVER_HOST": "127.0.0.1", "AUTH_CACHE_SECONDS": "0.5"}
        self.output: list[str] = []
        self.port = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "run.py", cwd=ROOT, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )

        async def until_listening() -> None:
            assert self.proc.stdout
            while line := (await self.proc.stdout.readline()).decode():
                self.output.append(line)
                if m := re.match(r"listening on port (\d+)", line):
                    self.port = int(m.group(1))
                    return
            raise AssertionError("server exited:\n" + "".join(self.output))

        await asyncio.wait_for(until_listening(), 15)
        self._drain = asyncio.ensure_future(self._read_rest())

    async def _read_rest(self) -> None:
        assert self.proc.stdout
        async for line in self.proc.stdout:
            self.output.append(line.decode())

    async def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 15)
        await self._drain
        return code


async def _get(port: int, path: str, method: str = "GET", **headers: str) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}{path}", method=method, headers=headers, raise_error=False,
        body=b"" if method == "POST" else None,
    )


async def test_user_and_token_commands(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "data")
    code, out, err = await cli("create-user", ALICE[0], stdin=ALICE[1] + "\n")
    assert (code, out.strip(), err) == (0, "created admin 'alice'", ""), (out, err)
    code, out, err = await cli("create-user", BOB[0], "--role", "viewer", stdin=BOB[1] + "\n")
    assert (code, out.strip()) == (0, "created viewer 'bob'"), (out, err)

    refusals = [
        (("create-user", "alice"), "another-password-1", "already exists"),
        (("create-user", "carol"), "short", "password"),
        (("create-user", "bad:name"), "long-enough-password", "username"),
        (("set-password", "nobody"), "long-enough-password", "not found"),
        (("set-password", "alice"), "short", "password"),
        (("create-token", "nobody", "--name", "x"), "", "not found"),
    ]
    # Refusals change nothing, so they run side by side.
    answers = await asyncio.gather(
        *(cli(*args, stdin=password + "\n") for args, password, _ in refusals),
        cli("create-user", "dave", "--role", "superuser", stdin="long-enough-password\n"),
    )
    for (args, password, expected), (code, out, err) in zip(refusals, answers, strict=False):
        assert code == 1 and expected in err and err.startswith("error: "), (args, code, out, err)
        assert not password or password not in out + err, args
    code, _, err = answers[-1]
    assert code == 2 and "invalid choice" in err

    code, out, err = await cli("list-users")
    assert code == 0 and out.splitlines() == ["alice\tadmin", "bob\tviewer"], (out, err)

    code, out, err = await cli("create-token", BOB[0], "--name", "dashboard script")
    assert code == 0, err
    match = TOKEN_LINE.fullmatch(out.strip())
    assert match, out
    token = match.group(2)
    assert len(token) >= 40
    log_text = (tmp_path / "data" / "logs" / "tornado_sched.log").read_text()
    assert token not in log_text and ALICE[1] not in log_text


@pytest.mark.slow
async def test_cli_accounts_work_on_a_server_with_the_same_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cli = Cli(data_dir)
    assert (await cli("create-user", ALICE[0], stdin=ALICE[1] + "\n"))[0] == 0
    assert (await cli("create-user", BOB[0], "--role", "viewer", stdin=BOB[1] + "\n"))[0] == 0
    code, out, err = await cli("create-token", BOB[0], "--name", "dashboard script")
    assert code == 0, err
    token_id, token = TOKEN_LINE.fullmatch(out.strip()).groups()

    server = Server(cli)
    await server.start()
    try:
        assert not any("generated password" in line for line in server.output), "operators exist: no admin"
        port = server.port
        alice = basic_auth(*ALICE)
        assert (await _get(port, "/module/list", Authorization=alice)).code == 200
        # The CLI's token is the viewer's: reads yes, writes no.
        bearer = f"Bearer {token}"
        assert (await _get(port, "/module/list", Authorization=bearer)).code == 200
        response = await _get(port, "/scheduler/reload", "POST", Authorization=bearer)
        assert response.code == 403 and json.loads(response.body)["code"] == "4030"
        assert (await _get(port, "/scheduler/reload", "POST", Authorization=alice)).code == 200

        # A password changed with the CLI while the server runs takes effect once the
        # server's memory of the verified password expires (AUTH_CACHE_SECONDS).
        code, out, err = await cli("set-password", ALICE[0], stdin="alice-password-2\n")
        assert code == 0 and out.strip() == "password changed for 'alice'", (out, err)
        await asyncio.sleep(0.6)
        assert (await _get(port, "/module/list", Authorization=alice)).code == 401
        alice = basic_auth(ALICE[0], "alice-password-2")
        assert (await _get(port, "/module/list", Authorization=alice)).code == 200

        response = await _get(port, "/audit", Authorization=alice)
        entries = json.loads(response.body)["result"]["entries"]
        assert any(e["action"] == "create" and e["target"] == f"token:{token_id}" and e["actor"] == "cli"
                   for e in entries), entries
    finally:
        assert await server.stop() == 0
    log_text = (data_dir / "logs" / "tornado_sched.log").read_text()
    for secret in (token, ALICE[1], "alice-password-2", BOB[1]):
        assert secret not in log_text and secret not in "".join(server.output), secret
