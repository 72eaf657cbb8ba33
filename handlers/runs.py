"""Run history over REST: per workflow, filtered across workflows, one run; and run
control (cancel, re-run)."""

from __future__ import annotations

from tornado_sched.history import RunFilter, parse_time_bound

from .base import ApiHandler


class RunHistoryHandler(ApiHandler):
    """Shared query parsing of the run lists: `before` (a cursor from `next_before`)
    or `page`/`page_size`, and the filters `status` (a run status or `failed`),
    `since`/`until` (ISO 8601)."""

    async def write_runs(self, workflow_id: int | None) -> None:
        page, size = self.page_args(default_size=20, max_size=200)
        before = self.get_query_argument("before", "") or None
        filters = RunFilter(
            workflow_id=workflow_id,
            status=self.get_query_argument("status", "") or None,
            since=parse_time_bound("since", self.get_query_argument("since", "")),
            until=parse_time_bound("until", self.get_query_argument("until", "")),
        )
        found = await self.ctx.runs.list(filters, before=before, page=None if before else page, page_size=size)
        self.write_envelope(found.public(None if before else page, size))


class WorkflowRunsHandler(RunHistoryHandler):
    """`GET /workflow/<id>/runs`: newest first, paginated."""

    auth = "operator"

    async def get(self, workflow_id: str) -> None:
        workflow = await self.ctx.workflows.get(int(workflow_id))
        await self.write_runs(workflow.workflow_id)


class RunListHandler(RunHistoryHandler):
    """`GET /runs?workflow_id=&status=&since=&until=&before=`: every run, filterable."""

    auth = "operator"

    async def get(self) -> None:
        await self.write_runs(self.int_query("workflow_id"))


class RunDetailHandler(ApiHandler):
    """`GET /runs/<run_id>`."""

    auth = "operator"

    async def get(self, run_id: str) -> None:
        await self.write_envelope_sliced((await self.ctx.runs.get(run_id)).public(), "steps")


class RunCancelHandler(ApiHandler):
    """`POST /runs/<run_id>/cancel`: stop an open run (409 when it is closed)."""

    auth = "operator"  # viewers only read (base)

    async def post(self, run_id: str) -> None:
        actor = self.current_user.username if self.current_user else ""
        run = await self.ctx.runs.cancel(run_id, actor)
        await self.audit("cancel", f"run:{run.run_id}", {"workflow_id": run.workflow_id})
        self.write_envelope(run.public())


class RunRerunHandler(ApiHandler):
    """`POST /runs/<run_id>/rerun` with `{"steps": "failed"|"all"}` (default failed):
    a new run linked to this one (`rerun_of`)."""

    auth = "operator"

    async def post(self, run_id: str) -> None:
        steps = self.body().get("steps", "failed")
        run = await self.ctx.runs.rerun(run_id, steps)
        await self.audit("rerun", f"run:{run_id}", {"run_id": run.run_id, "steps": steps})
        self.write_envelope(run.public())


default_handlers = [
    (r"/workflow/(\d{1,18})/runs", WorkflowRunsHandler),
    (r"/runs", RunListHandler),
    (r"/runs/([0-9a-f]{1,64})", RunDetailHandler),
    (r"/runs/([0-9a-f]{1,64})/cancel", RunCancelHandler),
    (r"/runs/([0-9a-f]{1,64})/rerun", RunRerunHandler),
]
