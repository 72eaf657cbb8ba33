"""`/dashboard/live`: the dashboard's WebSocket. The core's events are pushed to
every open dashboard page, which updates in place (static/js/live.js).

Browsers open it with the session cookie the pages set (a WebSocket handshake
carries no Authorization header from a script); scripts may use Basic credentials.
Only our own origin may connect. Each connection subscribes to the event bus while
it is open and queues at most `QUEUE_LIMIT` messages: a browser that cannot keep up
gets its queue replaced by one `resync` message, and reloads. A step's progress and
log reports are merged while one is still queued (one queued message per step), so
a chatty module cannot fill the queue. So are a run's events: its message is built
when it is written, from the run as it is then, with only the steps that changed
since the last one (every step for a start, an end, or another instance's run), a
few hundred steps between two yields to the loop. Built per event, a 1,000-module
fan-out cost every open page 1,000 views of 1,000 steps.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import tornado.locale
import tornado.web
import tornado.websocket

from tornado_sched.auth import Operator
from tornado_sched.context import AppContext
from tornado_sched.errors import TooManyRequests
from tornado_sched.events import (
    FAILING_CHANGED,
    MODULE_OFFLINE,
    MODULE_ONLINE,
    RUN_EVENTS,
    RUN_STARTED,
    STEP_PROGRESS,
)
from tornado_sched.run_state import LOG_TAIL_LINES, Run, Step
from tornado_sched.serialize import to_json_sliced

from ..auth import OperatorAuthMixin
from ..base import SocketHandler
from .live_views import failing_view, module_event_view, run_view, step_report_view, step_view
from .views import chosen_locale

log = logging.getLogger(__name__)

QUEUE_LIMIT = 200
# Steps formatted between two yields to the loop while a run's message is built.
STEPS_PER_SLICE = 200


@dataclass
class RunWaiting:
    """A run's events merged while its message waits in a socket's queue."""

    event: str
    run: Run
    steps: set[int] | None  # the steps that changed; None: every step


class DashboardSocket(OperatorAuthMixin, SocketHandler):
    """One dashboard page's live feed. Server -> browser only."""

    auth = "operator"  # checked in prepare(): header credentials, else the session cookie

    def initialize(self, ctx: AppContext) -> None:
        super().initialize(ctx)
        self.operator: Operator | None = None
        # Texts, and keys of merged entries: ("step", run_id, index), ("run", run_id).
        self._queue: asyncio.Queue[str | tuple[Any, ...]] | None = None
        # Step reports waiting in the queue, by (run_id, step index): merged, not re-queued.
        self._step_reports: dict[tuple[str, int], dict[str, Any]] = {}
        # Runs waiting in the queue, by run_id: merged, not re-queued.
        self._runs: dict[str, RunWaiting] = {}
        self._writer: asyncio.Task[None] | None = None
        self._unsubscribe: Any = None

    # -- handshake -------------------------------------------------------------------
    async def prepare(self) -> None:
        if self.refuse_wrong_host():
            return
        try:
            self.operator = await self.throttled_authenticate()  # an outage -> 503 (base)
        except TooManyRequests as exc:
            self.refuse(429, exc.code, exc.message)
            return
        if self.operator is None:
            self._add_challenges()
            self.refuse(401, "4010", "authentication required")

    def check_origin(self, origin: str) -> bool:
        # Same scheme-less host:port as the page that opened it; nothing else.
        return urlsplit(origin).netloc.lower() == (self.request.host or "").lower()

    def get_user_locale(self) -> tornado.locale.Locale | None:
        return chosen_locale(self)

    # -- session ---------------------------------------------------------------------
    def open(self, *args: Any, **kwargs: Any) -> None:
        self._queue = asyncio.Queue(QUEUE_LIMIT)
        self._unsubscribe = (self.ctx.feed or self.ctx.events).subscribe(self._on_event)
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
            self._step_reports.clear()
            self._runs.clear()
            self._queue.put_nowait(json.dumps({"type": "resync"}))
            log.info("dashboard client %s too slow; asked to resync", self.request.remote_ip)

    def _send_step_report(self, report: dict[str, Any]) -> None:
        key = (report["run_id"], report["index"])
        waiting = self._step_reports.get(key)
        if waiting is not None:
            waiting["progress"] = report["progress"]
            waiting["lines"] = (waiting["lines"] + report["lines"])[-LOG_TAIL_LINES:]
            return
        if self._enqueue(("step", *key)):
            self._step_reports[key] = {**report, "lines": list(report["lines"])}

    def _send_run(self, kind: str, run: Run, steps: Iterable[int] | None) -> None:
        waiting = self._runs.get(run.run_id)
        if waiting is not None:
            if waiting.event != RUN_STARTED:  # a start not yet sent stays one: the page adds its row
                waiting.event = kind
            waiting.run = run
            waiting.steps = None if waiting.steps is None or steps is None else waiting.steps | set(steps)
            return
        if self._enqueue(("run", run.run_id)):
            self._runs[run.run_id] = RunWaiting(kind, run, None if steps is None else set(steps))

    def _enqueue(self, key: tuple[Any, ...]) -> bool:
        assert self._queue is not None
        try:
            self._queue.put_nowait(key)
        except asyncio.QueueFull:
            self._send({"type": "resync"})  # makes room the same way as any message
            return False
        return True

    async def _run_message(self, waiting: RunWaiting) -> str:
        run = waiting.run
        indexes = range(len(run.steps)) if waiting.steps is None else sorted(
            i for i in waiting.steps if 0 <= i < len(run.steps))
        steps = []
        for count, index in enumerate(indexes, 1):
            steps.append(step_view(self.locale, self._zone, run.steps[index]))
            if count % STEPS_PER_SLICE == 0:
                await asyncio.sleep(0)
        view = run_view(self.locale, self._zone, run, steps)
        return await to_json_sliced({"type": "run", "event": waiting.event, "run": view}, "run", "steps")

    async def _write_loop(self) -> None:
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            if isinstance(item, str):
                text = item
            elif item[0] == "run":
                waiting = self._runs.pop(item[1], None)
                if waiting is None:
                    continue  # dropped by a resync
                text = await self._run_message(waiting)
            else:
                report = self._step_reports.pop(item[1:], None)
                if report is None:
                    continue  # dropped by a resync
                text = json.dumps(report, ensure_ascii=False)
            try:
                await self.write_message(text)
            except tornado.websocket.WebSocketClosedError:
                return

    # -- events ----------------------------------------------------------------------
    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        """Event bus listener: synchronous, queues, never blocks."""
        if self._unsubscribe is None:
            return
        if kind in (MODULE_ONLINE, MODULE_OFFLINE):
            online = kind == MODULE_ONLINE
            session = self.ctx.modules.session(data["hash"]) if online else None
            self._send(module_event_view(
                self.locale, self._zone, data, online, session, self.ctx.modules.online_count()
            ))
        elif kind in RUN_EVENTS and isinstance(data.get("run"), Run):
            # A start shows every step; another instance's events say nothing of steps.
            self._send_run(kind, data["run"], None if kind == RUN_STARTED else data.get("steps"))
        elif kind == FAILING_CHANGED:
            self._send(failing_view(self.locale, self._zone, data["failing"]))
        elif kind == STEP_PROGRESS and isinstance(data.get("step"), Step):
            # Small: the step's progress and only the lines new since the last message.
            self._send_step_report(step_report_view(data["run"], data["step"], data.get("lines") or []))

    @property
    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.ctx.settings.time_zone)


default_handlers: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/dashboard/live", DashboardSocket),
]
