"""Fan-out round trip, the connection bench's execute phase: execute -> all results durable.

    python bench/bench_fanout.py --n 1000 --repeats 3
    python bench/bench_fanout.py --n 1000 10000 --workflow-size 5000

N modules connect (client processes from bench_connections / client_worker.py; each
socket answers every `execute` with a success result echoing run_id). Then, timed
from the client side, until every socket has received `receive result`:

  ours  workflows of at most --workflow-size modules covering all N, all executed at
        once (`POST /workflow/<id>/execute`); `receive result` follows durability
        (the step rows and run rows are committed in SQL)
  bare  bench/bare_server.py `POST /broadcast`: one execute-shaped frame to every
        socket; each result answered `receive result` at once (no store)

Medians over --repeats; ours/bare printed in the same run. --dashboards K keeps K
dashboard pages' live sockets open on ours, read as fast as they come (an operator
watching), and prints what they received.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_connections import (
    BASIC,
    Worker,
    broadcast,
    cpu_seconds,
    register_modules,
    start_server,
    stop_server,
)
from kahttp import Connection, json_request, raise_nofile


async def one(
    kind: str, hashes: list[str], data_dir: Path, args: argparse.Namespace
) -> tuple[list[float], list[float]]:
    """(wall seconds, server CPU seconds) per fan-out."""
    profile = None
    if args.profile_dir and kind == "ours":
        profile = args.profile_dir / f"fanout-n{len(hashes)}-{time.strftime('%H%M%S')}.prof"
    server = await start_server(kind, data_dir, profile=profile)
    workers: list[Worker] = []
    conn = Connection("127.0.0.1", server.port, timeout=120)
    samples: list[float] = []
    cpu: list[float] = []
    readers: DashboardReaders | None = None
    try:
        auth = {"Authorization": BASIC}
        workflow_ids = []
        if kind == "ours":
            for start in range(0, len(hashes), args.workflow_size):
                part = hashes[start:start + args.workflow_size]
                status, env = await json_request(conn, "POST", "/workflow/create", {
                    "name": f"fanout-{len(hashes)}-{start}-{time.monotonic_ns()}", "enable": False,
                    "execute_cron_list": [], "overlap": "allow", "timeout_seconds": 600,
                    "execute_modules": [{"module_hash": h, "args": {"n": 1}} for h in part],
                }, auth)
                assert status == 200, env
                workflow_ids.append(env["result"]["workflow_id"])
        shares = [hashes[i::args.clients] for i in range(args.clients)]
        cfg = {
            "ws_url": f"ws://127.0.0.1:{server.port}/websocket", "http_host": "127.0.0.1",
            "http_port": server.port, "send_path": "/send", "headers": {},
            "connect_concurrency": 50, "send_concurrency": 8,
        }
        workers = list(await asyncio.gather(*(Worker.start(dict(cfg, hashes=s)) for s in shares)))
        replies = await broadcast(workers, {"cmd": "connect", "timeout": 120}, 120)
        assert sum(r["connected"] for r in replies) == len(hashes), replies
        await asyncio.sleep(2.0)  # let the online-state flush settle
        if kind == "ours" and args.dashboards:
            readers = await open_dashboards(server.port, args.dashboards)
        for _ in range(args.repeats):
            for share, w in zip(shares, workers, strict=True):
                await w.send_cmd({"cmd": "acks", "expected": len(share), "timeout": 120})
            t0, cpu0 = time.monotonic(), cpu_seconds(server.pid) or 0.0
            if kind == "ours":
                calls = [Connection("127.0.0.1", server.port, timeout=120) for _ in workflow_ids]
                results = await asyncio.gather(*(
                    json_request(c, "POST", f"/workflow/{wid}/execute", None, auth)
                    for c, wid in zip(calls, workflow_ids, strict=True)))
                for c in calls:
                    await c.close()
                assert all(status == 200 for status, _ in results), results
            else:
                status, env = await json_request(conn, "POST", "/broadcast", {})
                assert status == 200, env
            acks = [await w.reply(130) for w in workers]
            got = sum(a["acks"] for a in acks)
            assert got == len(hashes), f"{kind}: {got} of {len(hashes)} acks"
            samples.append(max(a["last_ack"] for a in acks) - t0)
            cpu.append((cpu_seconds(server.pid) or 0.0) - cpu0)
            await asyncio.sleep(0.5)
    finally:
        if readers is not None:
            readers.close()
            print(f"  {kind}: {args.dashboards} dashboard page(s) open received {readers.messages:,} messages, "
                  f"{readers.bytes / 1e6:.1f} MB over {args.repeats} fan-out(s)", flush=True)
        await conn.close()
        for w in workers:
            await w.stop()
        await stop_server(server, 60)
    return samples, cpu


class DashboardReaders:
    """Open dashboard pages: live sockets read as fast as they send, counted."""

    def __init__(self, sockets: list[Any]) -> None:
        self.messages = 0
        self.bytes = 0
        self._sockets = sockets
        self._tasks = [asyncio.ensure_future(self._drain(ws)) for ws in sockets]

    async def _drain(self, ws: Any) -> None:
        while (message := await ws.read_message()) is not None:
            self.messages += 1
            self.bytes += len(message)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for ws in self._sockets:
            ws.close()


async def open_dashboards(port: int, count: int) -> DashboardReaders:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    sockets = [
        await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{port}/dashboard/live", headers={"Authorization": BASIC}),
                                max_message_size=256 * 1024 * 1024)
        for _ in range(count)
    ]
    return DashboardReaders(sockets)


async def amain(args: argparse.Namespace) -> int:
    raise_nofile()
    root = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    print(f"{os.cpu_count()} CPUs, loadavg {os.getloadavg()[0]:.1f}; workflow size <= {args.workflow_size}")
    print("| N | ours execute -> all results durable | bare round trip | ours/bare |")
    print("|---|---|---|---|")
    for n in args.n:
        data_dir = root / f"n{n}"
        hashes, _ = await register_modules(n, data_dir, 16, f"fan{n}")
        ours, ours_cpu = await one("ours", hashes, data_dir, args)
        bare, bare_cpu = await one("bare", hashes, root / f"bare{n}", args)
        o, b = statistics.median(ours), statistics.median(bare)
        print(f"| {n:,} | {o * 1000:.0f} ms | {b * 1000:.0f} ms | {o / b:.1f}x |", flush=True)
        print(f"  samples ours {[round(x * 1000) for x in ours]} bare {[round(x * 1000) for x in bare]}")
        oc, bc = statistics.median(ours_cpu), statistics.median(bare_cpu)
        print(f"  server CPU per fan-out (median; ours without its nx-27017 child): ours {oc:.2f} s, "
              f"bare {bc:.2f} s ({oc / bc if bc else float('nan'):.1f}x); load average {os.getloadavg()[0]:.1f}",
              flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--workflow-size", type=int, default=1000,
                        help="modules per workflow (a workflow holds at most 5,000); N is split over several")
    parser.add_argument("--dashboards", type=int, default=0,
                        help="ours: dashboard pages (live sockets) open and read during the fan-outs")
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="run ours under cProfile, stats written here (slower; not for figures)")
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
