"""The operator dashboard: server-rendered pages over the core.

Thin like every handler: read the query or form, call one core method, render a
template. Pages answer errors with an HTML page (never a traceback, never the JSON
envelope). Changes are POST forms carrying Tornado's XSRF token; each posts to a
page endpoint that calls the core and redirects back (post/redirect/get).

Live updates (module online/offline, run progress) come over `/dashboard/live`
(handlers/live.py); pages only mark the elements that can change with data
attributes that static/js/live.js looks for.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import tornado.locale
import tornado.web

from tornado_sched.errors import DomainError, Invalid
from tornado_sched.logs import short_secret
from tornado_sched.notify import STATUSES as OUTBOX_STATUSES
from tornado_sched.registry import ModuleRecord
from tornado_sched.runs import RUN_STATUSES
from tornado_sched.tables import read_datetime, utcnow
from tornado_sched.workflows import MISFIRE, OVERLAP, Workflow

from .base import SESSION_COOKIE, BaseHandler

log = logging.getLogger(__name__)

LANG_COOKIE = "lang"
LANGUAGES = (("en_US", "English"), ("zh_CN", "中文"))
FAILED_RUN = ("failure", "partial", "interrupted")
PAGE_SIZE = 25

# (path, English label, key used to mark the current page)
NAV = (
    ("/", "Overview", "overview"),
    ("/modules", "Modules", "modules"),
    ("/workflows", "Workflows", "workflows"),
    ("/scheduler", "Scheduler", "scheduler"),
    ("/history", "Runs", "runs"),
    ("/outbox", "Notifications", "notifications"),
)

# status -> (English label, tone); the tone picks the badge colour in app.css.
STATUS = {
    "online": ("Online", "ok"),
    "offline": ("Offline", "muted"),
    "running": ("Running", "info"),
    "pending": ("Pending", "info"),
    "sent": ("Sent", "info"),
    "success": ("Success", "ok"),
    "failure": ("Failure", "bad"),
    "failed": ("Failed", "bad"),
    "partial": ("Partial", "warn"),
    "skipped": ("Skipped", "warn"),
    "interrupted": ("Interrupted", "bad"),
    "timeout": ("Timeout", "bad"),
    "enabled": ("Enabled", "ok"),
    "disabled": ("Disabled", "muted"),
    "retrying": ("Retrying", "warn"),
    "not_configured": ("Not configured", "muted"),
    "none": ("Never run", "muted"),
}

TRIGGER_LABELS = {"schedule": "Schedule", "manual": "Manual", "misfire": "Misfire"}
SHIFT_UNITS = (("s", "seconds"), ("m", "minutes"), ("h", "hours"))


# -- helpers shared with handlers/live.py ---------------------------------------------
def chosen_locale(handler: tornado.web.RequestHandler) -> tornado.locale.Locale | None:
    """The `lang` cookie when it names a language we offer; else None, and Tornado
    falls back to Accept-Language (`get_browser_locale`)."""
    code = handler.get_cookie(LANG_COOKIE)
    if code in dict(LANGUAGES):
        return tornado.locale.get(code)
    return None


def status_view(locale: tornado.locale.Locale, status: str | None) -> tuple[str, str, str]:
    """(status key, translated label, tone) for a badge."""
    key = status or "none"
    label, tone = STATUS.get(key, (key, "muted"))
    return key, locale.translate(label), tone


def trigger_label(locale: tornado.locale.Locale, trigger: str) -> str:
    return locale.translate(TRIGGER_LABELS.get(trigger, trigger))


def format_time(value: Any, zone: ZoneInfo) -> str:
    """A stored instant as wall time in the configured zone (the zone is named in the
    page header and column titles, not repeated in every cell)."""
    instant = read_datetime(value)
    if instant is None:
        return ""
    return instant.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def zone_label(zone_name: str) -> str:
    """`Asia/Shanghai (UTC+08:00)`."""
    offset = utcnow().astimezone(ZoneInfo(zone_name)).strftime("%z")
    return f"{zone_name} (UTC{offset[:3]}:{offset[3:]})"


_FIELD_PREFIX = re.compile(r"^(?P<field>[a-z_]+)(?:\[(?P<index>\d+)\])?(?P<sub>\.[a-z_]+)?:\s*(?P<rest>.*)$", re.S)


def field_message(locale: tornado.locale.Locale, exc: Invalid) -> str:
    """The core's message without its field prefix (the form shows it next to the
    field): `execute_cron_list[1]: bad line` -> `Line 2: bad line`."""
    match = _FIELD_PREFIX.match(exc.message)
    if match is None or match["field"] != exc.field:
        return exc.message
    rest = match["rest"]
    if match["index"] is not None:
        template = "Line %(n)d: %(message)s" if exc.field == "execute_cron_list" else "Row %(n)d: %(message)s"
        return locale.translate(template) % {"n": int(match["index"]) + 1, "message": rest}
    return rest


def safe_next(target: str | None, default: str = "/") -> str:
    """A local path to redirect to; anything else (`//evil`, `https://...`) -> default."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


