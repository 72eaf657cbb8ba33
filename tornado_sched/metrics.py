"""Prometheus metrics for one server, in the text exposition format.

Counted from what the core already publishes (EventBus: modules online/offline, runs
started/finished, firings) and read from core state when Prometheus scrapes (sessions,
failure counters, the outbox). Nothing here writes to a store, and the only hot-path
cost is the hub's two frame counters (plain integer increments).

Each server has its own `CollectorRegistry`, so several Applications in one process
(the tests) never share or double-register metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from .clock import as_utc, utcnow
from .events import MODULE_OFFLINE, MODULE_ONLINE, RUN_FINISHED, RUN_STARTED, SCHEDULE_FIRED
from .tables import notification_outbox

if TYPE_CHECKING:
    from .context import AppContext

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a step runs from milliseconds (an echo) to many minutes (a model run).
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Seconds between the scheduled fire time and the firing (benchmarks: p99 ~20 ms).
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OUTBOX_READ_SECONDS = 3.0


class _StateCollector(Collector):
    """Values read from the core at scrape time."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        ctx, m = self._metrics.ctx, self._metrics
        yield GaugeMetricFamily("tsched_modules_online", "Modules with an open WebSocket", value=len(ctx.hub.sessions()))
        frames = CounterMetricFamily("tsched_websocket_frames", "Module WebSocket frames", labels=["direction"])
        frames.add_metric(["in"], ctx.hub.frames_in)
        frames.add_metric(["out"], ctx.hub.frames_out)
        yield frames
        yield GaugeMetricFamily("tsched_runs_open", "Runs started and not finished", value=len(m.open_runs))
        failures = CounterMetricFamily(
            "tsched_store_write_failures", "Store writes that failed (logged; retried where it makes sense)",
            labels=["writer"],
        )
        waiting = GaugeMetricFamily(
            "tsched_sql_rows_waiting", "Rows kept in memory until SQL answers again", labels=["table"],
        )
        for writer, count in ctx.store_failures().items():
            if writer.endswith("_kept"):  # a level, not a count of events
                waiting.add_metric([writer.removesuffix("_kept")], count)
            else:
                failures.add_metric([writer], count)
        yield failures
        yield waiting
        opened = CounterMetricFamily(
            "tsched_store_connections_opened",
            "Connections opened to each store (load, MySQL's hourly recycling and reconnects open them)",
            labels=["store"],
        )
        opened.add_metric(["mongodb"], ctx.docs.connections_opened)
        opened.add_metric(["sql"], ctx.sql.connections_opened)
        yield opened
        lost = CounterMetricFamily(
            "tsched_store_connection_losses",
            "Store connections lost to an error (SQL: a pooled connection found broken; MongoDB: the "
            "driver dropped its pool after a network error); each is followed by a reconnect",
            labels=["store"],
        )
        lost.add_metric(["mongodb"], ctx.docs.connections_lost)
        lost.add_metric(["sql"], ctx.sql.connections_lost)
        yield lost
        if ctx.cluster is not None:
            yield CounterMetricFamily(
                "tsched_cluster_step_reports_dropped",
                "Progress/log reports not relayed to another instance: too many steps waiting (display only)",
                value=sum(queue.dropped for queue in ctx.cluster.report_queues),
            )
        yield GaugeMetricFamily("tsched_outbox_pending", "Notifications not sent yet (pending or retrying)",
                                value=m.outbox_pending)
        yield GaugeMetricFamily("tsched_outbox_oldest_pending_age_seconds",
                                "Age of the oldest unsent notification (0 when none)", value=m.outbox_oldest_age)
        yield GaugeMetricFamily("tsched_outbox_read_ok", "1 if the last outbox query at scrape time worked",
                                value=1 if m.outbox_read_ok else 0)


class ServerMetrics:
    """The metrics of one running server; `render()` is what /metrics returns."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.registry = CollectorRegistry(auto_describe=True)
        self.open_runs: set[str] = set()
        self._finished_first: set[str] = set()
        self.outbox_pending = 0
        self.outbox_oldest_age = 0.0
        self.outbox_read_ok = True
        self.connects = Counter("tsched_module_connects", "Module WebSocket sessions opened",
                                registry=self.registry)
        self.disconnects = Counter("tsched_module_disconnects", "Module WebSocket sessions closed",
                                   registry=self.registry)
        self.runs_started = Counter("tsched_runs_started", "Runs started, by trigger", ["trigger"],
                                    registry=self.registry)
        self.runs_finished = Counter("tsched_runs_finished", "Runs finished, by final status", ["status"],
                                     registry=self.registry)
        self.step_duration = Histogram(
            "tsched_step_duration_seconds", "From sending a step's execute command to its result, by status",
            ["status"], buckets=STEP_BUCKETS, registry=self.registry,
        )
        self.lateness = Histogram(
            "tsched_scheduling_lateness_seconds", "Scheduled fire time (tick + shift) to the firing",
            buckets=LATENESS_BUCKETS, registry=self.registry,
        )
        self.registry.register(_StateCollector(self))
        self._unsubscribe = ctx.events.subscribe(self._on_event)

    def close(self) -> None:
        self._unsubscribe()

    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == MODULE_ONLINE:
            self.connects.inc()
        elif kind == MODULE_OFFLINE:
            self.disconnects.inc()
        elif kind == RUN_STARTED:
            run = data["run"]
            self.runs_started.labels(run.trigger).inc()
            if run.run_id in self._finished_first:
                self._finished_first.discard(run.run_id)
            else:
                self.open_runs.add(run.run_id)
        elif kind == RUN_FINISHED:
            run = data["run"]
            if run.run_id in self.open_runs:
                self.open_runs.discard(run.run_id)
            elif run.status != "skipped":
                # A fast module can finish a run before its "started" is published
                # (the tracker awaits a store write in between). Skipped runs never start.
                self._finished_first.add(run.run_id)
            self.runs_finished.labels(run.status).inc()
            for step in run.steps:
                if step.sent_at is not None and step.ended_at is not None:
                    seconds = (step.ended_at - step.sent_at).total_seconds()
                    self.step_duration.labels(step.status).observe(max(seconds, 0.0))
        elif kind == SCHEDULE_FIRED:
            self.lateness.observe(max(float(data["lateness_seconds"]), 0.0))

    async def _read_outbox(self) -> None:
        unsent = notification_outbox.c.status.in_(("pending", "retrying"))
        try:
            # Bounded like /ready's probe: a scrape answers within its timeout.
            async with self.ctx.sql.connect(OUTBOX_READ_SECONDS) as conn:
                row = (await conn.execute(
                    select(func.count(), func.min(notification_outbox.c.created_at)).where(unsent)
                )).one()
        except Exception as exc:  # a scrape still answers; the gauge says the read failed
            self.outbox_read_ok = False
            log.warning("metrics: outbox query failed: %s", type(exc).__name__)
            return
        self.outbox_read_ok = True
        self.outbox_pending = int(row[0] or 0)
        oldest: datetime | None = row[1]
        self.outbox_oldest_age = (utcnow() - as_utc(oldest)).total_seconds() if oldest else 0.0

    async def render(self) -> bytes:
        """Refresh what needs a query, then the exposition text."""
        await self._read_outbox()
        return generate_latest(self.registry)
