"""The dashboard's workflow pages: the list, run/enable/disable (with a confirmation
step), and the create/edit form with its fire-time preview. Same rules as pages.py:
read the form, one core call, render; errors are HTML pages."""

from __future__ import annotations

import zoneinfo
from functools import cache
from typing import Any
from urllib.parse import urlencode

import tornado.web

from tornado_sched.browse import (
    WORKFLOW_SORTS,
    WORKFLOW_STATES,
    WorkflowRow,
    browse_workflows,
    check_browse,
)
from tornado_sched.clock import utcnow
from tornado_sched.errors import Invalid, InvalidFields
from tornado_sched.workflows import (
    MISFIRE,
    ORDER,
    OVERLAP,
    Workflow,
    preview_fire_times,
    validate_workflow,
)

from .forms import FORM_FIELDS, WorkflowForm
from .pages import PageHandler
from .views import SHIFT_UNITS, field_errors, fire_time_views, shift_text


class WorkflowsPage(PageHandler):
    """`/workflows`: schedules, next fire times, last run; enable/disable/run now.
    `q` (name contains), `state` (enabled, paused, failing) and `sort` (id, name,
    next fire, last run, success rate) narrow and order it, like /modules."""

    nav = "workflows"
    live = True

    async def get(self) -> None:
        name = self.get_query_argument("q", "")
        state = self.get_query_argument("state", "")
        sort = self.get_query_argument("sort", "") or WORKFLOW_SORTS[0]
        check_browse(name, state, sort)  # before any store is read
        workflows = await self.ctx.workflows.list()
        strips = await self.ctx.runs.strips([w.workflow_id for w in workflows])
        plans = await self.ctx.workflows.plans(workflows)
        failing = {f.workflow_id for f in self.ctx.failing.list()}
        now = utcnow()
        rows = [
            WorkflowRow(
                workflow=w,
                next_fire=self.ctx.scheduler.next_run_time(w.workflow_id) if w.enable else None,
                last_run_at=strips[w.workflow_id].runs[-1].started_at if strips[w.workflow_id].runs else None,
                success_rate=strips[w.workflow_id].success_rate,
                failing=w.workflow_id in failing,
            )
            for w in workflows
        ]
        items = [
            {
                "workflow": row.workflow,
                "shift": shift_text(row.workflow),
                # a disabled workflow never fires
                "upcoming": row.workflow.upcoming(now) if row.workflow.enable else [],
                "last_run": row.workflow.last_run or {},
                "next_run": row.next_fire,
                "strip": strips[row.workflow.workflow_id],
                "plan": plans.get(row.workflow.workflow_id),
            }
            for row in browse_workflows(rows, name, state, sort)
        ]
        kept = {"q": name.strip(), "state": state}

        def sort_url(key: str) -> str:
            chosen = {"sort": key} if key != WORKFLOW_SORTS[0] else {}
            query = urlencode({**{k: v for k, v in kept.items() if v}, **chosen})
            return "/workflows?" + query if query else "/workflows"

        self.render(
            "workflows.html", items=items, total=len(workflows), q=name, state=state, sort=sort,
            states=WORKFLOW_STATES, sorts=WORKFLOW_SORTS, sort_url=sort_url,
            filtered=bool(name.strip() or state),
        )


class WorkflowActionPage(PageHandler):
    """`POST /workflows/<id>/enable|disable|run|delete|clone`, then back to the list
    (or the run, or the copy's edit form). `GET /workflows/<id>/run|delete|clone` is
    the confirmation step before them (no script needed)."""

    nav = "workflows"

    async def get(self, workflow_id: str, action: str) -> None:
        if action not in ("run", "delete", "clone"):
            raise tornado.web.HTTPError(405)
        workflow = await self.ctx.workflows.get(int(workflow_id))
        if action == "run":
            self.render("run_confirm.html", workflow=workflow)
        else:
            self.render("workflow_confirm.html", workflow=workflow, action=action)

    async def post(self, workflow_id: str, action: str) -> None:
        if action == "run":
            workflow, run_id = await self.ctx.scheduler.run_now(int(workflow_id))
            await self.audit("run", f"workflow:{workflow.workflow_id}", {"run_id": run_id})
            self.redirect(f"/history/{run_id}", status=303)
            return
        if action == "delete":
            deleted = await self.ctx.workflows.delete(int(workflow_id))
            await self.audit("delete", f"workflow:{deleted.workflow_id}", {"name": deleted.name})
            self.redirect("/workflows", status=303)
            return
        if action == "clone":
            copy = await self.ctx.workflows.clone(int(workflow_id))
            await self.audit("create", f"workflow:{copy.workflow_id}",
                             {"name": copy.name, "clone_of": int(workflow_id)})
            self.redirect(f"/workflows/{copy.workflow_id}/edit", status=303)
            return
        workflow = await self.ctx.workflows.set_enabled(int(workflow_id), action == "enable")
        await self.audit(action, f"workflow:{workflow.workflow_id}")
        self.redirect(f"/workflows#workflow-{workflow.workflow_id}", status=303)


@cache
def _time_zones() -> tuple[str, ...]:
    return tuple(sorted(z for z in zoneinfo.available_timezones() if "/" in z or z == "UTC"))


