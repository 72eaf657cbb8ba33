"""Private files: run.py as an operator runs it (umask 077), with the embedded stores.
DATA_DIR and LOG_DIR are 0700 and every file in them 0600, and the embedded document
server (which has no authentication) listens on no TCP port at all, only on a Unix
socket only the service user can open."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import basic_auth
from tests.test_process import ServerProcess, _children
from tornado_sched.private import make_private

pytestmark = pytest.mark.slow


def _modes(root: Path) -> dict[str, int]:
    found = {str(root): stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        if not path.is_symlink():
            found[str(path)] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


async def test_data_and_logs_are_private_and_the_document_server_has_no_tcp_port(tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    # A DATA_DIR left world-readable by an older version is tightened at start.
    (workdir / "data").mkdir(parents=True)
    os.chmod(workdir / "data", 0o755)
    (workdir / "data" / "old-notes.txt").write_text("x")
    os.chmod(workdir / "data" / "old-notes.txt", 0o644)
    server = ServerProcess(workdir)
    await server.start()
    try:
        password = server.generated_password()
        registered = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{server.port}/module/register?name=private",
            headers={"Authorization": basic_auth("admin", password)},
        )
        assert json.loads(registered.body)["code"] == "2000"

        for root in (workdir / "data", workdir / "logs"):
            modes = _modes(root)
            assert modes[str(root)] == 0o700, (root, oct(modes[str(root)]))
            loose = {p: oct(m) for p, m in modes.items() if m & 0o077}
            assert not loose, loose
        assert (workdir / "data" / "system.sqlite3").is_file()
        assert (workdir / "logs" / "tornado_sched.log").is_file()

        children = _children(server.proc.pid)
        assert len(children) == 1, children
        (child,) = children
        assert not _socket_inodes(child) & _listening_tcp_inodes(), "the document server listens on TCP"
        socket_path = _check_socket(child)
    finally:
        assert await server.stop() == 0
    assert not await asyncio.to_thread(os.path.exists, socket_path), "the socket is removed on stop"


def _check_socket(pid: int) -> str:
    """The document server's socket (from its command line): 0600 in a 0700 dir."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    socket_path = Path(cmdline[cmdline.index(b"--unix-socket") + 1].decode())
    info = socket_path.lstat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
    return str(socket_path)


def test_make_private_tightens_an_existing_tree(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "mongo").mkdir(parents=True)
    for path, mode in ((root, 0o755), (root / "mongo", 0o777)):
        os.chmod(path, mode)
    (root / "system.sqlite3").write_text("")
    os.chmod(root / "system.sqlite3", 0o644)
    (root / "mongo" / "db.db").write_text("")
    os.chmod(root / "mongo" / "db.db", 0o666)
    (root / "link").symlink_to("/etc/hostname")
    make_private(root)
    assert {Path(p).name: oct(m) for p, m in _modes(root).items() if Path(p).name != "link"} == {
        "data": "0o700", "mongo": "0o700", "system.sqlite3": "0o600", "db.db": "0o600"}
    assert stat.S_IMODE(Path("/etc/hostname").stat().st_mode) != 0o600, "symlinks are not followed"