# -- UI modules ---------------------------------------------------------------------
class Status(tornado.web.UIModule):
    """A status badge: `{% module Status(run.status) %}`."""

    def render(self, status: str | None) -> str:
        key, label, tone = status_view(self.locale, status)
        return self.render_string("modules/status.html", key=key, label=label, tone=tone)


class Time(tornado.web.UIModule):
    """A `<time>` element in the configured zone: `{% module Time(run.started_at) %}`."""

    def render(self, value: Any, empty: str = "—") -> str:
        instant = read_datetime(value)
        zone = ZoneInfo(self.handler.ctx.settings.time_zone)
        return self.render_string(
            "modules/time.html",
            iso=instant.isoformat() if instant else "",
            text=format_time(instant, zone) if instant else empty,
        )


UI_MODULES = {"Status": Status, "Time": Time}


# -- base ---------------------------------------------------------------------------
class PageHandler(BaseHandler):
    """Base of every HTML page: locale, template namespace, HTML error pages."""

    auth = "operator"
    sets_session = True
    nav: ClassVar[str] = ""
    live: ClassVar[bool] = False  # pages that listen on /dashboard/live

    def get_user_locale(self) -> tornado.locale.Locale | None:
        return chosen_locale(self)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.ctx.settings.time_zone)

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        namespace.update(
            nav=self.nav,
            nav_items=NAV,
            live=self.live,
            languages=LANGUAGES,
            zone_name=self.ctx.settings.time_zone,
            zone_label=zone_label(self.ctx.settings.time_zone),
            fmt_time=lambda value: format_time(value, self.zone) or "—",
            trigger_label=lambda trigger: trigger_label(self.locale, trigger),
            status_text=lambda status: status_view(self.locale, status)[1],
            short_secret=short_secret,
            here=self.request.uri or "/",
        )
        return namespace

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 401:
            add_challenges = getattr(self, "_add_challenges", None)
            if add_challenges is not None:
                add_challenges()
        exc = kwargs.get("exc_info", (None, None, None))[1]
        titles = {
            400: "Bad request", 401: "Authentication required", 403: "Forbidden",
            404: "Not found", 405: "Method not allowed", 409: "Conflict",
            429: "Too many requests", 503: "Service unavailable",
        }
        title = titles.get(status_code, "Error" if status_code < 500 else "Internal server error")
        message = ""
        if isinstance(exc, DomainError):
            message = exc.message
        elif status_code == 403 and isinstance(exc, tornado.web.HTTPError) and "xsrf" in (exc.log_message or "").lower():
            message = "The form expired or did not come from this site. Go back, reload the page and try again."
        try:
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.render("error.html", status_code=status_code, title=title, message=message)
        except Exception:
            log.exception("error page failed to render")
            if not self._finished:
                self.set_header("Content-Type", "text/plain; charset=UTF-8")
                self.finish(f"{status_code} {title}\n")


