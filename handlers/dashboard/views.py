"""How the dashboard shows things: labels, badges, times in the configured zone,
field messages, pagination, the UI modules, and the live socket's JSON views of a
module and a run. Pure presentation: no core calls."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import tornado.locale
import tornado.web

from tornado_sched.clock import read_datetime, utcnow
from tornado_sched.errors import Invalid
from tornado_sched.hub import ModuleSession
from tornado_sched.runs import Run
from tornado_sched.text import has_control_chars
from tornado_sched.workflows import Workflow

LANG_COOKIE = "lang"
LANGUAGES = (("en_US", "English"), ("zh_CN", "中文"))
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
SHIFT_UNITS = (("s", "seconds"), ("m", "minutes"), ("h", "hours"))  # labels of workflows.SHIFT_UNITS


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
    """A same-site path to redirect to; anything else (`//evil`, `https://...`,
    `/\\evil`, or any control character: browsers drop TAB/CR/LF from URLs, so
    `/%09/evil` would become `//evil`) -> default."""
    if (not target or not target.startswith("/") or target.startswith("//") or "\\" in target
            or has_control_chars(target) or len(target) > 2000):
        return default
    return target


def shift_text(workflow: Workflow) -> str:
    """`-30 s`, or `0` without a shift."""
    if not workflow.execute_shift_time:
        return "0"
    return f"{workflow.execute_shift_time:+d} {workflow.execute_shift_unit}"



def page_number(raw: str) -> int:
    """A `page` query argument; anything odd is page 1."""
    return int(raw) if re.fullmatch(r"[0-9]{1,7}", raw) and 1 <= int(raw) <= 1_000_000 else 1


def pager(path: str, filters: dict[str, str], page: int, total: int) -> dict[str, Any]:
    """Template arguments for a paginated list, keeping its filters in the links."""
    def page_url(number: int) -> str:
        return f"{path}?" + urlencode({**{k: v for k, v in filters.items() if v}, "page": str(number)})

    return {"total": total, "page": page, "pages": max(1, -(-total // PAGE_SIZE)), "page_url": page_url}


def badge(locale: tornado.locale.Locale, status: str) -> dict[str, str]:
    """A status badge as JSON for the live socket."""
    key, label, tone = status_view(locale, status)
    return {"key": key, "label": label, "tone": tone}


def module_event_view(
    locale: tornado.locale.Locale, zone: ZoneInfo, data: dict[str, Any], online: bool,
    session: ModuleSession | None, online_count: int,
) -> dict[str, Any]:
    """A module going online or offline, as the live socket sends it."""
    return {
        "type": "module",
        "module_id": data["module_id"],
        "name": data["name"],
        "online": online,
        "status": badge(locale, "online" if online else "offline"),
        "connected_at": format_time(session.connected_at, zone) if session else "",
        "last_heartbeat": format_time(session.last_heartbeat, zone) if session else "",
        "remote_address": session.remote_address if session else "",
        "online_count": online_count,
    }


def run_view(locale: tornado.locale.Locale, zone: ZoneInfo, run: Run) -> dict[str, Any]:
    """A run and its steps, as the live socket sends it."""
    return {
        "run_id": run.run_id,
        "url": f"/history/{run.run_id}",
        "workflow_id": run.workflow_id,
        "workflow_name": run.workflow_name,
        "workflow_url": f"/history?workflow_id={run.workflow_id}",
        "trigger": trigger_label(locale, run.trigger),
        "execution_time": run.execution_time.replace("T", " "),
        "status": badge(locale, run.status),
        "started_at": format_time(run.started_at, zone),
        "ended_at": format_time(run.ended_at, zone),
        "reason": run.reason or "",
        "steps": [
            {
                "index": step.index,
                "module_name": step.module_name,
                "status": badge(locale, step.status),
                "attempts": step.attempts,
                "sent_at": format_time(step.sent_at, zone),
                "ended_at": format_time(step.ended_at, zone),
                "message": step.message or "",
                "error": step.error or "",
            }
            for step in run.steps
        ],
    }


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
