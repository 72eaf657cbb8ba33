"""`GET /notifications`: the outbox, newest first."""

from __future__ import annotations

from tornado_sched.errors import Invalid
from tornado_sched.notify import STATUSES

from .base import ApiHandler


class NotificationListHandler(ApiHandler):
    """Channel, status, attempts, last error and times of every notification."""

    auth = "operator"

    async def get(self) -> None:
        page, size = self.page_args()
        status = self.get_query_argument("status", "") or None
        if status is not None and status not in STATUSES:
            raise Invalid(f"status: must be one of {', '.join(STATUSES)}", field="status")
        rows, total = await self.ctx.notifier.list(page, size, status)
        self.write_envelope({"total": total, "page": page, "page_size": size, "notifications": rows})


default_handlers = [
    (r"/notifications", NotificationListHandler),
]
