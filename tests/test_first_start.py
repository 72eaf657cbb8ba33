"""First start as an operator meets it: the port is taken, then free again.

A real `python run.py` child process on the embedded defaults; the generated admin
password must not be lost when the first attempt cannot listen.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import basic_auth
from tests.test_process import ROOT, ServerProcess

pytestmark = pytest.mark.slow


async def test_port_in_use_is_one_line_exit_2_and_the_admin_password_is_not_lost(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    server = ServerProcess(tmp_path / "site", {"SERVER_PORT": str(port)})
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "run.py"), cwd=server.workdir, env=server.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        taken.close()
    assert proc.returncode == 2, (out, err)
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cannot listen on 127.0.0.1:{port}:"), lines
    assert "generated password" not in out.decode()
    # Nothing was created: the next start (port free now) creates the admin and shows it.
    assert not (server.workdir / "data" / "system.sqlite3").exists()

    again = ServerProcess(tmp_path / "site")
    await again.start()
    try:
        password = again.generated_password()
        assert password, again.output
        response = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{again.port}/module/list",
            headers={"Authorization": basic_auth("admin", password)}, raise_error=False,
        )
        assert response.code == 200, response.body
        assert sum("listening on" in line for line in again.output) == 1, again.output
    finally:
        assert await again.stop() == 0
