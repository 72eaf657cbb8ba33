"""The server's event loop (tornado_sched/eventloop.py) on real sockets and the real
collector: a timer is not held back by a burst of ready sockets or by the callbacks
queued before it came due, no socket or callback starves, a scheduled firing starts
ahead of the queue, and the full collection is CPython's again when the pacer stops."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from apscheduler.schedulers.tornado import TornadoScheduler
from apscheduler.triggers.date import DateTrigger

from tornado_sched.clock import utcnow
from tornado_sched.eventloop import (
    MAX_EVENTS_PER_POLL,
    CollectionPacer,
    new_event_loop,
)
from tornado_sched.scheduler import PromptTornadoScheduler
from tornado_sched.serialize import ITEMS_PER_SLICE, to_json, to_json_sliced

SOCKETS = 300
BACKLOG = 500


def _spin(seconds: float = 10e-6) -> None:
    """A callback's worth of work: a backlog iteration takes a few milliseconds, as
    under a fan-out, so that the loop's clock can tell its turns apart."""
    ends = time.perf_counter() + seconds
    while time.perf_counter() < ends:
        pass


def _order_of_a_timer_among_ready_sockets(loop: asyncio.AbstractEventLoop) -> tuple[int, list[int]]:
    """SOCKETS readable sockets and a timer due at once: (how many reads ran before the
    timer, the order the sockets were read in)."""
    pairs = [socket.socketpair() for _ in range(SOCKETS)]
    order: list[int] = []
    timer_at: list[int] = []
    done = loop.create_future()

    def read(index: int, sock: socket.socket) -> None:
        sock.recv(16)
        loop.remove_reader(sock.fileno())
        order.append(index)
        if len(order) == SOCKETS and not done.done():
            done.set_result(None)

    try:
        for index, (ours, theirs) in enumerate(pairs):
            ours.setblocking(False)
            theirs.send(b"x")
            loop.add_reader(ours.fileno(), read, index, ours)
        loop.call_later(0, lambda: timer_at.append(len(order)))
        loop.run_until_complete(asyncio.wait_for(done, 10))
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
    return timer_at[0], order


def test_a_burst_of_ready_sockets_does_not_hold_a_timer_back() -> None:
    loop = new_event_loop()
    try:
        before_timer, order = _order_of_a_timer_among_ready_sockets(loop)
    finally:
        loop.close()
    # The stock loop reads all 300 first (the whole burst is one iteration).
    assert before_timer <= MAX_EVENTS_PER_POLL
    assert sorted(order) == list(range(SOCKETS))  # nobody starves


def test_the_stock_loop_reads_the_whole_burst_first() -> None:
    """What the fair selector is for: the comparison the test above depends on."""
    loop = asyncio.SelectorEventLoop()
    try:
        before_timer, _ = _order_of_a_timer_among_ready_sockets(loop)
    finally:
        loop.close()
    assert before_timer == SOCKETS


class Backlog:
    """BACKLOG callbacks that keep re-queuing themselves until `done` (a loop busy with
    a fan-out), each noting the loop's time when it ran."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ran: list[float] = []
        self.done: asyncio.Future[None] = loop.create_future()
        for _ in range(BACKLOG):
            loop.call_soon(self._busy)

    def _busy(self) -> None:
        _spin()
        self.ran.append(self.loop.time())
        if not self.done.done():
            self.loop.call_soon(self._busy)

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def ran_between(self, start: float, end: float) -> int:
        return sum(1 for at in self.ran if start <= at <= end)


def _backlog_run_before(
    loop: asyncio.AbstractEventLoop, start: Callable[[Callable[[], None]], None], *, first: bool
) -> int:
    """A timer (with `first`: armed with `call_later_first`) that comes due amid a
    Backlog; `start(record)` is called from the timer and must lead to `record()`.
    Returns how many backlog callbacks ran from the timer's due time to `record()`."""
    recorded: list[float] = []

    async def scenario() -> tuple[Backlog, float]:
        backlog = Backlog(loop)

        def record() -> None:
            recorded.append(loop.time())
            backlog.finish()

        await asyncio.sleep(0.05)  # the backlog is turning over
        arm = loop.call_later_first if first else loop.call_later  # type: ignore[attr-defined]
        due = loop.time() + 0.02
        arm(0.02, start, record)
        await asyncio.wait_for(backlog.done, 10)
        return backlog, due

    backlog, due = loop.run_until_complete(scenario())
    return backlog.ran_between(due, recorded[0])


def _first_step(loop: asyncio.AbstractEventLoop) -> Callable[[Callable[[], None]], None]:
    def start(record: Callable[[], None]) -> None:
        async def job() -> None:
            record()
        make = getattr(loop, "create_task_first", loop.create_task)
        tasks.add(make(job()))
    tasks: set[asyncio.Task[None]] = set()
    return start


def test_a_first_timer_and_the_task_it_starts_run_ahead_of_the_queue() -> None:
    loop = new_event_loop()
    try:
        timer_wait = _backlog_run_before(loop, lambda record: record(), first=True)
        task_wait = _backlog_run_before(loop, _first_step(loop), first=True)
        plain_wait = _backlog_run_before(loop, lambda record: record(), first=False)
    finally:
        loop.close()
    # At most the rest of the iteration under way when the timer came due.
    assert timer_wait < BACKLOG and task_wait < BACKLOG
    # Any other timer keeps asyncio's place, behind what was queued before it.
    assert plain_wait >= BACKLOG


