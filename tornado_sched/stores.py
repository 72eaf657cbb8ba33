"""The two stores: MongoDB for business data, SQL for system data.

Both are opened inside the running event loop and closed in reverse order. Nothing
outside the core touches them directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure
from pymongo.monitoring import ConnectionPoolListener
from sqlalchemy import event, inspect, text
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .errors import Unavailable
from .tables import ADDED_COLUMNS, ADDED_INDEXES, metadata

log = logging.getLogger(__name__)

# aiomysql has a connect timeout but no read timeout, so an SQL server that stops
# answering without closing (stopped, blackholed) would hold its callers forever:
# every SQL operation goes through SqlStore.begin()/connect(), bounded by this
# (tests/core/test_sql_waits.py checks that nothing else opens the engine).
SQL_WAIT_SECONDS = 10.0
# Housekeeping that may touch many rows (retention, the one-time migration).
SQL_HOUSEKEEPING_SECONDS = 300.0


class StoreTimeout(Unavailable):
    """An SQL operation got no answer within its bound: the server hangs rather than
    refusing. An outage like any other (a 503 naming the store, kept and retried by
    the writers)."""


class _ConnectionCounter(ConnectionPoolListener):
    """Counts the driver's new connections and its pool clears (the driver drops
    every connection to a server after a network error with it, then reconnects);
    every other pool event is ignored."""

    def __init__(self, store: DocumentStore) -> None:
        self._store = store

    def connection_created(self, event: Any) -> None:
        self._store.connections_opened += 1

    def pool_cleared(self, event: Any) -> None:
        self._store.connections_lost += 1

    def pool_created(self, event: Any) -> None: ...
    def pool_ready(self, event: Any) -> None: ...
    def pool_closed(self, event: Any) -> None: ...
    def connection_ready(self, event: Any) -> None: ...
    def connection_closed(self, event: Any) -> None: ...
    def connection_check_out_started(self, event: Any) -> None: ...
    def connection_check_out_failed(self, event: Any) -> None: ...
    def connection_checked_out(self, event: Any) -> None: ...
    def connection_checked_in(self, event: Any) -> None: ...


class DocumentStore:
    """Business data in MongoDB (`modules`, `workflows`, `counters`; run history is SQL).

    Rules the embedded server forces on us (docs/design.md): reference documents by string
    ids, create unique things with `insert_one`, counters are the only upserts.
    """

    def __init__(self, uri: str, db_name: str, *, timeout_ms: int = 5000) -> None:
        # For /metrics: connections the driver opened, and losses (pool clears).
        self.connections_opened = 0
        self.connections_lost = 0
        self.client: AsyncMongoClient = AsyncMongoClient(
            uri,
            tz_aware=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            appname="tornado_sched",
            event_listeners=[_ConnectionCounter(self)],
        )
        self.db: AsyncDatabase = self.client[db_name]

    def __getitem__(self, name: str) -> Any:
        return self.db[name]

    async def ensure_indexes(self) -> None:
        await self.db.modules.create_index("name", unique=True)
        await self.db.modules.create_index("hash", unique=True)
        await self.db.modules.create_index("module_id", unique=True)
        await self.db.workflows.create_index("workflow_id", unique=True)
        await self.db.workflows.create_index("name", unique=True)

    async def next_id(self, name: str) -> int:
        """Sequential integer ids (the seed exposes module_id / workflow_id)."""
        doc = await self.db.counters.find_one_and_update(
            {"_id": name},
            {"$inc": {"seq": 1}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        return int(doc["seq"])

    async def ping(self) -> None:
        await self.client.admin.command("ping")

    async def close(self) -> None:
        await self.client.close()


class SqlStore:
    """System data through SQLAlchemy Core's async engine (MySQL/aiomysql or SQLite).
    Callers use `begin()` and `connect()`, never the engine: every wait is bounded."""

    def __init__(self, url: str, *, wait_seconds: float = SQL_WAIT_SECONDS) -> None:
        kwargs: dict[str, Any] = {}
        if url.startswith("mysql"):
            # A pooled connection may have been closed by the server (restart, idle
            # timeout): test it at checkout. A SQLite file cannot go away like that,
            # and the ping is a thread round trip on every transaction.
            kwargs["pool_pre_ping"] = True
            kwargs["pool_recycle"] = 3600
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        self.dialect = self.engine.dialect.name
        # For /metrics: DBAPI connections opened (load and MySQL's hourly recycling
        # open some too), and connections found broken (a lost server), each of
        # which the pool replaces with a new one.
        self.connections_opened = 0
        self.connections_lost = 0
        event.listen(self.engine.sync_engine, "connect", self._count_connect)
        event.listen(self.engine.sync_engine, "invalidate", self._count_lost)
        # Every wait on the server ends after this many seconds (StoreTimeout).
        self.wait_seconds = wait_seconds
        # Set by shorten_waits (a shutdown with the server not answering).
        self._cap: float | None = None
        self._waits: set[asyncio.Timeout] = set()
        self.timeouts = 0
        # True from a wait that got no answer until one that completes: writers that
        # can keep a row keep it at once instead of waiting out the bound again.
        self.stalled = False

    def _count_connect(self, dbapi_connection: Any, record: Any) -> None:
        self.connections_opened += 1

    def _count_lost(self, dbapi_connection: Any, record: Any, exception: BaseException | None) -> None:
        self.connections_lost += 1

    @contextlib.asynccontextmanager
    async def begin(self, seconds: float | None = None) -> AsyncIterator[AsyncConnection]:
        """A transaction, committed on a clean exit; every wait in it bounded."""
        async with self.bounded(seconds), self.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def connect(self, seconds: float | None = None) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; every wait in it bounded."""
        async with self.bounded(seconds), self.engine.connect() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def bounded(self, seconds: float | None = None) -> AsyncIterator[None]:
        """Raise StoreTimeout if the block is not done within `seconds` (default
        `wait_seconds`). The cancellation lands in the driver's await, and SQLAlchemy
        then drops that connection instead of returning it to the pool."""
        limit = self.wait_seconds if seconds is None else seconds
        if self._cap is not None:
            limit = min(limit, self._cap)
        deadline = asyncio.timeout(limit)
        started = asyncio.get_running_loop().time()
        try:
            async with deadline:
                self._waits.add(deadline)
                try:
                    yield
                finally:
                    self._waits.discard(deadline)
        except Exception as exc:
            if not deadline.expired():
                raise
            self.timeouts += 1
            self.stalled = True
            log.warning("sql: no answer within %.1f s (%d time(s) so far)",
                        asyncio.get_running_loop().time() - started, self.timeouts)
            raise StoreTimeout("store unavailable: sql") from exc
        self.stalled = False

    def shorten_waits(self, seconds: float) -> None:
        """From now on no SQL wait lasts longer than `seconds`, those already under
        way included (a shutdown while the server does not answer)."""
        self._cap = seconds
        when = asyncio.get_running_loop().time() + seconds
        for deadline in list(self._waits):
            current = deadline.when()
            if not deadline.expired() and (current is None or current > when):
                deadline.reschedule(when)

    async def answers(self, seconds: float) -> bool:
        """Whether the server answers a ping within `seconds`."""
        try:
            async with self.bounded(seconds):
                await self.ping()
            return True
        except Exception:  # noqa: BLE001 - refused, gone or silent: it does not answer
            return False

    async def create_schema(self) -> None:
        # Bounded first: a server that hangs fails the start instead of freezing it.
        # The schema work itself is not (an index build on a long history takes time).
        await self.ping()
        for attempt in range(3):
            try:
                async with self.engine.begin() as conn:
                    if self.dialect == "sqlite":
                        # WAL lets the dashboard read while the outbox writes.
                        await conn.execute(text("PRAGMA journal_mode=WAL"))
                    await conn.run_sync(metadata.create_all)
                    await conn.run_sync(_add_missing_columns)
                # A transaction of its own, so the columns above are committed
                # whatever happens to an index build on a long history.
                async with self.engine.begin() as conn:
                    await conn.run_sync(_add_missing_indexes)
                return
            except OperationalError:
                # Instances of a cluster starting together race to create a table
                # ("already exists"); the next pass sees it and skips it.
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))

    async def ping(self) -> None:
        async with self.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        try:
            async with self.bounded():
                await self.engine.dispose()
        except StoreTimeout:
            log.error("sql: connection pool not closed in time (server not answering); connections dropped")


