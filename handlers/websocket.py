"""`/websocket?hash=<module_hash>`: the module's live connection.

Thin: authenticates the hash before a session exists, then hands each frame to the
core. Liveness is Tornado's own ping/pong (`websocket_ping_interval` /
`websocket_ping_timeout`); a pong is the module's heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import tornado.web

from tornado_sched.context import AppContext
from tornado_sched.errors import Unavailable, Unstorable
from tornado_sched.hub import ModuleSession
from tornado_sched.logs import short_secret
from tornado_sched.protocol import (
    RESULT_ACK,
    HeartbeatMessage,
    LogMessage,
    ProgressMessage,
    ProtocolError,
    ResultMessage,
    error_reply,
    parse_module_message,
)
from tornado_sched.registry import ModuleRecord
from tornado_sched.runs import ResultNotMatched

from .base import SocketHandler

log = logging.getLogger(__name__)


class ModuleSocketHandler(SocketHandler):
    """One module's WebSocket session."""

    auth = "module"  # the module hash is the credential, checked in prepare()

    def initialize(self, ctx: AppContext) -> None:
        super().initialize(ctx)
        self.module: ModuleRecord | None = None
        self.session: ModuleSession | None = None
        # Results being stored (strong references: the loop keeps only weak ones);
        # made on the first result, not for every idle socket.
        self._recording: set[asyncio.Task[None]] | None = None

    async def prepare(self) -> None:
        if self.refuse_wrong_host():
            return
        address = self.request.remote_ip or ""
        if self.ctx.throttle.blocked(address):
            # The hash is a credential: guesses share the one login throttle.
            self.refuse(429, "4290", "too many failed attempts from this address; try again later")
            return
        module_hash = self.get_query_argument("hash", "")
        if not module_hash or len(module_hash) > 128:
            self.refuse(401, "4010", "hash: required")
            return
        # From memory: no store read per handshake (and none while MongoDB is down);
        # in a cluster, a hash registered on another instance is read once.
        self.module = await self.ctx.registry.admit(module_hash)
        if self.module is None:
            log.info("websocket refused: unknown hash %s", short_secret(module_hash))
            self.ctx.throttle.failure(address)
            self.refuse(403, "4030", "unknown module hash")

    def check_origin(self, origin: str) -> bool:
        # Module clients send no Origin; a browser may only connect from our own
        # host or an allowed one ("*" is not a browser allow-list).
        host = (urlsplit(origin).hostname or "").lower()
        own = (self.request.host_name or "").lower()
        allowed = {h.lower() for h in self.ctx.settings.allowed_hosts if h != "*"}
        return host == own or host in allowed

    def open(self, *args: Any, **kwargs: Any) -> None:
        assert self.module is not None
        self.set_nodelay(True)
        self.session = self.ctx.hub.attach(self.module, self, self.request.remote_ip)

    def on_message(self, message: str | bytes) -> None:
        # Synchronous on purpose: nothing here waits, and Tornado wraps a coroutine
        # handler in a task per frame (a fan-out's 10,000 results are 10,000 frames).
        if self.session is None:
            return
        self.ctx.hub.frames_in += 1
        limit = self.ctx.settings.websocket_max_message_size
        # The limit is in bytes, as on the wire: a text frame's len() counts characters,
        # and CJK text is three bytes per character.
        size = len(message) if isinstance(message, bytes) else len(message.encode("utf-8"))
        if size > limit:
            self.reply(error_reply(f"message larger than {limit} bytes"))
            return
        try:
            parsed = parse_module_message(message)
        except ProtocolError as exc:
            self.reply(error_reply(str(exc)))
            return
        if isinstance(parsed, HeartbeatMessage):
            self.ctx.hub.heartbeat(self.session)
            return
        if isinstance(parsed, ProgressMessage | LogMessage):
            # Memory only (written with the step's next state write): no await, no ack.
            try:
                self.ctx.runs.report_step(self.session.module_hash, parsed)
            except ResultNotMatched as exc:
                kind = "progress" if isinstance(parsed, ProgressMessage) else "log"
                self.reply(error_reply(f"{kind} not recorded: {exc}"))
            return
        # Tornado reads no further frame (pongs included) until on_message returns;
        # waiting here for a slow store could get a healthy module closed as dead.
        # The common case (the run is open here) needs no task: the acknowledgement
        # is sent from the durability future's callback.
        session = self.session
        try:
            durable = self.ctx.runs.record_result_now(session, parsed)
        except ResultNotMatched as exc:
            self._answer(session, exc)
            return
        if durable is not None:
            durable.add_done_callback(
                lambda f: self._answer(session, Unavailable("cancelled") if f.cancelled() else f.exception()))
            return
        task = asyncio.ensure_future(self._record(session, parsed))
        if self._recording is None:
            self._recording = set()
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _record(self, session: ModuleSession, result: ResultMessage) -> None:
        try:
            await self.ctx.runs.record_result(session, result)
        except Exception as exc:
            self._answer(session, exc)
            return
        self._answer(session, None)

    def _answer(self, session: ModuleSession, failure: BaseException | None) -> None:
        """Acknowledge a result once it is durable (the seed's `receive result`), or
        say why it was not recorded."""
        if failure is None:
            self.reply(RESULT_ACK)
        elif isinstance(failure, ResultNotMatched):
            self.reply(error_reply(f"result not recorded: {failure}"))
        elif isinstance(failure, Unstorable):
            # Not an outage: sending the same result again cannot help.
            self.reply(error_reply(f"result not stored: {failure.message}"))
        else:
            log.error("result from %r not stored: %s", session.name, type(failure).__name__)
            self.reply(error_reply("result not stored (server unavailable); send it again later"))

    def reply(self, text: str) -> None:
        self.ctx.hub.frames_out += 1  # for /metrics: frames to modules, acks and errors too
        super().reply(text)

    def queued_bytes(self) -> int:
        """Bytes written to this socket and not yet taken by the kernel (the hub's
        back-pressure check)."""
        stream = getattr(self.ws_connection, "stream", None)
        buffer = getattr(stream, "_write_buffer", None)
        return len(buffer) if buffer is not None else 0

    def on_pong(self, data: bytes) -> None:
        if self.session is not None:
            self.ctx.hub.heartbeat(self.session)

    def on_close(self) -> None:
        if self.session is not None:
            self.ctx.hub.detach(self.session)


default_handlers: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/websocket", ModuleSocketHandler),
]
