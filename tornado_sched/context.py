"""The one object every handler reaches the core through.

`open_context` opens resources in dependency order inside the running loop;
`AppContext.close` closes them in reverse. Nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pymongo

from .audit import AuditLog
from .auth import ApiTokens, LoginThrottle, OperatorAccounts, ReplayGuard
from .config import Settings
from .docserver import EmbeddedDocumentServer
from .events import EventBus
from .failing import FailingNow
from .history import RunHistory
from .hub import ConnectionHub
from .metrics import ServerMetrics
from .modules import ModuleService
from .notify import Notifier
from .private import make_private
from .registry import ModuleRegistry
from .runs import RunTracker
from .scheduler import WorkflowScheduler
from .sessions import BrowserSessions
from .stores import DocumentStore, SqlStore, check_ready
from .workflows import WorkflowStore

log = logging.getLogger(__name__)

# /health fails once the embedded document server has been dead (and not restarted)
# this long, so an orchestrator restarts the whole process; shorter outages are 503s
# on /ready while the supervisor restarts the child.
DOCSERVER_DEAD_SECONDS = 60.0
SHUTDOWN_PROBE_SECONDS = 1.0
SHUTDOWN_STORE_OP_SECONDS = 0.5
# With a store not answering, every shutdown step that may write gets this much in
# all (the probes included); then the pool, the client and the document server are
# still closed, so the whole stop stays within 5 s.
SHUTDOWN_BUDGET_SECONDS = 4.0
SHUTDOWN_RELEASE_SECONDS = 0.5

@dataclass
class AppContext:
    """Settings, stores and services of one running server."""

    settings: Settings
    docs: DocumentStore
    sql: SqlStore
    accounts: OperatorAccounts
    tokens: ApiTokens
    sessions: BrowserSessions
    throttle: LoginThrottle
    replay: ReplayGuard
    audit: AuditLog
    events: EventBus
    registry: ModuleRegistry
    hub: ConnectionHub
    modules: ModuleService
    workflows: WorkflowStore
    runs: RunTracker
    scheduler: WorkflowScheduler
    notifier: Notifier
    failing: FailingNow
    docserver: EmbeddedDocumentServer | None = None
    # What dashboards show: this instance's events, plus the others' in a cluster.
    feed: EventBus | None = None
    cluster: Any = None  # tornado_sched.cluster.Cluster when REDIS_URL is set
    started_at: float = field(default_factory=time.time)
    generated_admin_password: str | None = None
    metrics: ServerMetrics | None = None
    docserver_dead_seconds: float = DOCSERVER_DEAD_SECONDS
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def store_failures(self) -> dict[str, int]:
        """Writes that failed since start (each was logged, and retried where that
        makes sense): shown on /ready and the dashboard so they are not silent."""
        return {
            "module_state_flush": self.hub.flush_failures,
            "run_state_flush": self.runs.flush_failures,
            # Runs whose state the store refused (set aside so others are written).
            "run_state_quarantined": self.runs.quarantined,
            "execution_log": self.scheduler.log_failures,
            "tick_claim": self.scheduler.claim_failures,
            "notification_outbox": self.notifier.write_failures,
            "audit_log": self.audit.write_failures,
            # Rows waiting in memory for SQL, and rows lost (memory bound, or refused).
            **{f"{keeper.name}_{what}": getattr(keeper, what)
               for keeper in (self.scheduler.execution_log, self.audit.pending, self.notifier)
               for what in ("kept", "dropped", "quarantined")},
        }

    async def readiness(self) -> dict[str, str]:
        """Ping both stores: {store: "ok" | why not}; in a cluster also "redis", which
        is not required: without it the instance still serves its own modules."""
        stores = await check_ready(self.docs, self.sql)
        if self.cluster is not None:
            stores["redis"] = self.cluster.status()
        return stores

    def liveness_problem(self) -> str | None:
        """Why this process should be restarted, if it should (for /health): the
        embedded document server has stayed dead despite restarts for longer than
        `docserver_dead_seconds`. A shorter outage is /ready's business, not /health's."""
        docserver = self.docserver
        if docserver is not None and docserver.down_for() > self.docserver_dead_seconds:
            return f"embedded document server down for {docserver.down_for():.0f} s ({docserver.last_exit})"
        return None

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Register a shutdown step; steps run in reverse order of registration."""
        self._closers.append(closer)

    async def close(self) -> None:
        # With a store gone, every final write would wait its full bound (MongoDB's 5 s
        # server selection, four of them took 20 s; SQL's SQL_WAIT_SECONDS, on a
        # server that hangs): give each operation a short limit instead, and the
        # writing steps a budget in all. What is not written is logged by its step and
        # recovered at the next start (runs become interrupted, modules offline).
        loop = asyncio.get_running_loop()
        budget_end = loop.time() + SHUTDOWN_BUDGET_SECONDS
        docs_answer, sql_answers = await asyncio.gather(
            self._docs_answer(), self.sql.answers(SHUTDOWN_PROBE_SECONDS))
        limit = None
        if not docs_answer:
            limit = SHUTDOWN_STORE_OP_SECONDS
            log.warning("document store unreachable at shutdown: final writes limited to %.1f s each", limit)
        if not sql_answers:
            self.sql.shorten_waits(SHUTDOWN_STORE_OP_SECONDS)
            log.warning("SQL store unreachable at shutdown: final writes limited to %.1f s each",
                        SHUTDOWN_STORE_OP_SECONDS)
        degraded = not (docs_answer and sql_answers)
        releases = {self.sql.close, self.docs.close}
        # The document server's stop is never cut: its child must not outlive us.
        uncut = {self.docserver.stop} if self.docserver is not None else set()
        while self._closers:
            closer = self._closers.pop()
            name = getattr(closer, "__qualname__", closer)
            end = None
            if degraded and closer not in uncut:
                end = budget_end
                if closer in releases:
                    end = max(budget_end, loop.time() + SHUTDOWN_RELEASE_SECONDS)
            deadline = asyncio.timeout_at(end)
            try:
                with pymongo.timeout(limit):
                    async with deadline:
                        await closer()
            except Exception as exc:
                if isinstance(exc, TimeoutError) and deadline.expired():
                    log.error("shutdown step %s cut at the %.0f s shutdown budget (a store does not answer): "
                              "what it had not written is lost", name, SHUTDOWN_BUDGET_SECONDS)
                else:
                    log.exception("error during shutdown step %s", name)

    async def _docs_answer(self) -> bool:
        try:
            await asyncio.wait_for(self.docs.ping(), SHUTDOWN_PROBE_SECONDS)
            return True
        except Exception:  # noqa: BLE001 - any failure means "do not wait on it"
            return False


