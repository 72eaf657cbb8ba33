"""A raw HTTP/1.1 request over asyncio streams, for headers a real client refuses
to send (non-ASCII bytes in Authorization)."""

from __future__ import annotations

import asyncio


async def raw_request(port: int, method: str, path: str, headers: dict[str, bytes]) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name.encode() + b": " + value for name, value in headers.items()]
    if method in ("POST", "PUT", "DELETE"):
        lines.append(b"Content-Length: 0")
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]
