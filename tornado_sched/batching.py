"""Group commit: the one "dirty set + waiters + flusher" shape of the core.

Callers mark keys dirty in memory (cheap, synchronous) and, when they need
durability, await `commit()`. One flusher task hands every key marked so far to a
`write` callback that stores the *current* state behind those keys, in as few
statements as it likes, then releases the waiters whose changes it covered. Writing
current state (not each event) keeps the store at one write per key per flush
however many changes arrived, and makes out-of-order writes impossible.

Urgent marks flush soon (after `coalesce_seconds`, so a burst becomes one write);
others wait for the next `period_seconds`. A failed write keeps its keys dirty and
its waiters waiting; the flusher retries after `retry_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from .errors import Unavailable

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class GroupCommit(Generic[K]):
    """Batches writes of dirty keys; `commit()` returns once they are durable."""

    def __init__(
        self,
        name: str,
        write: Callable[[set[K]], Awaitable[None]],
        *,
        period_seconds: float | None = None,
        coalesce_seconds: float = 0.0,
        retry_seconds: float = 1.0,
    ) -> None:
        self.name = name
        self._write = write
        self._period = period_seconds
        self._coalesce = coalesce_seconds
        self._retry = retry_seconds
        self._dirty: set[K] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.failures = 0
        self.last_error: str | None = None

    @property
    def pending(self) -> int:
        return len(self._dirty)

    def mark(self, key: K, *, urgent: bool = True) -> None:
        self._dirty.add(key)
        if urgent:
            self._urgent.set()

    def discard(self, key: K) -> None:
        self._dirty.discard(key)

    async def commit(self) -> None:
        """Wait for the next write that includes every change marked so far."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._urgent.set()
        await future

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def close(self) -> bool:
        """Stop the flusher, write what is left once; waiters not covered fail."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        written = await self.flush()
        if not written:
            log.error("%s: pending writes lost at shutdown (store unavailable)", self.name)
        for future in self._waiters:  # nobody may wait forever on a stopped writer
            if not future.done():
                future.set_exception(Unavailable("shutting down before the change was stored"))
        self._waiters.clear()
        return written

    async def flush(self) -> bool:
        """Write every dirty key now; False if the store refused (all kept for a retry)."""
        if not self._dirty and not self._waiters:
            return True
        dirty, self._dirty = self._dirty, set()
        waiters, self._waiters = self._waiters, []
        try:
            if dirty:
                await self._write(dirty)
        except asyncio.CancelledError:
            # close() cancelled the flusher mid-write: its final flush must see these.
            self._dirty |= dirty
            self._waiters = waiters + self._waiters
            raise
        except Exception as exc:
            self._dirty |= dirty
            self._waiters = waiters + self._waiters
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # A driver turned our cancellation into its own error (PyMongo's
                # server selection does): stop as asked.
                raise asyncio.CancelledError from exc
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("%s: write failed (%d pending), will retry: %s", self.name, len(dirty), self.last_error)
            return False
        self.last_error = None
        for future in waiters:
            if not future.done():
                future.set_result(None)
        return True

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the
                # cancellation close() sends when the event fires at the same moment.
                async with asyncio.timeout(self._period):
                    await self._urgent.wait()
                if self._coalesce:
                    await asyncio.sleep(self._coalesce)
            except TimeoutError:
                pass
            self._urgent.clear()
            if not await self.flush():
                await asyncio.sleep(self._retry)
                if self._waiters:
                    self._urgent.set()
