"""Run history in the relational store: `runs` (one row per run) and `run_steps`.

Every hot-path write is addressed by key: a result updates its own step row by
(run_id, step_index) and the run row by run_id, so its cost does not grow with the
history. Lists walk an index newest first with an opaque keyset cursor
(`before`); the old `page`/`page_size` still work, with a bounded offset and a
bounded total. Retention deletes in short batches so result writes interleave.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, true, union_all, update
from sqlalchemy.exc import IntegrityError

from .clock import as_utc, naive_utc, utcnow
from .errors import Invalid
from .protocol import TEXT_LIMIT_BYTES
from .run_state import RUN_STATUSES, Run, Step
from .stores import SQL_HOUSEKEEPING_SECONDS, DocumentStore, SqlStore
from .strips import StripRun
from .tables import run_steps, runs, tick_claims
from .workflows import FAILED_RUN_STATUSES

log = logging.getLogger(__name__)

# `page`/`page_size` clients may not make the database skip more rows than this;
# deeper pages are reached with `before=` cursors.
MAX_OFFSET = 10_000
# Totals are counted up to here and then shown as "1000+": an exact count of a
# million-row filter is a scan, and nobody pages through it by number.
TOTAL_CAP = 1000
RETENTION_BATCH = 1000
MIGRATION_BATCH = 500
# `status=failed`: the group of failed run statuses, one indexed column (`failed`).
FAILED_GROUP = "failed"
# What a history list's `status` may be: one run status or the failed group.
HISTORY_STATUSES = (*RUN_STATUSES, FAILED_GROUP)
# The statuses a step takes (runs.py, dataorder.py) and, for a module's history,
# the failed group: every status but these (as a run's steps_failed counts).
STEP_STATUSES = ("pending", "sent", "success", "failure", "offline", "timeout", "cancelled",
                 "interrupted", "upstream_failed", "skipped")
STEP_NOT_FAILED = ("pending", "sent", "success", "skipped")
STEP_FAILED_STATUSES = tuple(s for s in STEP_STATUSES if s not in STEP_NOT_FAILED)
MODULE_STEP_STATUSES = (*STEP_STATUSES, FAILED_GROUP)
# A run-id search needs this many leading characters: run ids are random hex, so 4
# of them narrow a million runs to ~15 on the unique index (a range, then a sort).
RUN_ID_PREFIX_MIN = 4


@dataclass(frozen=True)
class RunFilter:
    """What a history list is restricted to; every combination walks an index."""

    workflow_id: int | None = None
    status: str | None = None  # a run status, or "failed" for the failed group
    since: datetime | None = None
    until: datetime | None = None
    # A search: runs of any of these workflows, or (also) whose id starts with
    # `run_id_prefix`. Each is its own index walk (see RunHistory.page).
    workflow_ids: tuple[int, ...] | None = None
    run_id_prefix: str | None = None
    # False: newest first (the default); True: oldest first.
    oldest_first: bool = False

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in HISTORY_STATUSES:
            raise Invalid(f"status: must be one of {', '.join(HISTORY_STATUSES)}", field="status")
        prefix = self.run_id_prefix
        if prefix is not None and not (RUN_ID_PREFIX_MIN <= len(prefix) <= 32 and is_hex(prefix)):
            raise Invalid(f"run id: {RUN_ID_PREFIX_MIN} to 32 hex characters", field="q")

    @property
    def searching(self) -> bool:
        return self.workflow_ids is not None or self.run_id_prefix is not None

    def where(self) -> list[Any]:
        clauses: list[Any] = []
        if self.workflow_id is not None:
            clauses.append(runs.c.workflow_id == self.workflow_id)
        if self.status == FAILED_GROUP:
            # `= 1`, not `IS TRUE`: MariaDB only seeks the index on an equality.
            clauses.append(runs.c.failed == true())
        elif self.status is not None:
            clauses.append(runs.c.status == self.status)
        if self.since is not None:
            clauses.append(runs.c.started_at >= naive_utc(self.since))
        if self.until is not None:
            clauses.append(runs.c.started_at < naive_utc(self.until))
        return clauses


def is_hex(value: str) -> bool:
    """Lower-case hexadecimal digits only (what run ids are made of)."""
    return all(c in "0123456789abcdef" for c in value)


def run_id_range(prefix: str) -> list[Any]:
    """`run_id LIKE 'prefix%'` as a range on the unique index (SQLite's LIKE is
    case-insensitive and never seeks an index; a range seeks on both stores)."""
    # Hex digits only: the character after the last one is always a plain letter.
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return [runs.c.run_id >= prefix, runs.c.run_id < upper]


def parse_time_bound(name: str, raw: str | None) -> datetime | None:
    """`since`/`until` from a query string: ISO 8601; without a zone it means UTC."""
    if raw is None or raw == "":
        return None
    try:
        moment = datetime.fromisoformat(raw) if len(raw) <= 40 else None
    except ValueError:
        moment = None
    if moment is None:
        raise Invalid(f"{name}: expected an ISO 8601 time such as 2026-12-01T08:00:00Z", field=name)
    return as_utc(moment)


@dataclass(frozen=True)
class RunPage:
    """One page of history, newest first."""

    runs: list[Run]
    has_more: bool
    next_before: str | None
    total: int | None = None
    total_exact: bool = True

    def public(self, page: int | None, page_size: int) -> dict[str, Any]:
        """The API's list shape: the seed's total/page/page_size/runs plus keyset
        fields (`has_more`, `next_before`) and `total_exact` (False: "1000+")."""
        return {
            "total": self.total,
            "total_exact": self.total_exact,
            "page": page,
            "page_size": page_size,
            "runs": [r.public() for r in self.runs],
            "has_more": self.has_more,
            "next_before": self.next_before,
        }


def encode_cursor(started_at: datetime, row_id: int) -> str:
    raw = f"{naive_utc(started_at).isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The (started_at, id) key a cursor stands for; Invalid for anything else."""
    bad = Invalid("before: not a history cursor from this server", field="before")
    if not isinstance(cursor, str) or not 1 <= len(cursor) <= 100:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, row_id = raw.split("|")
        moment = datetime.fromisoformat(when)
        number = int(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if moment.tzinfo is not None or not 0 < number < 2**63:
        raise bad
    return moment, number


@dataclass(frozen=True)
class ModuleStep:
    """One step a module was sent, with the run it belongs to."""

    run_id: str
    workflow_id: int
    workflow_name: str
    run_status: str
    step: Step

    def public(self) -> dict[str, Any]:
        step = self.step
        return {
            "run_id": self.run_id,
            "workflow_id": self.workflow_id,
            "workflow_name": self.workflow_name,
            "run_status": self.run_status,
            "step_index": step.index,
            "status": step.status,
            "attempts": step.attempts,
            "sent_at": step.sent_at,
            "ended_at": step.ended_at,
            "message": step.message,
            "error": step.error,
        }


@dataclass(frozen=True)
class ModuleStepPage:
    """One page of a module's history: the steps it was sent, newest first."""

    steps: list[ModuleStep]
    has_more: bool
    next_before: str | None

    def public(self, page_size: int) -> dict[str, Any]:
        """The API's shape: the run lists' keyset fields, `steps` for `runs`."""
        return {
            "page_size": page_size,
            "steps": [s.public() for s in self.steps],
            "has_more": self.has_more,
            "next_before": self.next_before,
        }


def encode_step_cursor(sent_at: datetime, run_id: str, step_index: int) -> str:
    raw = f"{naive_utc(sent_at).isoformat()}|{run_id}|{step_index}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_step_cursor(cursor: str) -> tuple[datetime, str, int]:
    """The (sent_at, run_id, step_index) key a module-history cursor stands for."""
    bad = Invalid("before: not a module history cursor from this server", field="before")
    if not isinstance(cursor, str) or not 1 <= len(cursor) <= 160:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, run_id, index = raw.split("|")
        moment = datetime.fromisoformat(when)
        number = int(index)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if moment.tzinfo is not None or not 0 <= number < 2**31 or not (1 <= len(run_id) <= 32 and is_hex(run_id)):
        raise bad
    return moment, run_id, number


# What a module's history reads of a step (not its args, output or log).
_MODULE_STEP_COLUMNS = (
    run_steps.c.run_id, run_steps.c.step_index, run_steps.c.module_hash, run_steps.c.module_name,
    run_steps.c.status, run_steps.c.attempts, run_steps.c.sent_at, run_steps.c.ended_at,
    run_steps.c.message, run_steps.c.error,
)


def _step_row(run_id: str, step: Step) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step_index": step.index,
        "module_hash": step.module_hash,
        "module_name": step.module_name[:200],
        "args": json.dumps(step.args, ensure_ascii=False, default=str),
        **_step_state(step),
    }


