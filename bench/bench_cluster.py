"""Cluster figures: three `run.py` instances on Redis (db 14), MariaDB and one nx-27017.

    MYSQL_TEST_URL=mysql+aiomysql://root@127.0.0.1:3306/test_h14 \\
        .venv/bin/python -m bench.bench_cluster [--modules-per-instance 50] [--samples 200]

1. send_message latency, POST -> the module's on_message, medians: to a module on the
   instance that received the POST (the bare baseline) and to one on another
   instance (routed over Redis).
2. Fleet failover after kill -9 of one instance: its modules (SDK with the three URLs)
   until every one is connected again, and until another instance lists them all
   online elsewhere; beside it, the same fleet's first connect (baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient

from tests.cluster.conftest import ADMIN, TOKEN, ClusterHarness, basic_auth, running_cluster
from tornado_sched.client import ModuleClient


async def idle(args: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    return {}


def fleet(cluster: ClusterHarness, first: str, count: int, inbox: dict[str, asyncio.Future[float]] | None = None,
          ) -> list[ModuleClient]:
    order = [first] + [n for n in ("i1", "i2", "i3") if n != first]
    clients = []
    for index in range(count):
        name = f"{first}-m{index}"

        def received(text: str, name: str = name) -> None:
            if inbox is not None and name in inbox and not inbox[name].done():
                inbox[name].set_result(time.perf_counter())

        clients.append(ModuleClient(
            cluster.urls(*order), name, idle, token=TOKEN, on_message=received,
            backoff_base=0.2, backoff_max=2.0, ping_interval=5, ping_timeout=5,
        ))
    return clients


async def connect_all(clients: list[ModuleClient]) -> float:
    started = time.perf_counter()
    for client in clients:
        client.start()
    await asyncio.gather(*(asyncio.wait_for(c.wait_connected(), 60) for c in clients))
    return time.perf_counter() - started


async def send_latency(cluster: ClusterHarness, via: str, target: ModuleClient, name: str,
                       inbox: dict[str, asyncio.Future[float]], samples: int) -> float:
    http = AsyncHTTPClient()
    times = []
    for _ in range(samples):
        inbox[name] = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        response = await http.fetch(
            cluster[via].url + "/module/send_message", method="POST",
            body=json.dumps({"module_hash": target.module_hash, "message": "ping"}),
            headers={"Authorization": basic_auth(*ADMIN), "Content-Type": "application/json"},
        )
        assert response.code == 200
        times.append(await asyncio.wait_for(inbox[name], 10) - started)
    return statistics.median(times) * 1000


async def main(per_instance: int, samples: int) -> None:
    import os

    admin_url = os.environ.get("MYSQL_TEST_URL", "mysql+aiomysql://root@127.0.0.1:3306/test_h14")
    with tempfile.TemporaryDirectory() as root:
        async with running_cluster(Path(root), admin_url) as cluster:
            inbox: dict[str, asyncio.Future[float]] = {}
            fleets = {name: fleet(cluster, name, per_instance, inbox) for name in ("i1", "i2", "i3")}
            first_connect = await connect_all(fleets["i1"])
            await connect_all(fleets["i2"] + fleets["i3"])
            target = fleets["i1"][0]
            same = await send_latency(cluster, "i1", target, target.name, inbox, samples)
            cross = await send_latency(cluster, "i2", target, target.name, inbox, samples)
            print(f"send_message -> on_message, median of {samples}:")
            print(f"  same instance (baseline)   {same:7.2f} ms")
            print(f"  across instances (Redis)   {cross:7.2f} ms  (+{cross - same:.2f} ms)")

            moved = fleets["i1"]
            before = {id(c): c.connections for c in moved}
            killed = time.perf_counter()
            await cluster["i1"].kill()

            async def reconnected() -> bool:
                return all(c.connected and c.connections > before[id(c)] for c in moved)

            await cluster.wait_for(reconnected, timeout=120, interval=0.05, what="fleet reconnected")
            all_connected = time.perf_counter() - killed

            async def listed() -> bool:
                online = await cluster.online("i3")
                return all(online.get(c.name) in ("i2", "i3") for c in moved)

            await cluster.wait_for(listed, timeout=120, interval=0.1, what="fleet listed elsewhere")
            all_listed = time.perf_counter() - killed
            print(f"fleet of {per_instance} modules on the killed instance:")
            print(f"  first connect (baseline)          {first_connect:7.2f} s")
            print(f"  kill -9 -> all reconnected        {all_connected:7.2f} s")
            print(f"  kill -9 -> all listed elsewhere   {all_listed:7.2f} s")
            for clients in fleets.values():
                await asyncio.gather(*(c.stop(grace=0.5) for c in clients), return_exceptions=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules-per-instance", type=int, default=50)
    parser.add_argument("--samples", type=int, default=200)
    options = parser.parse_args()
    asyncio.run(main(options.modules_per_instance, options.samples))
