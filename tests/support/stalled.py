"""A module socket that completes the WebSocket handshake and then never reads.

Raw TCP (no WebSocket library that would read for us): the client's receive buffer is
made small, and after the 101 response nothing is read, so what the server sends
piles up in its own queue, as with a module whose process hangs.
"""

from __future__ import annotations

import base64
import os
import socket


def open_stalled(port: int, module_hash: str, host: str = "127.0.0.1") -> socket.socket:
    """Blocking: call it through `asyncio.to_thread` when the server runs on the
    test's own loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /websocket?hash={module_hash} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: read nothing past the handshake
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return sock


def read_to_end(sock: socket.socket, within: float = 15.0) -> bytes:
    """Start reading at last: everything the server still sends, until it closes."""
    sock.settimeout(within)
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return bytes(data)