class _WorkflowFormPage(PageHandler):
    """The create and edit forms: show, re-show with every field's errors, preview
    the fire times, save."""

    nav = "workflows"

    async def _show(self, form: WorkflowForm, *, workflow: Workflow | None = None,
                    errors: dict[str, list[str]] | None = None, extra_rows: int = 1,
                    preview: bool = False) -> None:
        views = await self.ctx.modules.list()
        form.rows = [r for r in form.rows if r["module"] or r["args"].strip() not in ("", "{}")]
        form.rows += [{"module": "", "args": ""} for _ in range(max(extra_rows, 2 - len(form.rows)))]
        if not form.timezone:
            form.timezone = self.ctx.settings.time_zone
        errors = errors or {}
        fire_times: list[Any] = []
        preview_error = ""
        if preview or (form.cron_text.strip() and not errors):
            try:
                fire_times = fire_time_views(
                    preview_fire_times(form.schedule(), self.ctx.settings.time_zone, utcnow()), form.timezone)
            except Invalid as exc:
                preview_error = "; ".join(m for ms in field_errors(
                    self.locale, getattr(exc, "errors", [exc]), FORM_FIELDS).values() for m in ms)
        zones = _time_zones()
        # The saved workflow's plan (unmet inputs, conflicts) as its runs would see it now.
        plan = (await self.ctx.workflows.plans([workflow])).get(workflow.workflow_id) if workflow else None
        self.render(
            "workflow_form.html",
            form=form,
            workflow=workflow,
            errors=errors,
            first_error=next((k for k in FORM_FIELDS if k in errors), None),
            modules=[view.record for view in views],
            online={view.record.hash for view in views if view.online},
            overlap_choices=OVERLAP,
            misfire_choices=MISFIRE,
            order_choices=ORDER,
            plan=plan,
            shift_units=SHIFT_UNITS,
            time_zones=zones if form.timezone in zones else (form.timezone, *zones),
            fire_times=fire_times,
            preview_error=preview_error,
        )

    async def _hashes_by_id(self) -> dict[str, str]:
        return {str(m.module_id): m.hash for m in await self.ctx.registry.list()}

    async def _submit(self, workflow: Workflow | None) -> None:
        form = WorkflowForm.from_arguments(self.get_body_argument, self.get_body_arguments)
        action = self.get_body_argument("action", "")
        if action == "add_row":
            blank = sum(1 for r in form.rows if not r["module"] and r["args"].strip() in ("", "{}"))
            await self._show(form, workflow=workflow, extra_rows=blank + 1)
            return
        if action == "preview":
            await self._show(form, workflow=workflow, preview=True)
            return
        body, problems = form.body(await self._hashes_by_id())
        saved = None
        if problems:
            # The rows are bad: still name every other field's problem in this answer.
            try:
                validate_workflow(body, self.ctx.settings.time_zone)
            except Invalid as exc:
                problems += getattr(exc, "errors", [exc])
        else:
            try:
                if workflow is None:
                    saved = await self.ctx.workflows.create(body)
                else:
                    saved = await self.ctx.workflows.update(workflow.workflow_id, body)
            except InvalidFields as exc:
                problems = exc.errors
            except Invalid as exc:
                problems = [exc]
        if saved is None:
            self.set_status(400)
            await self._show(form, workflow=workflow, errors=field_errors(self.locale, problems, FORM_FIELDS))
            return
        if workflow is None:
            await self.audit("create", f"workflow:{saved.workflow_id}", {"name": saved.name})
        else:
            await self.audit("update", f"workflow:{saved.workflow_id}", {"fields": sorted(body)})
        self.redirect(f"/workflows#workflow-{saved.workflow_id}", status=303)


class WorkflowPreviewPage(PageHandler):
    """`GET /workflows/preview?execute_cron_list=...&execute_shift_time=...`: the next
    fire times of what the form holds, as JSON for the form's script. (The form
    itself shows the same list, server-rendered, after "Preview".)"""

    async def get(self) -> None:
        form = WorkflowForm(
            cron_text=self.get_query_argument("execute_cron_list", "")[:5000],
            shift_time=self.get_query_argument("execute_shift_time", "0")[:20],
            shift_unit=self.get_query_argument("execute_shift_unit", "s")[:2],
            timezone=self.get_query_argument("timezone", "")[:64],
        )
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        try:
            fire_times = preview_fire_times(form.schedule(), self.ctx.settings.time_zone, utcnow())
        except Invalid as exc:
            errors = field_errors(self.locale, getattr(exc, "errors", [exc]), FORM_FIELDS)
            self.finish({"fire_times": [], "errors": errors})
            return
        zone_name = form.timezone.strip() or self.ctx.settings.time_zone
        self.finish({"errors": {}, "zone": zone_name, "fire_times": fire_time_views(fire_times, zone_name)})


class WorkflowNewPage(_WorkflowFormPage):
    """`/workflows/new`: the create form."""

    async def get(self) -> None:
        await self._show(WorkflowForm())

    async def post(self) -> None:
        await self._submit(None)


class WorkflowEditPage(_WorkflowFormPage):
    """`/workflows/<id>/edit`: the edit form."""

    async def get(self, workflow_id: str) -> None:
        workflow = await self.ctx.workflows.get(int(workflow_id))
        ids = {m.hash: m.module_id for m in await self.ctx.registry.list()}
        await self._show(WorkflowForm.from_workflow(workflow, ids), workflow=workflow)

    async def post(self, workflow_id: str) -> None:
        await self._submit(await self.ctx.workflows.get(int(workflow_id)))


default_handlers: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/workflows", WorkflowsPage),
    (r"/workflows/new", WorkflowNewPage),
    (r"/workflows/preview", WorkflowPreviewPage),
    (r"/workflows/(\d{1,18})/edit", WorkflowEditPage),
    (r"/workflows/(\d{1,18})/(enable|disable|run|delete|clone)", WorkflowActionPage),
]