def _step_state(step: Step) -> dict[str, Any]:
    """The columns of `_STEP_STATE`: what a state write of a step stores (the key,
    module and args are written once, by the insert, and not encoded again)."""
    return {
        "status": step.status,
        "attempts": step.attempts,
        "sent_at": naive_utc(step.sent_at),
        "ended_at": naive_utc(step.ended_at),
        "message": step.message,
        "error": step.error,
        "output": None if step.output is None else json.dumps(step.output, ensure_ascii=False),
        "progress_percent": step.progress_percent,
        "progress_message": step.progress_message,
        "log_tail": _log_tail(step.log),
    }


def _log_tail(lines: Iterable[str]) -> str | None:
    """The step's last log lines as JSON text, the newest that fit a TEXT column
    (65,535 bytes on MySQL/MariaDB; 200 lines of 1,000 characters would not)."""
    kept: list[str] = []
    size = 2  # the brackets
    for line in reversed(list(lines)):
        # Its JSON form plus the ", " separator.
        size += len(json.dumps(line, ensure_ascii=False).encode("utf-8", "surrogatepass")) + 2
        if size > TEXT_LIMIT_BYTES:
            break
        kept.append(line)
    return json.dumps(kept[::-1], ensure_ascii=False) if kept else None


def _counters(run: Run) -> dict[str, Any]:
    return {
        "status": run.status,
        "failed": run.status in FAILED_RUN_STATUSES,
        "ended_at": naive_utc(run.ended_at),
        "reason": run.reason,
        "steps_ok": sum(1 for s in run.steps if s.status == "success"),
        "steps_failed": sum(1 for s in run.steps if s.status not in ("pending", "sent", "success", "skipped")),
    }


