"""How the dashboard shows things: labels, badges, times in the configured zone,
field messages, pagination, the UI modules, and the live socket's JSON views of a
module and a run. Pure presentation: no core calls."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import tornado.locale
import tornado.web

from tornado_sched.clock import read_datetime, utcnow
from tornado_sched.errors import Invalid
from tornado_sched.failing import FailingWorkflow
from tornado_sched.hub import ModuleSession
from tornado_sched.run_state import Run, Step
from tornado_sched.strips import SPARK_HEIGHT, SPARK_WIDTH, RunStrip
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
# Shown after NAV to admins only (the pages refuse everyone else anyway).
ADMIN_NAV = (
    ("/admin/audit", "Audit log", "audit"),
    ("/admin/tokens", "API tokens", "tokens"),
    ("/admin/sessions", "Sessions", "sessions"),
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
    "upstream_failed": ("Upstream failed", "bad"),
    "cancelled": ("Cancelled", "muted"),
    "enabled": ("Enabled", "ok"),
    "disabled": ("Disabled", "muted"),
    "retrying": ("Retrying", "warn"),
    "not_configured": ("Not configured", "muted"),
    "none": ("Never run", "muted"),
}

# A step that could not be sent because its module was offline failed: a failure's
# colour, though a module being offline is only a muted fact on the modules page.
STEP_TONES = {"offline": "bad"}

TRIGGER_LABELS = {"schedule": "Schedule", "manual": "Manual", "misfire": "Misfire", "rerun": "Re-run"}
OUTBOX_KINDS = {"failure": "Failure notice", "recovery": "Recovery notice"}
# The history page's status filter: the failed group first, then each status.
HISTORY_STATUS_LABELS = {"failed": "Failed (any)"}
LIVE_RECENT_RUNS = 20  # rows the overview's live recent-runs table keeps
SHIFT_UNITS = (("s", "seconds"), ("m", "minutes"), ("h", "hours"))  # labels of workflows.SHIFT_UNITS


def chosen_locale(handler: tornado.web.RequestHandler) -> tornado.locale.Locale | None:
    """The `lang` cookie when it names a language we offer; else None, and Tornado
    falls back to Accept-Language (`get_browser_locale`)."""
    code = handler.get_cookie(LANG_COOKIE)
    if code in dict(LANGUAGES):
        return tornado.locale.get(code)
    return None


def status_view(locale: tornado.locale.Locale, status: str | None, *, step: bool = False) -> tuple[str, str, str]:
    """(status key, translated label, tone) for a badge; `step` for a run step's."""
    key = status or "none"
    if key in HISTORY_STATUS_LABELS:
        return key, locale.translate(HISTORY_STATUS_LABELS[key]), "bad"
    label, tone = STATUS.get(key, (key, "muted"))
    if step:
        tone = STEP_TONES.get(key, tone)
    return key, locale.translate(label), tone


def ago_text(locale: tornado.locale.Locale, value: Any, now: datetime | None = None) -> str:
    """`3 min ago` (translated); empty for no time."""
    instant = read_datetime(value)
    if instant is None:
        return ""
    seconds = int(((now or utcnow()) - instant).total_seconds())
    if seconds < 0:
        return locale.translate("in %(span)s") % {"span": duration_text(locale, -seconds)}
    if seconds < 45:
        return locale.translate("just now")
    return locale.translate("%(span)s ago") % {"span": duration_text(locale, seconds, coarse=True)}


