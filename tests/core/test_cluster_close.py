"""Cluster.close() on a loop that loses its cancel.

On Python 3.11 `asyncio.wait_for` returns the result of an inner call that finished
just as the cancel arrived, and forgets the cancel; redis-py sends every command
through it when a socket timeout is set. A liveness loop caught that way ran on, and
close() waited for it forever: a SIGTERM'd instance never exited (seen in the cluster
tests). No Redis server is needed: every call to it fails at once, as when it is down.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from tornado_sched.cluster import Cluster


def _refused_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{probe.getsockname()[1]}/0"


async def test_close_ends_when_a_loop_loses_its_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    in_beat = asyncio.Event()
    lost: list[str] = []

    async def beat_that_loses_a_cancel(self: Cluster) -> None:
        in_beat.set()
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            if lost:
                raise
            lost.append(self.instance)  # the first one returns normally, as wait_for does on 3.11

    cluster = Cluster(_refused_url(), "lossy", alive_seconds=0.05)
    await cluster.start()  # Redis unreachable: the loops run anyway
    monkeypatch.setattr(Cluster, "_beat", beat_that_loses_a_cancel)
    await asyncio.wait_for(in_beat.wait(), 5)
    closing = asyncio.ensure_future(cluster.close())
    # Not wait_for: cancelling close() on a timeout would hide a close that never ends.
    done, _pending = await asyncio.wait({closing}, timeout=3)
    if not done:
        for task in cluster._tasks:
            task.cancel()  # a second cancel is not lost: the test ends either way
        await closing
    assert done, "close() waited for a loop whose cancel was lost"
    assert lost == ["lossy"]
