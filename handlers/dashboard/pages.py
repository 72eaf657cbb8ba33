"""The operator dashboard's pages: server-rendered over the core.

Thin like every handler: read the query or form, call the core, render a template.
Pages answer errors with an HTML page (never a traceback, never the JSON envelope).
Changes are POST forms carrying Tornado's XSRF token; each posts to a page endpoint
that calls the core and redirects back (post/redirect/get).

Live updates (module online/offline, run progress) come over `/dashboard/live`
(live.py); pages only mark the elements that can change with data attributes that
static/js/live.js looks for. Labels and formatting are in views.py, the templates' UI
modules in ui_modules.py, the workflow form in forms.py.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any, ClassVar
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import tornado.locale
import tornado.web

from tornado_sched.errors import DomainError, Invalid
from tornado_sched.history import (
    HISTORY_STATUSES,
    MODULE_STEP_STATUSES,
    RunFilter,
    parse_time_bound,
)
from tornado_sched.logs import short_secret
from tornado_sched.modules import MODULE_SORTS, MODULE_STATES
from tornado_sched.notify import STATUSES as OUTBOX_STATUSES

from ..base import BaseHandler
from .views import (
    ADMIN_NAV,
    LANG_COOKIE,
    LANGUAGES,
    LIVE_RECENT_RUNS,
    NAV,
    OUTBOX_KINDS,
    PAGE_SIZE,
    ago_text,
    chosen_locale,
    format_time,
    output_text,
    page_number,
    pager,
    run_duration,
    safe_next,
    status_tone,
    status_view,
    streak_text,
    trigger_label,
    zone_label,
)

log = logging.getLogger(__name__)


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
            nav_items=NAV + ADMIN_NAV if getattr(self.current_user, "is_admin", False) else NAV,
            live=self.live,
            languages=LANGUAGES,
            zone_name=self.ctx.settings.time_zone,
            zone_label=zone_label(self.ctx.settings.time_zone),
            fmt_time=lambda value: format_time(value, self.zone) or "—",
            trigger_label=lambda trigger: trigger_label(self.locale, trigger),
            status_text=lambda status: status_view(self.locale, status)[1],
            ago=lambda value: ago_text(self.locale, value),
            duration=lambda started, ended: run_duration(self.locale, started, ended),
            status_tone=status_tone,
            output_text=output_text,
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
class OverviewPage(PageHandler):
    """`/`: module counts, failing workflows, recent runs."""

    nav = "overview"
    live = True

    async def get(self) -> None:
        modules = await self.ctx.modules.list()
        workflows = await self.ctx.workflows.list()
        recent = await self.ctx.runs.list(RunFilter(), page=1, page_size=LIVE_RECENT_RUNS)
        runs = recent.runs
        total_runs = str(recent.total) if recent.total_exact else f"{recent.total}+"
        online = sum(1 for m in modules if m.online)
        self.render(
            "overview.html",
            modules=modules,
            online=online,
            offline=len(modules) - online,
            workflows=workflows,
            failing=self.ctx.failing.list(),
            streak_text=lambda item: streak_text(self.locale, item),
            runs=runs,
            total_runs=total_runs,
            recent_limit=LIVE_RECENT_RUNS,
            failed_writes=self.ctx.store_failures(),
        )


class ModulesPage(PageHandler):
    """`/modules`: every module with its live state."""

    nav = "modules"
    live = True

    async def get(self) -> None:
        name = self.get_query_argument("q", "")[:100]
        state = self.get_query_argument("state", "")
        sort = self.get_query_argument("sort", "") or MODULE_SORTS[0]
        listing = await self.ctx.modules.browse(name, state, sort)
        self.render(
            "modules.html", listing=listing, modules=listing.modules, q=name, state=state, sort=sort,
            states=MODULE_STATES, sorts=MODULE_SORTS, filtered=bool(name or state),
        )


class ModulePage(PageHandler):
    """`/modules/<module_id>`: one module's data requirements and state, and the steps
    it was sent (newest first, keyset pages like /history, filtered by status)."""

    nav = "modules"
    live = True

    async def get(self, module_id: str) -> None:
        status = self.get_query_argument("status", "")
        before = self.get_query_argument("before", "") or None
        if status and status not in MODULE_STEP_STATUSES:
            raise Invalid(f"status: must be one of {', '.join(MODULE_STEP_STATUSES)}", field="status")
        view, users = await self.ctx.modules.get_by_id(int(module_id))
        found = await self.ctx.runs.module_history(
            view.record.hash, status=status or None, before=before, page_size=PAGE_SIZE)
        path = f"/modules/{view.record.module_id}"

        def link(**extra: str) -> str:
            query = urlencode({**({"status": status} if status else {}), **extra})
            return f"{path}?{query}#history" if query else f"{path}#history"

        self.render(
            "module.html", module=view, users=users, steps=found.steps, statuses=MODULE_STEP_STATUSES,
            selected_status=status, path=path,
            newest_url=link() if before else None,
            older_url=link(before=found.next_before) if found.has_more and found.next_before else None,
        )


class SchedulerPage(PageHandler):
    """`/scheduler`: jobs with their next run time; POST reloads them from the store."""

    nav = "scheduler"

    async def get(self) -> None:
        reloaded = self.get_query_argument("reloaded", "")
        self.render(
            "scheduler.html",
            jobs=await self.ctx.scheduler.jobs_and_paused(),
            reloaded=int(reloaded) if re.fullmatch(r"[0-9]{1,9}", reloaded) else None,
        )

    async def post(self) -> None:
        result = await self.ctx.scheduler.reload()
        await self.audit("reload", "scheduler", {"current_count": result["current_count"]})
        self.redirect("/scheduler?" + urlencode({"reloaded": result["current_count"]}), status=303)


# The /history page's sort: newest or oldest first, both a walk of the same indexes.
RUN_SORTS = ("newest", "oldest")


class RunsPage(PageHandler):
    """`/history`: runs, newest (or oldest) first, filtered by workflow, status and
    days, searched by workflow name or run id prefix (`q`). (`/runs` is the JSON
    API's.)"""

    nav = "runs"
    live = True

    async def get(self) -> None:
        raw_id = self.get_query_argument("workflow_id", "")
        status = self.get_query_argument("status", "")
        since_day = self.get_query_argument("since", "")
        until_day = self.get_query_argument("until", "")
        search = self.get_query_argument("q", "").strip()
        sort = self.get_query_argument("sort", "") or RUN_SORTS[0]
        before = self.get_query_argument("before", "") or None
        if raw_id and not re.fullmatch(r"[0-9]{1,18}", raw_id):
            raise Invalid("workflow_id: expected a workflow id", field="workflow_id")
        if status and status not in HISTORY_STATUSES:
            raise Invalid(f"status: must be one of {', '.join(HISTORY_STATUSES)}", field="status")
        if sort not in RUN_SORTS:
            raise Invalid(f"sort: must be one of {', '.join(RUN_SORTS)}", field="sort")
        for name, day in (("since", since_day), ("until", until_day)):
            if day and not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", day):
                raise Invalid(f"{name}: expected a date (YYYY-MM-DD)", field=name)
        filters = RunFilter(
            workflow_id=int(raw_id) if raw_id else None,
            status=status or None,
            since=parse_time_bound("since", since_day),
            # `until` is a day: runs up to the end of it.
            until=parse_time_bound("until", until_day) + timedelta(days=1) if until_day else None,
            oldest_first=sort == "oldest",
        )
        page = page_number(self.get_query_argument("page", "1"))
        found = await self.ctx.runs.list(
            filters, before=before, page=None if before else page, page_size=PAGE_SIZE, search=search,
        )
        kept = {"q": search, "workflow_id": raw_id, "status": status, "since": since_day, "until": until_day}

        def link(**extra: str) -> str:
            query = urlencode({**{k: v for k, v in kept.items() if v}, **extra})
            return "/history?" + query if query else "/history"

        first_page = before is None and page == 1
        sorted_by = {} if sort == RUN_SORTS[0] else {"sort": sort}
        self.render(
            "runs.html",
            runs=found.runs,
            total=found.total,
            total_exact=found.total_exact,
            first_page=first_page,
            newest_url=None if first_page else link(**sorted_by),
            older_url=link(**sorted_by, before=found.next_before) if found.has_more and found.next_before else None,
            # The other order, from its first page.
            sort_url=link(**({} if sort == "oldest" else {"sort": "oldest"})),
            sort=sort,
            q=search,
            workflows=await self.ctx.workflows.list(),
            selected_workflow=raw_id,
            selected_status=status,
            since=since_day,
            until=until_day,
            statuses=HISTORY_STATUSES,
            filtered=any(kept.values()),
        )


class RunPage(PageHandler):
    """`/history/<run_id>`: one run, each step's status, times, message, error and
    output; a data-ordered workflow's plan drawn as an SVG graph in step colours."""

    nav = "runs"
    live = True

    async def get(self, run_id: str) -> None:
        run, graph = await self.ctx.runs.detail(run_id)
        self.render("run.html", run=run, graph=graph)


class RunActionPage(PageHandler):
    """`/history/<run_id>/cancel|rerun`: GET asks for confirmation (a page, so it works
    without JavaScript), POST (XSRF form) cancels or re-runs, then shows the run."""

    nav = "runs"

    async def get(self, run_id: str, action: str) -> None:
        run = await self.ctx.runs.get(run_id)
        steps = self.get_query_argument("steps", "failed")
        self.render("run_action.html", run=run, action=action, steps="all" if steps == "all" else "failed")

    async def post(self, run_id: str, action: str) -> None:
        if action == "cancel":
            actor = self.current_user.username if self.current_user else ""
            run = await self.ctx.runs.cancel(run_id, actor)
            await self.audit("cancel", f"run:{run.run_id}", {"workflow_id": run.workflow_id})
            self.redirect(f"/history/{run.run_id}", status=303)
            return
        steps = self.get_body_argument("steps", "failed")
        rerun = await self.ctx.runs.rerun(run_id, steps)
        await self.audit("rerun", f"run:{run_id}", {"run_id": rerun.run_id, "steps": steps})
        self.redirect(f"/history/{rerun.run_id}", status=303)


class NotificationsPage(PageHandler):
    """`/outbox`: the notification outbox, newest first, filterable by status.
    (`/notifications` is the JSON API's.)"""

    nav = "notifications"

    async def get(self) -> None:
        status = self.get_query_argument("status", "")
        page = page_number(self.get_query_argument("page", "1"))
        statuses = OUTBOX_STATUSES
        if status and status not in statuses:
            raise Invalid(f"status: must be one of {', '.join(statuses)}", field="status")
        rows, total = await self.ctx.notifier.list(page, PAGE_SIZE, status or None)
        self.render(
            "notifications.html",
            rows=rows,
            **pager("/outbox", {"status": status}, page, total),
            statuses=statuses,
            selected_status=status,
            alerting_on=self.ctx.notifier.alerting_on,
            kind_label=lambda kind: self.locale.translate(OUTBOX_KINDS.get(kind, kind or "")),
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

    async def post(self) -> None:
        await self.end_session()
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
    (r"/scheduler", SchedulerPage),
    (r"/history", RunsPage),
    (r"/history/([0-9a-f]{1,64})", RunPage),
    (r"/history/([0-9a-f]{1,64})/(cancel|rerun)", RunActionPage),
    (r"/outbox", NotificationsPage),
    (r"/lang/(en_US|zh_CN)", LanguagePage),
    (r"/logout", LogoutPage),
    (r"/logged-out", LoggedOutPage),
]
