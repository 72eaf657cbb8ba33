"""The embedded MongoDB wire-protocol server (nx-27017) as an asyncio-managed child.

Used when MONGODB_HOST is unset (see docs/design.md). The child is started through
``tornado_sched.docserver_shim``, which fixes neosqlite's update type bugs and makes
the child die with its parent on Linux.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import pathlib
import re
import shutil
import signal
import sys
import tempfile
import time
from urllib.parse import quote

log = logging.getLogger(__name__)

# The child compares this with its parent's pid to notice a parent that died before
# PR_SET_PDEATHSIG took effect (see docserver_shim).
PARENT_PID_ENV = "TORNADO_SCHED_DOCSERVER_PARENT_PID"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
# Restart backoff after the child dies: 0.5 s, 1 s, 2 s ... at most 30 s.
RESTART_FIRST_DELAY = 0.5
RESTART_MAX_DELAY = 30.0
# A child that stayed up this long resets the backoff.
RESTART_STABLE_SECONDS = 60.0
_TAIL_LINES = 20
# nx-27017 logs this (after its asyncio server has bound) to stderr via logging's
# basicConfig, prefixed with time/name/level/pid; with -p 0 the port is the real one.
# Our shim serves on a Unix socket instead and logs `Listening on unix:PATH`.
_LISTENING_RE = re.compile(r"Listening on unix:(?P<path>\S+)\s*$")
# sun_path holds 108 bytes; a longer DATA_DIR puts the socket in a private temp dir.
_MAX_SOCKET_PATH = 100
# The directory holding the ``tornado_sched`` package, so the child can import the
# shim whatever its working directory is.
_PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent


class EmbeddedDocumentServer:
    """An nx-27017 server on a Unix socket, storing its files under ``data_dir``.

    nx-27017 has no authentication, so it does not listen on TCP at all (any local
    user can reach a loopback port): the shim serves on ``<data_dir>/mongo/nx.sock``
    (0600, in a 0700 directory), or in a private temporary directory when that path
    is too long for a socket. ``await start()`` returns the ``mongodb://`` URI (the
    socket path, percent-encoded); ``await stop()`` ends the child. Files live in
    ``<data_dir>/mongo``: one SQLite file per database, ``nx.pid`` and ``nx.log``.
    With ``supervise=True`` a child that dies (killed, crashed) is started again with
    backoff on the same socket, so the driver reconnects by itself.
    """

    def __init__(self, data_dir: pathlib.Path, *, supervise: bool = False) -> None:
        # Absolute: the child runs with its working directory inside this folder.
        self._mongo_dir = pathlib.Path(data_dir).resolve() / "mongo"
        self._pid_file = self._mongo_dir / "nx.pid"
        self._log_file = self._mongo_dir / "nx.log"
        self._socket_dir: pathlib.Path | None = None  # a temp dir we made, removed on stop
        self._socket: pathlib.Path = self._mongo_dir / "nx.sock"
        self._process: asyncio.subprocess.Process | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._uri: str | None = None
        self._supervise = supervise
        self._watcher: asyncio.Task[None] | None = None
        self._started_at = 0.0
        # Monotonic time the child was found dead, while it is; None while it runs.
        self.down_since: float | None = None
        self.restarts = 0
        self.last_exit: str | None = None

    @property
    def uri(self) -> str | None:
        """``mongodb://127.0.0.1:PORT/`` while running, else None."""
        return self._uri

    @property
    def socket_path(self) -> pathlib.Path:
        """The Unix socket the server listens on."""
        return self._socket

    @property
    def pid(self) -> int | None:
        """The child's process id while running, else None."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while a child is up (a supervised one may be between restarts)."""
        return self._process is not None and self._process.returncode is None

    def down_for(self) -> float:
        """Seconds the child has been dead (0 while it runs)."""
        if self.down_since is None:
            return 0.0
        return time.monotonic() - self.down_since

    @property
    def pid_file(self) -> pathlib.Path:
        """Where the child writes its pid."""
        return self._pid_file

    async def start(self) -> str:
        """Spawn the server, wait until it listens, and return its URI.

        Raises RuntimeError (with the child's last stderr lines) if it exits or does
        not report a listening port within START_TIMEOUT seconds.
        """
        if self._process is not None:
            raise RuntimeError("embedded document server already started")
        path = await self._spawn(restart=False)
        self._uri = f"mongodb://{quote(path, safe='')}/"
        if self._supervise:
            self._watcher = asyncio.ensure_future(self._watch())
        return self._uri

    async def _spawn(self, *, restart: bool) -> str:
        """Start one child and return the socket path it listens on. A restart keeps
        the socket path (the driver's URI names it)."""
        await asyncio.to_thread(self._prepare_dir, restart)

        env = dict(os.environ)
        env[PARENT_PID_ENV] = str(os.getpid())
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tornado_sched.docserver_shim",
            "--data-dir",
            str(self._mongo_dir),
            "--host",
            "127.0.0.1",
            "-p",
            "0",
            "--pid-file",
            str(self._pid_file),
            "--log-file",
            str(self._log_file),
            "--unix-socket",
            str(self._socket),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # nx-27017 otherwise resolves its default --db path against the cwd.
            cwd=str(self._mongo_dir),
            env=env,
            # Tracebacks can hold long lines; never let readline() overrun.
            limit=1 << 20,
        )
        self._process = process
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        try:
            path = await asyncio.wait_for(self._read_socket(process, tail), START_TIMEOUT)
        except BaseException as exc:
            await self._kill_after_failed_start(remove_socket=not restart)
            if isinstance(exc, TimeoutError):
                raise RuntimeError(
                    f"embedded document server did not listen within {START_TIMEOUT:.0f} s; "
                    f"last stderr lines:\n" + "\n".join(tail)
                ) from None
            raise

        assert process.stderr is not None
        self._drain_task = asyncio.create_task(self._drain(process.stderr))
        self._started_at = time.monotonic()
        return path

    async def _watch(self) -> None:
        """Restart the child whenever it dies, with backoff, until stop()."""
        delay = RESTART_FIRST_DELAY
        while True:
            process = self._process
            if process is not None:
                code = await process.wait()
                if self._drain_task is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._drain_task, 1.0)
                    self._drain_task = None
                self._process = None
                self.down_since = time.monotonic()
                self.last_exit = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
                if time.monotonic() - self._started_at >= RESTART_STABLE_SECONDS:
                    delay = RESTART_FIRST_DELAY
                log.error("embedded document server died (%s); restarting in %.1f s", self.last_exit, delay)
            await asyncio.sleep(delay)
            try:
                await self._spawn(restart=True)
            except Exception as exc:
                # The files may still be locked or the socket path taken: try later.
                lines = str(exc).splitlines() or [type(exc).__name__]
                log.error("embedded document server restart failed: %s %s", lines[0],
                          lines[-1] if len(lines) > 1 else "")
                delay = min(delay * 2, RESTART_MAX_DELAY)
                continue
            self.restarts += 1
            log.warning("embedded document server restarted after %.1f s down (restart #%d)",
                        self.down_for(), self.restarts)
            self.down_since = None
            delay = min(delay * 2, RESTART_MAX_DELAY)

    async def stop(self) -> None:
        """SIGTERM the child, SIGKILL it after STOP_TIMEOUT seconds, remove the pid file."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        process, self._process = self._process, None
        self._uri = None
        if process is not None:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            if self._drain_task is not None:
                # The pipe reaches EOF once the child is gone; this only bounds a
                # grandchild that might still hold it.
                try:
                    await asyncio.wait_for(self._drain_task, 1.0)
                except TimeoutError:
                    pass
                self._drain_task = None
        # nx-27017 removes it on SIGTERM, but not after SIGKILL or a failed start.
        await asyncio.to_thread(self._pid_file.unlink, missing_ok=True)
        await asyncio.to_thread(self._remove_socket)

    def _remove_socket(self) -> None:
        self._socket.unlink(missing_ok=True)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    async def _read_socket(
        self, process: asyncio.subprocess.Process, tail: collections.deque[str]
    ) -> str:
        assert process.stderr is not None
        while True:
            raw = await process.stderr.readline()
            if not raw:
                returncode = await process.wait()
                raise RuntimeError(
                    f"embedded document server exited with code {returncode} before "
                    f"listening; last stderr lines:\n" + "\n".join(tail)
                )
            line = raw.decode(errors="replace").rstrip()
            tail.append(line)
            match = _LISTENING_RE.search(line)
            if match:
                return match["path"]

    async def _kill_after_failed_start(self, *, remove_socket: bool = True) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            # The pipe must be read to EOF, or the transport is left unclosed.
            if process.stderr is not None:
                await self._drain(process.stderr)
            await process.wait()
        await asyncio.to_thread(self._pid_file.unlink, missing_ok=True)
        if remove_socket:
            await asyncio.to_thread(self._remove_socket)

    @staticmethod
    async def _drain(stream: asyncio.StreamReader) -> None:
        # The child logs every request to stderr (and to nx.log); unread, the pipe
        # would fill and block the server.
        while await stream.read(1 << 16):
            pass

    def _prepare_dir(self, restart: bool = False) -> None:
        self._mongo_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self._mongo_dir, 0o700)
        if not restart and len(str(self._socket).encode()) > _MAX_SOCKET_PATH:
            self._socket_dir = pathlib.Path(tempfile.mkdtemp(prefix="tsched-nx-"))  # 0700
            self._socket = self._socket_dir / "nx.sock"
        try:
            text = self._pid_file.read_text().strip()
        except FileNotFoundError:
            return
        if text.isdigit() and _is_our_server(int(text), self._pid_file):
            raise RuntimeError(
                f"an embedded document server (pid {text}) is already running on {self._mongo_dir}"
            )
        # nx-27017 refuses to start while its pid file names a live process, and a
        # SIGKILL leaves the file behind; the pid may since belong to anything.
        self._pid_file.unlink(missing_ok=True)


def _is_our_server(pid: int, pid_file: pathlib.Path) -> bool:
    """True if ``pid`` is alive and is a server using ``pid_file``."""
    if not pathlib.Path("/proc/self").exists():
        # No procfs: "alive at all" is the best we can tell.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # A zombie's cmdline is empty, so it never counts as running.
    return str(pid_file).encode() in cmdline.split(b"\0")
