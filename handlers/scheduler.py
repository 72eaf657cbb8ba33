"""The seed's scheduler API: list jobs, reload them from the store."""

from __future__ import annotations

from .base import ApiHandler


class JobsHandler(ApiHandler):
    """`GET /scheduler/jobs`."""

    auth = "operator"

    def get(self) -> None:
        self.write_envelope(self.ctx.scheduler.jobs())


class ReloadHandler(ApiHandler):
    """`POST /scheduler/reload` -> removed_count, current_count, enabled_workflows, message."""

    auth = "operator"

    async def post(self) -> None:
        result = await self.ctx.scheduler.reload()
        await self.audit("reload", "scheduler", {"current_count": result["current_count"]})
        self.write_envelope(result)


default_handlers = [
    (r"/scheduler/jobs", JobsHandler),
    (r"/scheduler/reload", ReloadHandler),
]
