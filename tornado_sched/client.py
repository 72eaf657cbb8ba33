"""Module SDK: register a module, keep its WebSocket open, run its commands.

A module author writes one coroutine and hands it to :class:`ModuleClient`::

    import asyncio
    from tornado_sched.client import ModuleClient

    async def handler(args: dict, meta: dict) -> dict:
        # args: this module's args from the workflow; meta: workflow_id, run_id, ...
        return {"rows": len(args.get("stock_list", []))}

    client = ModuleClient("http://127.0.0.1:10080", "my-module", handler,
                          token="<REGISTRATION_TOKEN>")
    asyncio.run(client.run())   # registers, connects, reconnects; stop() ends it

Data-ordered workflows (``order: "data"``) pass data between modules: a handler
returns a :class:`StepResult` with an ``output`` (a JSON value of at most 64 KiB
encoded: the data, or a reference such as a path or table name), and the modules that
declared that data as an input read it with :func:`step_inputs`::

    async def fetch(args: dict, meta: dict) -> StepResult:
        path = await download_prices(args["day"])
        return StepResult(message="prices ready", output={"path": path})

    async def features(args: dict, meta: dict) -> str:
        prices = step_inputs(meta)["prices"]      # {"path": ...}: fetch's output
        ...

A handler that takes a third parameter gets the step's :class:`StepContext`
(``current_step()`` returns it too): ``step.progress(percent, message)`` and
``step.logger`` (a :class:`logging.Logger` whose lines go to the server, batched),
both shown live on the run page. An operator's cancel cancels the handler's task;
the module then reports the step as failed with the error ``cancelled``.

The wire protocol is the seed's (see ``tornado_sched.protocol``): the server sends
``{"type": "execute", "meta": {...}, "args": {...}}`` and the module answers
``{"type": "result", "status": "success"|"failure", ...}``, acknowledged with the
text ``receive result``. Liveness is WebSocket ping/pong, answered by Tornado's
client on its own; nothing here sends heartbeat messages.

Everything is asyncio and non-blocking: registration uses Tornado's HTTP client,
the connection Tornado's WebSocket client.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from .logs import short_secret
from .protocol import CLOSE_DELETED, CLOSE_REPLACED, CLOSE_ROTATED, OUTPUT_LIMIT_BYTES, RESULT_ACK

log = logging.getLogger(__name__)



class StepResult:
    """What a handler returns to send an ``output`` with its result: ``message`` is
    the seed's result message (text or JSON), ``output`` a JSON value of at most
    64 KiB encoded that the server hands, keyed by data name, to the steps that
    consume this module's outputs (``meta["inputs"]``, see :func:`step_inputs`)."""

    __slots__ = ("message", "output")

    def __init__(self, message: str | dict[str, Any] | list[Any] | None = None, output: Any = None) -> None:
        self.message = message
        self.output = output


def step_inputs(meta: dict[str, Any]) -> dict[str, Any]:
    """The producers' outputs for this step, keyed by data name (``meta["inputs"]``):
    in a data-ordered run, one entry per input whose producer succeeded (its value
    None when that producer sent no output); ``{}`` otherwise (a parallel run, an
    older server)."""
    inputs = meta.get("inputs")
    return inputs if isinstance(inputs, dict) else {}


# (args, meta) or (args, meta, step: StepContext)
Handler = Callable[..., Awaitable[str | dict[str, Any] | StepResult | None]]
MessageCallback = Callable[[str], Awaitable[None] | None]

# The hash is no credential any more (rotated), or the server refuses it.
_CLOSE_REFUSED = (CLOSE_ROTATED, 4403)
_NORMAL_CLOSE = 1000


class ModuleClientError(Exception):
    """The client stopped for a reason retrying cannot fix; the message says why."""


