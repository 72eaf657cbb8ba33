"""What keeps the server's one event loop on time while it is busy.

asyncio looks at its timers once per loop iteration, and an iteration runs every
callback that was ready when it began. Two things made iterations long enough to make
a cron tick 100-200 ms late while 1,000 modules answered a fan-out (bench/README.md,
"Scheduling lateness under load"):

* epoll hands the loop every ready socket at once: a burst of 600 results is one
  iteration of 600 reads, and the next of 600 messages. `FairEpollSelector` hands out
  at most `MAX_EVENTS_PER_POLL`; the rest are still ready (epoll is level-triggered)
  and come first at the next poll, so nothing starves and a timer waits for at most
  one short iteration.
* CPython's full (generation 2) garbage collection walks every live object: 70-130 ms
  with 1,000 sockets open, about once every 2 s under that load, at whatever moment
  an allocation tips it over. `CollectionPacer` freezes what start-up built (never
  garbage), turns the automatic full collection off and runs it itself, at most every
  `interval` seconds and only in a gap between scheduled fires.

* asyncio puts a timer that has come due behind every callback already queued, and
  the task it starts behind the next iteration's queue: a fire waited for two or
  three busy iterations. `ServerEventLoop` lets the scheduler's timer and the firing
  it starts go to the front of the queue (scheduler.py's `PromptTornadoScheduler`).

The young generations (0 and 1, a few milliseconds each) stay automatic.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import logging
import math
import select
import selectors
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar

from .clock import utcnow

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# 32 reads plus the messages they bring are a few milliseconds of work; 64 made
# lateness p99 under a back-to-back fan-out ~10 ms worse (bench/README.md).
MAX_EVENTS_PER_POLL = 32

# The automatic full collection is off when its threshold cannot be reached (it counts
# young collections: at 10 a second this is 3 years).
_NEVER = 1_000_000_000


if hasattr(selectors, "EpollSelector"):

    class FairEpollSelector(selectors.EpollSelector):
        """`selectors.EpollSelector` that returns at most `max_events` ready keys per
        select (the stdlib asks epoll for as many as are registered)."""

        def __init__(self, max_events: int = MAX_EVENTS_PER_POLL) -> None:
            super().__init__()
            self.max_events = max_events

        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            # The stdlib's body (3.11-3.13) with maxevents capped.
            if timeout is None:
                timeout = -1
            elif timeout <= 0:
                timeout = 0
            else:
                timeout = math.ceil(timeout * 1e3) * 1e-3
            ready = []
            try:
                fd_event_list = self._selector.poll(timeout, self.max_events)
            except InterruptedError:
                return ready
            for fd, event in fd_event_list:
                events = 0
                if event & ~select.EPOLLIN:
                    events |= selectors.EVENT_WRITE
                if event & ~select.EPOLLOUT:
                    events |= selectors.EVENT_READ
                key = self._key_from_fd(fd)
                if key:
                    ready.append((key, events & key.events))
            return ready


class ServerEventLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop, where a timer can be marked as one that must run on
    time (`call_later_first`), and a task as one that must start at once
    (`create_task_first`).

    Stock asyncio moves a timer that has come due to the end of its ready queue,
    behind every callback queued before it (under a fan-out: hundreds of socket reads
    and the task steps they wake), and a task's first step waits for the next
    iteration's queue as well. A marked timer goes to the front of the queue instead,
    so it waits at most for the iteration under way; a task started from it then runs
    next. All other timers keep asyncio's order: batching waits (a group commit's
    coalescing sleep) rely on running after the reads queued before them.

    `_process_events` is the hook asyncio's `_run_once` calls between the poll and its
    own timer step, and `_scheduled`/`_ready` its timer heap and queue (the same in
    CPython 3.8-3.13; tests/core/test_eventloop.py checks the behaviour).
    """

    def __init__(self, selector: selectors.BaseSelector | None = None) -> None:
        super().__init__(selector)
        self._first: set[asyncio.TimerHandle] = set()

    def call_later_first(self, delay: float, callback: Callable[..., object], *args: Any) -> asyncio.TimerHandle:
        """`call_later` whose callback, once due, runs ahead of the callbacks already
        queued. Cancel it as any timer."""
        handle = self.call_later(delay, callback, *args)
        self._first.add(handle)
        return handle

    def create_task_first(self, coro: Coroutine[Any, Any, _T], *, name: str | None = None) -> asyncio.Task[_T]:
        """`create_task` whose first step runs next, ahead of the callbacks already
        queued (its later steps queue as usual). Call it from the loop's own thread."""
        task = self.create_task(coro, name=name)
        ready = self._ready  # type: ignore[attr-defined]
        # Task() has just queued its first step last; it is moved only if that is certain.
        if ready and getattr(ready[-1]._callback, "__self__", None) is task:
            ready.appendleft(ready.pop())
        return task

    def _process_events(self, event_list: list[Any]) -> None:
        if self._first:
            end_time = self.time() + self._clock_resolution  # type: ignore[attr-defined]
            due = sorted((h for h in self._first if h.cancelled() or h.when() < end_time), key=asyncio.TimerHandle.when)
            if due:
                self._first.difference_update(due)
                # Not `_scheduled`: asyncio's own step took it in an earlier iteration
                # (it came due just after this check); it has run or is queued.
                live = [h for h in due if not h.cancelled() and h._scheduled]  # type: ignore[attr-defined]
                if live:
                    # Out of the heap (a few hundred timers at most, once per fire) and
                    # onto the front of the queue, as the same handles: a cancel
                    # still works until they run.
                    scheduled = self._scheduled  # type: ignore[attr-defined]
                    for handle in live:
                        scheduled.remove(handle)
                        handle._scheduled = False  # type: ignore[attr-defined]
                    heapq.heapify(scheduled)
                    self._ready.extendleft(reversed(live))  # type: ignore[attr-defined]
        super()._process_events(event_list)  # type: ignore[misc]