def _run_row(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "workflow_id": run.workflow_id,
        "workflow_name": run.workflow_name[:200],
        "trigger": run.trigger,
        "nominal_time": naive_utc(run.nominal_time),
        "timezone": run.timezone,
        "fired_at": naive_utc(run.fired_at),
        "started_at": naive_utc(run.started_at),
        "timeout_seconds": run.timeout_seconds,
        "retries": run.retries,
        "retry_delay_seconds": run.retry_delay_seconds,
        "steps_total": len(run.steps),
        "instance": run.instance or None,
        "rerun_of": run.rerun_of,
        **_counters(run),
    }


def _step_from_row(row: Any) -> Step:
    try:
        args = json.loads(row.args) if row.args else {}
    except ValueError:
        args = {}
    try:
        output = json.loads(row.output) if row.output else None
    except ValueError:
        output = None
    try:
        lines = json.loads(row.log_tail) if row.log_tail else []
    except ValueError:
        lines = []
    step = Step(
        index=row.step_index,
        module_hash=row.module_hash,
        module_name=row.module_name,
        args=args if isinstance(args, dict) else {},
        status=row.status,
        attempts=row.attempts,
        sent_at=as_utc(row.sent_at),
        ended_at=as_utc(row.ended_at),
        message=row.message,
        error=row.error,
        output=output,
        progress_percent=row.progress_percent,
        progress_message=row.progress_message,
    )
    if isinstance(lines, list):
        step.log.extend(str(line) for line in lines)
    return step