def test_the_stock_loop_queues_a_due_timer_and_its_task_behind_the_backlog() -> None:
    """The comparison the test above depends on: stock asyncio runs the due timer after
    the whole queue, and the task's first step after the next one."""
    loop = asyncio.SelectorEventLoop()
    try:
        timer_wait = _backlog_run_before(loop, lambda record: record(), first=False)
        task_wait = _backlog_run_before(loop, _first_step(loop), first=False)
    finally:
        loop.close()
    assert timer_wait >= BACKLOG and task_wait >= 2 * BACKLOG - 1


def test_first_timers_starve_nothing_and_cancel_as_any_timer() -> None:
    loop = new_event_loop()
    rounds = {"first": 0, "soon": 0, "late": 0, "cancelled": 0}

    def first() -> None:  # due again at once, for ever
        rounds["first"] += 1
        loop.call_later_first(0, first)

    def soon() -> None:
        rounds["soon"] += 1
        loop.call_soon(soon)

    try:
        loop.call_later_first(0, first)
        loop.call_soon(soon)
        loop.call_later(0.05, lambda: rounds.__setitem__("late", 1))
        loop.call_later_first(0.05, lambda: rounds.__setitem__("cancelled", 1)).cancel()
        # Cancelled by a first timer due just before it (as a rule in the same
        # iteration, both at the front of the queue).
        handles: list[asyncio.TimerHandle] = []
        loop.call_later_first(0.1, lambda: handles[0].cancel())
        handles.append(loop.call_later_first(0.1 + 1e-4, lambda: rounds.__setitem__("cancelled", 2)))
        loop.run_until_complete(asyncio.sleep(0.2))
    finally:
        loop.close()
    assert rounds["late"] == 1 and rounds["cancelled"] == 0
    assert rounds["soon"] > 100 and rounds["first"] > 100


def _scheduled_job_wait(scheduler_class: type[TornadoScheduler], loop: asyncio.AbstractEventLoop) -> int:
    """Backlog callbacks run between a job's fire time and its first step, on the given
    APScheduler class and loop."""
    started: list[float] = []

    async def scenario() -> tuple[Backlog, float]:
        scheduler = scheduler_class(timezone="UTC")
        scheduler.start()
        try:
            backlog = Backlog(loop)

            async def job() -> None:
                started.append(loop.time())
                backlog.finish()

            lead = 0.1
            fire_at = utcnow() + timedelta(seconds=lead)
            due = loop.time() + lead
            scheduler.add_job(job, DateTrigger(fire_at))
            await asyncio.wait_for(backlog.done, 10)
            return backlog, due
        finally:
            scheduler.shutdown(wait=False)

    backlog, due = loop.run_until_complete(scenario())
    # The wall clock and the loop's clock are read a moment apart: an allowance.
    return backlog.ran_between(due + 0.0005, started[0])


def test_a_scheduled_job_starts_ahead_of_a_busy_loop() -> None:
    loop = new_event_loop()
    try:
        ours = _scheduled_job_wait(PromptTornadoScheduler, loop)
    finally:
        loop.close()
    stock_loop = asyncio.SelectorEventLoop()
    try:
        stock = _scheduled_job_wait(TornadoScheduler, stock_loop)
    finally:
        stock_loop.close()
    # Stock: the timer waits for the queue, queues `wakeup`, which queues the job's
    # task: three turns of the backlog. Ours: at most the iteration under way.
    assert stock >= 2 * BACKLOG
    assert ours < BACKLOG


async def test_the_pacer_owns_the_full_collection_until_it_stops() -> None:
    thresholds = gc.get_threshold()
    pacer = CollectionPacer(lambda: None, interval=0.05)
    pacer.start()
    try:
        assert gc.get_threshold()[:2] == thresholds[:2] and gc.get_threshold()[2] > 10**8
        assert gc.get_freeze_count() > 0
        for _ in range(100):
            if pacer.collections >= 2:
                break
            await asyncio.sleep(0.05)
        assert pacer.collections >= 2 and pacer.last_duration > 0
    finally:
        await pacer.stop()
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0


async def test_a_collection_waits_for_the_gap_after_a_fire() -> None:
    fire = [utcnow() + timedelta(seconds=10)]
    pacer = CollectionPacer(lambda: fire[0], margin=0.05)
    pacer.last_duration = 0.1
    assert pacer.wait_before_collecting() == 0.0  # 10 s of quiet
    fire[0] = utcnow() + timedelta(seconds=0.15)  # the collection needs 0.25 s
    wait = pacer.wait_before_collecting()
    assert 0.1 < wait <= 0.2 + 0.01
    fire[0] = utcnow() - timedelta(seconds=1)  # a fire that is late still counts as near
    assert pacer.wait_before_collecting() == pytest.approx(0.05)


async def test_a_schedule_with_no_gap_still_gets_its_collection() -> None:
    pacer = CollectionPacer(lambda: utcnow() + timedelta(seconds=0.01), interval=0.01, longest_delay=0.2)
    pacer.start()
    try:
        for _ in range(100):
            if pacer.collections:
                break
            await asyncio.sleep(0.05)
        assert pacer.collections >= 1 and pacer.forced >= 1
    finally:
        await pacer.stop()


async def test_a_long_list_is_encoded_in_slices_to_the_same_text() -> None:
    steps = [{"index": i, "at": utcnow(), "text": 'quote " and \\u0000sliced', "nested": {"steps": None}}
             for i in range(ITEMS_PER_SLICE * 3 + 7)]
    envelope = {"code": "2000", "message": "成功", "result": {"run_id": "r", "steps": steps, "after": [1]}}
    assert await to_json_sliced(envelope, "result", "steps") == to_json(envelope)
    short = {"code": "2000", "message": "成功", "result": {"steps": steps[:3]}}
    assert await to_json_sliced(short, "result", "steps") == to_json(short)
    assert await to_json_sliced({"steps": steps}, "steps") == to_json({"steps": steps})
