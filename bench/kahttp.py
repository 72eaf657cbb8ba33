"""A tiny keep-alive HTTP/1.1 client on asyncio streams, for the bench only.

Tornado's AsyncHTTPClient opens one TCP connection per request; 10,000 of those
leave 10,000 sockets in TIME_WAIT and spend client CPU on handshakes. Here each
`Connection` is one persistent socket and requests on it are sequential, so a pool
of K connections gives a concurrency of exactly K.
"""

from __future__ import annotations

import asyncio
import json
import resource
from typing import Any


def raise_nofile() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class HTTPError(Exception):
    pass


class Connection:
    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = self._reader = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        return await asyncio.wait_for(
            self._request(method, path, body, headers or {}), self.timeout
        )

    async def _request(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self._writer is None:
                await self._open()
            assert self._reader is not None and self._writer is not None
            head = [
                f"{method} {path} HTTP/1.1",
                f"Host: {self.host}:{self.port}",
                f"Content-Length: {len(body)}",
            ]
            head += [f"{k}: {v}" for k, v in headers.items()]
            self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            try:
                return await self._read_response()
            except (asyncio.IncompleteReadError, ConnectionError):
                # The server closed an idle keep-alive socket: reconnect once.
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _read_response(self) -> tuple[int, bytes]:
        assert self._reader is not None
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        hdrs = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        if hdrs.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await self._reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append(data[:-2])
            payload = b"".join(chunks)
        else:
            payload = await self._reader.readexactly(int(hdrs.get("content-length", "0")))
        if hdrs.get("connection", "").lower() == "close":
            await self.close()
        return status, payload


async def json_request(
    conn: Connection,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    hdrs = dict(headers or {})
    data = b""
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    status, payload = await conn.request(method, path, data, hdrs)
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload[:200]
