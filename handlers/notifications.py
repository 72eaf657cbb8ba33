"""`GET /notifications`: the outbox, newest first."""

from __future__ import annotations

from tornado_sched.errors import Invalid
from tornado_sched.notify import STATUSES

from .base import ApiHandler


class NotificationListHandler(ApiHandler):
    """Channel, status, attempts, last error and times of every notification."""

    auth = "operator"

    async def get(self) -> None:
        try:
            page = int(self.get_query_argument("page", "1"))
            size = int(self.get_query_argument("page_size", "50"))
        except ValueError:
            raise Invalid("page / page_size: expected integers", field="page") from None
        if page < 1 or not 1 <= size <= 500:
            raise Invalid("page must be >= 1 and page_size 1-500", field="page")
        status = self.get_query_argument("status", "") or None
        if status is not None and status not in STATUSES:
            raise Invalid(f"status: must be one of {', '.join(STATUSES)}", field="status")
        rows, total = await self.ctx.notifier.list(page, size, status)
        self.write_envelope({"total": total, "page": page, "page_size": size, "notifications": rows})


default_handlers = [
    (r"/notifications", NotificationListHandler),
]
