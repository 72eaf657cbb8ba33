"""The dashboard's admin pages: the audit log. Same rules as pages.py: read the
query, one core call (the AuditLog the JSON API's `/audit` uses), render."""

from __future__ import annotations

import tornado.web

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


default_handlers: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/admin/audit", AuditPage),
]
