"""Server-side browser sessions.

The browser holds a random session id (256 bits) in a signed cookie; the relational
store holds only its SHA-256 digest, the operator, the password version at login,
and when it was created, last seen and ended. A session ends on logout, when an
admin ends it, when the operator's password changes (from this process or from
`run.py set-password`: the stored version no longer matches), after SESSION_IDLE_SECONDS
without a request, and SESSION_MAX_SECONDS after login whatever happens.

`last_seen_at` is kept in memory and written at most every `touch_seconds` per
session, so a busy dashboard does not cost a write per request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update

from .auth import Operator, OperatorAccounts
from .clock import as_utc, utcnow
from .errors import Conflict, NotFound
from .stores import SqlStore
from .tables import browser_sessions

log = logging.getLogger(__name__)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SessionInfo:
    """A browser session as an admin sees it (never its id, only its row number)."""

    id: int
    username: str
    created_at: datetime | None
    last_seen_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    remote_ip: str | None
    user_agent: str | None

    def public(self) -> dict[str, object]:
        return {
            "id": self.id, "username": self.username, "created_at": self.created_at,
            "last_seen_at": self.last_seen_at, "ended_at": self.ended_at, "end_reason": self.end_reason,
            "remote_ip": self.remote_ip, "user_agent": self.user_agent, "active": self.ended_at is None,
        }


def _info(row) -> SessionInfo:  # noqa: ANN001 - SQLAlchemy Row of `browser_sessions`
    return SessionInfo(row.id, row.username, as_utc(row.created_at), as_utc(row.last_seen_at),
                       as_utc(row.ended_at), row.end_reason, row.remote_ip, row.user_agent)


class BrowserSessions:
    """Create, resolve and end browser sessions stored in SQL."""

    def __init__(self, sql: SqlStore, accounts: OperatorAccounts, idle_seconds: float = 8 * 3600,
                 max_seconds: float = 24 * 3600, touch_seconds: float = 60.0) -> None:
        self._sql = sql
        self._accounts = accounts
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self._touch_seconds = min(touch_seconds, idle_seconds / 4)
        # session row id -> (last request, UTC; monotonic time of the last write)
        self._seen: dict[int, tuple[datetime, float]] = {}

    async def start(self, operator: Operator, remote_ip: str | None, user_agent: str | None) -> str:
        """A new session for `operator`; returns the session id for the cookie."""
        session_id = secrets.token_urlsafe(32)
        now = utcnow().replace(tzinfo=None)
        async with self._sql.begin() as conn:
            await conn.execute(insert(browser_sessions).values(
                token_hash=_digest(session_id), username=operator.username, version=operator.session_version,
                created_at=now, last_seen_at=now, remote_ip=(remote_ip or "")[:64],
                user_agent=(user_agent or "")[:200],
            ))
        return session_id

    async def resolve(self, session_id: str) -> Operator | None:
        """The operator of a live session, else None (unknown, ended, expired, or the
        password changed since login; the last three are ended in the store)."""
        if not isinstance(session_id, str) or not 20 <= len(session_id) <= 100:
            return None
        async with self._sql.connect() as conn:
            row = (await conn.execute(
                select(browser_sessions).where(browser_sessions.c.token_hash == _digest(session_id))
            )).first()
        if row is None or row.ended_at is not None:
            return None
        now = utcnow()
        created, stored_seen = as_utc(row.created_at), as_utc(row.last_seen_at)
        seen = max(stored_seen, self._seen.get(row.id, (stored_seen, 0.0))[0])
        if now - created > timedelta(seconds=self.max_seconds):
            await self._end(row.id, "expired")
            return None
        if now - seen > timedelta(seconds=self.idle_seconds):
            await self._end(row.id, "idle")
            return None
        operator = await self._accounts.get(row.username)
        if operator is None or not hmac.compare_digest(operator.session_version, row.version):
            await self._end(row.id, "password")
            return None
        await self._touch(row.id, now)
        return operator

    async def _touch(self, row_id: int, now: datetime) -> None:
        last_write = self._seen.get(row_id, (now, -1e9))[1]
        mono = time.monotonic()
        if mono - last_write < self._touch_seconds:
            self._seen[row_id] = (now, last_write)
            return
        self._seen[row_id] = (now, mono)
        if len(self._seen) > 100_000:
            self._seen.clear()
        async with self._sql.begin() as conn:
            await conn.execute(update(browser_sessions).where(browser_sessions.c.id == row_id)
                               .values(last_seen_at=now.replace(tzinfo=None)))

    async def _end(self, row_id: int, reason: str) -> bool:
        self._seen.pop(row_id, None)
        async with self._sql.begin() as conn:
            result = await conn.execute(
                update(browser_sessions)
                .where(browser_sessions.c.id == row_id, browser_sessions.c.ended_at.is_(None))
                .values(ended_at=utcnow().replace(tzinfo=None), end_reason=reason)
            )
        return result.rowcount > 0

    async def end(self, session_id: str, reason: str = "logout") -> None:
        """Logout: end the session with this id (unknown ids are ignored)."""
        async with self._sql.connect() as conn:
            row = (await conn.execute(
                select(browser_sessions.c.id).where(browser_sessions.c.token_hash == _digest(session_id))
            )).first()
        if row is not None:
            await self._end(row.id, reason)

    async def end_by_id(self, row_id: int, reason: str = "admin") -> SessionInfo:
        """An admin ends someone's session by its row number."""
        if not await self._end(row_id, reason):
            info = await self.get(row_id)
            raise Conflict(f"session {info.id} has already ended")
        return await self.get(row_id)

    async def end_user(self, username: str, reason: str = "password") -> int:
        """End every live session of an operator; returns how many."""
        async with self._sql.begin() as conn:
            result = await conn.execute(
                update(browser_sessions)
                .where(browser_sessions.c.username == username, browser_sessions.c.ended_at.is_(None))
                .values(ended_at=utcnow().replace(tzinfo=None), end_reason=reason)
            )
        return result.rowcount

    async def get(self, row_id: int) -> SessionInfo:
        async with self._sql.connect() as conn:
            row = (await conn.execute(select(browser_sessions).where(browser_sessions.c.id == row_id))).first()
        if row is None:
            raise NotFound(f"session {row_id} not found")
        return _info(row)

    async def list_active(self, limit: int = 500) -> list[SessionInfo]:
        """Sessions not ended yet and within both lifetimes, newest first."""
        now = utcnow()
        oldest_created = (now - timedelta(seconds=self.max_seconds)).replace(tzinfo=None)
        async with self._sql.connect() as conn:
            rows = (await conn.execute(
                select(browser_sessions)
                .where(browser_sessions.c.ended_at.is_(None), browser_sessions.c.created_at >= oldest_created)
                .order_by(browser_sessions.c.id.desc()).limit(limit)
            )).all()
        versions = {op.username: op.session_version for op in await self._accounts.list()}
        result = []
        for row in rows:
            if versions.get(row.username) != row.version:
                continue  # the password changed since: resolve() refuses it
            info = _info(row)
            seen = max(info.last_seen_at, self._seen.get(info.id, (info.last_seen_at, 0.0))[0])
            if now - seen <= timedelta(seconds=self.idle_seconds):
                result.append(SessionInfo(**{**info.__dict__, "last_seen_at": seen}))
        return result