def _run_from_row(row: Any, steps: list[Step]) -> Run:
    return Run(
        run_id=row.run_id,
        workflow_id=row.workflow_id,
        workflow_name=row.workflow_name,
        trigger=row.trigger,
        nominal_time=as_utc(row.nominal_time) or utcnow(),
        timezone=row.timezone,
        fired_at=as_utc(row.fired_at) or utcnow(),
        steps=steps,
        status=row.status,
        started_at=as_utc(row.started_at) or utcnow(),
        ended_at=as_utc(row.ended_at),
        timeout_seconds=row.timeout_seconds,
        retries=row.retries,
        retry_delay_seconds=row.retry_delay_seconds,
        reason=row.reason,
        instance=row.instance or "",
        rerun_of=row.rerun_of,
    )


# Rows per executemany. The driver's parameter handling runs on the loop (~10 us a
# row: 500 rows hold it ~5 ms), and on SQLite each statement is three round trips to
# aiosqlite's thread, each waiting for a loop iteration on a busy fan-out: 200 rows a
# statement made a 1,000-result flush ~60 ms slower (fan-out 2.2x bare against 1.7x).
ROWS_PER_STATEMENT = 500
# Stored steps decoded between two yields to the loop when a run is read.
STEPS_PER_SLICE = 200
# What a step's state write stores (everything but its key, module and args).
_STEP_STATE = ("status", "attempts", "sent_at", "ended_at", "message", "error", "output",
               "progress_percent", "progress_message", "log_tail")
# executemany statements: one round trip for every step row a group commit touches.
_UPDATE_STEP = (
    update(run_steps)
    .where(run_steps.c.run_id == bindparam("k_run"), run_steps.c.step_index == bindparam("k_index"))
    .values(**{name: bindparam(name) for name in _STEP_STATE})
)
# What a run's state write stores.
_RUN_STATE = ("status", "failed", "ended_at", "reason", "steps_ok", "steps_failed")
_UPDATE_RUN = (
    update(runs)
    .where(runs.c.run_id == bindparam("k_run"))
    .values(**{name: bindparam(name) for name in _RUN_STATE})
)



@dataclass(frozen=True)
class TickClaim:
    """A scheduled tick (workflow, nominal time) that one instance fires: its row in
    `tick_claims` is written in the same transaction as the run it starts, so a tick
    is either claimed with its run or not at all."""

    workflow_id: int
    nominal: datetime
    instance: str


class TickTaken(Exception):
    """The tick's claim row exists: it was fired already."""


class TickNotClaimed(Exception):
    """The tick's claim and run could not be written (the store failed or refused
    them): nothing of it is stored, and it was not fired."""