def _add_missing_columns(conn: Any) -> None:
    """ALTER TABLE ... ADD COLUMN for each of tables.ADDED_COLUMNS an older schema lacks
    (nullable columns only, so existing rows stay valid)."""
    inspector = inspect(conn)
    for table_name, column_name in ADDED_COLUMNS:
        present = {c["name"] for c in inspector.get_columns(table_name)}
        if column_name in present:
            continue
        column = metadata.tables[table_name].c[column_name]
        kind = column.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE {table_name} ADD COLUMN {column_name} {kind} NULL"))
        log.warning("schema: added column %s.%s", table_name, column_name)


def _add_missing_indexes(conn: Any) -> None:
    """CREATE INDEX for each of tables.ADDED_INDEXES an older schema lacks. Instances
    of a cluster start together: an index another instance created meanwhile is
    found on a second look and is not an error."""
    for table_name, index_name in ADDED_INDEXES:
        if index_name in _index_names(conn, table_name):
            continue
        index = next(i for i in metadata.tables[table_name].indexes if i.name == index_name)
        # On a long history this reads the whole table once; say so before it starts.
        log.warning("schema: creating index %s on %s (once; may take a while on a large history)",
                    index_name, table_name)
        try:
            index.create(conn)
        except (OperationalError, ProgrammingError):
            if index_name not in _index_names(conn, table_name):
                raise
            log.info("schema: index %s was created meanwhile by another instance", index_name)
            continue
        log.warning("schema: added index %s on %s", index_name, table_name)


def _index_names(conn: Any, table_name: str) -> set[str]:
    # A fresh inspector each time: an Inspector caches what it read.
    return {i["name"] for i in inspect(conn).get_indexes(table_name)}


async def check_ready(docs: DocumentStore, sql: SqlStore, limit_seconds: float = 3.0) -> dict[str, str]:
    """Ping both stores concurrently; returns {store: "ok" | error text}."""

    async def probe(name: str, ping: Any) -> tuple[str, str]:
        try:
            await asyncio.wait_for(ping(), limit_seconds)
            return name, "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            log.warning("readiness: %s unreachable: %s", name, type(exc).__name__)
            return name, f"unreachable ({type(exc).__name__})"

    results = await asyncio.gather(probe("mongodb", docs.ping), probe("sql", sql.ping))
    return dict(results)


def is_store_outage(exc: BaseException) -> bool:
    """True when a write failed because its store is out of reach (retry later),
    False when the store refused the record itself (retrying cannot help)."""
    return store_outage(exc) is not None or isinstance(exc, OSError | Unavailable)


def store_outage(exc: BaseException) -> Unavailable | None:
    """A driver error meaning a store cannot be reached, as the domain's 503 naming
    the store; None for anything else. The one place that knows the drivers' types,
    so handlers never import them."""
    if isinstance(exc, ConnectionFailure):
        return Unavailable("store unavailable: mongodb")
    if isinstance(exc, OperationalError | InterfaceError):
        return Unavailable("store unavailable: sql")
    return None
