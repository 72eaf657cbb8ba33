"""What /dashboard/live sends: a module going online or offline, a run and its
steps, a step's progress, the failing-now block, each as the JSON the page's script
(static/js/live.js) patches into the page, with labels and times formatted as the
server-rendered page shows them (views.py)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import tornado.locale

from tornado_sched.clock import utcnow
from tornado_sched.failing import FailingWorkflow
from tornado_sched.hub import ModuleSession
from tornado_sched.run_state import Run, Step

from .views import (
    ago_text,
    format_time,
    output_text,
    run_duration,
    status_view,
    streak_text,
    trigger_label,
)


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


def run_view(locale: tornado.locale.Locale, zone: ZoneInfo, run: Run, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """A run, as the live socket sends it, with `steps` (step_view's, of the steps that
    changed: the page patches the rows it has by index)."""
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
        "steps": steps,
    }


def step_view(locale: tornado.locale.Locale, zone: ZoneInfo, step: Step) -> dict[str, Any]:
    """One step of a run_view."""
    return {
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


def step_report_view(run: Run, step: Step, lines: list[str]) -> dict[str, Any]:
    """A step's progress and new log lines, as the live socket sends them."""
    return {"type": "step", "run_id": run.run_id, "index": step.index, "progress": step.progress, "lines": lines}
