"""The templates' UI modules: a status badge, a time in the page's zone, a
workflow's run strip (`{% module Status(...) %}`, `Time`, `RunStrip`), built on the
labels and formatting in views.py."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import tornado.web

from tornado_sched.clock import read_datetime
from tornado_sched.strips import SPARK_HEIGHT, SPARK_WIDTH, RunStrip

from .views import ago_text, duration_text, format_time, status_view


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
