"""Cluster mode: several instances share MongoDB and MySQL and meet on Redis.

Imported only when `REDIS_URL` is set (redis-py is needed nowhere else). Redis holds
what instances must know of each other, never a fact that must survive:

- **Liveness**: `tsched:alive:<instance>` with a TTL, refreshed every
  `alive_seconds`; an instance whose key expired is dead.
- **Presence**: the hash `tsched:presence` maps a module hash to the instance holding
  its socket (and what the API shows of it). Changes are written in batches by one
  flusher task, and every local session is rewritten every `presence_refresh_seconds`
  (never a Redis write per pong). An entry of a dead instance counts as absent and is
  removed by the next live instance that refreshes.
- **Routing**: one pub/sub channel per instance, `tsched:to:<instance>`, carries
  commands for the sockets it holds (send a frame, close) and results a module handed
  to an instance that did not start the run (request/reply).
- **Broadcast**: `tsched:broadcast` carries presence changes, dashboard events and
  shared security state (login throttle, password changes).

Every instance keeps a mirror of the presence of the others, so "is this module
online, and where" is answered from memory, synchronously, as in one process. When
Redis is unreachable the instance keeps serving the modules it holds; routing and
presence of the others are unavailable until Redis returns, when the instance
rewrites its presence and re-reads everybody else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .errors import Conflict, DomainError, Invalid, NotFound, Unavailable, Unstorable

log = logging.getLogger(__name__)

PREFIX = "tsched:"
PRESENCE_KEY = PREFIX + "presence"
INSTANCES_KEY = PREFIX + "instances"
BROADCAST = PREFIX + "broadcast"
# How long a run's owner is remembered: longer than any run stays open.
RUN_OWNER_SECONDS = 2 * 86400
# A command published while its instance is not subscribed (reached by nobody: its
# listener is reconnecting, e.g. just after a Redis outage) is published again, every
# ROUTE_RETRY_SECONDS, for at most ROUTE_WAIT_SECONDS while that instance is live.
ROUTE_WAIT_SECONDS = 10.0
ROUTE_RETRY_SECONDS = 0.2
# How long close() waits for its loops to end before it goes on without them.
CLOSE_LOOPS_SECONDS = 5.0
# Domain errors an instance's answer may carry back to the one that asked.
REMOTE_ERRORS: dict[str, type[DomainError]] = {
    cls.__name__: cls for cls in (Invalid, NotFound, Conflict, Unstorable, Unavailable)
}

# Delete a presence entry only if it still names this instance: a module that moved
# to another instance must not be removed by the old one's late disconnect.
_WITHDRAW = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and cjson.decode(held)['instance'] == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

Handler = Callable[[dict[str, Any]], Any]


def channel(instance: str) -> str:
    return f"{PREFIX}to:{instance}"


def alive_key(instance: str) -> str:
    return f"{PREFIX}alive:{instance}"


class Cluster:
    """This instance's membership: liveness, presence, routing and broadcast."""

    def __init__(
        self, redis_url: str, instance: str, *, alive_seconds: float = 2.0, alive_ttl_seconds: float = 8.0,
        presence_refresh_seconds: float = 30.0, request_timeout_seconds: float = 10.0,
    ) -> None:
        self.instance = instance
        self._url = redis_url
        self._alive_seconds = alive_seconds
        self._alive_ttl = max(alive_ttl_seconds, alive_seconds * 2)
        self._presence_refresh = presence_refresh_seconds
        self._request_timeout = request_timeout_seconds
        self._redis: aioredis.Redis | None = None
        self._handlers: dict[str, Handler] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Presence changes and broadcasts waiting for the flusher.
        self._announce: dict[str, dict[str, Any]] = {}
        self._withdraw: set[str] = set()
        self._outgoing: list[dict[str, Any]] = []
        self._routed: list[tuple[str, dict[str, Any], float]] = []  # (instance, message, give up at)
        self._owned: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # The other instances' presence: module hash -> entry (with "instance").
        self.remote: dict[str, dict[str, Any]] = {}
        self.live: set[str] = {instance}
        self.connected = False
        # The StepReports queues wire() makes, for /metrics (reports dropped at their bound).
        self.report_queues: list[Any] = []  # cluster_wiring.StepReports
        self.last_error: str | None = None
        self._resync = asyncio.Event()
        self._quiet_until = 0.0
        self.local_presence: Callable[[], dict[str, dict[str, Any]]] = dict
        self.on_presence: Callable[[str, dict[str, Any] | None, dict[str, Any] | None], None] = lambda *_: None
        self.on_instance_lost: Callable[[str], None] = lambda _name: None
        self.on_rejoin: Callable[[], Any] = _nothing
        self.started_at = time.time()

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and start the loops. Redis being down does not stop the start: the
        instance serves its own modules and joins when Redis answers."""
        self._redis = aioredis.Redis.from_url(
            self._url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=5.0,
        )
        try:
            await self._beat()
            await self._resync_presence()
        except (RedisError, OSError) as exc:
            self._down(exc)
        self._tasks = [
            asyncio.ensure_future(self._alive_loop()),
            asyncio.ensure_future(self._listen_loop()),
            asyncio.ensure_future(self._flush_loop()),
        ]
        log.info("instance %r joined the cluster (redis %s)", self.instance, "up" if self.connected else "DOWN")

    async def close(self) -> None:
        # A cancel alone may be lost: on Python 3.11 asyncio.wait_for returns the result
        # of an inner call that finished as the cancel arrived (redis-py sends through
        # it), and the loop then runs on, so awaiting it hung the shutdown. The loops
        # also stop on `_closing`, and the wait for them is bounded.
        self._closing = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _done, late = await asyncio.wait(self._tasks, timeout=CLOSE_LOOPS_SECONDS)
            if late:
                log.warning("cluster: %d loop(s) still running at close; not waited for", len(late))
            for task in self._tasks:
                # Retrieved (now, or when a late loop ends): a loop that failed was logged already.
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._tasks = []
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                async with asyncio.timeout(3):
                    await self._flush()
                    pipe = self._redis.pipeline(transaction=False)
                    pipe.delete(alive_key(self.instance))
                    pipe.hdel(INSTANCES_KEY, self.instance)
                    await pipe.execute()
            await self._redis.aclose()
            self._redis = None
        for future in self._replies.values():
            if not future.done():
                future.set_exception(Unavailable("instance shutting down"))

    def handle(self, op: str, handler: Handler) -> None:
        """Call `handler(message)` for every routed or broadcast message of kind `op`;
        for a request, its return value (awaited if needed) is the reply."""
        self._handlers[op] = handler

    def status(self) -> str:
        return "ok" if self.connected else f"unavailable: {self.last_error or 'not connected'}"

    def _down(self, exc: BaseException) -> None:
        if self.connected or self.last_error is None:
            log.warning("redis unavailable (%s): serving local modules only", type(exc).__name__)
        self.connected = False
        self.last_error = type(exc).__name__

    def _up(self) -> None:
        if not self.connected:
            if self.last_error is not None:
                log.info("redis reachable again: rejoining the cluster")
                self._resync.set()
                self._quiet_until = time.monotonic() + self._alive_ttl
                spawn(self.on_rejoin())
            self.connected = True
            self.last_error = None

    # -- liveness --------------------------------------------------------------------
    async def _beat(self) -> None:
        assert self._redis is not None
        if self._closing:
            return  # close() deletes our liveness: a late beat must not write it back
        info = json.dumps({"started_at": self.started_at})
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(alive_key(self.instance), info, px=int(self._alive_ttl * 1000))
        pipe.hset(INSTANCES_KEY, self.instance, info)
        pipe.hkeys(INSTANCES_KEY)
        known = (await pipe.execute())[2]
        alive = await self._redis.mget([alive_key(n) for n in known]) if known else []
        live = {name for name, value in zip(known, alive, strict=True) if value is not None}
        live.add(self.instance)
        self._up()
        if time.monotonic() < self._quiet_until:
            # Just back from a Redis outage: the others' keys may have expired during
            # it and not be rewritten yet; nobody is declared lost for one TTL.
            self.live |= live
            return
        lost = self.live - live
        self.live = live
        for name in lost:
            log.warning("instance %r is gone (liveness key expired)", name)
            await self._redis.hdel(INSTANCES_KEY, name)
            self._forget_instance(name)
            self.on_instance_lost(name)

    async def _alive_loop(self) -> None:
        next_refresh = time.monotonic() + self._presence_refresh
        while not self._closing:
            await asyncio.sleep(self._alive_seconds)
            try:
                await self._beat()
                if self._resync.is_set():
                    # Back from an outage: tell everybody what we hold, keep what we
                    # knew of them until they have had one TTL to do the same.
                    self._resync.clear()
                    await self._resync_presence(rejoining=True)
                    next_refresh = time.monotonic() + self._alive_ttl
                elif time.monotonic() >= next_refresh:
                    await self._resync_presence()
                    next_refresh = time.monotonic() + self._presence_refresh
            except (RedisError, OSError) as exc:
                self._down(exc)

    def is_live(self, instance: str) -> bool:
        return instance in self.live

    def is_gone(self, instance: str) -> bool:
        """Whether `instance` is known to be dead: Redis answers, its liveness key is
        gone, and this instance is not just back from an outage (when the others'
        keys may not be rewritten yet). Not knowing is not gone."""
        return self.connected and time.monotonic() >= self._quiet_until and instance not in self.live

    # -- presence --------------------------------------------------------------------
    def announce(self, module_hash: str, entry: dict[str, Any]) -> None:
        """This instance now holds `module_hash` (written by the next flush)."""
        entry = {**entry, "instance": self.instance}
        self._withdraw.discard(module_hash)
        self._announce[module_hash] = entry
        self._outgoing.append({"op": "presence", "hash": module_hash, "entry": entry})
        self._wake.set()

    def withdraw(self, module_hash: str) -> None:
        """This instance no longer holds `module_hash`."""
        self._announce.pop(module_hash, None)
        self._withdraw.add(module_hash)
        self._outgoing.append({"op": "presence", "hash": module_hash, "entry": None, "instance": self.instance})
        self._wake.set()

    def where(self, module_hash: str) -> dict[str, Any] | None:
        """The presence entry of a module held by another live instance, else None."""
        entry = self.remote.get(module_hash)
        if entry is None or entry["instance"] not in self.live:
            return None
        return entry

    def remote_entries(self) -> list[tuple[str, dict[str, Any]]]:
        return [(h, e) for h, e in self.remote.items() if e["instance"] in self.live]

    async def _resync_presence(self, rejoining: bool = False) -> None:
        """Rewrite every local session, read everybody else's, drop dead entries.
        `rejoining` (after a Redis outage, which may have emptied Redis): also
        broadcast every local session, and forget nothing yet."""
        assert self._redis is not None
        local = self.local_presence()
        if local:
            entries = {h: {**e, "instance": self.instance} for h, e in local.items()}
            await self._redis.hset(PRESENCE_KEY, mapping={h: json.dumps(e, default=str) for h, e in entries.items()})
            if rejoining:
                await self._redis.publish(BROADCAST, json.dumps(
                    [{"op": "presence", "hash": h, "entry": e, "from": self.instance} for h, e in entries.items()],
                    default=str,
                ))
        everything = await self._redis.hgetall(PRESENCE_KEY)
        remote: dict[str, dict[str, Any]] = {}
        dead: dict[str, str] = {}  # module hash -> the gone instance its entry names
        for module_hash, raw in everything.items():
            try:
                entry = json.loads(raw)
                owner = str(entry["instance"])
            except (ValueError, KeyError, TypeError):
                await self._redis.hdel(PRESENCE_KEY, module_hash)
                continue
            if owner == self.instance:
                if module_hash not in local:
                    dead[module_hash] = owner  # left behind by an earlier run of this instance
            elif owner in self.live:
                remote[module_hash] = entry
            elif not rejoining:
                dead[module_hash] = owner
        for module_hash, owner in dead.items():
            # Conditional: an entry rewritten meanwhile by a live instance stays.
            await self._redis.eval(_WITHDRAW, 1, PRESENCE_KEY, module_hash, owner)
        if rejoining:
            remote = {**self.remote, **remote}
        previous, self.remote = self.remote, remote
        for module_hash in previous.keys() - remote.keys():
            self.on_presence(module_hash, previous[module_hash], None)
        for module_hash in remote.keys() - previous.keys():
            self.on_presence(module_hash, None, remote[module_hash])

    def _forget_instance(self, name: str) -> None:
        for module_hash, entry in list(self.remote.items()):
            if entry["instance"] == name:
                del self.remote[module_hash]
                self.on_presence(module_hash, entry, None)

    def _apply_presence(self, message: dict[str, Any]) -> None:
        module_hash, entry = message["hash"], message.get("entry")
        if entry is not None:
            if entry["instance"] == self.instance:
                return
            previous = self.remote.get(module_hash)
            self.remote[module_hash] = entry
            self.on_presence(module_hash, previous, entry)
        else:
            previous = self.remote.get(module_hash)
            if previous is not None and previous["instance"] == message.get("instance"):
                del self.remote[module_hash]
                self.on_presence(module_hash, previous, None)

    # -- routing and broadcast -------------------------------------------------------
    def route(self, instance: str, message: dict[str, Any]) -> None:
        """Send a command to another instance (fire and forget, batched; published
        again while nobody receives it, see ROUTE_WAIT_SECONDS)."""
        self._routed.append((instance, message, time.monotonic() + ROUTE_WAIT_SECONDS))
        self._wake.set()

    def broadcast(self, message: dict[str, Any]) -> None:
        """Send `message` to every other instance (batched with presence changes)."""
        self._outgoing.append(message)
        self._wake.set()

    async def request(
        self, instance: str, message: dict[str, Any], timeout: float | None = None,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Send a command and wait for its reply (at most `timeout` seconds, the
        cluster's request timeout by default); Unavailable if none comes in time."""
        if self._redis is None or not self.connected or instance not in self.live:
            raise Unavailable(f"instance {instance} unreachable")
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        try:
            payload = json.dumps([{**message, "request_id": request_id, "reply_to": self.instance}], default=str)
            try:
                receivers = await self._redis.publish(channel(instance), payload)
            except (RedisError, OSError) as exc:
                self._down(exc)
                raise Unavailable(f"instance {instance} unreachable (redis)") from None
            if not receivers:
                raise Unavailable(f"instance {instance} unreachable")
            try:
                async with asyncio.timeout(self._request_timeout if timeout is None else timeout):
                    return await future
            except TimeoutError:
                raise Unavailable(f"instance {instance} did not answer") from None
        finally:
            self._replies.pop(request_id, None)

    # -- run ownership -----------------------------------------------------------------
    def own_run(self, run_id: str, workflow_id: int, module_hashes: list[str]) -> None:
        """Record that this instance owns a run, so a result that reaches another
        instance (its module reconnected there) finds its way back."""
        self._owned[f"{PREFIX}run:{run_id}"] = self.instance
        for module_hash in module_hashes:
            # For clients that answer without run_id: the newest run of the workflow.
            self._owned[f"{PREFIX}wf:{module_hash}:{workflow_id}"] = self.instance
        self._wake.set()

    async def run_owner(self, module_hash: str, run_id: str | None, workflow_id: str | None) -> str | None:
        if self._redis is None or not self.connected:
            return None
        key = f"{PREFIX}run:{run_id}" if run_id else f"{PREFIX}wf:{module_hash}:{workflow_id}"
        try:
            return await self._redis.get(key)
        except (RedisError, OSError) as exc:
            self._down(exc)
            return None

    async def accept_once(self, key: str, ttl_seconds: float) -> bool | None:
        """SET NX: True the first time any instance presents `key` within the TTL,
        False after; None when Redis cannot say (the caller decides alone)."""
        if self._redis is None or not self.connected:
            return None
        try:
            return bool(await self._redis.set(f"{PREFIX}once:{key}", "1", nx=True, px=int(ttl_seconds * 1000)))
        except (RedisError, OSError) as exc:
            self._down(exc)
            return None

    async def _flush(self) -> None:
        """One pipeline for every pending presence change, broadcast and command."""
        if self._redis is None:
            return
        announce, withdraw = self._announce, self._withdraw
        outgoing, routed, owned = self._outgoing, self._routed, self._owned
        if not (announce or withdraw or outgoing or routed or owned):
            return
        self._announce, self._withdraw, self._outgoing, self._routed, self._owned = {}, set(), [], [], {}
        try:
            pipe = self._redis.pipeline(transaction=False)
            if announce:
                pipe.hset(PRESENCE_KEY, mapping={h: json.dumps(e, default=str) for h, e in announce.items()})
            for key, instance in owned.items():
                pipe.set(key, instance, ex=RUN_OWNER_SECONDS)
            for module_hash in withdraw:
                pipe.eval(_WITHDRAW, 1, PRESENCE_KEY, module_hash, self.instance)
            if outgoing:
                stamped = [{**m, "from": self.instance} for m in outgoing]
                pipe.publish(BROADCAST, json.dumps(stamped, default=str))
            by_instance: dict[str, list[tuple[str, dict[str, Any], float]]] = {}
            for item in routed:
                by_instance.setdefault(item[0], []).append(item)
            for instance, items in by_instance.items():
                pipe.publish(channel(instance), json.dumps([m for _i, m, _t in items], default=str))
            results = await pipe.execute()
            self._up()
            receivers = results[len(results) - len(by_instance):]
            self._keep_unreceived([items for items, count in zip(by_instance.values(), receivers, strict=True)
                                   if not count])
        except (RedisError, OSError) as exc:
            self._down(exc)
            # Presence is rewritten in full on reconnect; commands and events are
            # dropped (their modules' state is re-read, dashboards resync).
            if outgoing or routed:
                log.warning("redis down: %d cluster message(s) dropped", len(outgoing) + len(routed))

    def _keep_unreceived(self, batches: list[list[tuple[str, dict[str, Any], float]]]) -> None:
        """Commands that reached nobody: their instance is live but not subscribed yet
        (its listener reconnects after a Redis outage), so they go again shortly,
        ahead of newer ones; past their time, or with their instance gone, dropped."""
        now = time.monotonic()
        kept = [item for items in batches for item in items if item[2] > now and item[0] in self.live]
        dropped = sum(len(items) for items in batches) - len(kept)
        if dropped:
            log.warning("cluster: %d command(s) reached no instance in time; dropped", dropped)
        if kept:
            self._routed[:0] = kept
            asyncio.get_running_loop().call_later(ROUTE_RETRY_SECONDS, self._wake.set)

    async def _flush_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            # No fixed delay (it would be added to every routed command): what is
            # queued in this loop iteration goes now, and whatever arrives while
            # this pipeline is in flight goes together in the next one.
            await asyncio.sleep(0)
            self._wake.clear()
            await self._flush()

    async def _listen_loop(self) -> None:
        while not self._closing:
            pubsub = None
            try:
                assert self._redis is not None
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(channel(self.instance), BROADCAST)
                while not self._closing:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._down(exc)
            except Exception:
                log.exception("cluster listener failed; restarting it")
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            if not self._closing:
                await asyncio.sleep(1.0)

    def _dispatch(self, source: str, data: str) -> None:
        try:
            messages = json.loads(data)
        except ValueError:
            log.warning("unreadable cluster message on %s", source)
            return
        for message in messages if isinstance(messages, list) else [messages]:
            if not isinstance(message, dict):
                continue
            op = message.get("op")
            if source == BROADCAST and message.get("from") == self.instance:
                continue
            if op == "presence":
                self._apply_presence(message)
                continue
            if op == "reply":
                future = self._replies.get(message.get("request_id", ""))
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            handler = self._handlers.get(str(op))
            if handler is None:
                continue
            if "request_id" in message:
                asyncio.ensure_future(self._answer(handler, message))
                continue
            try:
                outcome = handler(message)
                if asyncio.iscoroutine(outcome):
                    asyncio.ensure_future(outcome)
            except Exception:
                log.exception("cluster handler %s failed", op)

    async def _answer(self, handler: Handler, message: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"op": "reply", "request_id": message["request_id"]}
        try:
            outcome = handler(message)
            if asyncio.iscoroutine(outcome):
                outcome = await outcome
            reply.update(ok=True, result=outcome)
        except DomainError as exc:
            # Its message is safe to show: the asking instance answers its client with it.
            reply.update(ok=False, error=type(exc).__name__, message=exc.message)
        except Exception as exc:
            reply.update(ok=False, error=type(exc).__name__)
        self.route(message["reply_to"], reply)


