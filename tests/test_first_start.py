"""First start as an operator meets it: the port is taken, then free again.

A real `python run.py` child process on the embedded defaults; the generated admin
password must not be lost when the first attempt cannot listen.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
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
        assert any("change it with `python run.py set-password`" in line for line in again.output)
    finally:
        assert await again.stop() == 0


NOBODY = 65534


async def _as_nobody(*args: str | Path, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        *map(str, args), cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("locked", ["DATA_DIR", "LOG_DIR"])
async def test_a_directory_the_user_cannot_write_is_one_line_not_a_port_problem(locked: str) -> None:
    """A DATA_DIR or LOG_DIR the service user cannot create (a volume owned by root):
    one line naming the path, exit 2. DATA_DIR is first touched after the port is
    bound, so its refusal (EACCES) must not read as 'cannot listen ...'."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to start the server as another user")
    # Not tmp_path: its parents are private to root, and the child runs as nobody.
    base = Path(tempfile.mkdtemp(prefix="tsched-perm-"))
    try:
        os.chmod(base, 0o755)
        (base / "locked").mkdir(mode=0o700)
        for name in ("data", "logs"):
            (base / name).mkdir()
            os.chown(base / name, NOBODY, NOBODY)
        dirs = {"DATA_DIR": base / "data", "LOG_DIR": base / "logs"}
        dirs[locked] = base / "locked" / "dir"
        server = ServerProcess(base / "data", {"SECRET_KEY": "k" * 32, **{k: str(v) for k, v in dirs.items()}})
        code, _, err = await _as_nobody(sys.executable, "-c", "import tornado, run", cwd=ROOT, env=server.env)
        if code != 0:
            pytest.skip(f"this checkout or its Python cannot be read by uid {NOBODY}: {err[-300:]}")

        code, out, err = await _as_nobody(sys.executable, ROOT / "run.py", cwd=base, env=server.env)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (code, out, err)
        assert lines[0].startswith(f"cannot use {dirs[locked]}: Permission denied"), lines
        assert "generated password" not in out
    finally:
        shutil.rmtree(base)