class RunHistory:
    """Runs and their steps in SQL: keyed writes, keyset pages, batched retention."""

    def __init__(self, sql: SqlStore) -> None:
        self._sql = sql

    # -- writes ----------------------------------------------------------------------
    async def insert(
        self, run: Run, claim: TickClaim | None = None, *, sending: Collection[int] = (), sent_at: datetime | None = None,
    ) -> None:
        """A new run and all its step rows, in one transaction. `sending`: the steps
        about to be sent, stored as sent (attempt 1, at `sent_at`) so that a run start
        writes each row once. With `claim`, the scheduled tick's claim row too, first:
        TickTaken when that tick was claimed before (by another instance, or an
        earlier firing), TickNotClaimed when the transaction failed; either way
        nothing is written."""
        try:
            async with self._sql.begin() as conn:
                if claim is not None:
                    try:
                        await conn.execute(insert(tick_claims).values(
                            workflow_id=claim.workflow_id, nominal_time=naive_utc(claim.nominal).replace(microsecond=0),
                            instance=claim.instance or "-", claimed_at=naive_utc(utcnow()),
                        ))
                    except IntegrityError:
                        raise TickTaken(f"workflow {claim.workflow_id} tick {claim.nominal} fired elsewhere") from None
                await conn.execute(insert(runs), [_run_row(run)])
                sent = {"status": "sent", "attempts": 1, "sent_at": naive_utc(sent_at)}
                for start in range(0, len(run.steps), ROWS_PER_STATEMENT):
                    chunk = run.steps[start:start + ROWS_PER_STATEMENT]
                    await conn.execute(insert(run_steps), [
                        {**_step_row(run.run_id, s), **sent} if s.index in sending else _step_row(run.run_id, s)
                        for s in chunk
                    ])
        except (TickTaken, asyncio.CancelledError):
            raise
        except Exception as exc:
            if claim is None:
                raise
            raise TickNotClaimed(f"workflow {claim.workflow_id} tick {claim.nominal}: {type(exc).__name__}") from exc

    async def write(self, changes: Iterable[tuple[Run, Iterable[int]]]) -> None:
        """Store the current state of the given steps of each run, and each run's row
        (status, counters), in one transaction. Cost: one keyed update per changed
        step and per run, whatever the size of the history or of the run."""
        step_rows: list[dict[str, Any]] = []
        run_rows: list[dict[str, Any]] = []
        for run, indexes in changes:
            for index in sorted(set(indexes)):
                step_rows.append({"k_run": run.run_id, "k_index": index, **_step_state(run.steps[index])})
            run_rows.append({"k_run": run.run_id, **_counters(run)})
        if not run_rows:
            return
        async with self._sql.begin() as conn:
            for start in range(0, len(step_rows), ROWS_PER_STATEMENT):
                await conn.execute(_UPDATE_STEP, step_rows[start:start + ROWS_PER_STATEMENT])
            await conn.execute(_UPDATE_RUN, run_rows)

    # -- reads -----------------------------------------------------------------------
    async def get(self, run_id: str) -> Run | None:
        async with self._sql.connect() as conn:
            row = (await conn.execute(select(runs).where(runs.c.run_id == run_id))).first()
            if row is None:
                return None
            steps = await self._steps(conn, [run_id])
        return _run_from_row(row, steps.get(run_id, []))

    async def _steps(self, conn: Any, run_ids: list[str]) -> dict[str, list[Step]]:
        if not run_ids:
            return {}
        result = await conn.execute(
            select(run_steps).where(run_steps.c.run_id.in_(run_ids))
            .order_by(run_steps.c.run_id, run_steps.c.step_index)
        )
        found: dict[str, list[Step]] = {}
        for count, row in enumerate(result, 1):
            found.setdefault(row.run_id, []).append(_step_from_row(row))
            if count % STEPS_PER_SLICE == 0:
                # Decoding a 1,000-step run is ~20 ms of loop time: timers go in between.
                await asyncio.sleep(0)
        return found

    async def _runs(self, conn: Any, rows: list[Any]) -> list[Run]:
        steps = await self._steps(conn, [r.run_id for r in rows])
        return [_run_from_row(r, steps.get(r.run_id, [])) for r in rows]

    async def take_over(self, run_id: str, lost: str, instance: str, reason: str) -> bool:
        """Cluster mode: make `instance` the owner of an open run of the lost instance.
        A conditional update: of several instances trying at once, exactly one wins."""
        async with self._sql.begin() as conn:
            result = await conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id, runs.c.status == "running", runs.c.instance == lost)
                .values(instance=instance, reason=reason)
            )
        return result.rowcount == 1

    async def open_runs(self) -> list[Run]:
        """Runs the store still has as running (left open by a crash, at start-up)."""
        async with self._sql.connect() as conn:
            rows = list(await conn.execute(select(runs).where(runs.c.status == "running")))
            return await self._runs(conn, rows)

    async def page(self, filters: RunFilter, before: str | None = None, limit: int = 20) -> RunPage:
        """Newest (or, with `oldest_first`, oldest) first: `limit` runs past the
        `before` cursor. A search is one bounded walk per matched workflow plus one
        for the run-id range, in ONE statement, merged here."""
        clauses = filters.where()
        if before:
            moment, row_id = decode_cursor(before)
            # `started_at <= m` bounds the index range; the OR only breaks ties.
            if filters.oldest_first:
                clauses.append(runs.c.started_at >= moment)
                clauses.append(or_(runs.c.started_at > moment, runs.c.id > row_id))
            else:
                clauses.append(runs.c.started_at <= moment)
                clauses.append(or_(runs.c.started_at < moment, runs.c.id < row_id))
        if filters.oldest_first:
            order = (runs.c.started_at.asc(), runs.c.id.asc())
        else:
            order = (runs.c.started_at.desc(), runs.c.id.desc())
        if not filters.searching:
            parts = [clauses]
        else:
            # One part per workflow: `workflow_id IN (...)` with ORDER BY ... LIMIT
            # would sort every run of those workflows.
            parts = [[*clauses, runs.c.workflow_id == wid] for wid in filters.workflow_ids or ()]
            if filters.run_id_prefix:
                parts.append([*clauses, *run_id_range(filters.run_id_prefix)])
        if not parts:
            return RunPage([], False, None)
        async with self._sql.connect() as conn:
            if len(parts) == 1:
                rows = list(await conn.execute(
                    select(runs).where(*parts[0]).order_by(*order).limit(limit + 1)))
            else:
                # Keys only from each part (the index holds them), merged here; then
                # the page's rows by primary key.
                keys = union_all(*(
                    # Each part a subquery: SQLite rejects ORDER BY/LIMIT on a bare UNION member.
                    select(*select(runs.c.id, runs.c.started_at).where(*where)
                           .order_by(*order).limit(limit + 1).subquery().c)
                    for where in parts
                ))
                top = sorted({(r.started_at, r.id) for r in await conn.execute(keys)},
                             reverse=not filters.oldest_first)[:limit + 1]
                by_id = {r.id: r for r in await conn.execute(
                    select(runs).where(runs.c.id.in_([row_id for _, row_id in top])))} if top else {}
                rows = [by_id[row_id] for _, row_id in top if row_id in by_id]
            has_more = len(rows) > limit
            rows = rows[:limit]
            found = await self._runs(conn, rows)
        last = rows[-1] if rows and has_more else None
        return RunPage(found, has_more, encode_cursor(last.started_at, last.id) if last is not None else None)

    async def page_by_number(self, filters: RunFilter, page: int, page_size: int) -> RunPage:
        """The seed clients' `page`/`page_size`: a bounded offset and a bounded total
        (exact below TOTAL_CAP, else TOTAL_CAP with total_exact False)."""
        offset = (page - 1) * page_size
        if offset > MAX_OFFSET:
            raise Invalid(
                f"page: at most {MAX_OFFSET} runs can be skipped by page number; use before= (next_before)",
                field="page",
            )
        clauses = filters.where()
        query = (
            select(runs).where(*clauses)
            .order_by(runs.c.started_at.desc(), runs.c.id.desc()).offset(offset).limit(page_size + 1)
        )
        capped = select(runs.c.id).where(*clauses).limit(TOTAL_CAP + 1).subquery()
        async with self._sql.connect() as conn:
            rows = list(await conn.execute(query))
            counted = (await conn.execute(select(func.count()).select_from(capped))).scalar_one()
            has_more = len(rows) > page_size
            rows = rows[:page_size]
            found = await self._runs(conn, rows)
        last = rows[-1] if rows and has_more else None
        return RunPage(
            found, has_more, encode_cursor(last.started_at, last.id) if last is not None else None,
            total=min(counted, TOTAL_CAP), total_exact=counted <= TOTAL_CAP,
        )

    async def module_steps(
        self, module_hash: str, status: str | None = None, before: str | None = None, limit: int = 20,
    ) -> ModuleStepPage:
        """The steps a module was sent, newest first, from the `before` cursor: a walk
        down ix_run_steps_module_sent; with `status` (a step status, or "failed": one
        part per failed status, merged) a walk down ix_run_steps_module_status_sent
        per status. Then the page's runs by key. Every part reads at most limit + 1."""
        if status is not None and status not in MODULE_STEP_STATUSES:
            raise Invalid(f"status: must be one of {', '.join(MODULE_STEP_STATUSES)}", field="status")
        c = run_steps.c
        clauses: list[Any] = [c.module_hash == module_hash, c.sent_at.is_not(None)]
        if before:
            moment, run_id, index = decode_step_cursor(before)
            # `sent_at <= m` bounds the index range; the OR only breaks ties.
            clauses.append(c.sent_at <= moment)
            clauses.append(or_(c.sent_at < moment, c.run_id < run_id,
                               and_(c.run_id == run_id, c.step_index < index)))
        statuses = [None] if status is None else list(STEP_FAILED_STATUSES if status == FAILED_GROUP else [status])
        parts = [
            select(*_MODULE_STEP_COLUMNS).where(*clauses, *([] if s is None else [c.status == s]))
            .order_by(c.sent_at.desc(), c.run_id.desc(), c.step_index.desc()).limit(limit + 1)
            for s in statuses
        ]
        # Each part a subquery: SQLite rejects ORDER BY/LIMIT on a bare UNION member.
        query = parts[0] if len(parts) == 1 else union_all(*(select(*p.subquery().c) for p in parts))
        async with self._sql.connect() as conn:
            rows = list(await conn.execute(query))
            rows.sort(key=lambda r: (r.sent_at, r.run_id, r.step_index), reverse=True)
            has_more = len(rows) > limit
            rows = rows[:limit]
            ids = list({r.run_id for r in rows})
            owners = {
                r.run_id: r for r in await conn.execute(
                    select(runs.c.run_id, runs.c.workflow_id, runs.c.workflow_name, runs.c.status)
                    .where(runs.c.run_id.in_(ids))
                )
            } if ids else {}
        found = []
        for row in rows:
            owner = owners.get(row.run_id)
            step = Step(
                index=row.step_index, module_hash=row.module_hash, module_name=row.module_name, args={},
                status=row.status, attempts=row.attempts, sent_at=as_utc(row.sent_at),
                ended_at=as_utc(row.ended_at), message=row.message, error=row.error,
            )
            found.append(ModuleStep(
                run_id=row.run_id,
                workflow_id=owner.workflow_id if owner else 0,
                workflow_name=owner.workflow_name if owner else "",
                run_status=owner.status if owner else "",
                step=step,
            ))
        last = rows[-1] if rows and has_more else None
        cursor = encode_step_cursor(last.sent_at, last.run_id, last.step_index) if last is not None else None
        return ModuleStepPage(found, has_more, cursor)

    async def recent_by_workflow(self, workflow_ids: list[int], per_workflow: int) -> list[StripRun]:
        """The last `per_workflow` runs of each workflow, newest first per workflow,
        in ONE statement: a UNION ALL of one `LIMIT` per workflow, each a short walk
        down ix_runs_workflow_started (no count, no window over the whole history)."""
        ids = list(dict.fromkeys(workflow_ids))
        if not ids or per_workflow <= 0:
            return []
        columns = (runs.c.run_id, runs.c.workflow_id, runs.c.status, runs.c.started_at, runs.c.ended_at)
        parts = [
            # Each part a subquery: SQLite rejects ORDER BY/LIMIT on a bare UNION member.
            select(*select(*columns).where(runs.c.workflow_id == wid)
                   .order_by(runs.c.started_at.desc(), runs.c.id.desc()).limit(per_workflow)
                   .subquery().c)
            for wid in ids
        ]
        query = parts[0] if len(parts) == 1 else union_all(*parts)
        async with self._sql.connect() as conn:
            rows = list(await conn.execute(query))
        found = [
            StripRun(r.run_id, r.workflow_id, r.status, as_utc(r.started_at) or utcnow(), as_utc(r.ended_at))
            for r in rows
        ]
        # A UNION keeps no order: newest first within each workflow, as documented.
        found.sort(key=lambda r: r.started_at, reverse=True)
        return found

    async def last_started(self, workflow_id: int) -> datetime | None:
        query = select(func.max(runs.c.started_at)).where(runs.c.workflow_id == workflow_id)
        async with self._sql.connect() as conn:
            return as_utc((await conn.execute(query)).scalar_one_or_none())

    # -- retention -------------------------------------------------------------------
    async def delete_older_than(self, cutoff: datetime, batch: int = RETENTION_BATCH) -> int:
        """Delete closed runs started before `cutoff`, `batch` per transaction, yielding
        between batches so result writes (and the loop) are never held up for long."""
        deleted = 0
        while True:
            async with self._sql.begin(SQL_HOUSEKEEPING_SECONDS) as conn:
                rows = list(await conn.execute(
                    select(runs.c.id, runs.c.run_id)
                    .where(runs.c.started_at < naive_utc(cutoff), runs.c.status != "running")
                    .order_by(runs.c.started_at).limit(batch)
                ))
                if rows:
                    await conn.execute(delete(run_steps).where(run_steps.c.run_id.in_([r.run_id for r in rows])))
                    await conn.execute(delete(runs).where(runs.c.id.in_([r.id for r in rows])))
            deleted += len(rows)
            if len(rows) < batch:
                return deleted
            await asyncio.sleep(0.01)

    # -- migration -------------------------------------------------------------------
    async def migrate_from_documents(self, docs: DocumentStore, batch: int = MIGRATION_BATCH) -> int:
        """Move runs kept in the document store's `runs` collection (versions before
        the SQL history) into SQL, `batch` per transaction. Idempotent: a run already
        in SQL is skipped, so an interrupted migration simply runs again at the next
        start. Afterwards the collection is dropped. Returns how many were inserted."""
        names = await docs.db.list_collection_names()
        if "runs" not in names:
            return 0
        inserted = 0
        pending: list[Run] = []
        async for doc in docs["runs"].find({}):
            try:
                pending.append(Run.from_doc(doc))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("migration: run document %s skipped: %s", doc.get("_id"), type(exc).__name__)
            if len(pending) >= batch:
                inserted += await self._insert_missing(pending)
                pending = []
        if pending:
            inserted += await self._insert_missing(pending)
        # Every document is now in SQL (inserted or already there). Dropped, not
        # renamed: `rename` is a silent no-op on the embedded nx-27017 server.
        await docs["runs"].drop()
        log.info("migrated %d run(s) from the document store into SQL", inserted)
        return inserted

    async def _insert_missing(self, batch: list[Run]) -> int:
        unique = {r.run_id: r for r in batch}
        async with self._sql.begin(SQL_HOUSEKEEPING_SECONDS) as conn:
            existing = set((await conn.execute(
                select(runs.c.run_id).where(runs.c.run_id.in_(list(unique)))
            )).scalars())
            fresh = [r for r in unique.values() if r.run_id not in existing]
            if fresh:
                await conn.execute(insert(runs), [_run_row(r) for r in fresh])
                step_rows = [_step_row(r.run_id, s) for r in fresh for s in r.steps]
                if step_rows:
                    await conn.execute(insert(run_steps), step_rows)
        return len(fresh)
