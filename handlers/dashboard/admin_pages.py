"""The dashboard's admin pages: the audit log and API tokens. Same rules as
pages.py: read the query or form, one core call (the AuditLog and ApiTokens the
JSON API's `/audit` and `/tokens` use), render."""

from __future__ import annotations

import tornado.web

from tornado_sched.errors import NotFound

from .pages import PageHandler
from .views import PAGE_SIZE, page_number, pager


class AuditPage(PageHandler):
    """`/admin/audit`: who did what, newest first, paginated, filtered by actor
    and action (exact match). Admins only, as the JSON API's `/audit`."""

    auth = "admin"
    nav = "audit"

    async def get(self) -> None:
        actor = self.get_query_argument("actor", "").strip()[:64]
        action = self.get_query_argument("action", "").strip()[:32]
        page = page_number(self.get_query_argument("page", "1"))
        rows, total = await self.ctx.audit.list(page, PAGE_SIZE, actor=actor or None, action=action or None)
        self.render(
            "audit.html",
            rows=rows,
            actor=actor,
            action=action,
            **pager("/admin/audit", {"actor": actor, "action": action}, page, total),
        )


class TokensPage(PageHandler):
    """`/admin/tokens`: the API tokens (prefix, name, user, created, last used);
    `POST` creates one for the signed-in admin and shows it once, on this answer
    only (never stored, never redirected through a URL)."""

    auth = "admin"
    nav = "tokens"

    async def get(self) -> None:
        self.render("tokens.html", tokens=await self.ctx.tokens.list(), created=None, token=None)

    async def post(self) -> None:
        name = self.get_body_argument("name", "")[:200]
        record, token = await self.ctx.tokens.create(self.current_user.username, name)
        await self.audit("create", f"token:{record.id}", {"name": record.name, "username": record.username})
        self.set_header("Cache-Control", "no-store")
        self.render("tokens.html", tokens=await self.ctx.tokens.list(), created=record, token=token)


class TokenRevokePage(PageHandler):
    """`GET /admin/tokens/<id>/revoke` asks first; `POST` revokes, back to the list."""

    auth = "admin"
    nav = "tokens"

    async def get(self, token_id: str) -> None:
        record = next((t for t in await self.ctx.tokens.list() if t.id == int(token_id)), None)
        if record is None:
            raise NotFound(f"token {token_id} not found")
        self.render("token_revoke.html", record=record)

    async def post(self, token_id: str) -> None:
        record = await self.ctx.tokens.revoke(int(token_id))
        await self.audit("revoke", f"token:{record.id}", {"name": record.name})
        self.redirect("/admin/tokens", status=303)


default_handlers: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/admin/audit", AuditPage),
    (r"/admin/tokens", TokensPage),
    (r"/admin/tokens/(\d{1,18})/revoke", TokenRevokePage),
]