def duration_text(locale: tornado.locale.Locale, seconds: float | None, *, coarse: bool = False) -> str:
    """`850 ms`, `42 s`, `3 min 5 s`, `2 h 10 min`, `3 d 4 h`; `coarse` keeps the
    larger unit only (for ages)."""
    if seconds is None:
        return ""
    if seconds < 1 and not coarse:
        return locale.translate("%(n)d ms") % {"n": int(seconds * 1000)}
    total = int(seconds)
    parts: list[tuple[int, str]] = []
    for size, unit in ((86400, "%(n)d d"), (3600, "%(n)d h"), (60, "%(n)d min"), (1, "%(n)d s")):
        if total >= size or (size == 1 and not parts):
            parts.append((total // size, unit))
            total %= size
    shown = parts[:1] if coarse else parts[:2]
    return " ".join(locale.translate(unit) % {"n": n} for n, unit in shown)


def run_duration(locale: tornado.locale.Locale, started: Any, ended: Any) -> str:
    """How long a run or step took; empty while it is open."""
    start, end = read_datetime(started), read_datetime(ended)
    if start is None or end is None:
        return ""
    return duration_text(locale, max(0.0, (end - start).total_seconds()))


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

# The core's validation messages (after the field prefix) -> an English template the
# locale files translate, with the variable parts as named groups. A message that
# matches none is shown as the core wrote it.
MESSAGE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.S), template) for pattern, template in (
        (r"required string", "required"),
        (r"at most (?P<n>\d+) characters", "at most %(n)s characters"),
        (r"expected a string of at most (?P<n>\d+) characters", "at most %(n)s characters"),
        (r"expected true or false", "expected true or false"),
        (r"invalid crontab line (?P<line>'.*?'): (?P<detail>.*)", "invalid crontab line %(line)s: %(detail)s"),
        (r"crontab line (?P<line>'.*?') has (?P<n>\d+) fields, expected exactly 5.*",
         "crontab line %(line)s has %(n)s fields; expected 5: minute hour day-of-month month day-of-week"),
        (r"crontab line (?P<line>'.*?'): unsupported macro.*", "crontab line %(line)s: unsupported macro"),
        (r"crontab line is empty", "crontab line is empty"),
        (r"an enabled workflow needs at least one crontab line", "an enabled workflow needs at least one crontab line"),
        (r"an enabled workflow needs at least one module", "an enabled workflow needs at least one module"),
        (r"expected an integer", "expected a whole number"),
        (r"shift (?P<shift>\S+) is out of range.*", "shift %(shift)s is out of range: at most 7 days either way"),
        (r"must be one of s, m, h", "choose seconds, minutes or hours"),
        (r"unknown time zone", "unknown time zone"),
        (r"must be between (?P<lo>-?\d+) and (?P<hi>-?\d+)", "must be between %(lo)s and %(hi)s"),
        (r"must be one of (?P<choices>.*)", "must be one of %(choices)s"),
        (r"choose a module", "choose a module"),
        (r"unknown module", "unknown module"),
        (r"args is not valid JSON \((?P<detail>.*), line (?P<line>\d+)\)",
         "args is not valid JSON (%(detail)s, line %(line)s)"),
        (r"args must be a JSON object", "args must be a JSON object"),
        (r"expected an object", "expected a JSON object"),
        (r"a workflow named (?P<name>.*) already exists", "a workflow named %(name)s already exists"),
    )
)
# croniter's details that people meet most, translated too.
CRON_DETAILS = (
    (re.compile(r".*out of range.*", re.S), "a value is out of range"),
    (re.compile(r".*(not acceptable|invalid).*", re.S), "a field is not valid"),
)


def localized(locale: tornado.locale.Locale, text: str) -> str:
    """A core message in the page's language (see MESSAGE_PATTERNS)."""
    for pattern, template in MESSAGE_PATTERNS:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        values = match.groupdict()
        if "detail" in values and template.startswith("invalid crontab"):
            values["detail"] = next((locale.translate(t) for p, t in CRON_DETAILS if p.fullmatch(values["detail"])),
                                    values["detail"])
        return locale.translate(template) % values
    return text


