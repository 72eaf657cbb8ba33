"""How the dashboard shows things: labels, badges, times in the configured zone,
ages and durations, translated field messages, pagination. Pure presentation: no
core calls. The template UI modules built on these are in ui_modules.py, the live
socket's JSON views in live_views.py."""

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
        (r"(?P<size>\d+) bytes as JSON, more than (?P<n>\d+)", "%(size)s bytes as JSON, more than %(n)s"),
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


def streak_text(locale: tornado.locale.Locale, item: FailingWorkflow) -> str:
    """`3 failed runs in a row` (`at least 100` when history was cut short)."""
    if item.streak_capped:
        return locale.translate("at least %(n)d failed runs in a row") % {"n": item.streak}
    return locale.translate("%(n)d failed run in a row", "%(n)d failed runs in a row", item.streak) % {"n": item.streak}


OUTPUT_PREVIEW_CHARS = 300


def output_text(output: Any) -> str:
    """A step's output as short JSON for a table cell (the full value is in the API)."""
    text = json.dumps(output, ensure_ascii=False)
    return text if len(text) <= OUTPUT_PREVIEW_CHARS else text[: OUTPUT_PREVIEW_CHARS - 1] + "…"


def status_tone(status: str | None) -> str:
    """The tone of a run step's status (its badge, and its node in the plan graph)."""
    key = status or "none"
    return STEP_TONES.get(key, STATUS.get(key, ("", "muted"))[1])