# -- pages --------------------------------------------------------------------------
def _module_views(ctx: Any, records: list[ModuleRecord]) -> list[dict[str, Any]]:
    views = []
    for record in records:
        session = ctx.hub.session(record.hash)
        views.append({
            "record": record,
            "online": session is not None,
            "connected_at": session.connected_at if session else record.connected_at,
            "last_heartbeat": session.last_heartbeat if session else record.last_heartbeat,
            "remote_address": session.remote_address if session else record.remote_address,
        })
    return views


class OverviewPage(PageHandler):
    """`/`: module counts, failing workflows, recent runs."""

    nav = "overview"
    live = True

    async def get(self) -> None:
        modules = _module_views(self.ctx, await self.ctx.registry.list())
        workflows = await self.ctx.workflows.list()
        failing = [w for w in workflows if (w.last_run or {}).get("status") in FAILED_RUN]
        runs, total_runs = await self.ctx.runs.list(page_size=10)
        online = sum(1 for m in modules if m["online"])
        self.render(
            "overview.html",
            modules=modules,
            online=online,
            offline=len(modules) - online,
            workflows=workflows,
            failing=failing,
            runs=runs,
            total_runs=total_runs,
            failed_writes=self.ctx.store_failures(),
        )


class ModulesPage(PageHandler):
    """`/modules`: every module with its live state."""

    nav = "modules"
    live = True

    async def get(self) -> None:
        self.render("modules.html", modules=_module_views(self.ctx, await self.ctx.registry.list()))


class ModulePage(PageHandler):
    """`/modules/<module_id>`: one module's data requirements and state."""

    nav = "modules"
    live = True

    async def get(self, module_id: str) -> None:
        records = [r for r in await self.ctx.registry.list() if r.module_id == int(module_id)]
        if not records:
            raise tornado.web.HTTPError(404)
        view = _module_views(self.ctx, records)[0]
        users = [
            w for w in await self.ctx.workflows.list()
            if any(step.get("module_hash") == records[0].hash for step in w.execute_modules)
        ]
        self.render("module.html", module=view, users=users)


def _shift_text(workflow: Workflow) -> str:
    if not workflow.execute_shift_time:
        return "0"
    return f"{workflow.execute_shift_time:+d} {workflow.execute_shift_unit}"


def _upcoming(workflow: Workflow) -> list[datetime]:
    if not workflow.execute_cron_list:
        return []
    try:
        return [fire for fire, _tick in workflow.trigger().schedule.upcoming(utcnow(), 5)]
    except ValueError:
        return []


class WorkflowsPage(PageHandler):
    """`/workflows`: schedules, next fire times, last run; enable/disable/run now."""

    nav = "workflows"
    live = True

    async def get(self) -> None:
        workflows = await self.ctx.workflows.list()
        items = [
            {
                "workflow": w,
                "shift": _shift_text(w),
                "upcoming": _upcoming(w),
                "last_run": w.last_run or {},
                "next_run": self.ctx.scheduler.next_run_time(w.workflow_id),
            }
            for w in workflows
        ]
        self.render("workflows.html", items=items)


class WorkflowActionPage(PageHandler):
    """`POST /workflows/<id>/enable|disable|run`, then back to the list (or the run)."""

    nav = "workflows"

    async def post(self, workflow_id: str, action: str) -> None:
        if action == "run":
            workflow = await self.ctx.workflows.get(int(workflow_id))
            run_id = await self.ctx.scheduler.fire(workflow, "manual", utcnow())
            await self.audit("run", f"workflow:{workflow.workflow_id}", {"run_id": run_id})
            self.redirect(f"/history/{run_id}", status=303)
            return
        workflow = await self.ctx.workflows.set_enabled(int(workflow_id), action == "enable")
        self.ctx.scheduler.sync(workflow)
        await self.audit(action, f"workflow:{workflow.workflow_id}")
        self.redirect(f"/workflows#workflow-{workflow.workflow_id}", status=303)