def field_message(locale: tornado.locale.Locale, exc: Invalid) -> str:
    """The core's message without its field prefix (the form shows it next to the
    field), translated: `execute_cron_list[1]: bad line` -> `Line 2: bad line`."""
    match = _FIELD_PREFIX.match(exc.message)
    if match is None or match["field"] != exc.field:
        return localized(locale, exc.message)
    rest = localized(locale, match["rest"])
    if match["index"] is not None:
        template = "Line %(n)d: %(message)s" if exc.field == "execute_cron_list" else "Row %(n)d: %(message)s"
        return locale.translate(template) % {"n": int(match["index"]) + 1, "message": rest}
    return rest


def field_errors(locale: tornado.locale.Locale, problems: list[Invalid], fields: tuple[str, ...]) -> dict[str, list[str]]:
    """Every problem, by form field in the form's order (`form` for the rest)."""
    errors: dict[str, list[str]] = {}
    for exc in sorted(problems, key=lambda e: fields.index(e.field) if e.field in fields else len(fields)):
        key = exc.field if exc.field in fields else "form"
        message = field_message(locale, exc)
        if message not in errors.setdefault(key, []):
            errors[key].append(message)
    return errors


def fire_time_views(fire_times: list[datetime], zone_name: str) -> list[dict[str, str]]:
    """Preview fire times in the workflow's own zone (what its crontab means)."""
    zone = ZoneInfo(zone_name)
    return [{"iso": t.isoformat(), "text": t.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %a")} for t in fire_times]


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


def badge(locale: tornado.locale.Locale, status: str, *, step: bool = False) -> dict[str, str]:
    """A status badge as JSON for the live socket."""
    key, label, tone = status_view(locale, status, step=step)
    return {"key": key, "label": label, "tone": tone}


def failing_view(locale: tornado.locale.Locale, zone: ZoneInfo, failing: list[FailingWorkflow]) -> dict[str, Any]:
    """The overview's failing-now block, as the live socket sends it."""
    now = utcnow()
    return {
        "type": "failing",
        "count": len(failing),
        "items": [
            {
                "workflow_id": f.workflow_id,
                "workflow_name": f.workflow_name,
                "workflow_url": f"/history?workflow_id={f.workflow_id}",
                "run_url": f"/history/{f.run_id}",
                "run_label": locale.translate("Latest failed run of %(name)s") % {"name": f.workflow_name},
                "status": badge(locale, f.status),
                "since_iso": f.since.isoformat(),
                "since": format_time(f.since, zone),
                "since_ago": ago_text(locale, f.since, now),
                "streak": streak_text(locale, f),
                "modules": ", ".join(f.modules),
                "error": f.error,
            }
            for f in failing
        ],
    }


def streak_text(locale: tornado.locale.Locale, item: FailingWorkflow) -> str:
    """`3 failed runs in a row` (`at least 100` when history was cut short)."""
    if item.streak_capped:
        return locale.translate("at least %(n)d failed runs in a row") % {"n": item.streak}
    return locale.translate("%(n)d failed run in a row", "%(n)d failed runs in a row", item.streak) % {"n": item.streak}


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
        "since_label": locale.translate("Connected since") if online else locale.translate("Last seen"),
        "since_iso": (session.connected_at if session else utcnow()).isoformat(),
        "since": format_time(session.connected_at if session else utcnow(), zone),
        "last_heartbeat": format_time(session.last_heartbeat, zone) if session else "",
        # The address cell; in a cluster it names the instance holding the socket.
        "remote_address": (
            f"{session.remote_address or ''} @ {session.instance}" if session and session.instance
            else (session.remote_address or "") if session else ""
        ),
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
        "nominal_iso": run.nominal_time.isoformat(),
        "nominal": format_time(run.nominal_time, zone),
        "status": badge(locale, run.status),
        "started_at": format_time(run.started_at, zone),
        "started_iso": run.started_at.isoformat(),
        "ended_at": format_time(run.ended_at, zone),
        "ended_iso": run.ended_at.isoformat() if run.ended_at else "",
        "duration": run_duration(locale, run.started_at, run.ended_at),
        "reason": run.reason or "",
        "open": run.open,
        "steps": [
            {
                "index": step.index,
                "module_name": step.module_name,
                "status": badge(locale, step.status, step=True),
                "attempts": step.attempts,
                "sent_at": format_time(step.sent_at, zone),
                "sent_iso": step.sent_at.isoformat() if step.sent_at else "",
                "ended_at": format_time(step.ended_at, zone),
                "duration": run_duration(locale, step.sent_at, step.ended_at),
                "message": step.message or "",
                "error": step.error or "",
                "output": "" if step.output is None else output_text(step.output),
                "progress": step.progress,
            }
            for step in run.steps
        ],
    }


def step_report_view(run: Run, step: Step, lines: list[str]) -> dict[str, Any]:
    """A step's progress and new log lines, as the live socket sends them."""
    return {"type": "step", "run_id": run.run_id, "index": step.index, "progress": step.progress, "lines": lines}


# -- UI modules ---------------------------------------------------------------------
class Status(tornado.web.UIModule):
    """A status badge: `{% module Status(run.status) %}`; `step=True` for a step's."""

    def render(self, status: str | None, step: bool = False) -> str:
        key, label, tone = status_view(self.locale, status, step=step)
        return self.render_string("modules/status.html", key=key, label=label, tone=tone)


class Time(tornado.web.UIModule):
    """A `<time>` element in the page's zone (static/js/time.js may rewrite it to the
    browser's): `{% module Time(run.started_at) %}`; `ago=True` adds `3 min ago`."""

    def render(self, value: Any, empty: str = "—", ago: bool = False) -> str:
        instant = read_datetime(value)
        zone = ZoneInfo(self.handler.ctx.settings.time_zone)
        return self.render_string(
            "modules/time.html",
            iso=instant.isoformat() if instant else "",
            text=format_time(instant, zone) if instant else empty,
            ago=ago_text(self.locale, instant) if instant and ago else "",
        )


OUTPUT_PREVIEW_CHARS = 300


def output_text(output: Any) -> str:
    """A step's output as short JSON for a table cell (the full value is in the API)."""
    text = json.dumps(output, ensure_ascii=False)
    return text if len(text) <= OUTPUT_PREVIEW_CHARS else text[: OUTPUT_PREVIEW_CHARS - 1] + "…"


def status_tone(status: str | None) -> str:
    """The tone of a run step's status (its badge, and its node in the plan graph)."""
    key = status or "none"
    return STEP_TONES.get(key, STATUS.get(key, ("", "muted"))[1])


class RunStripView(tornado.web.UIModule):
    """A workflow's last runs as coloured squares (newest right, each a link to its
    run, titled with status and start time), its success rate and an inline-SVG
    duration sparkline: `{% module RunStrip(strip, name) %}`. No script needed."""

    def render(self, strip: RunStrip, name: str) -> str:
        zone = ZoneInfo(self.handler.ctx.settings.time_zone)
        locale = self.locale
        runs = []
        for run in strip.runs:
            _key, label, tone = status_view(locale, run.status)
            title = f"{label} · {format_time(run.started_at, zone)}"
            if run.duration_seconds is not None:
                title += f" · {duration_text(locale, run.duration_seconds)}"
            runs.append({"run_id": run.run_id, "tone": tone, "title": title})
        rate = strip.success_rate
        durations = strip.durations
        return self.render_string(
            "modules/run_strip.html",
            runs=runs,
            label=locale.translate("Last %(count)d runs of %(name)s, oldest first") % {"count": len(runs), "name": name},
            rate=("—" if rate is None else locale.translate("%(rate)d%% succeeded") % {"rate": round(rate * 100)}),
            points=strip.sparkline_points(),
            width=SPARK_WIDTH,
            height=SPARK_HEIGHT,
            spark_label=locale.translate("Durations: shortest %(low)s, longest %(high)s") % {
                "low": duration_text(locale, min(durations)) if durations else "",
                "high": duration_text(locale, max(durations)) if durations else "",
            },
        )


UI_MODULES = {"Status": Status, "Time": Time, "RunStrip": RunStripView}
