"""`GET /metrics`: Prometheus text format, for operators or a scraper's own token."""

from __future__ import annotations

import hmac

from tornado_sched.errors import Invalid
from tornado_sched.metrics import CONTENT_TYPE

from .base import BaseHandler, wrong_host


class MetricsHandler(BaseHandler):
    """Operator credentials like the API, or `Authorization: Bearer <METRICS_TOKEN>`
    when that setting is set (a scraper then needs no operator account)."""

    auth = "operator"

    async def prepare(self) -> None:
        token = self.ctx.settings.metrics_token
        header = self.request.headers.get("Authorization", "")
        if token and header[:7].lower() == "bearer ":
            if wrong_host(self.ctx.settings, self.request):
                raise Invalid("Host header not in ALLOWED_HOSTS")
            if hmac.compare_digest(header[7:].strip().encode(), token.encode()):
                self.scraper = True
                return
        self.scraper = False
        await super().prepare()

    async def get(self) -> None:
        assert self.ctx.metrics is not None
        body = await self.ctx.metrics.render()
        self.set_header("Content-Type", CONTENT_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)


default_handlers = [
    (r"/metrics", MetricsHandler),
]
