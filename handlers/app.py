"""Builds the Tornado Application: joins every handler module's routes, adds the
404 catch-all last, and refuses any route without an explicit auth decision."""

from __future__ import annotations

import logging
from pathlib import Path

import tornado.locale
import tornado.web

from tornado_sched.context import AppContext
from tornado_sched.logs import redact_url

from . import admin, health, modules, notifications, runs, scheduler, sessions, websocket, workflows
from .base import AUTH_KINDS, NotFoundHandler
from .dashboard import live, pages

ROOT = Path(__file__).resolve().parent.parent
access_log = logging.getLogger("tornado.access")

HANDLER_MODULES = [health, modules, websocket, workflows, runs, scheduler, notifications, admin, sessions, pages, live]


def _log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    access_log.log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        handler.request.method,
        redact_url(handler.request.uri or ""),
        handler.request.remote_ip,
        1000.0 * handler.request.request_time(),
    )


def collect_routes() -> list[tuple[str, type[tornado.web.RequestHandler]]]:
    routes: list[tuple[str, type[tornado.web.RequestHandler]]] = []
    for module in HANDLER_MODULES:
        routes.extend(module.default_handlers)
    for pattern, handler in routes:
        if getattr(handler, "auth", None) not in AUTH_KINDS:
            raise RuntimeError(f"route {pattern} ({handler.__name__}) has no auth decision")
    return routes


def make_app(ctx: AppContext) -> tornado.web.Application:
    settings = ctx.settings
    routes = [(pattern, handler, {"ctx": ctx}) for pattern, handler in collect_routes()]
    routes.append((r".*", NotFoundHandler, {"ctx": ctx}))
    static_path = settings.static_root or str(ROOT / "static")
    tornado.locale.load_translations(str(ROOT / "locale"))
    return tornado.web.Application(
        routes,
        template_path=str(ROOT / "templates"),
        ui_modules=pages.UI_MODULES,
        static_path=static_path,
        cookie_secret=settings.secret_key,
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": False, "samesite": "Strict"},
        log_function=_log_request,
        websocket_ping_interval=settings.websocket_ping_interval,
        websocket_ping_timeout=settings.websocket_ping_timeout,
        # Tornado closes the socket on frames over its limit; ours is enforced in the
        # handler with an error reply, so Tornado's is a hard ceiling above it.
        websocket_max_message_size=max(8 * settings.websocket_max_message_size, 16 * 1024 * 1024),
        serve_traceback=False,
        autoreload=False,
    )
