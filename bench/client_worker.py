"""One client process of the bench: holds a share of the module sockets and sends
the REST messages for them.

Driven over stdin/stdout with one JSON object per line. The first line gives the
share: {"hashes": [...], "ws_url", "http_host", "http_port", "send_path",
"headers", "connect_concurrency", "send_concurrency"}. Then commands:

  {"cmd": "connect", "timeout": s}  open every socket (bounded concurrency)
  {"cmd": "send", "timeout": s}     POST one message per own module, wait for all receipts
  {"cmd": "acks", "expected": n, "timeout": s}
                                    wait until n `receive result` acks arrived (each
                                    socket answers every `execute` with a success result)
  {"cmd": "close"}                  abort every socket
  {"cmd": "exit"}

Every reply carries times from time.monotonic() (CLOCK_MONOTONIC, comparable across
processes on one Linux machine).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from kahttp import Connection, raise_nofile
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


class Worker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.hashes: list[str] = cfg["hashes"]
        n = len(self.hashes)
        self.conns: list[ClientConnection | None] = [None] * n
        self.readers: list[asyncio.Task[None]] = []
        self.recv_t: list[float | None] = [None] * n
        self.received = 0
        self.all_received = asyncio.Event()
        self.unexpected_closes = 0
        self.closing = False
        self.acks = 0
        self.last_ack: float | None = None
        self.ack_event = asyncio.Event()
        self.acks_expected = 1 << 62

    # -- connect ---------------------------------------------------------------------
    async def connect(self, within: float) -> dict[str, Any]:
        sem = asyncio.Semaphore(self.cfg["connect_concurrency"])
        errors: list[str] = []
        done_t: list[float] = []
        url = self.cfg["ws_url"]

        async def one(i: int, h: str) -> None:
            async with sem:
                try:
                    ws = await connect(
                        f"{url}?hash={h}",
                        compression=None,
                        ping_interval=None,  # the server pings; we only answer
                        open_timeout=within,
                        close_timeout=1,
                        user_agent_header=None,
                    )
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    return
            self.conns[i] = ws
            done_t.append(time.monotonic())
            self.readers.append(asyncio.create_task(self._read(i, ws)))

        t0 = time.monotonic()
        timed_out = False
        try:
            await asyncio.wait_for(
                asyncio.gather(*(one(i, h) for i, h in enumerate(self.hashes))), within
            )
        except TimeoutError:
            timed_out = True
        return {
            "connected": sum(c is not None for c in self.conns),
            "failed": len(self.hashes) - sum(c is not None for c in self.conns),
            "t_start": t0,
            "t_end": max(done_t) if done_t else None,
            "errors": errors[:5],
            "error_count": len(errors),
            "timed_out": timed_out,
        }

    async def _read(self, i: int, ws: ClientConnection) -> None:
        try:
            async for _message in ws:
                if _message == "receive result":
                    self.acks += 1
                    self.last_ack = time.monotonic()
                    if self.acks >= self.acks_expected:
                        self.ack_event.set()
                    continue
                if isinstance(_message, str) and _message.startswith('{"type": "execute"'):
                    meta = json.loads(_message)["meta"]
                    await ws.send(json.dumps({
                        "type": "result", "status": "success", "workflow_id": meta.get("workflow_id"),
                        "workflow_name": meta.get("workflow_name"), "module_name": "bench",
                        "error": None, "message": "ok", "run_id": meta.get("run_id"),
                    }))
                    continue
                if self.recv_t[i] is None:
                    self.recv_t[i] = time.monotonic()
                    self.received += 1
                    if self.received >= self.expected:
                        self.all_received.set()
        except ConnectionClosed:
            pass
        if not self.closing:
            self.unexpected_closes += 1

    # -- send ------------------------------------------------------------------------
    expected = 1 << 62

    async def send(self, within: float) -> dict[str, Any]:
        targets = [i for i, c in enumerate(self.conns) if c is not None]
        self.expected = len(targets)
        if self.received >= self.expected:
            self.all_received.set()
        post_t: dict[int, float] = {}
        resp_t: dict[int, float] = {}
        statuses: dict[int, int] = {}
        bad: list[str] = []
        it = iter(targets)
        cfg = self.cfg
        headers = dict(cfg["headers"], **{"Content-Type": "application/json"})

        async def sender() -> None:
            conn = Connection(cfg["http_host"], cfg["http_port"], timeout=within)
            try:
                for i in it:
                    body = json.dumps(
                        {"module_hash": self.hashes[i], "message": f"bench-{i}"}
                    ).encode()
                    post_t[i] = time.monotonic()
                    try:
                        status, payload = await conn.request(
                            "POST", cfg["send_path"], body, headers
                        )
                    except Exception as exc:  # noqa: BLE001
                        statuses[i] = -1
                        bad.append(f"{type(exc).__name__}: {exc}"[:200])
                        await conn.close()
                        continue
                    resp_t[i] = time.monotonic()
                    statuses[i] = status
                    if status != 200 and len(bad) < 5:
                        bad.append(f"{status}: {payload[:200]!r}")
            finally:
                await conn.close()

        t0 = time.monotonic()
        senders = [asyncio.create_task(sender()) for _ in range(cfg["send_concurrency"])]
        try:
            await asyncio.wait_for(asyncio.gather(*senders), within)
            remaining = max(0.1, within - (time.monotonic() - t0))
            await asyncio.wait_for(self.all_received.wait(), remaining)
        except TimeoutError:
            bad.append(f"send phase timed out after {within:.0f} s")
            for task in senders:
                task.cancel()
        return {
            "t_start": t0,
            "post_t": [post_t.get(i) for i in targets],
            "resp_t": [resp_t.get(i) for i in targets],
            "recv_t": [self.recv_t[i] for i in targets],
            "non_200": sum(1 for s in statuses.values() if s != 200),
            "errors": bad[:5],
        }

    # -- execute -> results durable ---------------------------------------------------
    async def wait_acks(self, expected: int, within: float) -> dict[str, Any]:
        self.acks_expected = expected
        if self.acks >= expected:
            self.ack_event.set()
        try:
            await asyncio.wait_for(self.ack_event.wait(), within)
        except TimeoutError:
            pass
        result = {"acks": self.acks, "last_ack": self.last_ack}
        self.acks, self.last_ack, self.acks_expected = 0, None, 1 << 62
        self.ack_event.clear()
        return result

    # -- close -----------------------------------------------------------------------
    async def close(self) -> dict[str, Any]:
        self.closing = True
        t0 = time.monotonic()
        for ws in self.conns:
            if ws is not None:
                ws.transport.abort()
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        return {
            "t_start": t0,
            "t_end": time.monotonic(),
            "unexpected_closes": self.unexpected_closes,
        }


async def main() -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    worker = Worker(json.loads(await reader.readline()))
    reply({"ready": True, "hashes": len(worker.hashes)})
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "connect":
            reply(await worker.connect(cmd["timeout"]))
        elif cmd["cmd"] == "send":
            reply(await worker.send(cmd["timeout"]))
        elif cmd["cmd"] == "acks":
            reply(await worker.wait_acks(cmd["expected"], cmd["timeout"]))
        elif cmd["cmd"] == "close":
            reply(await worker.close())
        elif cmd["cmd"] == "exit":
            reply({"bye": True})
            break


if __name__ == "__main__":
    asyncio.run(main())
