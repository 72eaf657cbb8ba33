"""The server's event loop (tornado_sched/eventloop.py) on real sockets and the real
collector: a timer is not held back by a burst of ready sockets, no socket starves,
and the full collection is CPython's again when the pacer stops."""

from __future__ import annotations

import asyncio
import gc
import socket
from datetime import timedelta

import pytest

from tornado_sched.clock import utcnow
from tornado_sched.eventloop import MAX_EVENTS_PER_POLL, CollectionPacer, new_event_loop
from tornado_sched.serialize import ITEMS_PER_SLICE, to_json, to_json_sliced

SOCKETS = 300


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