@dataclass
class WorkflowForm:
    """What the create/edit form shows: strings as typed, so a re-render after a
    validation error keeps the operator's input."""

    name: str = ""
    description: str = ""
    enable: bool = True
    cron_text: str = ""
    shift_time: str = "0"
    shift_unit: str = "s"
    timezone: str = ""
    timeout_seconds: str = "600"
    overlap: str = "forbid"
    misfire: str = "skip"
    misfire_grace_seconds: str = "300"
    retries: str = "0"
    retry_delay_seconds: str = "10"
    rows: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_workflow(cls, workflow: Workflow, ids_by_hash: dict[str, int]) -> WorkflowForm:
        return cls(
            name=workflow.name,
            description=workflow.description,
            enable=workflow.enable,
            cron_text="\n".join(workflow.execute_cron_list),
            shift_time=str(workflow.execute_shift_time),
            shift_unit=workflow.execute_shift_unit,
            timezone=workflow.timezone,
            timeout_seconds=str(workflow.timeout_seconds),
            overlap=workflow.overlap,
            misfire=workflow.misfire,
            misfire_grace_seconds=str(workflow.misfire_grace_seconds),
            retries=str(workflow.retries),
            retry_delay_seconds=str(workflow.retry_delay_seconds),
            rows=[
                {
                    "module": str(ids_by_hash.get(step.get("module_hash", ""), "")),
                    "args": json.dumps(step.get("args") or {}, ensure_ascii=False, indent=2),
                }
                for step in workflow.execute_modules
            ],
        )

    def body(self, hashes_by_id: dict[str, str]) -> dict[str, Any]:
        """The core's create/update body. Raises Invalid for rows it cannot read."""
        steps = []
        for number, row in enumerate(self.rows, start=1):
            module, args_text = row["module"].strip(), row["args"].strip()
            if not module and args_text in ("", "{}"):
                continue  # an empty row
            if not module:
                raise Invalid(f"execute_modules[{number - 1}]: choose a module", field="execute_modules")
            if module not in hashes_by_id:
                raise Invalid(f"execute_modules[{number - 1}]: unknown module", field="execute_modules")
            try:
                args = json.loads(args_text) if args_text else {}
            except ValueError as exc:
                raise Invalid(f"execute_modules[{number - 1}]: args is not valid JSON ({exc.msg}, line {exc.lineno})",
                              field="execute_modules") from None
            if not isinstance(args, dict):
                raise Invalid(f"execute_modules[{number - 1}]: args must be a JSON object", field="execute_modules")
            steps.append({"module_hash": hashes_by_id[module], "args": args})
        return {
            "name": self.name,
            "description": self.description,
            "enable": self.enable,
            "execute_cron_list": [line.strip() for line in self.cron_text.splitlines() if line.strip()],
            "execute_shift_time": self.shift_time.strip(),
            "execute_shift_unit": self.shift_unit,
            "timezone": self.timezone.strip(),
            "timeout_seconds": self.timeout_seconds.strip(),
            "overlap": self.overlap,
            "misfire": self.misfire,
            "misfire_grace_seconds": self.misfire_grace_seconds.strip(),
            "retries": self.retries.strip(),
            "retry_delay_seconds": self.retry_delay_seconds.strip(),
            "execute_modules": steps,
        }


