"""Routing between two in-process cluster members on the test Redis: a command for a
live instance whose listener is not subscribed yet (as for a few seconds after a
Redis outage) is not lost."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from tornado_sched.cluster import INSTANCES_KEY, Cluster, alive_key

from .conftest import REDIS_URL, clear_redis

pytestmark = pytest.mark.slow


async def test_a_command_waits_for_its_instance_to_subscribe() -> None:
    await clear_redis()
    sender = Cluster(REDIS_URL, "sender", alive_seconds=0.1)
    receiver = Cluster(REDIS_URL, "receiver", alive_seconds=0.1)
    got: list[Any] = []
    receiver.handle("ping", lambda message: got.append(message["n"]))
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await sender.start()
        # The receiver is live (its liveness key is there) but not listening yet.
        info = json.dumps({"started_at": 0})
        await client.set(alive_key("receiver"), info, px=5000)
        await client.hset(INSTANCES_KEY, "receiver", info)
        for _ in range(50):
            if sender.is_live("receiver"):
                break
            await asyncio.sleep(0.1)
        assert sender.is_live("receiver")
        sender.route("receiver", {"op": "ping", "n": 1})
        await asyncio.sleep(1.0)  # published meanwhile, to nobody
        await receiver.start()
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a second delivery would arrive by now
        assert got == [1]
    finally:
        await receiver.close()
        await sender.close()
        await client.aclose()
        await clear_redis()
