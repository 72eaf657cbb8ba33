"""`pip install .` as a new user runs it: a fresh venv, the `tornado-sched` command,
the installed server serving its pages from the installed assets; and the SDK
installed on its own with nothing but Tornado.

Needs the package index (PyPI) for the build backend and the pinned dependencies.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SUBCOMMANDS = ("serve", "expire-modules", "list-jobs", "create-user", "set-password", "list-users", "create-token")


async def _run(*args: str | Path, cwd: Path | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *map(str, args), cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 400)
    assert proc.returncode == 0, out.decode()[-3000:]
    return out.decode()


def _source_copy(dest: Path) -> Path:
    # A copy, so the build's build/ and *.egg-info never land in the working tree.
    ignore = shutil.ignore_patterns(".git", ".venv", "data", "logs", "build", "*.egg-info",
                                    "__pycache__", "test-artifacts", ".ruff_cache")
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    return dest


async def _venv(path: Path) -> Path:
    await _run(sys.executable, "-m", "venv", path)
    return path / "bin"


async def test_pip_install_gives_a_working_tornado_sched_command(tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "src")
    bin_dir = await _venv(tmp_path / "venv")
    await _run(bin_dir / "pip", "install", "-q", source)
    help_text = await _run(bin_dir / "tornado-sched", "--help")
    for name in SUBCOMMANDS:
        assert name in help_text, help_text

    # The installed server, started away from any checkout, serves its own assets.
    site = tmp_path / "site"
    site.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "MONGODB_", "ADMIN_", "DATA_DIR", "LOG_DIR"))}
    env.update(SERVER_PORT="0", SERVER_HOST="127.0.0.1")
    proc = await asyncio.create_subprocess_exec(
        str(bin_dir / "tornado-sched"), "serve", cwd=site, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        port = 0
        output = ""
        assert proc.stdout
        while not port:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "installed server exited:\n" + output
            output += line
            if m := re.match(r"listening on port (\d+)", line):
                port = int(m.group(1))
        # The first start's hint names the command the operator has.
        password = re.search(r"generated password: (\S+)", output).group(1)
        assert "change it with `tornado-sched set-password`" in output, output
        http = AsyncHTTPClient()
        css = await http.fetch(f"http://127.0.0.1:{port}/static/css/app.css")
        assert css.code == 200 and css.body
        page = await http.fetch(f"http://127.0.0.1:{port}/", auth_username="admin",
                                auth_password=password, raise_error=False)
        assert page.code == 200 and b"<html" in page.body.lower(), page.body[:300]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_the_sdk_installs_on_its_own_with_only_tornado(tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "src")
    bin_dir = await _venv(tmp_path / "venv")
    await _run(bin_dir / "pip", "install", "-q", source / "sdk")
    installed = await _run(bin_dir / "pip", "list", "--format=freeze")
    names = {line.split("==")[0].lower() for line in installed.split() if "==" in line}
    assert names - {"pip", "setuptools", "wheel"} == {"tornado", "tornado-sched-client"}, names
    out = await _run(bin_dir / "python", "-c",
                     "import tornado_sched.client as c; print(c.ModuleClient.__name__)", cwd=tmp_path)
    assert out.strip() == "ModuleClient"