def new_event_loop() -> ServerEventLoop:
    """The server's loop: a `ServerEventLoop` on a `FairEpollSelector` where epoll
    exists (Linux), on the default selector elsewhere."""
    if hasattr(selectors, "EpollSelector"):
        return ServerEventLoop(FairEpollSelector())
    return ServerEventLoop()


class CollectionPacer:
    """Runs CPython's full garbage collection between scheduled fires.

    `next_fire()` gives the earliest scheduled fire (aware datetime, or None when
    nothing is scheduled). Every `interval` seconds the pacer collects if the next fire
    is far enough away (twice the last collection's duration, plus `margin`); if not,
    it waits until just after that fire and looks again. A collection put off for
    `longest_delay` seconds runs anyway: memory held by cyclic garbage must not grow
    without bound on a schedule with no gap (say, many workflows every second).
    """

    def __init__(
        self, next_fire: Callable[[], datetime | None], interval: float = 30.0,
        margin: float = 0.05, longest_delay: float = 300.0,
    ) -> None:
        self._next_fire = next_fire
        self._interval = interval
        self._margin = margin
        self._longest_delay = longest_delay
        self._task: asyncio.Task[None] | None = None
        self._thresholds: tuple[int, int, int] | None = None
        self.last_duration = 0.1  # seconds; a first guess until one is measured
        self.collections = 0
        self.forced = 0

    def start(self) -> None:
        """Freeze start-up's objects, switch the automatic full collection off and
        start pacing it (call once the services are up)."""
        if self._task is not None:
            return
        gc.collect()  # start-up's garbage must not be frozen with it
        gc.freeze()
        self._thresholds = gc.get_threshold()
        young, middle, _ = self._thresholds
        gc.set_threshold(young, middle, _NEVER)
        self._task = asyncio.get_running_loop().create_task(self._pace(), name="collection-pacer")

    async def stop(self) -> None:
        """Give the full collection back to CPython."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
        gc.unfreeze()

    def gap_needed(self) -> float:
        """Seconds free of fires a collection needs now."""
        return 2 * self.last_duration + self._margin

    def wait_before_collecting(self) -> float:
        """0 when a collection may run now, else the seconds until just after the
        next fire (when the check is made again)."""
        upcoming = self._next_fire()
        if upcoming is None:
            return 0.0
        ahead = (upcoming - utcnow()).total_seconds()
        if ahead >= self.gap_needed():
            return 0.0
        return max(ahead, 0.0) + self._margin

    def collect(self) -> int:
        started = time.perf_counter()
        found = gc.collect()
        self.last_duration = time.perf_counter() - started
        self.collections += 1
        log.debug("full collection: %d unreachable, %.1f ms", found, self.last_duration * 1000)
        return found

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval)
            due = loop.time()
            while True:
                try:
                    wait = self.wait_before_collecting()
                except Exception:
                    log.exception("next scheduled fire unknown; collecting now")
                    wait = 0.0
                if wait <= 0:
                    break
                if loop.time() - due >= self._longest_delay:
                    self.forced += 1
                    break
                await asyncio.sleep(wait)
            self.collect()
