"""Run history over REST: per workflow, filtered across workflows, one run."""

from __future__ import annotations

from .base import ApiHandler


class WorkflowRunsHandler(ApiHandler):
    """`GET /workflow/<id>/runs`: newest first, paginated."""

    auth = "operator"

    async def get(self, workflow_id: str) -> None:
        workflow = await self.ctx.workflows.get(int(workflow_id))
        page, size = self.page_args(default_size=20, max_size=200)
        runs, total = await self.ctx.runs.list(workflow.workflow_id, page=page, page_size=size)
        self.write_envelope({"total": total, "page": page, "page_size": size, "runs": [r.public() for r in runs]})


class RunListHandler(ApiHandler):
    """`GET /runs?workflow_id=&status=`: every run, filterable."""

    auth = "operator"

    async def get(self) -> None:
        page, size = self.page_args(default_size=20, max_size=200)
        workflow_id = self.int_query("workflow_id")
        status = self.get_query_argument("status", "") or None
        runs, total = await self.ctx.runs.list(workflow_id, status, page=page, page_size=size)
        self.write_envelope({"total": total, "page": page, "page_size": size, "runs": [r.public() for r in runs]})


class RunDetailHandler(ApiHandler):
    """`GET /runs/<run_id>`."""

    auth = "operator"

    async def get(self, run_id: str) -> None:
        self.write_envelope((await self.ctx.runs.get(run_id)).public())


default_handlers = [
    (r"/workflow/(\d{1,18})/runs", WorkflowRunsHandler),
    (r"/runs", RunListHandler),
    (r"/runs/([0-9a-f]{1,64})", RunDetailHandler),
]
