"""Admin-only REST: API tokens for scripts, the audit log."""

from __future__ import annotations

from .base import ApiHandler


class TokenListHandler(ApiHandler):
    """`GET /tokens`, `POST /tokens` (name[, username]) -> the token, shown once."""

    auth = "admin"

    async def get(self) -> None:
        self.write_envelope([t.public() for t in await self.ctx.tokens.list()])

    async def post(self) -> None:
        name = self.text_param("name", max_len=100)
        username = self.text_param("username", required=False, max_len=64) or self.current_user.username
        record, token = await self.ctx.tokens.create(username, name)
        await self.audit("create", f"token:{record.id}", {"name": record.name, "username": username})
        self.write_envelope({**record.public(), "token": token})


class TokenDetailHandler(ApiHandler):
    """`DELETE /tokens/<id>`: revoke."""

    auth = "admin"

    async def delete(self, token_id: str) -> None:
        record = await self.ctx.tokens.revoke(int(token_id))
        await self.audit("revoke", f"token:{record.id}", {"name": record.name})
        self.write_envelope(record.public())


class AuditHandler(ApiHandler):
    """`GET /audit?page=&page_size=`: newest first."""

    auth = "admin"

    async def get(self) -> None:
        page, size = self.page_args()
        rows, total = await self.ctx.audit.list(page, size)
        self.write_envelope({"total": total, "page": page, "page_size": size, "entries": rows})


default_handlers = [
    (r"/tokens", TokenListHandler),
    (r"/tokens/(\d{1,18})", TokenDetailHandler),
    (r"/audit", AuditHandler),
]
