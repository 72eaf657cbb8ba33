"""Literal paths are routed by a dict lookup (handlers/app.py `exact_routes`): it must
pick exactly the rule Tornado's in-order walk picks, for every route we have and when
an earlier pattern shadows a literal one."""

from __future__ import annotations

from typing import Any

import tornado.web
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from handlers.app import SchedulerApplication, collect_routes
from handlers.base import NotFoundHandler
from tornado_sched.proxies import ProxyPolicy


def request(path: str) -> HTTPServerRequest:
    return HTTPServerRequest(start_line=RequestStartLine("GET", path + "?hash=x", "HTTP/1.1"), headers=HTTPHeaders({"Host": "127.0.0.1"}))


def walk(app: SchedulerApplication, path: str) -> Any:
    """Tornado's own answer: every rule in order."""
    return app.default_router.find_handler(request(path))


def app_with(routes: list[tuple[str, type[tornado.web.RequestHandler]]]) -> SchedulerApplication:
    rules = [(pattern, handler, {"ctx": None}) for pattern, handler in routes]
    return SchedulerApplication([*rules, (r".*", NotFoundHandler, {"ctx": None})], proxies=ProxyPolicy(()),
                                static_path="/tmp")


def test_every_literal_route_resolves_as_the_walk_does() -> None:
    app = app_with(collect_routes())
    assert "/websocket" in app.exact_routes and "/module/send_message" in app.exact_routes
    for path in [*app.exact_routes, "/workflow/12/execute", "/module/abc", "/no/such/page", "/static/x.css"]:
        fast, slow = app.find_handler(request(path)), walk(app, path)
        assert (fast.handler_class, fast.handler_kwargs, fast.path_args) == (
            slow.handler_class, slow.handler_kwargs, slow.path_args), path


class First(tornado.web.RequestHandler):
    pass


class Second(tornado.web.RequestHandler):
    pass


def test_a_literal_route_behind_a_matching_pattern_stays_behind_it() -> None:
    app = app_with([(r"/things/([a-z]+)", First), (r"/things/list", Second), (r"/other", Second)])
    assert "/things/list" not in app.exact_routes and "/other" in app.exact_routes
    assert app.find_handler(request("/things/list")).handler_class is First
    assert app.find_handler(request("/other")).handler_class is Second
