"""Rows for one SQL table that must not be lost while SQL is down.

`PendingSqlRows.add(row)` inserts the row now if it can (rows added while an insert is
in flight go together in the next one: one transaction for a burst, not one per row);
if the store refuses, the row
is kept in memory (bounded, counted) and a background task retries the backlog, in
order, until the store answers again. A row the store rejects for itself (bad data,
not a dead connection) is quarantined with a logged reason, so one poisoned row never
blocks the others. What is kept lives in memory only: a process that dies during an
outage loses the kept rows (README, "When a store is down").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError

from .stores import SqlStore

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 10_000
RETRY_SECONDS = 2.0


def store_down(exc: BaseException) -> bool:
    """True when the failure says "the store is unreachable", not "this row is bad"."""
    if isinstance(exc, DBAPIError):
        return isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated
    if isinstance(exc, StatementError | ValueError | TypeError):
        return False  # the driver could not even encode the row (a lone surrogate, ...)
    return True  # timeouts, refused connections, anything unknown: retry


class PendingSqlRows:
    """Insert rows into one table; keep and retry them while SQL is unreachable.

    Counters (shown on /ready and the dashboard): `kept` rows waiting now,
    `write_failures` attempts that failed, `dropped` rows lost to the memory bound
    (oldest first), `quarantined` rows the store refused for themselves.
    """

    def __init__(
        self, sql: SqlStore, table: Table, *, limit: int = DEFAULT_LIMIT, retry_seconds: float = RETRY_SECONDS,
        write_timeout: float | None = None,
    ) -> None:
        self._sql = sql
        self._table = table
        self._rows: collections.deque[dict[str, Any]] = collections.deque()
        self._limit = limit
        self.retry_seconds = retry_seconds
        # One attempt's bound; None: the store's (SqlStore.wait_seconds).
        self.write_timeout = write_timeout
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Rows waiting for the insert now being prepared, with their callers' futures.
        self._batch: list[tuple[dict[str, Any], asyncio.Future[bool]]] = []
        self._inserting: asyncio.Task[None] | None = None
        self.write_failures = 0
        self.dropped = 0
        self.quarantined = 0

    @property
    def kept(self) -> int:
        return len(self._rows)

    @property
    def name(self) -> str:
        return self._table.name

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._retry_loop())

    async def close(self, limit_seconds: float = 2.0) -> None:
        """Stop retrying; one last bounded attempt to write what is kept, unless the
        store has just left a wait unanswered (another would only delay the stop)."""
        if self._inserting is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._inserting), limit_seconds)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._rows and not self._sql.stalled:
            try:
                await asyncio.wait_for(self.retry(), limit_seconds)
            except TimeoutError:
                pass
        if self._rows:
            log.error("%d %s row(s) not written at shutdown (SQL unavailable): lost", len(self._rows), self.name)

    async def add(self, row: dict[str, Any]) -> bool:
        """Insert `row`, or keep it for later. True if it is stored now."""
        if self._rows or self._sql.stalled:
            # Older rows wait (keep the order they happened in), or the store just
            # left a wait unanswered: the retry loop finds out when it answers.
            self._keep(row)
            self._wake.set()
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._batch.append((row, future))
        if self._inserting is None:
            self._inserting = asyncio.ensure_future(self._insert_batches())
        return await future  # a cancelled caller cancels only its own future

    async def _insert_batches(self) -> None:
        """Insert the rows added so far in one transaction, then the next batch."""
        try:
            while self._batch:
                await asyncio.sleep(0)  # let the rest of a burst join this batch
                batch, self._batch = self._batch, []
                rows = [row for row, _ in batch]
                try:
                    await self._insert(rows)
                except Exception as exc:
                    self.write_failures += 1
                    if store_down(exc):
                        log.error("%s write failed (kept, %d waiting; will retry): %s",
                                  self.name, len(self._rows) + len(rows), type(exc).__name__)
                        for row in rows:
                            self._keep(row)
                        stored = [False] * len(rows)
                    else:
                        stored = [await self._insert_alone(row) for row in rows]
                else:
                    stored = [True] * len(rows)
                for (_, future), ok in zip(batch, stored, strict=True):
                    if not future.done():
                        future.set_result(ok)
                if self._rows:  # after the callers hear of it: the retry is the next step
                    self._wake.set()
        finally:
            self._inserting = None

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        async with self._sql.begin(self.write_timeout) as conn:
            await conn.execute(insert(self._table), rows)

    async def _insert_alone(self, row: dict[str, Any]) -> bool:
        """After a batch was refused for its content: this row by itself."""
        try:
            await self._insert([row])
            return True
        except Exception as exc:
            self.write_failures += 1
            if store_down(exc):
                self._keep(row)
            else:
                self._quarantine(row, exc)
            return False

    def _keep(self, row: dict[str, Any]) -> None:
        if len(self._rows) >= self._limit:
            self._rows.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("%s: more than %d rows waiting for SQL; dropped the oldest (%d so far)",
                          self.name, self._limit, self.dropped)
        self._rows.append(row)

    def _quarantine(self, row: dict[str, Any], exc: BaseException) -> None:
        self.quarantined += 1
        # The row's values may hold operator input: name the columns, not the data.
        log.error("%s row refused by the store and dropped (%s: %s); columns: %s",
                  self.name, type(exc).__name__, str(exc).splitlines()[0][:200], sorted(row))

    async def retry(self) -> bool:
        """Write every kept row: one batch, else row by row so a bad one is set aside.
        True when nothing is left waiting."""
        async with self._lock:
            if not self._rows:
                return True
            batch = list(self._rows)
            try:
                await self._insert(batch)
            except Exception as exc:
                self.write_failures += 1
                if store_down(exc):
                    return False
            else:
                for _ in batch:
                    self._rows.popleft()
                log.info("%s: wrote %d kept row(s) after an outage", self.name, len(batch))
                return True
            # The batch was refused for its content: find the poisoned row(s).
            while self._rows:
                row = self._rows[0]
                try:
                    await self._insert([row])
                except Exception as exc:
                    self.write_failures += 1
                    if store_down(exc):
                        return False
                    self._quarantine(row, exc)
                self._rows.popleft()
            return True

    async def _retry_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not await self.retry():
                # Still down: try again after a pause (or sooner, on a new row).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.retry_seconds)
                self._wake.set()
