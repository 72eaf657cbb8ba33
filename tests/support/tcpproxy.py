"""A tiny TCP proxy on loopback, to make one store unreachable for one server only.

The shared MariaDB must never be stopped (other test runs use it); a server under
test reaches it through this proxy instead, and the test cuts the proxy (connections
aborted, new ones refused) or hangs it (a server that is stopped or blackholed:
sockets stay open, connections are accepted, nothing is answered), and restores it
on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; `cut()`, `hang()` and `restore()` switch it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        # Cleared while hung: every byte read is held (not forwarded) until restored,
        # and new connections are accepted but not connected upstream.
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and abort every open one."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        # Held pipes wake up and find their sockets closed.
        self._flowing.set()
        await asyncio.sleep(0)

    async def hang(self) -> None:
        """Stop answering without closing anything, like a server that is stopped
        (SIGSTOP) or blackholed: what clients send is held, nothing comes back, and
        new connections are accepted but never greeted."""
        self._flowing.clear()
        await asyncio.sleep(0)

    async def restore(self) -> None:
        """Forward again: after a cut on the same port; after a hang, what was held
        goes on (as a resumed server would answer)."""
        if self._server is None:
            await self.start()
        self._flowing.set()

    async def close(self) -> None:
        await self.cut()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        await self._flowing.wait()
        if writer.transport.is_closing():
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(1 << 16):
                    await self._flowing.wait()
                    if dst.transport.is_closing():
                        break
                    dst.write(data)
                    await dst.drain()
                await self._flowing.wait()  # an end of stream is held too while hung
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}
