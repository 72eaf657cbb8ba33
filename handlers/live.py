"""`/dashboard/live`: the dashboard's WebSocket. The core's events are pushed to
every open dashboard page, which updates in place (static/js/live.js).

Browsers open it with the session cookie the pages set (a WebSocket handshake
carries no Authorization header from a script); scripts may use Basic credentials.
Only our own origin may connect. Each connection subscribes to the event bus while
it is open, serialises every event at once (a run keeps changing after the event),
and queues at most `QUEUE_LIMIT` messages: a browser that cannot keep up gets its
queue replaced by one `resync` message, and reloads.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import tornado.locale
import tornado.web
import tornado.websocket

from tornado_sched.auth import Operator
from tornado_sched.context import AppContext
from tornado_sched.runs import Run

from .base import OperatorAuthMixin, to_json, wrong_host
from .pages import chosen_locale, format_time, status_view, trigger_label

log = logging.getLogger(__name__)

QUEUE_LIMIT = 200


class DashboardSocket(OperatorAuthMixin, tornado.websocket.WebSocketHandler):
    """One dashboard page's live feed. Server -> browser only."""

    auth = "operator"  # checked in prepare(): header credentials, else the session cookie

    def initialize(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.operator: Operator | None = None
        self._queue: asyncio.Queue[str] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._unsubscribe: Any = None

    # -- handshake -------------------------------------------------------------------
    async def prepare(self) -> None:
        if wrong_host(self.ctx.settings, self.request):
            self.set_status(400)
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(to_json({"code": "4000", "message": "Host header not in ALLOWED_HOSTS", "result": None}))
            return
        self.operator = await self.authenticate()
        if self.operator is None:
            self.set_status(401)
            self._add_challenges()
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(to_json({"code": "4010", "message": "authentication required", "result": None}))

    def check_origin(self, origin: str) -> bool:
        # Same scheme-less host:port as the page that opened it; nothing else.
        return urlsplit(origin).netloc.lower() == (self.request.host or "").lower()

    def get_user_locale(self) -> tornado.locale.Locale | None:
        return chosen_locale(self)

    # -- session ---------------------------------------------------------------------
    def open(self, *args: Any, **kwargs: Any) -> None:
        self._queue = asyncio.Queue(QUEUE_LIMIT)
        self._unsubscribe = self.ctx.events.subscribe(self._on_event)
        self._writer = asyncio.ensure_future(self._write_loop())
        self._send({"type": "hello", "user": self.operator.username if self.operator else ""})

    def on_message(self, message: str | bytes) -> None:
        pass  # nothing is read from browsers

    def on_close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None

    def _send(self, message: dict[str, Any]) -> None:
        assert self._queue is not None
        text = json.dumps(message, ensure_ascii=False)
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(json.dumps({"type": "resync"}))
            log.info("dashboard client %s too slow; asked to resync", self.request.remote_ip)

    async def _write_loop(self) -> None:
        assert self._queue is not None
        while True:
            text = await self._queue.get()
            try:
                await self.write_message(text)
            except tornado.websocket.WebSocketClosedError:
                return

    # -- events ----------------------------------------------------------------------
    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        """Event bus listener: synchronous, serialises now, queues, never blocks."""
        if self._unsubscribe is None:
            return
        if kind in ("module.online", "module.offline"):
            self._send(self._module_message(kind == "module.online", data))
        elif kind in ("run.started", "run.updated", "run.finished") and isinstance(data.get("run"), Run):
            self._send({"type": "run", "event": kind, "run": self._run_view(data["run"])})

    @property
    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.ctx.settings.time_zone)

    def _module_message(self, online: bool, data: dict[str, Any]) -> dict[str, Any]:
        session = self.ctx.hub.session(data["hash"]) if online else None
        _key, label, tone = status_view(self.locale, "online" if online else "offline")
        return {
            "type": "module",
            "module_id": data["module_id"],
            "name": data["name"],
            "online": online,
            "status": {"key": "online" if online else "offline", "label": label, "tone": tone},
            "connected_at": format_time(session.connected_at, self._zone) if session else "",
            "last_heartbeat": format_time(session.last_heartbeat, self._zone) if session else "",
            "remote_address": session.remote_address if session else "",
            "online_count": len(self.ctx.hub.sessions()),
        }

    def _run_view(self, run: Run) -> dict[str, Any]:
        def badge(status: str) -> dict[str, str]:
            key, label, tone = status_view(self.locale, status)
            return {"key": key, "label": label, "tone": tone}

        return {
            "run_id": run.run_id,
            "url": f"/history/{run.run_id}",
            "workflow_id": run.workflow_id,
            "workflow_name": run.workflow_name,
            "workflow_url": f"/history?workflow_id={run.workflow_id}",
            "trigger": trigger_label(self.locale, run.trigger),
            "execution_time": run.execution_time.replace("T", " "),
            "status": badge(run.status),
            "started_at": format_time(run.started_at, self._zone),
            "ended_at": format_time(run.ended_at, self._zone),
            "reason": run.reason or "",
            "steps": [
                {
                    "index": step.index,
                    "module_name": step.module_name,
                    "status": badge(step.status),
                    "attempts": step.attempts,
                    "sent_at": format_time(step.sent_at, self._zone),
                    "ended_at": format_time(step.ended_at, self._zone),
                    "message": step.message or "",
                    "error": step.error or "",
                }
                for step in run.steps
            ],
        }


default_handlers: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/dashboard/live", DashboardSocket),
]
