"""A real HTTP sink on loopback for notification tests.

A tiny tornado.web Application on a free port that records every JSON body POSTed
to it, with the answer it gave. Its behaviour switches at runtime:

- ``"ok"``: answer 200;
- ``"slow"``: answer 200 after ``delay`` seconds (set it below the client timeout);
- ``"503"``: answer 503;
- ``"hang"``: hold the request until the client gives up (or the sink is switched
  back or stopped), so a client with a shorter timeout sees a timeout;
- ``stop()``: close the listening socket, so connections are refused;
  ``start()`` again binds the same port.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

MODES = ("ok", "slow", "503", "hang")


@dataclass
class Received:
    """One request the sink saw: its path, decoded body and the answer it got."""

    path: str
    body: Any
    answer: str  # "200", "503" or "hang"
    at: float


class _Handler(tornado.web.RequestHandler):
    def initialize(self, sink: Sink) -> None:
        self.sink = sink
        self._gone = asyncio.Event()

    def on_connection_close(self) -> None:
        self._gone.set()

    async def post(self) -> None:
        sink = self.sink
        mode = sink.mode
        try:
            body: Any = json.loads(self.request.body)
        except ValueError:
            body = self.request.body.decode("utf-8", "replace")
        answer = {"ok": "200", "slow": "200"}.get(mode, mode)
        sink.received.append(Received(self.request.path, body, answer, time.monotonic()))
        if mode == "slow":
            await asyncio.sleep(sink.delay)
        if mode == "hang":
            release = asyncio.ensure_future(sink.released.wait())
            gone = asyncio.ensure_future(self._gone.wait())
            await asyncio.wait({release, gone}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            release.cancel()
            gone.cancel()
            if self._gone.is_set():
                return  # the client gave up; nothing to answer
            self.set_status(503)
            self.finish({"hung": True})
            return
        if mode == "503":
            self.set_status(503)
            self.finish({"ok": False})
            return
        self.finish({"ok": True})


class Sink:
    """The sink's state and server; one instance per test."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay = 0.2
        self.received: list[Received] = []
        self.port = 0
        self.released = asyncio.Event()
        self._server: HTTPServer | None = None

    async def start(self) -> None:
        """Listen on 127.0.0.1; on a restart, on the same port as before."""
        app = tornado.web.Application([(r"/.*", _Handler, {"sink": self})], log_function=lambda handler: None)
        sockets = bind_sockets(self.port, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self._server = HTTPServer(app)
        self._server.add_sockets(sockets)

    async def stop(self) -> None:
        """Stop listening (connections are refused from now on) and drop open ones."""
        if self._server is None:
            return
        self.released.set()
        server, self._server = self._server, None
        server.stop()
        await server.close_all_connections()
        self.released = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._server is not None

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        if self.mode == "hang" and mode != "hang":
            self.released.set()
            self.released = asyncio.Event()
        self.mode = mode

    def url(self, path: str = "/email") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str = "/email", answer: str | None = "200") -> list[Any]:
        """Bodies POSTed to `path`; by default only those answered 200 (delivered)."""
        return [r.body for r in self.received if r.path == path and (answer is None or r.answer == answer)]
