"""Browser sessions: the login form, and an admin's view of live sessions (a page
and a JSON API) with a way to end any of them.

The login form is an alternative to the browser's Basic/Digest prompt: it posts the
password once (with the XSRF token), goes through the one login throttle, and gets a
server-side session cookie. Logging out ends the session in the store.
"""

from __future__ import annotations

import asyncio
from typing import Any

import tornado.web

from tornado_sched.errors import TooManyRequests

from .base import ApiHandler
from .dashboard.pages import PageHandler
from .dashboard.views import safe_next


class LoginPage(PageHandler):
    """`GET /login` shows the form; `POST /login` (username, password, next)."""

    auth = "public"

    def check_xsrf_cookie(self) -> None:
        # No session yet, so the base class would skip it: a forged login (into the
        # attacker's account) is still a cross-site request to refuse, also when a
        # sibling site planted an _xsrf pair.
        if self._cross_site():
            raise tornado.web.HTTPError(403, "cross-site request refused (Origin / Sec-Fetch-Site)")
        tornado.web.RequestHandler.check_xsrf_cookie(self)

    def get(self) -> None:
        self.render("login.html", next_path=safe_next(self.get_query_argument("next", "/")), error="",
                    username="")

    async def post(self) -> None:
        next_path = safe_next(self.get_body_argument("next", "/"))
        username = self.get_body_argument("username", "")[:64]
        password = self.get_body_argument("password", "")[:256]
        throttle = self.ctx.throttle
        address = self.request.remote_ip or ""
        if throttle.blocked(address):
            raise TooManyRequests("too many failed logins from this address; try again later")
        operator = await self.ctx.accounts.verify_password(username, password) if username and password else None
        if operator is None:
            throttle.failure(address)
            delay = throttle.delay(address)
            if delay:
                await asyncio.sleep(delay)
            self.set_status(401)
            self.render("login.html", next_path=next_path, username=username,
                        error=self.locale.translate("Wrong username or password."))
            return
        throttle.success(address)
        await self.start_session(operator)
        self.redirect(next_path, status=303)


class SessionsPage(PageHandler):
    """`/admin/sessions` (admin): live browser sessions, each with an End button."""

    auth = "admin"
    nav = "sessions"

    async def get(self) -> None:
        self.render("sessions.html", sessions=await self.ctx.sessions.list_active())


class SessionEndPage(PageHandler):
    """`POST /admin/sessions/<id>/end` (admin), then back to the list."""

    auth = "admin"

    async def post(self, session_id: str) -> None:
        info = await self.ctx.sessions.end_by_id(int(session_id))
        await self.audit("end_session", f"session:{info.id}", {"username": info.username})
        self.redirect("/admin/sessions", status=303)


class SessionListHandler(ApiHandler):
    """`GET /sessions` (admin): live browser sessions, newest first."""

    auth = "admin"

    async def get(self) -> None:
        self.write_envelope([s.public() for s in await self.ctx.sessions.list_active()])


class SessionDetailHandler(ApiHandler):
    """`DELETE /sessions/<id>` (admin): end a session at once."""

    auth = "admin"

    async def delete(self, session_id: str) -> None:
        info = await self.ctx.sessions.end_by_id(int(session_id))
        await self.audit("end_session", f"session:{info.id}", {"username": info.username})
        self.write_envelope(info.public())


default_handlers: list[tuple[str, Any]] = [
    (r"/login", LoginPage),
    (r"/admin/sessions", SessionsPage),
    (r"/admin/sessions/(\d{1,18})/end", SessionEndPage),
    (r"/sessions", SessionListHandler),
    (r"/sessions/(\d{1,18})", SessionDetailHandler),
]
