"""Stalled-socket benchmark: server memory when modules stop reading.

    python bench/bench_stalled.py --quick          # 50 sockets, 1 repeat
    python bench/bench_stalled.py                  # 200 sockets, 3 repeats

N modules complete the WebSocket handshake over raw TCP and then never read (small
receive buffer, reading paused). The bench then pushes `--messages` messages of
`--size` bytes to each through `POST /module/send_message` (bounded concurrency),
and records the server's RSS (VmRSS of run.py; the nx-27017 child is a separate
process) idle, with N connected, and after the push, plus how many sends were
accepted (200) and refused (409). Two servers run the same load, each a fresh
`run.py` on the embedded stores:

  capped    WEBSOCKET_MAX_QUEUED_BYTES at its default (1 MiB)
  before    WEBSOCKET_MAX_QUEUED_BYTES=1 GiB, i.e. no practical cap: what the server
            did before back-pressure existed

Medians over the repeats are printed for both, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_connections import BASIC, REG_TOKEN, rss_kib, start_server, stop_server
from tornado.httpclient import AsyncHTTPClient

VARIANTS = {"capped": str(1024 * 1024), "before": str(1024 * 1024 * 1024)}


async def open_stalled(port: int, module_hash: str) -> socket.socket:
    """Handshake, then never read again."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (
        f"GET /websocket?hash={module_hash} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await loop.sock_recv(sock, 1)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head[:60])
    return sock


async def run_one(variant: str, n: int, messages: int, size: int) -> dict[str, Any]:
    os.environ["WEBSOCKET_MAX_QUEUED_BYTES"] = VARIANTS[variant]
    # Long ping interval: the stalled sockets must not be closed as dead (interval +
    # timeout, 40 s by default) before the push ends, or "before" would look capped.
    os.environ["WEBSOCKET_PING_INTERVAL"] = os.environ["WEBSOCKET_PING_TIMEOUT"] = "600"
    http = AsyncHTTPClient(force_instance=True, max_clients=16)
    with tempfile.TemporaryDirectory(prefix="bench-stalled-") as tmp:
        server = await start_server("ours", Path(tmp))
        m: dict[str, Any] = {"variant": variant}
        socks: list[socket.socket] = []
        try:
            base = f"http://127.0.0.1:{server.port}"
            hashes = []
            for i in range(n):
                response = await http.fetch(
                    f"{base}/module/register?name=stalled-{i}&token={REG_TOKEN}", raise_error=False
                )
                hashes.append(json.loads(response.body)["result"]["hash"])
            await asyncio.sleep(1.0)
            m["rss_idle_mib"] = rss_kib(server.pid) / 1024
            for h in hashes:
                socks.append(await open_stalled(server.port, h))
            await asyncio.sleep(1.0)
            m["rss_connected_mib"] = rss_kib(server.pid) / 1024
            payload = "x" * size
            counts = {"accepted": 0, "refused": 0}
            queue: asyncio.Queue[str] = asyncio.Queue()
            for _ in range(messages):
                for h in hashes:
                    queue.put_nowait(h)

            async def worker() -> None:
                while not queue.empty():
                    h = queue.get_nowait()
                    response = await http.fetch(
                        f"{base}/module/send_message", method="POST", raise_error=False,
                        headers={"Authorization": BASIC, "Content-Type": "application/json"},
                        body=json.dumps({"module_hash": h, "message": payload}), request_timeout=60,
                    )
                    counts["accepted" if response.code == 200 else "refused"] += 1

            t0 = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(16)))
            m["push_seconds"] = time.monotonic() - t0
            await asyncio.sleep(1.0)
            m["rss_after_push_mib"] = rss_kib(server.pid) / 1024
            m["rss_growth_mib"] = m["rss_after_push_mib"] - m["rss_connected_mib"]
            m["pushed_mib"] = counts["accepted"] * size / 2**20
            m.update(counts)
        finally:
            for sock in socks:
                sock.close()
            m["stop_seconds"], _ = await stop_server(server, 30)
            http.close()
    return m


ROWS = [
    ("rss_idle_mib", "server RSS idle (MiB)", "{:.1f}"),
    ("rss_connected_mib", "server RSS, N stalled sockets (MiB)", "{:.1f}"),
    ("rss_after_push_mib", "server RSS after the push (MiB)", "{:.1f}"),
    ("rss_growth_mib", "RSS growth from the push (MiB)", "{:.1f}"),
    ("accepted", "sends accepted (200)", "{:.0f}"),
    ("refused", "sends refused (409)", "{:.0f}"),
    ("pushed_mib", "accepted payload (MiB)", "{:.1f}"),
    ("push_seconds", "push duration (s)", "{:.1f}"),
    ("stop_seconds", "SIGTERM -> exit (s)", "{:.1f}"),
]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20,
                        help="messages per module (10 MB at 500 KB: past the ~4 MB a loopback socket buffers in the kernel)")
    parser.add_argument("--size", type=int, default=500 * 1024, help="bytes per message")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats = 50, 1
    print(f"stalled sockets: N={args.n}, {args.messages} x {args.size} B each, repeats={args.repeats}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for repeat in range(args.repeats):
        for variant in VARIANTS:
            m = await run_one(variant, args.n, args.messages, args.size)
            results[variant].append(m)
            print(f"  repeat {repeat + 1} {variant}: " + ", ".join(
                f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items() if k != "variant"
            ), flush=True)
    print(f"\n{'median':40} {'capped':>10} {'before':>10}")
    for key, label, fmt in ROWS:
        cells = [fmt.format(statistics.median(r[key] for r in results[v])) for v in VARIANTS]
        print(f"{label:40} {cells[0]:>10} {cells[1]:>10}")


if __name__ == "__main__":
    asyncio.run(main())