class _WorkflowFormPage(PageHandler):
    nav = "workflows"
    FIELDS = ("name", "description", "enable", "execute_cron_list", "execute_shift_time",
              "execute_shift_unit", "timezone", "execute_modules", "timeout_seconds", "overlap",
              "misfire", "misfire_grace_seconds", "retries", "retry_delay_seconds")

    def _read_form(self) -> WorkflowForm:
        arg = self.get_body_argument
        modules = self.get_body_arguments("module")
        args = self.get_body_arguments("args")
        rows = [
            {"module": modules[i] if i < len(modules) else "", "args": args[i] if i < len(args) else ""}
            for i in range(max(len(modules), len(args)))
        ]
        return WorkflowForm(
            name=arg("name", ""),
            description=arg("description", ""),
            enable=arg("enable", "") == "1",
            cron_text=arg("execute_cron_list", ""),
            shift_time=arg("execute_shift_time", "0"),
            shift_unit=arg("execute_shift_unit", "s"),
            timezone=arg("timezone", ""),
            timeout_seconds=arg("timeout_seconds", "600"),
            overlap=arg("overlap", "forbid"),
            misfire=arg("misfire", "skip"),
            misfire_grace_seconds=arg("misfire_grace_seconds", "300"),
            retries=arg("retries", "0"),
            retry_delay_seconds=arg("retry_delay_seconds", "10"),
            rows=rows,
        )

    async def _show(self, form: WorkflowForm, *, workflow: Workflow | None = None,
                    errors: dict[str, str] | None = None, extra_rows: int = 1) -> None:
        modules = await self.ctx.registry.list()
        form.rows = [r for r in form.rows if r["module"] or r["args"].strip() not in ("", "{}")]
        form.rows += [{"module": "", "args": ""} for _ in range(max(extra_rows, 2 - len(form.rows)))]
        if not form.timezone:
            form.timezone = self.ctx.settings.time_zone
        self.render(
            "workflow_form.html",
            form=form,
            workflow=workflow,
            errors=errors or {},
            modules=modules,
            online={m.hash for m in modules if self.ctx.hub.is_online(m.hash)},
            overlap_choices=OVERLAP,
            misfire_choices=MISFIRE,
            shift_units=SHIFT_UNITS,
        )

    async def _hashes_by_id(self) -> dict[str, str]:
        return {str(m.module_id): m.hash for m in await self.ctx.registry.list()}

    async def _submit(self, workflow: Workflow | None) -> None:
        form = self._read_form()
        if self.get_body_argument("action", "") == "add_row":
            blank = sum(1 for r in form.rows if not r["module"] and r["args"].strip() in ("", "{}"))
            await self._show(form, workflow=workflow, extra_rows=blank + 1)
            return
        try:
            body = form.body(await self._hashes_by_id())
            if workflow is None:
                saved = await self.ctx.workflows.create(body)
            else:
                saved = await self.ctx.workflows.update(workflow.workflow_id, body)
        except Invalid as exc:
            key = exc.field if exc.field in self.FIELDS else "form"
            self.set_status(400)
            await self._show(form, workflow=workflow, errors={key: field_message(self.locale, exc)})
            return
        self.ctx.scheduler.sync(saved)
        if workflow is None:
            await self.audit("create", f"workflow:{saved.workflow_id}", {"name": saved.name})
        else:
            await self.audit("update", f"workflow:{saved.workflow_id}", {"fields": sorted(body)})
        self.redirect(f"/workflows#workflow-{saved.workflow_id}", status=303)


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


class SchedulerPage(PageHandler):
    """`/scheduler`: jobs with their next run time; POST reloads them from the store."""

    nav = "scheduler"

    def get(self) -> None:
        reloaded = self.get_query_argument("reloaded", "")
        self.render(
            "scheduler.html",
            jobs=self.ctx.scheduler.jobs(),
            reloaded=int(reloaded) if re.fullmatch(r"[0-9]{1,9}", reloaded) else None,
        )

    async def post(self) -> None:
        result = await self.ctx.scheduler.reload()
        await self.audit("reload", "scheduler", {"current_count": result["current_count"]})
        self.redirect("/scheduler?" + urlencode({"reloaded": result["current_count"]}), status=303)


class RunsPage(PageHandler):
    """`/history`: runs, newest first, filtered by workflow and status. (`/runs` is the
    JSON API's.)"""

    nav = "runs"
    live = True

    async def get(self) -> None:
        raw_id = self.get_query_argument("workflow_id", "")
        status = self.get_query_argument("status", "")
        if raw_id and not re.fullmatch(r"[0-9]{1,18}", raw_id):
            raise Invalid("workflow_id: expected a workflow id", field="workflow_id")
        if status and status not in RUN_STATUSES:
            raise Invalid(f"status: must be one of {', '.join(RUN_STATUSES)}", field="status")
        page = _page_number(self.get_query_argument("page", "1"))
        runs, total = await self.ctx.runs.list(
            int(raw_id) if raw_id else None, status or None, page=page, page_size=PAGE_SIZE
        )
        self.render(
            "runs.html",
            runs=runs,
            **_pager("/history", {"workflow_id": raw_id, "status": status}, page, total),
            workflows=await self.ctx.workflows.list(),
            selected_workflow=raw_id,
            selected_status=status,
            statuses=RUN_STATUSES,
            filtered=bool(raw_id or status),
        )


