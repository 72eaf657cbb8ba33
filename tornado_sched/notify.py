"""Failure notifications through an outbox that never loses a row.

A failed step becomes an outbox row *before* anything is sent, one per channel
(email, webhook). While SQL cannot take it, the row waits in memory like the
execution log's (bounded, oldest dropped and counted; a row the store refuses for
itself is set aside with a logged reason) and is written, in order, when SQL
answers. The first failure of a workflow after a success (or after
NOTIFY_AGGREGATE_SECONDS without failures) is due at once; failures that follow it
within the window are gathered into one follow-up row, held open for the window, so
a burst goes out as the first notice plus one more message (more when the failures
outgrow one row: a notice fits its TEXT column). A background sender delivers due
rows over HTTP, marks them sent only on a 2xx, and otherwise retries with exponential
backoff, across restarts. Rows are rendered when sent, so one that waited through a
restart still carries every failure it collected.
"""

from __future__ import annotations

import asyncio
import collections
import html
import json
import logging
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import exists, func, insert, or_, select, update
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from .clock import as_utc, naive_utc, utcnow
from .config import Settings
from .events import RUN_FINISHED, STEP_FAILED, EventBus
from .pending import DEFAULT_LIMIT, store_down
from .protocol import TEXT_LIMIT_BYTES, cut_text
from .run_state import Run, Step
from .stores import SqlStore
from .tables import notification_outbox
from .text import one_line
from .workflows import FAILED_RUN_STATUSES, WorkflowStore

log = logging.getLogger(__name__)

STATUSES = ("pending", "retrying", "sending", "sent", "not_configured")
# "sending": claimed by one instance (MySQL/MariaDB); its next_attempt_at is the end of
# the claim, after which another instance may take it over (the claimer died).
UNSENT = ("pending", "retrying", "sending")
CLAIM_GRACE_SECONDS = 60.0
MAX_BACKOFF = 3600.0
BASE_BACKOFF = 5.0
POLL_SECONDS = 5.0
# One failure in a notice: its error and message are cut to fit this (the run's page
# has them whole), so a combined notice holds at least a few failures, and a notice
# never outgrows its payload column (MySQL/MariaDB TEXT: TEXT_LIMIT_BYTES).
FACT_LIMIT_BYTES = 16 * 1024


class NoticeSubject(NamedTuple):
    """What an outbox item needs of its run. Kept items hold this, not the Run: up to
    DEFAULT_LIMIT of them may wait for SQL, and a run carries every step's output and
    log tail."""

    workflow_id: int
    workflow_name: str


def backoff_seconds(attempts: int, base: float = BASE_BACKOFF) -> float:
    return min(base * 2 ** max(attempts - 1, 0), MAX_BACKOFF)


