"""BARE baseline: the least Tornado server doing the bench's work (no auth, no store).

`/websocket?hash=...` keeps hash -> handler; `POST /send` {module_hash, message}
writes to one socket; `POST /broadcast` sends an execute-shaped frame to every socket,
and each `result` frame is answered `receive result` (no store: the bare round trip);
`GET /count` says how many are open. Same ping settings as
tornado_sched's defaults. Prints `listening on port N` like run.py.
"""

import asyncio
import json
import os
import signal

import tornado.web
import tornado.websocket
from kahttp import raise_nofile
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

SOCKETS: dict[str, "Socket"] = {}


class Socket(tornado.websocket.WebSocketHandler):
    def open(self) -> None:
        self.h = self.get_query_argument("hash", "")
        old, SOCKETS[self.h] = SOCKETS.get(self.h), self
        if old is not None:
            old.close(4000, "replaced")

    def on_message(self, message: str | bytes) -> None:
        if json.loads(message).get("type") == "result":
            self.write_message("receive result")

    def on_close(self) -> None:
        if SOCKETS.get(getattr(self, "h", "")) is self:
            del SOCKETS[self.h]


class Send(tornado.web.RequestHandler):
    def post(self) -> None:
        body = json.loads(self.request.body)
        ws = SOCKETS.get(body["module_hash"])
        if ws is None:
            raise tornado.web.HTTPError(409)
        ws.write_message(body["message"])
        self.write({"message": "sent"})


class Broadcast(tornado.web.RequestHandler):
    def post(self) -> None:
        frame = json.dumps({"type": "execute", "meta": {"run_id": "bare", "workflow_id": 0}, "args": {}})
        for ws in list(SOCKETS.values()):
            ws.write_message(frame)
        self.write({"sent": len(SOCKETS)})


class Count(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"online": len(SOCKETS)})


async def main() -> None:
    raise_nofile()
    app = tornado.web.Application(
        [(r"/websocket", Socket), (r"/send", Send), (r"/broadcast", Broadcast), (r"/count", Count)],
        websocket_ping_interval=20.0,
        websocket_ping_timeout=20.0,
        log_function=lambda h: None,
    )
    sockets = bind_sockets(int(os.environ.get("SERVER_PORT", "0")), "127.0.0.1")
    HTTPServer(app).add_sockets(sockets)
    print(f"listening on port {sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