def _page_number(raw: str) -> int:
    return int(raw) if re.fullmatch(r"[0-9]{1,7}", raw) and 1 <= int(raw) <= 1_000_000 else 1


def _pager(path: str, filters: dict[str, str], page: int, total: int) -> dict[str, Any]:
    """Template arguments for a paginated list, keeping its filters in the links."""
    def page_url(number: int) -> str:
        return f"{path}?" + urlencode({**{k: v for k, v in filters.items() if v}, "page": str(number)})

    return {"total": total, "page": page, "pages": max(1, -(-total // PAGE_SIZE)), "page_url": page_url}


class RunPage(PageHandler):
    """`/history/<run_id>`: one run, each step's status, times, message and error."""

    nav = "runs"
    live = True

    async def get(self, run_id: str) -> None:
        run = await self.ctx.runs.get(run_id)
        self.render("run.html", run=run)


class NotificationsPage(PageHandler):
    """`/outbox`: the notification outbox, newest first, filterable by status.
    (`/notifications` is the JSON API's.)"""

    nav = "notifications"

    async def get(self) -> None:
        status = self.get_query_argument("status", "")
        page = _page_number(self.get_query_argument("page", "1"))
        statuses = OUTBOX_STATUSES
        if status and status not in statuses:
            raise Invalid(f"status: must be one of {', '.join(statuses)}", field="status")
        rows, total = await self.ctx.notifier.list(page, PAGE_SIZE, status or None)
        self.render(
            "notifications.html",
            rows=rows,
            **_pager("/outbox", {"status": status}, page, total),
            statuses=statuses,
            selected_status=status,
        )


class LanguagePage(PageHandler):
    """`/lang/<code>?next=/path`: remember the language choice in a cookie."""

    auth = "public"

    def get(self, code: str) -> None:
        self.set_cookie(LANG_COOKIE, code, expires_days=365, samesite="Lax", httponly=True)
        self.redirect(safe_next(self.get_query_argument("next", "/")), status=303)


class LogoutPage(PageHandler):
    """`POST /logout`: forget the session cookie, then show the logged-out page."""

    viewer_may_post = True

    def post(self) -> None:
        self.clear_cookie(SESSION_COOKIE)
        self.redirect("/logged-out", status=303)


class LoggedOutPage(PageHandler):
    """`/logged-out`. Answers 401 without a challenge: browsers drop the HTTP
    credentials they cached for this site on a 401 to a request that carried them,
    and with no challenge they show this page instead of a login prompt. (Plain
    HTTP auth has no real logout; closing the browser is the only sure one.)"""

    auth = "public"

    def get(self) -> None:
        self.set_status(401)
        self.render("logged_out.html")


default_handlers: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/", OverviewPage),
    (r"/modules", ModulesPage),
    (r"/modules/(\d{1,18})", ModulePage),
    (r"/workflows", WorkflowsPage),
    (r"/workflows/new", WorkflowNewPage),
    (r"/workflows/(\d{1,18})/edit", WorkflowEditPage),
    (r"/workflows/(\d{1,18})/(enable|disable|run)", WorkflowActionPage),
    (r"/scheduler", SchedulerPage),
    (r"/history", RunsPage),
    (r"/history/([0-9a-f]{1,64})", RunPage),
    (r"/outbox", NotificationsPage),
    (r"/lang/(en_US|zh_CN)", LanguagePage),
    (r"/logout", LogoutPage),
    (r"/logged-out", LoggedOutPage),
]