def remote_error(reply: dict[str, Any], otherwise: str) -> DomainError:
    """The domain error another instance answered with, else Unavailable(otherwise)."""
    kind, message = REMOTE_ERRORS.get(str(reply.get("error"))), reply.get("message")
    if kind is None or not isinstance(message, str):
        return Unavailable(otherwise)
    return kind(message)


_background: set[asyncio.Task[Any]] = set()


async def _nothing() -> None:
    return None


def spawn(coro: Any) -> None:
    """Run `coro` in the background, keeping a reference until it ends."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def tell_cluster(redis_url: str, message: dict[str, Any]) -> bool:
    """Broadcast one message from outside a running instance (the CLI after a password
    change). False when Redis cannot be reached: the instances then notice within
    AUTH_CACHE_SECONDS, when they re-check a cached password against the store."""
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        await client.publish(BROADCAST, json.dumps([{**message, "from": "cli"}]))
        return True
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


class OriginMemory:
    """Which instance sent a module each execute frame, so a result can go back to the
    instance that owns the run. Bounded: the oldest entries are forgotten first."""

    def __init__(self, limit: int = 50_000) -> None:
        self._limit = limit
        self._by_key: OrderedDict[tuple[str, str], str] = OrderedDict()

    def remember(self, module_hash: str, frame: str, origin: str) -> None:
        if '"execute"' not in frame:
            return
        try:
            meta = json.loads(frame).get("meta") or {}
        except (ValueError, AttributeError):
            return
        for key in (f"run:{meta.get('run_id')}", f"workflow:{meta.get('workflow_id')}"):
            self._by_key[(module_hash, key)] = origin
            self._by_key.move_to_end((module_hash, key))
        while len(self._by_key) > self._limit:
            self._by_key.popitem(last=False)

    def origin(self, module_hash: str, run_id: str | None, workflow_id: str | None) -> str | None:
        if run_id:
            return self._by_key.get((module_hash, f"run:{run_id}"))
        return self._by_key.get((module_hash, f"workflow:{workflow_id}"))