class Notifier:
    """Turns failed steps and recoveries into outbox rows and delivers them."""

    def __init__(self, sql: SqlStore, events: EventBus, workflows: WorkflowStore, settings: Settings) -> None:
        self._sql = sql
        self._workflows = workflows
        self._settings = settings
        self._open_rows: dict[tuple[int, str], tuple[int, datetime]] = {}
        # (workflow, channel) -> when its latest failure was recorded: decides whether
        # the next one is sent at once or gathered into a follow-up.
        self._last_failure: dict[tuple[int, str], datetime] = {}
        self._failing: set[int] = set()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sender: asyncio.Task[None] | None = None
        self._http = AsyncHTTPClient()
        self._unsubscribe = events.subscribe(self._on_event)
        # Outbox items SQL could not take yet, oldest first; counted like PendingSqlRows.
        self._backlog: collections.deque[tuple[Any, ...]] = collections.deque()
        self.backlog_limit = DEFAULT_LIMIT
        self.write_failures = 0
        self.dropped = 0
        self.quarantined = 0
        self._closing = False
        # Retry and poll intervals; tests shorten them on a running notifier.
        self.base_backoff = BASE_BACKOFF
        self.poll_seconds = POLL_SECONDS

    @property
    def name(self) -> str:
        return notification_outbox.name

    @property
    def kept(self) -> int:
        return len(self._backlog)

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        settings = self._settings
        if not settings.email_configured:
            log.warning(
                "NOTIFICATION_EMAIL / EMAIL_API_URL not set: failure emails are kept in the "
                "outbox as not_configured and not sent"
            )
        for workflow in await self._workflows.list():
            if workflow.last_run_failed:
                self._failing.add(workflow.workflow_id)
        self._sender = asyncio.ensure_future(self._send_loop())

    async def close(self) -> None:
        try:
            self._unsubscribe()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if not self._sql.stalled:  # one that just left a wait unanswered would only delay the stop
                await self._retry_backlog()
            if self._sender is not None:
                # Let a send in flight finish and be marked (bounded by the HTTP timeout):
                # cancelling it after delivery would send the same message again after
                # the restart.
                self._closing = True
                self._wake.set()
                try:
                    await asyncio.wait_for(asyncio.shield(self._sender), self._settings.email_timeout_seconds + 2)
                except TimeoutError:
                    pass
                finally:
                    # Also when the stop's budget cancels this wait: the sender must
                    # not outlive the stores it writes to.
                    if not self._sender.done():
                        self._sender.cancel()
                        await asyncio.wait({self._sender}, timeout=1.0)
        finally:
            if self._backlog:
                log.error("%d notification(s) not written to the outbox at shutdown (SQL unavailable): lost",
                          len(self._backlog))

    def _channels(self) -> list[tuple[str, bool]]:
        """(channel, configured) for every channel that should get a row."""
        result = [("email", self._settings.email_configured)]
        if self._settings.webhook_url:
            result.append(("webhook", True))
        return result

    # -- events ----------------------------------------------------------------------
    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == STEP_FAILED:
            self._spawn(self._step_failed(data["run"], data["step"]))
        elif kind == RUN_FINISHED:
            run: Run = data["run"]
            if run.status in FAILED_RUN_STATUSES:
                self._failing.add(run.workflow_id)
            elif run.status == "success" and run.workflow_id in self._failing:
                self._failing.discard(run.workflow_id)
                self._spawn(self._recovered(run))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _step_failed(self, run: Run, step: Step) -> None:
        fact = {
            "run_id": run.run_id,
            "workflow_id": run.workflow_id,
            "workflow_name": run.workflow_name,
            "module_name": step.module_name,
            "module_hash_prefix": step.module_hash[:8],
            "status": step.status,
            "execution_time": run.execution_time,
            "timezone": run.timezone,
            "error": step.error,
            "message": step.message,
            "at": utcnow().isoformat(),
        }
        fact = fit_fact(fact)
        async with self._lock:
            for channel, configured in self._channels():
                await self._write_or_keep(("fact", NoticeSubject(run.workflow_id, run.workflow_name), channel,
                                           configured, fact))
        self._wake.set()

    async def _write_or_keep(self, item: tuple[Any, ...]) -> bool:
        """Write one outbox item (under `_lock`), or keep it in memory for the send loop
        to retry, so a notification outlives a store outage (not a crash). It waits
        behind older kept items, and is kept at once while the store leaves waits
        unanswered. True when written."""
        if self._backlog or self._sql.stalled:
            self._keep(item)
            return False
        outcome = await self._attempt(item)
        if outcome == "down":
            self._keep(item)
        return outcome == "written"

    async def _attempt(self, item: tuple[Any, ...]) -> str:
        """One try: "written", "down" (SQL out of reach: keep it) or "refused" (set aside)."""
        try:
            if item[0] == "fact":
                await self._add_fact(*item[1:])
            else:
                await self._insert_recovery(*item[1:])
        except Exception as exc:
            self.write_failures += 1
            if store_down(exc):
                log.error("could not write a %s notification for workflow %d (kept, will retry): %s",
                          item[2], item[1].workflow_id, type(exc).__name__)
                return "down"
            self.quarantined += 1
            # The item holds module output: name the failure, not the data.
            log.error("a %s %s notification for workflow %d was refused by the store and dropped (%s: %s)",
                      item[2], item[0], item[1].workflow_id, type(exc).__name__,
                      (str(exc).splitlines() or [""])[0][:200])
            return "refused"
        return "written"

    def _keep(self, item: tuple[Any, ...]) -> None:
        if len(self._backlog) >= self.backlog_limit:
            self._backlog.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("%s: more than %d notifications waiting for SQL; dropped the oldest (%d so far)",
                          self.name, self.backlog_limit, self.dropped)
        self._backlog.append(item)

    async def _retry_backlog(self) -> None:
        """Write the kept items in order; stop at the first that meets an outage."""
        if not self._backlog:
            return
        async with self._lock:
            written = 0
            while self._backlog:
                if await self._attempt(self._backlog[0]) == "down":
                    break
                self._backlog.popleft()  # written, or refused and set aside
                written += 1
            if written:
                log.info("%s: wrote %d kept notification(s) after an outage", self.name, written)

    async def _add_fact(self, run: NoticeSubject, channel: str, configured: bool, fact: dict[str, Any]) -> None:
        now = utcnow()
        key = (run.workflow_id, channel)
        held = self._open_rows.get(key)
        if held is not None and held[1] > now:
            async with self._sql.begin() as conn:
                row = (await conn.execute(
                    select(notification_outbox.c.payload, notification_outbox.c.status,
                           notification_outbox.c.next_attempt_at)
                    .where(notification_outbox.c.id == held[0])
                )).first()
                # The stored due time decides, not `held`: MySQL keeps whole seconds,
                # so the sender may already have picked the row up (see send_due).
                if (row is not None and row.status in ("pending", "not_configured")
                        and (as_utc(row.next_attempt_at) or now) > now):
                    payload = json.loads(row.payload)
                    payload["failures"].append(fact)
                    text = json.dumps(payload, ensure_ascii=False)
                    # A notice that would outgrow its column is closed: this failure
                    # starts the next follow-up row.
                    if _encoded_size(text) <= TEXT_LIMIT_BYTES:
                        await conn.execute(
                            update(notification_outbox).where(notification_outbox.c.id == held[0])
                            .values(payload=text, subject=_subject(payload))
                        )
                        return
        payload = {"kind": "failure", "workflow_id": run.workflow_id, "workflow_name": run.workflow_name,
                   "failures": [fact]}
        window = timedelta(seconds=self._settings.notify_aggregate_seconds)
        previous = self._last_failure.get(key)
        self._last_failure[key] = now
        # The first failure after a success (or after a quiet window) is news: it goes
        # out at once. Failures that follow it within the window are gathered into
        # one follow-up row, due a window later.
        due = now if previous is None or now - previous >= window else now + window
        row_id = await self._insert(channel, "failure", run.workflow_id, payload, configured, due)
        self._open_rows[key] = (row_id, due)

    async def _recovered(self, run: Run) -> None:
        payload = {
            "kind": "recovery", "workflow_id": run.workflow_id, "workflow_name": run.workflow_name,
            "run_id": run.run_id, "execution_time": run.execution_time, "timezone": run.timezone,
        }
        async with self._lock:
            for channel, configured in self._channels():
                await self._write_or_keep(("recovery", NoticeSubject(run.workflow_id, run.workflow_name), channel,
                                           configured, payload))
        self._wake.set()

    async def _insert_recovery(
        self, run: NoticeSubject, channel: str, configured: bool, payload: dict[str, Any]
    ) -> None:
        await self._insert(channel, "recovery", run.workflow_id, payload, configured, utcnow())
        # The failure notice the recovery ends is closed when the recovery is stored,
        # not when it is kept during an outage: a failure kept behind it must open a
        # new notice, not join the one from before the recovery.
        self._open_rows.pop((run.workflow_id, channel), None)
        self._last_failure.pop((run.workflow_id, channel), None)

    async def _insert(self, channel: str, kind: str, workflow_id: int, payload: dict[str, Any],
                      configured: bool, due: datetime) -> int:
        async with self._sql.begin() as conn:
            result = await conn.execute(insert(notification_outbox).values(
                channel=channel, kind=kind, workflow_id=workflow_id, subject=_subject(payload),
                payload=json.dumps(payload, ensure_ascii=False),
                status="pending" if configured else "not_configured", attempts=0,
                created_at=naive_utc(utcnow()), next_attempt_at=naive_utc(due),
            ))
        return int(result.inserted_primary_key[0])

    # -- sending ---------------------------------------------------------------------
    async def _send_loop(self) -> None:
        while not self._closing:
            # Cleared before the poll, so a row written during it wakes the next wait.
            self._wake.clear()
            try:
                await self._retry_backlog()
                delay = await self.send_due()
            except Exception as exc:  # the store is down: try again later
                log.warning("outbox poll failed: %s", type(exc).__name__)
                delay = self.poll_seconds
            if self._closing:
                return
            try:
                # asyncio.timeout, not wait_for: see GroupCommit._loop (batching.py).
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def send_due(self) -> float:
        """Send every due row; returns seconds until the next one is due (capped)."""
        # Under the lock that appends take: a row is read either before an append
        # starts (then it is already due, so the append opens a new row) or after
        # the append committed, never in between (a fact would be marked sent unsent).
        # A recovery notice waits while an earlier failure message of its workflow and
        # channel is unsent, so it never reaches anyone before the failure it ends.
        outbox, earlier = notification_outbox, notification_outbox.alias("earlier")
        overtakes = exists().where(
            earlier.c.workflow_id == outbox.c.workflow_id, earlier.c.channel == outbox.c.channel,
            earlier.c.kind == "failure", earlier.c.status.in_(UNSENT), earlier.c.id < outbox.c.id,
        )
        async with self._lock, self._sql.connect() as conn:
            now = utcnow()
            due = (
                select(outbox)
                .where(outbox.c.status.in_(UNSENT), outbox.c.next_attempt_at <= naive_utc(now),
                       or_(outbox.c.kind != "recovery", ~overtakes))
                .order_by(outbox.c.id).limit(100)
            )
            if self._sql.dialect == "mysql":
                # Several instances share the outbox: each row is claimed by one of
                # them (locked rows are skipped, not waited for) and marked `sending`
                # until the claim ends, so no notification goes out twice.
                rows = (await conn.execute(due.with_for_update(skip_locked=True))).all()
                if rows:
                    until = now + timedelta(seconds=self._settings.email_timeout_seconds + CLAIM_GRACE_SECONDS)
                    await conn.execute(
                        update(outbox).where(outbox.c.id.in_([r.id for r in rows]))
                        .values(status="sending", next_attempt_at=naive_utc(until))
                    )
                await conn.commit()
            else:
                # SQLite: one process owns the file; nothing to claim.
                rows = (await conn.execute(due)).all()
            upcoming = (await conn.execute(
                select(func.min(notification_outbox.c.next_attempt_at))
                .where(notification_outbox.c.status.in_(UNSENT),
                       notification_outbox.c.next_attempt_at > naive_utc(now))
            )).scalar()
        if rows:
            sent = await asyncio.gather(*(self._deliver(row) for row in rows))
            # Poll again at once after a send: it may have released a recovery notice.
            return 0.0 if len(rows) == 100 or any(sent) else min(self.poll_seconds, self._until(upcoming))
        return min(self.poll_seconds, self._until(upcoming))

    def _until(self, when: datetime | None) -> float:
        if when is None:
            return self.poll_seconds
        return max(0.05, ((as_utc(when) or utcnow()) - utcnow()).total_seconds())

    async def _deliver(self, row: Any) -> bool:
        """One attempt at one row; True when it was sent."""
        payload = json.loads(row.payload)
        url, body = self._request(row.channel, payload)
        error = None
        try:
            response = await self._http.fetch(
                url, method="POST", body=json.dumps(body, ensure_ascii=False),
                headers={"Content-Type": "application/json; charset=UTF-8"},
                request_timeout=self._settings.email_timeout_seconds,
                connect_timeout=self._settings.email_timeout_seconds, raise_error=False,
            )
            if not 200 <= response.code < 300:
                error = f"HTTP {response.code}" if response.code != 599 else f"no response: {_reason(response.error)}"
        except Exception as exc:  # any failure is a failed attempt, recorded on the row
            error = _reason(exc)
        attempts = row.attempts + 1
        values: dict[str, Any] = {"attempts": attempts}
        if error is None:
            values.update(status="sent", sent_at=naive_utc(utcnow()), last_error=None)
            self._open_rows = {k: v for k, v in self._open_rows.items() if v[0] != row.id}
            log.info("notification %d (%s) sent", row.id, row.channel)
        else:
            wait = backoff_seconds(attempts, self.base_backoff)
            values.update(status="retrying", last_error=error[:500],
                          next_attempt_at=naive_utc(utcnow() + timedelta(seconds=wait)))
            log.warning("notification %d (%s) attempt %d failed: %s; retry in %.0fs",
                        row.id, row.channel, attempts, error, wait)
        async with self._sql.begin() as conn:
            await conn.execute(update(notification_outbox).where(notification_outbox.c.id == row.id).values(**values))
        return error is None

    def _request(self, channel: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if channel == "webhook":
            return self._settings.webhook_url, {**payload, "text": _plain_text(payload, self._settings.public_url),
                                                "subject": _subject(payload)}
        return self._settings.email_api_url, {
            "to": list(self._settings.notification_email),
            "subject": _subject(payload),
            "content": render_email(payload, self._settings.public_url),
        }

    # -- queries ---------------------------------------------------------------------
    async def list(self, page: int = 1, page_size: int = 50, status: str | None = None) -> tuple[list[dict[str, Any]], int]:
        query = select(notification_outbox)
        count = select(func.count()).select_from(notification_outbox)
        if status:
            query = query.where(notification_outbox.c.status == status)
            count = count.where(notification_outbox.c.status == status)
        async with self._sql.connect() as conn:
            total = (await conn.execute(count)).scalar_one()
            rows = (await conn.execute(
                query.order_by(notification_outbox.c.id.desc()).offset((page - 1) * page_size).limit(page_size)
            )).all()
        return [_listed(r) for r in rows], total

    @property
    def alerting_on(self) -> bool:
        """Whether any channel can deliver (email settings or a webhook)."""
        return bool(self._settings.email_configured or self._settings.webhook_url)


def _encoded_size(text: str) -> int:
    # surrogatepass: a lone surrogate is measured here and refused by the store.
    return len(text.encode("utf-8", "surrogatepass"))


def fit_fact(fact: dict[str, Any], limit: int = FACT_LIMIT_BYTES) -> dict[str, Any]:
    """`fact` with its error and message cut, the longer first, until its JSON
    encodes to at most `limit` bytes (escapes count: a control character is six)."""
    fact = dict(fact)
    while (excess := _encoded_size(json.dumps(fact, ensure_ascii=False)) - limit) > 0:
        field = max(("error", "message"), key=lambda name: _encoded_size(fact.get(name) or ""))
        text = fact.get(field) or ""
        if not text:
            break  # every other field is bounded at the edge; nothing left to cut
        # Strictly shorter each pass (cut_text appends "…", 3 bytes), so this ends.
        budget = _encoded_size(text) - excess - 3
        fact[field] = cut_text(text, budget) if budget > 3 else ""
    return fact


def _listed(r: Any) -> dict[str, Any]:
    """An outbox row as the API and the dashboard list it. Only rows still to be
    sent have a next attempt; `run_id` is the run the notice is about (the latest
    failure's)."""
    payload = json.loads(r.payload)
    failures = payload.get("failures", []) if r.kind == "failure" else []
    run_id = failures[-1].get("run_id") if failures else payload.get("run_id")
    return {
        "id": r.id, "channel": r.channel, "kind": r.kind, "workflow_id": r.workflow_id,
        "workflow_name": payload.get("workflow_name"), "run_id": run_id, "subject": r.subject,
        "status": r.status, "attempts": r.attempts, "last_error": r.last_error,
        "failures": len(failures),
        "created_at": as_utc(r.created_at),
        "next_attempt_at": as_utc(r.next_attempt_at) if r.status in UNSENT else None,
        "sent_at": as_utc(r.sent_at),
    }


def _reason(exc: BaseException | None) -> str:
    """An error description without the URL (it may carry credentials)."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, HTTPClientError):
        return f"HTTP {exc.code}" if exc.code != 599 else (exc.message or "connection failed")
    return f"{type(exc).__name__}: {exc.strerror or exc}" if isinstance(exc, OSError) else type(exc).__name__


def _subject(payload: dict[str, Any]) -> str:
    # One line whatever was stored: a CR/LF would start a new mail header.
    name = one_line(str(payload.get("workflow_name", "?")))
    if payload.get("kind") == "recovery":
        return f"[tornado_sched] 工作流 {name} 已恢复 / workflow recovered"
    count = len(payload.get("failures", []))
    return f"[tornado_sched] 工作流 {name} 执行失败 / {count} failed step(s)"


def _run_link(public_url: str, run_id: str) -> str:
    return f"{public_url}/runs/{run_id}" if public_url else f"/runs/{run_id}"


def render_email(payload: dict[str, Any], public_url: str) -> str:
    """HTML content: every value escaped, one table row per failed step."""
    e = html.escape
    name = e(str(payload.get("workflow_name", "")))
    if payload.get("kind") == "recovery":
        link = _run_link(public_url, payload["run_id"])
        return (
            f"<p>工作流 <b>{name}</b> (#{payload['workflow_id']}) 已恢复：运行 "
            f"<a href=\"{e(link)}\">{e(payload['run_id'])}</a> "
            f"({e(payload.get('execution_time', ''))} {e(payload.get('timezone', ''))}) 成功。</p>"
            f"<p>Workflow <b>{name}</b> recovered: the latest run succeeded.</p>"
        )
    rows = []
    for f in payload.get("failures", []):
        link = _run_link(public_url, f["run_id"])
        rows.append(
            "<tr>"
            f"<td>{e(str(f.get('module_name', '')))}</td>"
            f"<td><a href=\"{e(link)}\">{e(f['run_id'][:12])}</a></td>"
            f"<td>{e(str(f.get('execution_time', '')))} {e(str(f.get('timezone', '')))}</td>"
            f"<td>{e(str(f.get('status', '')))}</td>"
            f"<td>{e(str(f.get('error') or ''))}</td>"
            f"<td>{e(str(f.get('message') or ''))}</td>"
            "</tr>"
        )
    return (
        f"<p>工作流 <b>{name}</b> (#{payload.get('workflow_id')}) 有模块执行失败 / "
        f"module step(s) failed.</p>"
        "<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\">"
        "<tr><th>模块 Module</th><th>运行 Run</th><th>计划时间 Nominal time</th><th>状态 Status</th>"
        "<th>错误 Error</th><th>消息 Message</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _plain_text(payload: dict[str, Any], public_url: str) -> str:
    if payload.get("kind") == "recovery":
        return f"{_subject(payload)}\n{_run_link(public_url, payload['run_id'])}"
    lines = [_subject(payload)]
    for f in payload.get("failures", []):
        lines.append(
            f"- {f.get('module_name')} [{f.get('status')}] {f.get('execution_time')} {f.get('timezone')}: "
            f"{f.get('error') or ''} {_run_link(public_url, f['run_id'])}"
        )
    return "\n".join(lines)
