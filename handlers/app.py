"""Builds the Tornado Application: joins every handler module's routes, adds the
404 catch-all last, and refuses any route without an explicit auth decision."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import tornado.locale
import tornado.web
from tornado.httputil import HTTPServerRequest
from tornado.routing import PathMatches, Rule

from tornado_sched.context import AppContext
from tornado_sched.logs import redact_url
from tornado_sched.proxies import ProxyPolicy
from tornado_sched.text import has_control_chars

from . import (
    admin,
    docs,
    health,
    metrics,
    modules,
    notifications,
    runs,
    scheduler,
    sessions,
    websocket,
    workflows,
)
from .auth import wrong_host
from .base import AUTH_KINDS, NotFoundHandler
from .dashboard import admin_pages, live, pages, ui_modules, workflow_pages


def _asset_root() -> Path:
    """templates/, static/ and locale/: beside the packages in a checkout, under
    <prefix>/share/tornado-sched after `pip install .` (pyproject's data-files)."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "templates").is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "tornado-sched"


ROOT = _asset_root()
access_log = logging.getLogger("tornado.access")

HANDLER_MODULES = [health, metrics, docs, modules, websocket, workflows, runs, scheduler, notifications, admin, sessions, pages, workflow_pages, admin_pages, live]


# Asked every few seconds by health checks and Prometheus (deploy/): a success there
# is logged at DEBUG, or they alone would add thousands of INFO lines a day.
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})


def _log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if level == logging.INFO and handler.request.path in PROBE_PATHS:
        level = logging.DEBUG
    if not access_log.isEnabledFor(level):
        return  # the redaction below costs more than the rest of a WebSocket handshake
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


class SchedulerApplication(tornado.web.Application):
    """The Application, which first settles who the client is: forwarded headers
    count only from TRUSTED_PROXIES (for every handler, static files included)."""

    def __init__(self, *args: Any, proxies: ProxyPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proxies = proxies
        self.exact_routes = self._exact_routes()

    def _exact_routes(self) -> dict[str, Rule]:
        """Literal paths (`/websocket`, `/module/send_message`, ...) -> their rule, for
        a dict lookup instead of trying every pattern in turn (each handshake and API
        call paid for that walk). A path goes in only if no rule before its own could
        match it, so the lookup always picks the rule the walk would pick."""
        if len(self.default_router.rules) != 1:
            return {}  # host-specific rules (add_handlers): keep Tornado's walk
        exact: dict[str, Rule] = {}
        earlier: list[Rule] = []
        for rule in self.wildcard_router.rules:
            matcher = rule.matcher
            if isinstance(matcher, PathMatches) and _LITERAL_PATH.fullmatch(matcher.regex.pattern):
                path = matcher.regex.pattern[:-1]
                shadowed = any(
                    not isinstance(e.matcher, PathMatches) or e.matcher.regex.match(path) for e in earlier
                )
                if not shadowed:
                    exact.setdefault(path, rule)
            earlier.append(rule)
        return exact

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> Any:
        if self.proxies.networks:
            address, scheme = self.proxies.client(
                request.remote_ip or "", request.headers.get("X-Forwarded-For"),
                request.headers.get("X-Forwarded-Proto"),
            )
            request.remote_ip = address
            if scheme:
                request.protocol = scheme
        rule = self.exact_routes.get(request.path)
        if rule is not None:
            params: dict[str, Any] = {}  # a literal pattern has no groups
            if rule.target_kwargs:
                params["target_kwargs"] = rule.target_kwargs
            delegate = self.wildcard_router.get_target_delegate(rule.target, request, **params)
            if delegate is not None:
                return delegate
        return super().find_handler(request, **kwargs)


# A route pattern that is a plain path (Tornado appends the "$"): no regex syntax.
_LITERAL_PATH = re.compile(r"/[A-Za-z0-9/_-]*\$")


class SafeStaticFileHandler(tornado.web.StaticFileHandler):
    """Static files with the rules every other handler follows: the Host check, and
    a 404 (not Tornado's 500 and traceback) for a path with NUL or other control
    characters (`/static/css/app.css%00`)."""

    def initialize(self, path: str, default_filename: str | None = None, app_settings: Any = None) -> None:
        super().initialize(path, default_filename)
        self.app_settings = app_settings

    async def get(self, path: str, include_body: bool = True) -> None:
        if self.app_settings is not None and wrong_host(self.app_settings, self.request):
            raise tornado.web.HTTPError(400, reason="Host header not in ALLOWED_HOSTS")
        if has_control_chars(path):
            raise tornado.web.HTTPError(404)
        await super().get(path, include_body)

    def _request_summary(self) -> str:
        return f"{self.request.method} {redact_url(self.request.uri or '')} ({self.request.remote_ip})"


def make_app(ctx: AppContext) -> tornado.web.Application:
    settings = ctx.settings
    routes = [(pattern, handler, {"ctx": ctx}) for pattern, handler in collect_routes()]
    routes.append((r".*", NotFoundHandler, {"ctx": ctx}))
    static_path = settings.static_root or str(ROOT / "static")
    tornado.locale.load_translations(str(ROOT / "locale"))
    return SchedulerApplication(
        routes,
        proxies=ProxyPolicy(settings.trusted_proxies),
        static_handler_class=SafeStaticFileHandler,
        static_handler_args={"app_settings": settings},
        template_path=str(ROOT / "templates"),
        ui_modules=ui_modules.UI_MODULES,
        static_path=static_path,
        cookie_secret=settings.secret_key,
        xsrf_cookies=True,
        # COOKIE_SECURE marks the XSRF cookie too; session cookies are also Secure on
        # any https request (BaseHandler.cookie_secure).
        xsrf_cookie_kwargs={"httponly": False, "samesite": "Strict", **({"secure": True} if settings.cookie_secure else {})},
        log_function=_log_request,
        websocket_ping_interval=settings.websocket_ping_interval,
        websocket_ping_timeout=settings.websocket_ping_timeout,
        # Tornado closes the socket on frames over its limit; ours is enforced in the
        # handler with an error reply, so Tornado's is a hard ceiling above it.
        websocket_max_message_size=max(8 * settings.websocket_max_message_size, 16 * 1024 * 1024),
        serve_traceback=False,
        # Pages and JSON are text: gzip cuts the list pages several times over.
        compress_response=True,
        autoreload=False,
    )