async def open_context(settings: Settings) -> AppContext:
    """Open stores and services for `settings`. On failure, closes what was opened."""
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        make_private(settings.data_dir)
        docserver = None
        mongo_uri = settings.mongodb_host
        if settings.uses_embedded_mongo:
            # Supervised: a child that dies is restarted on the same socket.
            docserver = EmbeddedDocumentServer(settings.data_dir, supervise=True)
            mongo_uri = await docserver.start()
            closers.append(docserver.stop)
            log.info("embedded document server (nx-27017) on %s", mongo_uri)
        docs = DocumentStore(mongo_uri, settings.mongodb_name)
        closers.append(docs.close)
        await docs.ensure_indexes()

        sql = SqlStore(settings.sql_url)
        closers.append(sql.close)
        await sql.create_schema()
        log.info("system data in %s", settings.sql_label)
        # The stores made their files by now: private whatever the umask was.
        make_private(settings.data_dir)

        accounts = OperatorAccounts(sql, settings.secret_key, settings.auth_cache_seconds)
        generated = await accounts.ensure_admin(settings.admin_username, settings.admin_password)

        tokens = ApiTokens(sql, accounts)
        sessions = BrowserSessions(sql, accounts, settings.session_idle_seconds, settings.session_max_seconds)
        throttle = LoginThrottle(
            settings.login_slow_after, settings.login_block_after, settings.login_block_seconds
        )
        audit = AuditLog(sql)
        audit.pending.start()
        closers.append(audit.pending.close)
        events = EventBus()
        feed = events
        registry = ModuleRegistry(docs)
        await registry.load()
        hub = ConnectionHub(
            registry, events, settings.heartbeat_flush_seconds, settings.heartbeat_store_seconds,
            max_queued_bytes=settings.websocket_max_queued_bytes,
        )
        workflows = WorkflowStore(docs, registry, settings.time_zone, events)
        history = RunHistory(sql)
        # Before the tracker starts: runs a pre-SQL version left open are migrated first,
        # so they are marked interrupted like any other.
        await history.migrate_from_documents(docs)
        runs = RunTracker(history, registry, workflows, hub, events, settings.instance if settings.clustered else "")
        replay = ReplayGuard()
        cluster = None
        if settings.clustered:
            from .cluster import Cluster  # redis is imported in cluster mode only
            from .cluster_wiring import wire

            cluster = Cluster(settings.redis_url, settings.instance)
            feed = EventBus()
            wire(cluster, events=events, feed=feed, hub=hub, runs=runs, throttle=throttle,
                 replay=replay, accounts=accounts, registry=registry)
            await cluster.start()
            closers.append(cluster.close)
        await hub.start()
        closers.append(hub.close)
        notifier = Notifier(sql, events, workflows, settings)
        await notifier.start()
        closers.append(notifier.close)
        await runs.start()
        closers.append(runs.close)
        failing = FailingNow(workflows, runs, events)
        await failing.start()
        closers.append(failing.close)
        scheduler = WorkflowScheduler(
            docs, sql, workflows, runs, settings.time_zone, settings.run_retention_days,
            events=events, is_online=hub.is_online, misfire_settle_seconds=settings.misfire_settle_seconds,
            instance=settings.instance if settings.clustered else "",
        )
        await scheduler.start()
        closers.append(scheduler.close)
        if cluster is not None:
            from .cluster_wiring import wire_scheduler

            wire_scheduler(cluster, events, scheduler, workflows)
    except BaseException:
        for closer in reversed(closers):
            try:
                await closer()
            except Exception:
                log.exception("error while unwinding a failed start")
        raise
    ctx = AppContext(
        settings=settings,
        docs=docs,
        sql=sql,
        accounts=accounts,
        tokens=tokens,
        sessions=sessions,
        throttle=throttle,
        replay=replay,
        audit=audit,
        events=events,
        registry=registry,
        hub=hub,
        modules=ModuleService(registry, hub, workflows),
        workflows=workflows,
        runs=runs,
        scheduler=scheduler,
        notifier=notifier,
        failing=failing,
        docserver=docserver,
        generated_admin_password=generated,
        feed=feed,
        cluster=cluster,
    )
    ctx._closers.extend(closers)
    ctx.metrics = ServerMetrics(ctx)
    return ctx
