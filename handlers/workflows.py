"""The seed's workflow API (create, list, execute) plus detail, update, enable,
disable and delete. The store publishes every change and the scheduler follows it,
so each verb is one core call plus its audit."""

from __future__ import annotations

from tornado_sched.clock import utcnow
from tornado_sched.errors import NotFound

from .base import ApiHandler


class WorkflowCreateHandler(ApiHandler):
    """`POST /workflow/create` -> {id, workflow_id, name}."""

    auth = "operator"

    async def post(self) -> None:
        workflow = await self.ctx.workflows.create(self.body())
        await self.audit("create", f"workflow:{workflow.workflow_id}", {"name": workflow.name})
        result = {"id": workflow.id, "workflow_id": workflow.workflow_id, "name": workflow.name}
        if workflow.order == "data":  # the seed's shape is unchanged for seed clients
            result["warnings"] = workflow.warnings
        self.write_envelope(result)


class WorkflowListHandler(ApiHandler):
    """`GET /workflow/list`."""

    auth = "operator"

    async def get(self) -> None:
        result = []
        for workflow in await self.ctx.workflows.list():
            item = workflow.public()
            item["next_run_time"] = self.ctx.scheduler.next_run_time(workflow.workflow_id)
            result.append(item)
        self.write_envelope(result)


class WorkflowDetailHandler(ApiHandler):
    """`GET|PUT|DELETE /workflow/<id>`."""

    auth = "operator"

    async def get(self, workflow_id: str) -> None:
        workflow = await self.ctx.workflows.get(int(workflow_id))
        item = workflow.public()
        item["next_run_time"] = self.ctx.scheduler.next_run_time(workflow.workflow_id)
        item["upcoming"] = workflow.upcoming(utcnow())
        self.write_envelope(item)

    async def put(self, workflow_id: str) -> None:
        workflow = await self.ctx.workflows.update(int(workflow_id), self.body())
        await self.audit("update", f"workflow:{workflow.workflow_id}", {"fields": sorted(self.body())})
        result = workflow.public()
        if workflow.order == "data":
            result["warnings"] = workflow.warnings
        self.write_envelope(result)

    async def delete(self, workflow_id: str) -> None:
        workflow = await self.ctx.workflows.delete(int(workflow_id))
        await self.audit("delete", f"workflow:{workflow.workflow_id}", {"name": workflow.name})
        self.write_envelope({"workflow_id": workflow.workflow_id, "name": workflow.name, "deleted": True})


class WorkflowEnableHandler(ApiHandler):
    """`POST /workflow/<id>/enable` and `/disable`."""

    auth = "operator"

    async def post(self, workflow_id: str, action: str) -> None:
        workflow = await self.ctx.workflows.set_enabled(int(workflow_id), action == "enable")
        await self.audit(action, f"workflow:{workflow.workflow_id}")
        self.write_envelope(workflow.public())


class WorkflowExecuteHandler(ApiHandler):
    """`POST /workflow/<id>/execute`: run now, even when disabled."""

    auth = "operator"

    async def post(self, workflow_id: str) -> None:
        workflow, run_id = await self.ctx.scheduler.run_now(int(workflow_id))
        await self.audit("run", f"workflow:{workflow.workflow_id}", {"run_id": run_id})
        self.write_envelope({
            "workflow_id": workflow.workflow_id,
            "workflow_name": workflow.name,
            "run_id": run_id,
            "message": "工作流执行已启动",
        })


class WorkflowPlanHandler(ApiHandler):
    """`GET /workflow/<id>/plan`: the data plan (stages, edges, external inputs, conflicts)."""

    auth = "operator"

    async def get(self, workflow_id: str) -> None:
        self.write_envelope((await self.ctx.workflows.plan(int(workflow_id))).public())


class WorkflowDocumentIdHandler(ApiHandler):
    """`/workflow/<ObjectId>[/...]`: paths take the integer `workflow_id`; the
    create response's `id` (the document's ObjectId) gets a 404 naming the right one."""

    auth = "operator"

    async def _refuse(self, document_id: str, rest: str | None = None) -> None:
        workflow_id = await self.ctx.workflows.workflow_id_for(document_id)
        if workflow_id is None:
            raise NotFound(f"workflow {document_id} not found; paths take the integer workflow_id, not id")
        raise NotFound(
            f"{document_id} is the workflow's document id; paths take its workflow_id: "
            f"/workflow/{workflow_id}{rest or ''}"
        )

    get = put = delete = post = _refuse


default_handlers = [
    (r"/workflow/create", WorkflowCreateHandler),
    (r"/workflow/list", WorkflowListHandler),
    (r"/workflow/(\d{1,18})", WorkflowDetailHandler),
    (r"/workflow/(\d{1,18})/(enable|disable)", WorkflowEnableHandler),
    (r"/workflow/(\d{1,18})/execute", WorkflowExecuteHandler),
    (r"/workflow/(\d{1,18})/plan", WorkflowPlanHandler),
    (r"/workflow/([0-9a-fA-F]{24})(/enable|/disable|/execute|/runs|/plan)?", WorkflowDocumentIdHandler),
]