class RegistrationError(ModuleClientError):
    """`/module/register` refused the module (bad credentials, bad input_data...)."""

    def __init__(
        self, message: str, *, status: int | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.field = field

    @property
    def transient(self) -> bool:
        """Network errors, 429 and 5xx are worth retrying; other refusals are not."""
        return self.status is None or self.status == 429 or self.status >= 500


class UnknownModule(ModuleClientError):
    """The server does not know this module's hash (refused with 401/403 at the handshake)."""


class ModuleDeleted(UnknownModule):
    """An operator deleted the module while it was connected (close code 4404)."""


class ModuleReplaced(ModuleClientError):
    """Another connection with the same hash took over (close code 4000, "replaced")."""


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before reconnect number `attempt` (0-based): exponential, capped, jittered.

    "Equal jitter": half of the exponential step is fixed and half random, so a fleet
    of modules that lost the server at the same instant does not come back in one
    wave, and no module retries in a tight loop.
    """
    step = min(cap, base * (2 ** min(attempt, 32)))
    return step / 2 + (rng or random).uniform(0, step / 2)


# Progress and log lines go out in batches: at most one frame of each per interval.
REPORT_INTERVAL = 0.2
LOG_BATCH_LINES = 100

_current_step: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar("current_step", default=None)


def current_step() -> StepContext | None:
    """The StepContext of the execute command this task is handling (None outside one)."""
    return _current_step.get()


class _ForwardLines(logging.Handler):
    def __init__(self, step: StepContext) -> None:
        super().__init__(logging.DEBUG)
        self._step = step
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._step.log(self.format(record))
        except Exception:
            self.handleError(record)


class StepContext:
    """One execute command as its handler sees it: report progress and log lines.

    Reports are sent batched (every ``REPORT_INTERVAL`` seconds, or at
    ``LOG_BATCH_LINES`` lines) and flushed before the result; while disconnected
    they are dropped (the result itself is kept and sent on reconnect)."""

    def __init__(self, client: ModuleClient, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.run_id: str | None = meta.get("run_id") if isinstance(meta.get("run_id"), str) else None
        self.cancelled = False  # set when the server sent `cancel` for this run
        self._client = client
        self._lines: list[str] = []
        self._progress: dict[str, Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Not registered with logging's manager: one per step would never be freed.
        self.logger = logging.Logger(f"{client.name}.step")
        self.logger.addHandler(_ForwardLines(self))

    def progress(self, percent: float | None, message: str | None = None) -> None:
        """How far the step is, 0-100 (None: unknown), and what it is doing."""
        if percent is not None and not 0 <= percent <= 100:
            raise ValueError("percent: expected 0-100")
        self._progress = {"type": "progress", "run_id": self.run_id, "percent": percent, "message": message}
        self._schedule()

    def log(self, line: str) -> None:
        """One log line for the run page (the server keeps the last 200)."""
        self._lines.extend(str(line).splitlines() or [""])
        if len(self._lines) >= LOG_BATCH_LINES:
            self.flush()
        else:
            self._schedule()

    def _schedule(self) -> None:
        if self._timer is None and self.run_id is not None:
            self._timer = asyncio.get_running_loop().call_later(REPORT_INTERVAL, self.flush)

    def flush(self) -> None:
        """Send what is waiting now (also called before the result goes out)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.run_id is None:
            self._lines, self._progress = [], None
            return
        if self._lines:
            lines, self._lines = self._lines, []
            self._client._write(json.dumps({"type": "log", "run_id": self.run_id, "lines": lines},
                                           ensure_ascii=False))
        if self._progress is not None:
            progress, self._progress = self._progress, None
            self._client._write(json.dumps(progress, ensure_ascii=False))


def _ignore_write_error(future: asyncio.Future[None]) -> None:
    # A write that fails because the socket closed is reported by the read loop
    # (read_message returns None); here it only has to be retrieved.
    if not future.cancelled():
        future.exception()


def _takes_three(handler: Handler) -> bool:
    """Whether the handler accepts (args, meta, step); older handlers take two."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                    inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3


class ModuleClient:
    """One module's connection to a tornado_sched server.

    ``run()`` registers (when credentials are given), connects to
    ``/websocket?hash=...``, calls ``handler(args, meta)`` for every ``execute``
    command, each in its own task, and answers with a ``result`` that echoes
    ``meta["run_id"]``. A lost connection is retried with jittered exponential
    backoff (``backoff_base`` doubling up to ``backoff_max``; back to the start after
    a connection that lived ``backoff_reset_after`` seconds). Results finished while
    disconnected are kept (up to ``max_pending_results``) and sent on reconnect.

    ``run()`` ends when ``stop()`` is called (a stopped client stays stopped: make a
    new one to start again), or raises:

    - :class:`RegistrationError` when registration is refused (not for network
      errors or 5xx, which are retried);
    - :class:`UnknownModule` when the handshake is refused for the hash, and its
      subclass :class:`ModuleDeleted` on close code 4404;
    - :class:`ModuleReplaced` on close code 4000. The server closes the older of
      two connections with one hash, so another instance of this module is now
      connected. Reconnecting would close that one in turn, and the two would
      take the module from each other for ever; so this instance stops and leaves
      the decision to the operator.

    ``server_url`` may be a list: the URLs of several instances of one cluster. A
    failed connection or registration moves to the next URL; the backoff grows once
    per round of the list, so a dead instance is left within ``backoff_base`` seconds.

    Credentials: ``token`` (the server's REGISTRATION_TOKEN, sent in the
    ``X-Registration-Token`` header), ``api_token`` (an admin's API token from
    ``POST /tokens`` or ``create-token``, sent as ``Authorization: Bearer``) or
    ``username``/``password`` (operator, HTTP Basic). With neither, pass the ``module_hash`` from an earlier registration and
    the client connects without registering.
    """

    def __init__(
        self,
        server_url: str | Sequence[str],
        name: str,
        handler: Handler,
        *,
        description: str = "",
        input_data: list[dict[str, Any]] | None = None,
        output_data: list[dict[str, Any]] | None = None,
        model_hash: str = "",
        token: str | None = None,
        api_token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        module_hash: str | None = None,
        on_message: MessageCallback | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        backoff_reset_after: float = 60.0,
        connect_timeout: float = 10.0,
        ping_interval: float | None = 30.0,
        ping_timeout: float | None = 30.0,
        stop_timeout: float = 10.0,
        max_pending_results: int = 1000,
    ) -> None:
        urls = [server_url] if isinstance(server_url, str) else list(server_url)
        if not urls:
            raise ValueError("server_url: give at least one URL")
        self.server_urls: list[str] = []
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("server_url: expected http://host:port or https://host:port")
            self.server_urls.append(urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")))
        self._server_index = 0
        if not token and not api_token and not (username and password) and not module_hash:
            raise ValueError(
                "give token, api_token, username and password, or a module_hash from an earlier registration"
            )
        if not 0 < backoff_base <= backoff_max:
            raise ValueError("backoff: need 0 < backoff_base <= backoff_max")
        self.name = name
        self.handler = handler
        self.description = description
        self.input_data = list(input_data or [])
        self.output_data = list(output_data or [])
        self.model_hash = model_hash
        self.module_hash = module_hash
        self.module_id: int | None = None
        self.on_message = on_message
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.backoff_reset_after = backoff_reset_after
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.stop_timeout = stop_timeout
        self._token = token
        self._api_token = api_token
        self._username = username
        self._password = password

        # Counters, for logs, health pages and tests.
        self.connections = 0
        self.results_sent = 0
        self.results_acknowledged = 0

        self._conn: WebSocketClientConnection | None = None
        self._connected = asyncio.Event()
        self._finished = asyncio.Event()
        self._wake = asyncio.Event()
        self._running = False
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Running execute commands by run_id, for the server's `cancel`.
        self._steps: dict[str, set[tuple[StepContext, asyncio.Task[Any]]]] = {}
        self._handler_takes_step = _takes_three(handler)
        self._outbox: deque[str] = deque(maxlen=max_pending_results)

    @property
    def _can_register(self) -> bool:
        return bool(self._token or self._api_token or (self._username and self._password))

    # -- public API ------------------------------------------------------------------
    @property
    def server_url(self) -> str:
        """The server in use now (one of `server_urls`)."""
        return self.server_urls[self._server_index]

    def _next_server(self) -> None:
        """Fail over: the next URL in the list (several instances of one cluster)."""
        if len(self.server_urls) > 1:
            self._server_index = (self._server_index + 1) % len(self.server_urls)
            log.info("module %r: trying %s", self.name, self.server_url)

    def _backoff(self, attempt: int) -> float:
        # One backoff step per round of the list: the other servers are tried soon
        # after a failure, and a cluster that is entirely down is not hammered.
        return backoff_delay(attempt // len(self.server_urls), self.backoff_base, self.backoff_max)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def websocket_url(self) -> str:
        if not self.module_hash:
            raise ModuleClientError("not registered yet: no module hash")
        parts = urlsplit(self.server_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        query = urlencode({"hash": self.module_hash})
        return urlunsplit((scheme, parts.netloc, parts.path + "/websocket", query, ""))

    async def register(self) -> str:
        """One `GET /module/register`; sets and returns the module hash.

        Raises :class:`RegistrationError` (its ``transient`` says whether a retry
        may help)."""
        if not self._can_register:
            raise RegistrationError("no registration credentials (token, api_token or username/password)")
        query = urlencode(
            {
                "name": self.name,
                "description": self.description,
                "input_data": json.dumps(self.input_data, ensure_ascii=False),
                "output_data": json.dumps(self.output_data, ensure_ascii=False),
                "modelHash": self.model_hash,
            }
        )
        headers = {"Accept": "application/json"}
        if self.module_hash:
            # With the registration token alone, the server re-registers an existing
            # name only for a caller that proves it holds the current hash.
            headers["X-Module-Hash"] = self.module_hash
        auth: dict[str, Any] = {}
        if self._token:
            # A header, not the `token` parameter: query strings end up in logs.
            headers["X-Registration-Token"] = self._token
        elif self._api_token:
            headers["Authorization"] = f"Bearer {self._api_token}"
        else:
            auth = {
                "auth_username": self._username,
                "auth_password": self._password,
                "auth_mode": "basic",
            }
        request = HTTPRequest(
            f"{self.server_url}/module/register?{query}",
            headers=headers,
            connect_timeout=self.connect_timeout,
            request_timeout=self.connect_timeout,
            **auth,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, StreamClosedError) as exc:
            # raise_error=False only turns HTTP statuses into responses: a connection
            # that cannot be made (refused, no route, DNS) is raised. That is the
            # transient failure that moves to the next URL, not the end of the module.
            raise RegistrationError(f"cannot reach {self.server_url}: {type(exc).__name__}: {exc}") from None
        if response.code == 599:
            raise RegistrationError(f"cannot reach {self.server_url}: {response.error}")
        try:
            envelope = json.loads(response.body)
        except (ValueError, TypeError):
            envelope = None
        if not isinstance(envelope, dict):
            raise RegistrationError(
                f"register: HTTP {response.code}, not a JSON envelope", status=response.code
            )
        result = envelope.get("result")
        if response.code != 200 or envelope.get("code") != "2000" or not isinstance(result, dict):
            field = result.get("field") if isinstance(result, dict) else None
            raise RegistrationError(
                f"register refused (HTTP {response.code}, code {envelope.get('code')}): {envelope.get('message')}",
                status=response.code,
                field=field,
            )
        self.module_hash = str(result["hash"])
        self.module_id = int(result["module_id"])
        log.info(
            "module %r registered (id %d, hash %s)",
            self.name,
            self.module_id,
            short_secret(self.module_hash),
        )
        return self.module_hash

    async def run(self) -> None:
        """Register, connect and serve until :meth:`stop` (or a fatal error, raised)."""
        if self._running:
            raise RuntimeError("run() is already running")
        self._running = True
        self._finished.clear()
        try:
            if self._can_register:
                await self._register_with_retry()
            await self._connect_loop()
        finally:
            if not self._stopping:
                # A fatal stop: nobody will read these handlers' results.
                await self._cancel_tasks(set(self._tasks))
            self._running = False
            self._finished.set()

    def start(self) -> asyncio.Task[None]:
        """Run in a background task; await the task to see how it ended."""
        return asyncio.get_running_loop().create_task(self.run(), name=f"module-client:{self.name}")

    async def wait_connected(self) -> None:
        """Wait until the WebSocket is open (wrap in ``asyncio.timeout`` to bound it)."""
        await self._connected.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Stop reconnecting, let running handlers finish (up to `grace` seconds, default
        ``stop_timeout``) so their results go out, cancel the rest (each reported as
        a failure), close the socket with 1000 and wait for ``run()`` to return."""
        self._stopping = True
        self._wake.set()
        limit = self.stop_timeout if grace is None else grace
        # A handler may call stop() itself; it cannot wait for its own task.
        pending = {t for t in self._tasks if t is not asyncio.current_task()}
        if pending:
            _done, late = await asyncio.wait(pending, timeout=limit)
            if late:
                log.warning("module %r: %d handler(s) cancelled at stop", self.name, len(late))
                await self._cancel_tasks(late)
        conn = self._conn
        if conn is not None:
            conn.close(_NORMAL_CLOSE, "module stopping")
        if self._running:
            try:
                # The server echoes our close frame within a round trip; this bounds a
                # server that does not.
                await asyncio.wait_for(self._finished.wait(), max(limit, 1.0))
            except TimeoutError:
                log.warning("module %r: connection did not close in time", self.name)

    async def _cancel_tasks(self, tasks: set[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- connection loop -------------------------------------------------------------
    async def _sleep(self, delay: float) -> None:
        """Sleep, but wake at once when stop() is called."""
        try:
            async with asyncio.timeout(delay):  # wait_for may swallow a cancel on 3.11
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _register_with_retry(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                await self.register()
                return
            except RegistrationError as exc:
                if not exc.transient:
                    raise
                delay = self._backoff(attempt)
                self._next_server()
                log.warning("module %r: %s; retrying in %.1fs", self.name, exc, delay)
            attempt += 1
            await self._sleep(delay)

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while not self._stopping:
            request = HTTPRequest(
                self.websocket_url,
                connect_timeout=self.connect_timeout,
                request_timeout=self.connect_timeout,
            )
            opened_at = loop.time()
            try:
                conn = await websocket_connect(
                    request,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_timeout,
                )
            except HTTPClientError as exc:
                if exc.code in (401, 403):
                    raise UnknownModule(
                        f"module {self.name!r}: the server refused hash {short_secret(self.module_hash or '')} "
                        f"(HTTP {exc.code}); register again to get a valid hash"
                    ) from None
                if exc.code == 404:
                    raise ModuleClientError(
                        f"no WebSocket endpoint at {self.server_url}/websocket"
                    ) from None
                problem = f"handshake failed: HTTP {exc.code}"
            except (OSError, StreamClosedError, TimeoutError) as exc:
                problem = f"cannot connect: {type(exc).__name__}: {exc}"
            else:
                code, reason = await self._serve(conn)
                if code == CLOSE_REPLACED:
                    raise ModuleReplaced(
                        f"module {self.name!r}: another connection with the same hash took over "
                        f"({reason or 'replaced'}); this instance stops"
                    )
                if code == CLOSE_DELETED:
                    raise ModuleDeleted(
                        f"module {self.name!r} was deleted on the server ({reason or code})"
                    )
                if code in _CLOSE_REFUSED:
                    raise UnknownModule(
                        f"module {self.name!r}: refused by the server ({code} {reason})"
                    )
                if self._stopping:
                    return
                if loop.time() - opened_at >= self.backoff_reset_after:
                    attempt = 0
                problem = f"connection closed ({code} {reason or ''})".rstrip()
            if self._stopping:
                return
            delay = self._backoff(attempt)
            attempt += 1
            failed = self.server_url
            self._next_server()
            log.warning("module %r: %s (%s); reconnecting in %.2fs to %s", self.name, problem, failed, delay, self.server_url)
            await self._sleep(delay)

    async def _serve(self, conn: WebSocketClientConnection) -> tuple[int | None, str | None]:
        """Read frames until the connection closes; returns (close code, reason)."""
        if self._stopping:
            conn.close(_NORMAL_CLOSE, "module stopping")
        else:
            self._conn = conn
            self.connections += 1
            self._connected.set()
            log.info("module %r connected", self.name)
            self._flush_outbox()
        try:
            while True:
                # Read continuously: Tornado answers server pings in the same loop
                # that fills this queue, so a slow consumer would look like a dead peer.
                message = await conn.read_message()
                if message is None:
                    break
                self._dispatch(message)
        finally:
            if self._conn is conn:
                self._conn = None
                self._connected.clear()
            # Also after the server closed it: Tornado's client keeps its protocol
            # object (and warns when collected) until close() is called.
            code, reason = conn.close_code, conn.close_reason
            conn.close()
        return code, reason

    # -- frames ----------------------------------------------------------------------
    def _dispatch(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            log.debug("module %r: ignoring a binary frame (%d bytes)", self.name, len(message))
            return
        if message == RESULT_ACK:
            self.results_acknowledged += 1
            return
        data: Any = None
        if message.lstrip()[:1] == "{":
            try:
                data = json.loads(message)
            except ValueError:
                data = None
        if isinstance(data, dict) and data.get("type") == "execute":
            self._spawn(self._execute(data))
            return
        if isinstance(data, dict) and data.get("type") == "cancel":
            self._cancel_run(data)
            return
        if isinstance(data, dict) and data.get("type") == "error":
            log.warning("module %r: the server refused a frame: %s", self.name, data.get("error"))
        if self.on_message is not None:
            self._spawn(self._deliver(message))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, message: str) -> None:
        assert self.on_message is not None
        try:
            outcome = self.on_message(message)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("module %r: on_message callback failed", self.name)

    def _cancel_run(self, frame: dict[str, Any]) -> None:
        """The server's `cancel`: cancel the handler task(s) running that run's step."""
        meta = frame.get("meta") if isinstance(frame.get("meta"), dict) else {}
        running = self._steps.get(meta.get("run_id")) if isinstance(meta.get("run_id"), str) else None
        if not running:
            log.info("module %r: cancel for a run not running here", self.name)
            return
        for step, task in running:
            step.cancelled = True
            task.cancel()

    async def _run_handler(self, args: dict[str, Any], step: StepContext) -> Any:
        _current_step.set(step)  # this task's context only
        if self._handler_takes_step:
            return await self.handler(args, step.meta, step)
        return await self.handler(args, step.meta)

    async def _execute(self, command: dict[str, Any]) -> None:
        meta = command.get("meta") if isinstance(command.get("meta"), dict) else {}
        args = command.get("args") if command.get("args") is not None else {}
        status, message, error, output = "success", None, None, None
        if self._stopping:
            status, error = "failure", "module is stopping"
        elif not isinstance(args, dict):
            status, error = "failure", "args: expected a JSON object"
        else:
            step = StepContext(self, meta)
            # The handler runs in its own task so that a `cancel` stops it without
            # stopping this one, which still has to report.
            task = asyncio.ensure_future(self._run_handler(args, step))
            entry = (step, task)
            if step.run_id is not None:
                self._steps.setdefault(step.run_id, set()).add(entry)
            try:
                outcome = await asyncio.shield(task)
                if isinstance(outcome, StepResult):
                    outcome, output = outcome.message, outcome.output
                    status, error, output = _checked_output(output)
                message = (
                    outcome
                    if outcome is None or isinstance(outcome, str | dict | list)
                    else str(outcome)
                )
            except asyncio.CancelledError:
                if not task.done():
                    # stop() cancelled us (not the handler): take the handler down too.
                    task.cancel()
                    step.flush()
                    self._send_result(meta, "failure", None, "cancelled: module stopping")
                    raise
                if not step.cancelled:
                    step.flush()
                    self._send_result(meta, "failure", None, "cancelled: module stopping")
                    raise
                status, error = "failure", "cancelled"
            except Exception as exc:
                log.warning("module %r: handler failed: %s: %s", self.name, type(exc).__name__, exc)
                status, error = "failure", f"{type(exc).__name__}: {exc}"
            finally:
                running = self._steps.get(step.run_id or "")
                if running is not None:
                    running.discard(entry)
                    if not running:
                        del self._steps[step.run_id or ""]
            step.flush()
        self._send_result(meta, status, message, error, output)

    def _send_result(
        self, meta: dict[str, Any], status: str, message: Any, error: str | None, output: Any = None
    ) -> None:
        frame = {
            "type": "result",
            "status": status,
            "workflow_id": meta.get("workflow_id"),
            "workflow_name": meta.get("workflow_name"),
            "module_name": self.name,
            "run_id": meta.get("run_id"),
            "message": message,
            "error": error,
        }
        if output is not None:
            frame["output"] = output
        self._send(json.dumps(frame, ensure_ascii=False, default=str))
        self.results_sent += 1

    def _send(self, text: str) -> None:
        if self._write(text):
            return
        if len(self._outbox) == self._outbox.maxlen:
            log.warning("module %r: pending results full; dropping the oldest", self.name)
        self._outbox.append(text)

    def _write(self, text: str) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            conn.write_message(text).add_done_callback(_ignore_write_error)
        except (WebSocketClosedError, StreamClosedError):
            return False
        return True

    def _flush_outbox(self) -> None:
        while self._outbox:
            if not self._write(self._outbox[0]):
                return
            self._outbox.popleft()


def _checked_output(output: Any) -> tuple[str, str | None, Any]:
    """(status, error, output) for a handler's output: one the server would refuse
    (too large, not JSON) turns the result into a failure saying why, rather than a
    result the server answers with an error frame while the step stays open."""
    if output is None:
        return "success", None, None
    try:
        size = len(json.dumps(output, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
        return "failure", f"output: not JSON ({type(exc).__name__})", None
    if size > OUTPUT_LIMIT_BYTES:
        return "failure", f"output: {size} bytes encoded, more than {OUTPUT_LIMIT_BYTES}; return a reference", None
    return "success", None, output
