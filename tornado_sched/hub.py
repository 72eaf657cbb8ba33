"""Live module sessions: the only place that knows where a module's socket is.

Online state and heartbeats change in memory first; a single flusher task writes
the current state of every changed module in one bulk write, soon after a connect
or disconnect and at most every `flush_seconds` for heartbeats. Writing the
*current* state (not each event) makes out-of-order writes impossible and keeps the
store at one write per module per interval however often pongs arrive.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from .batching import GroupCommit
from .clock import read_datetime, utcnow
from .errors import Conflict
from .events import MODULE_OFFLINE, MODULE_ONLINE, EventBus
from .logs import short_secret
from .protocol import CLOSE_DELETED, CLOSE_REPLACED, CLOSE_SHUTDOWN, CLOSE_TOO_SLOW
from .registry import ModuleRecord, ModuleRegistry
from .stores import is_store_outage

if TYPE_CHECKING:  # cluster.py imports redis: only loaded when REDIS_URL is set
    from .cluster import Cluster

log = logging.getLogger(__name__)

TOO_SLOW_REASON = "too slow: the module stopped reading"


class Connection(Protocol):
    """What the hub needs of a socket (Tornado's WebSocketHandler fits).

    A connection may also offer `queued_bytes() -> int` (bytes written but not yet
    taken by the kernel); only those are checked for back-pressure."""

    def write_message(self, message: str | bytes | dict[str, Any], binary: bool = False) -> Any: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


@dataclass(eq=False, slots=True)
class ModuleSession:
    """One open WebSocket of one module (slotted: one per socket, 10,000s of them)."""

    module_hash: str
    module_id: int
    name: str
    connection: Connection
    remote_address: str | None
    description: str = ""
    connected_at: datetime = field(default_factory=utcnow)
    last_heartbeat: datetime = field(default_factory=utcnow)
    # The heartbeat last written to the store; in-memory heartbeats are the truth
    # while the module is online, so the store only needs an occasional copy.
    stored_heartbeat: datetime = field(default_factory=utcnow)
    # The instance holding the socket, in cluster mode only ("" in one process).
    instance: str = ""

    def public(self) -> dict[str, Any]:
        view = {
            "module_id": self.module_id,
            "name": self.name,
            "hash": self.module_hash,
            "description": self.description,
            "connected_at": self.connected_at,
            "last_heartbeat": self.last_heartbeat,
            "remote_address": self.remote_address,
        }
        if self.instance:
            view["instance"] = self.instance
        return view

    def presence(self) -> dict[str, Any]:
        """What other instances know of this session."""
        return {
            "module_id": self.module_id, "name": self.name, "description": self.description,
            "connected_at": self.connected_at.isoformat(), "last_heartbeat": self.last_heartbeat.isoformat(),
            "remote_address": self.remote_address,
        }


class RemoteConnection:
    """A module's socket on another instance: writes and closes go there over Redis."""

    def __init__(self, cluster: Cluster, instance: str, module_hash: str) -> None:
        self._cluster = cluster
        self._instance = instance
        self._hash = module_hash

    def write_message(self, message: str | bytes | dict[str, Any], binary: bool = False) -> None:
        if not self._cluster.connected or not self._cluster.is_live(self._instance):
            raise ConnectionError("the holding instance is unreachable")
        payload = message if isinstance(message, str) else json.dumps(message, ensure_ascii=False, default=str)
        self._cluster.route(self._instance, {
            "op": "send", "hash": self._hash, "payload": payload, "origin": self._cluster.instance,
        })

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self._cluster.route(self._instance, {"op": "close", "hash": self._hash, "code": code, "reason": reason})


def remote_session(cluster: Cluster, module_hash: str, entry: dict[str, Any]) -> ModuleSession:
    """A session held by another instance, as this one sees it (from presence)."""
    return ModuleSession(
        module_hash, int(entry.get("module_id") or 0), str(entry.get("name") or ""),
        RemoteConnection(cluster, entry["instance"], module_hash), entry.get("remote_address"),
        str(entry.get("description") or ""),
        connected_at=read_datetime(entry.get("connected_at")) or utcnow(),
        last_heartbeat=read_datetime(entry.get("last_heartbeat")) or utcnow(),
        instance=entry["instance"],
    )


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class ConnectionHub:
    """Sessions by module hash, hot switch, sending, batched state writes."""

    def __init__(
        self, registry: ModuleRegistry, events: EventBus, flush_seconds: float = 5.0,
        heartbeat_store_seconds: float = 60.0, max_queued_bytes: int = 1024 * 1024,
    ) -> None:
        self._registry = registry
        self._max_queued_bytes = max_queued_bytes
        self.too_slow_disconnects = 0
        self._events = events
        self._flush_seconds = flush_seconds
        self._heartbeat_store_seconds = heartbeat_store_seconds
        self._sessions: dict[str, ModuleSession] = {}
        self._doc_ids: dict[str, Any] = {}
        # Module state written in group commits: connects/disconnects soon (urgent),
        # heartbeats with the next periodic flush.
        self._writer: GroupCommit[str] = GroupCommit(
            "module state", self._write_states, period_seconds=flush_seconds, coalesce_seconds=0.05,
            is_outage=is_store_outage,
        )
        # WebSocket frames to and from modules, for /metrics (counted, never stored).
        self.frames_in = 0
        self.frames_out = 0
        self._cluster: Cluster | None = None
        self._instance = ""

    # -- cluster ---------------------------------------------------------------------
    def join(self, cluster: Cluster) -> None:
        """Cluster mode: sessions on other instances become visible and reachable, and
        a module's newer session anywhere replaces its older one here."""
        from .cluster import OriginMemory

        self._cluster = cluster
        self._instance = cluster.instance
        self.origins = OriginMemory()
        cluster.local_presence = lambda: {h: s.presence() for h, s in self._sessions.items()}
        cluster.on_presence = self._on_presence
        cluster.handle("send", self._routed_send)
        cluster.handle("close", self._routed_close)

    def _on_presence(self, module_hash: str, previous: dict[str, Any] | None, entry: dict[str, Any] | None) -> None:
        local = self._sessions.get(module_hash)
        if entry is not None:
            if local is not None:
                newer = (read_datetime(entry.get("connected_at")) or utcnow(), entry["instance"])
                if newer > (local.connected_at, self._instance):
                    log.info("module %r: a newer connection on %s replaces this one", local.name, entry["instance"])
                    local.connection.close(CLOSE_REPLACED, "replaced")
                return
            if previous is None:
                self._events.publish(MODULE_ONLINE, {
                    "hash": module_hash, "name": entry.get("name", ""), "module_id": entry.get("module_id"),
                    "instance": entry["instance"],
                })
        elif previous is not None and local is None:
            # Gone from the cluster (closed there, or its instance died): runs here
            # treat it as a disconnect, exactly as for a local socket.
            self._events.publish(MODULE_OFFLINE, {
                "hash": module_hash, "name": previous.get("name", ""), "module_id": previous.get("module_id"),
                "instance": previous["instance"],
            })

    def _routed_send(self, message: dict[str, Any]) -> None:
        module_hash, payload = message.get("hash", ""), message.get("payload", "")
        session = self._sessions.get(module_hash)
        if session is None:
            log.info("routed frame for %s dropped: not held here", short_secret(module_hash))
            return
        self.origins.remember(module_hash, payload, str(message.get("origin", "")))
        try:
            written = session.connection.write_message(payload)
        except Exception:
            return  # closing: its on_close reports the disconnect
        if isinstance(written, asyncio.Future):
            written.add_done_callback(_retrieve)

    def _routed_close(self, message: dict[str, Any]) -> None:
        self.disconnect(message.get("hash", ""), int(message.get("code") or CLOSE_DELETED), str(message.get("reason") or ""))

    @property
    def flush_failures(self) -> int:
        return self._writer.failures

    @property
    def last_flush_error(self) -> str | None:
        return self._writer.last_error

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """At start-up every module is offline (the seed's `expire_modules`); in a
        cluster, every module no live instance holds."""
        if self._cluster is not None:
            held = {h for h, _entry in self._cluster.remote_entries()}
            count = await self._registry.mark_offline_except(held)
        else:
            count = await self._registry.mark_all_offline()
        if count:
            log.info("marked %d module(s) offline at start-up", count)
        self._writer.start()

    async def close(self) -> None:
        for session in list(self._sessions.values()):
            session.connection.close(CLOSE_SHUTDOWN, "server shutting down")
        # Write pending heartbeats, then every module offline in one statement
        # (not one write per module: shutdown stays fast with 10,000 sockets).
        await self._writer.close()
        mine = list(self._sessions)
        for module_hash in mine:
            if self._cluster is not None:
                self._cluster.withdraw(module_hash)
        self._sessions.clear()
        try:
            if self._cluster is not None:
                # The others' modules stay online; only ours go offline.
                await self._registry.save_states({self._doc_ids[h]: {"online": False} for h in mine if h in self._doc_ids})
            else:
                await self._registry.mark_all_offline()
        except Exception as exc:
            # The next start marks every module offline anyway.
            log.warning("could not mark modules offline at shutdown: %s", type(exc).__name__)

    # -- sessions --------------------------------------------------------------------
    def attach(self, module: ModuleRecord, connection: Connection, remote_address: str | None) -> ModuleSession:
        """Make `connection` the module's session; an older one is closed as replaced.

        Synchronous on purpose: two connections racing for one hash are ordered by
        the event loop, and the later one always wins."""
        now = utcnow()  # one immutable datetime shared by the three fields
        session = ModuleSession(
            module.hash, module.module_id, module.name, connection, remote_address, module.description,
            connected_at=now, last_heartbeat=now, stored_heartbeat=now, instance=self._instance,
        )
        self._doc_ids[module.hash] = module.doc_id
        previous = self._sessions.get(module.hash)
        self._sessions[module.hash] = session
        if previous is not None:
            log.info("module %r: new connection replaces the old one", module.name)
            previous.connection.close(CLOSE_REPLACED, "replaced")
        else:
            log.info("module %r online from %s", module.name, remote_address)
        self._mark_dirty(module.hash, urgent=True)
        if self._cluster is not None:
            # The instance that held it before sees this and closes its session.
            self._cluster.announce(module.hash, session.presence())
        self._events.publish(MODULE_ONLINE, {"hash": module.hash, "name": module.name, "module_id": module.module_id})
        return session

    def detach(self, session: ModuleSession, reason: str | None = None) -> bool:
        """Forget a closed session. Returns False for a replaced one (no state change).
        `reason` (why the server closed it) reaches the steps that fail with it."""
        if self._sessions.get(session.module_hash) is not session:
            return False
        del self._sessions[session.module_hash]
        if self._cluster is not None:
            self._cluster.withdraw(session.module_hash)
            elsewhere = self._cluster.where(session.module_hash)
            if elsewhere is not None and (read_datetime(elsewhere.get("connected_at")) or utcnow()) >= session.connected_at:
                # Replaced by a newer session on another instance: online there, no change.
                return False
        log.info("module %r offline%s", session.name, f" ({reason})" if reason else "")
        self._mark_dirty(session.module_hash, urgent=True)
        event = {"hash": session.module_hash, "name": session.name, "module_id": session.module_id}
        if reason:
            event["reason"] = reason
        self._events.publish(MODULE_OFFLINE, event)
        return True

    def heartbeat(self, session: ModuleSession) -> None:
        """A pong (or an old client's heartbeat message) arrived. Kept in memory; the
        store gets a copy at most every `heartbeat_store_seconds` per module."""
        session.last_heartbeat = utcnow()
        stale = (session.last_heartbeat - session.stored_heartbeat).total_seconds() >= self._heartbeat_store_seconds
        if stale and self._sessions.get(session.module_hash) is session:
            self._mark_dirty(session.module_hash, urgent=False)

    def set_description(self, module_hash: str, description: str) -> None:
        """A re-registration changed the description: a live session shows it at once."""
        session = self._sessions.get(module_hash)
        if session is not None:
            session.description = description

    def disconnect(self, module_hash: str, code: int, reason: str) -> bool:
        """Close the module's socket, if it has one; `on_close` detaches it."""
        session = self.session(module_hash)
        if session is None:
            return False
        session.connection.close(code, reason)
        return True

    def session(self, module_hash: str) -> ModuleSession | None:
        """The module's session, here or (cluster mode) on another live instance."""
        session = self._sessions.get(module_hash)
        if session is None and self._cluster is not None:
            entry = self._cluster.where(module_hash)
            if entry is not None:
                return remote_session(self._cluster, module_hash, entry)
        return session

    def local_session(self, module_hash: str) -> ModuleSession | None:
        return self._sessions.get(module_hash)

    def is_online(self, module_hash: str) -> bool:
        return module_hash in self._sessions or (
            self._cluster is not None and self._cluster.where(module_hash) is not None
        )

    def sessions(self) -> list[ModuleSession]:
        """Every live session in the cluster (this instance's only, in one process)."""
        local = list(self._sessions.values())
        if self._cluster is None:
            return local
        return local + [
            remote_session(self._cluster, h, e) for h, e in self._cluster.remote_entries() if h not in self._sessions
        ]

    def send(self, module_hash: str, message: str | dict[str, Any]) -> None:
        """Queue a message on the module's socket, wherever it is; Conflict if offline."""
        session = self.session(module_hash)
        if session is None:
            raise Conflict(f"module {short_secret(module_hash)} is offline")
        payload = message if isinstance(message, str) else json.dumps(message, ensure_ascii=False, default=str)
        self._check_backlog(session, len(payload.encode("utf-8")))
        try:
            written = session.connection.write_message(payload)
        except Exception as exc:
            # The socket is closing (ping timeout, replaced, peer gone) but on_close has
            # not run yet: to the caller that is "offline", not a server error.
            raise Conflict(f"module {short_secret(module_hash)} is offline ({type(exc).__name__})") from None
        self.frames_out += 1
        if isinstance(written, asyncio.Future):
            # A write that fails later is reported by the close; retrieve it so the
            # loop does not log "exception was never retrieved".
            written.add_done_callback(_retrieve)

    def _check_backlog(self, session: ModuleSession, adding: int) -> None:
        """Back-pressure: a module that stopped reading is disconnected (4008) before
        its queue grows past `max_queued_bytes`; the caller gets a Conflict (409)."""
        queued_bytes = getattr(session.connection, "queued_bytes", None)
        if queued_bytes is None:
            return
        queued = queued_bytes()
        if queued + adding <= self._max_queued_bytes or queued == 0:
            return  # a single message larger than the cap still goes to a reading peer
        self.too_slow_disconnects += 1
        log.warning("module %r: %d bytes queued and not read; disconnecting (%d)",
                    session.name, queued, CLOSE_TOO_SLOW)
        session.connection.close(CLOSE_TOO_SLOW, "too slow")
        # Offline now, not when the close handshake with a peer that does not read
        # times out: its open steps fail and later sends are refused at once.
        self.detach(session, TOO_SLOW_REASON)
        raise Conflict(
            f"module {short_secret(session.module_hash)} is too slow ({queued} bytes not read): "
            f"disconnected ({CLOSE_TOO_SLOW})"
        )

    # -- state persistence -----------------------------------------------------------
    def _mark_dirty(self, module_hash: str, *, urgent: bool) -> None:
        self._writer.mark(module_hash, urgent=urgent)

    def _state(self, module_hash: str) -> dict[str, Any] | None:
        session = self._sessions.get(module_hash)
        if session is None:
            if self._cluster is not None and self._cluster.where(module_hash) is not None:
                return None  # held by another instance now: its state is that one's to write
            return {"online": False}
        session.stored_heartbeat = session.last_heartbeat
        return {
            "online": True,
            "connected_at": session.connected_at,
            "last_heartbeat": session.last_heartbeat,
            "remote_address": session.remote_address,
        }

    async def flush(self) -> bool:
        """Write the current state of every changed module now."""
        return await self._writer.flush()

    async def _write_states(self, dirty: set[str]) -> None:
        """One bulk write of the current state of the given modules."""
        states = {self._doc_ids[h]: self._state(h) for h in dirty if h in self._doc_ids}
        # None: held by another instance now, whose state that instance writes.
        await self._registry.save_states({doc_id: state for doc_id, state in states.items() if state is not None})
