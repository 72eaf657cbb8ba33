"""Group commit: the one "dirty set + waiters + flusher" shape of the core.

Callers mark keys dirty in memory (cheap, synchronous) and, when they need
durability, await `commit()`. One flusher task hands every key marked so far to a
`write` callback that stores the *current* state behind those keys, in as few
statements as it likes, then releases the waiters whose changes it covered. Writing
current state (not each event) keeps the store at one write per key per flush
however many changes arrived, and makes out-of-order writes impossible.

Urgent marks flush soon (after `coalesce_seconds`, so a burst becomes one write);
others wait for the next `period_seconds`. A write that fails because the store is
out of reach (`is_outage`, or no answer within `write_timeout`) keeps its keys dirty
and its waiters waiting; the flusher retries after `retry_seconds`. A write that fails
for any other reason is a bad record: the batch is written again group by group
(`group`, e.g. one run), the groups that still fail are set aside (counted, logged,
`on_quarantine`) and every other change is written, so one record never blocks the
rest. Waiters give up after `commit_timeout` (Unavailable) and those waiting for a
quarantined key get Unstorable.

A wait is a bare future: one timer for all of them enforces `commit_timeout` (the
oldest wait's deadline), so a burst of 1,000 results is 1,000 futures, not 1,000
timers, shields and tasks on the loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Collection, Hashable
from typing import Generic, TypeVar

from .errors import Unavailable, Unstorable

log = logging.getLogger(__name__)

# Waiters answered per loop iteration after a write (see GroupCommit._release).
RELEASE_SLICE = 25

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
        is_outage: Callable[[BaseException], bool] = lambda exc: True,
        group: Callable[[K], Hashable] = lambda key: key,
        on_quarantine: Callable[[set[K], str], None] | None = None,
        write_timeout: float = 15.0,
        commit_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self._write = write
        self._period = period_seconds
        self._coalesce = coalesce_seconds
        self._retry = retry_seconds
        self._is_outage = is_outage
        self._group = group
        self._on_quarantine = on_quarantine
        self._write_timeout = write_timeout
        self.commit_timeout = commit_timeout
        self._dirty: set[K] = set()
        # Quarantined keys and why, until they change again (their waiters fail).
        self._refused: dict[K, str] = {}
        # Each waiter with the keys it needs (None: everything marked before it).
        self._waiters: list[tuple[asyncio.Future[None], frozenset[K] | None]] = []
        # Every wait's deadline (a heap: the earliest first); `_expiry` is the one
        # timer, armed for the earliest. Waits being answered after a write that
        # covered them are in `_answering` and no longer expire.
        self._deadlines: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._expiry: asyncio.TimerHandle | None = None
        self._answering: set[asyncio.Future[None]] = set()
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.failures = 0
        self.quarantined = 0
        self.last_error: str | None = None

    @property
    def pending(self) -> int:
        return len(self._dirty)

    def mark(self, key: K, *, urgent: bool = True) -> None:
        self._dirty.add(key)
        self._refused.pop(key, None)
        if urgent:
            self._urgent.set()

    def discard(self, key: K) -> None:
        self._dirty.discard(key)

    async def commit(self, keys: Collection[K] | None = None) -> None:
        """Wait for the next write that includes every change marked so far.

        Bounded: Unavailable after `commit_timeout` (the change stays marked and is
        written when the store answers). With `keys`, Unstorable if one of them was
        quarantined instead of written."""
        await self.commit_future(keys)

    def commit_future(self, keys: Collection[K] | None = None) -> asyncio.Future[None]:
        """`commit` as a future, for a caller that must not wait in a task (a result
        frame is acknowledged from the future's callback). Same outcomes."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append((future, frozenset(keys) if keys is not None else None))
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].done():
            heapq.heappop(deadlines)
        heapq.heappush(deadlines, (loop.time() + self.commit_timeout, next(self._order), future))
        self._arm_expiry()
        self._urgent.set()
        return future

    def _arm_expiry(self) -> None:
        if self._deadlines and (self._expiry is None or self._expiry.when() > self._deadlines[0][0]):
            if self._expiry is not None:
                self._expiry.cancel()
            self._expiry = asyncio.get_running_loop().call_at(self._deadlines[0][0], self._expire)

    def _expire(self) -> None:
        """Fail the waits past their deadline (their changes stay marked)."""
        self._expiry = None
        now, deadlines = asyncio.get_running_loop().time(), self._deadlines
        while deadlines and (deadlines[0][2].done() or deadlines[0][0] <= now):
            _deadline, _order, future = heapq.heappop(deadlines)
            if not future.done() and future not in self._answering:
                future.set_exception(Unavailable(f"{self.name}: not stored within {self.commit_timeout:g} s"))
        self._arm_expiry()

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
        for future, _keys in self._waiters:  # nobody may wait forever on a stopped writer
            if not future.done():
                future.set_exception(Unavailable("shutting down before the change was stored"))
        self._waiters.clear()
        self._deadlines.clear()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        return written

    async def flush(self) -> bool:
        """Write every dirty key now; False if the store is out of reach (all kept for
        a retry). Bad records are quarantined, never retried, never blocking."""
        if not self._dirty and not self._waiters:
            return True
        dirty, self._dirty = self._dirty, set()
        waiters, self._waiters = self._waiters, []
        try:
            if dirty:
                try:
                    await self._write_bounded(dirty)
                except Exception as exc:
                    if self._outage(exc):
                        raise
                    await self._isolate(dirty, exc)
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
        await self._release(waiters)
        return True

    async def _release(self, waiters: list[tuple[asyncio.Future[None], frozenset[K] | None]]) -> None:
        """Answer the waiters a write covered, RELEASE_SLICE at a time with a yield to
        the loop between slices: each answer schedules its caller (a result's
        acknowledgement), and 1,000 of them in one loop iteration held scheduled
        firings back for tens of milliseconds. Every outcome is decided before the
        first yield (a change marked meanwhile may lift a quarantine), and the waits
        being answered no longer expire. Cancelled midway (close), the rest are
        answered at once: their changes are stored."""
        outcomes = [(future, self._outcome(keys)) for future, keys in waiters if not future.done()]
        self._answering.update(future for future, _ in outcomes)
        done = 0
        try:
            for future, failure in outcomes:
                _settle(future, failure)
                done += 1
                if done % RELEASE_SLICE == 0 and done < len(outcomes):
                    await asyncio.sleep(0)
        finally:
            for future, failure in outcomes[done:]:
                _settle(future, failure)
            self._answering.difference_update(future for future, _ in outcomes)

    def _outcome(self, keys: frozenset[K] | None) -> BaseException | None:
        """What a waiter for `keys` is told after a write: None (stored) or Unstorable."""
        bad = [self._refused[k] for k in keys if k in self._refused] if keys is not None else []
        return Unstorable(f"the store refused it: {bad[0]}") if bad else None

    def _outage(self, exc: BaseException) -> bool:
        return isinstance(exc, TimeoutError) or self._is_outage(exc)

    async def _write_bounded(self, keys: set[K]) -> None:
        async with asyncio.timeout(self._write_timeout):
            await self._write(keys)

    async def _isolate(self, dirty: set[K], first: Exception) -> None:
        """The batch failed for a record, not the store: write it group by group and
        quarantine the groups the store still refuses. An outage met on the way is
        raised, with everything not yet written still in `dirty` for the caller."""
        groups: dict[Hashable, set[K]] = {}
        for key in dirty:
            groups.setdefault(self._group(key), set()).add(key)
        log.warning("%s: batch of %d refused (%s: %s); writing its %d groups one by one",
                    self.name, len(dirty), type(first).__name__, first, len(groups))
        for keys in groups.values():
            try:
                await self._write_bounded(keys)
            except Exception as exc:
                if self._outage(exc):
                    raise
                reason = f"{type(exc).__name__}: {exc}"[:300]
                self.quarantined += 1
                log.error("%s: quarantined %d key(s) the store refuses: %s", self.name, len(keys), reason)
                if self._on_quarantine is not None:
                    self._on_quarantine(keys, reason)
                self._refused.update(dict.fromkeys(keys, reason))
            dirty -= keys

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


def _settle(future: asyncio.Future[None], failure: BaseException | None) -> None:
    if future.done():
        return
    if failure is None:
        future.set_result(None)
    else:
        future.set_exception(failure)
