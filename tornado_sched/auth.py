"""Operator accounts: password hashing, Digest HA1, the first admin.

scrypt is deliberately slow (~50 ms), so it runs in a worker thread and successful
verifications are remembered (keyed by an HMAC of the credentials, never the
password itself) together with the stored hash they were checked against; a script
polling with Basic auth then costs one HMAC and one indexed read per request, not
one scrypt. The read is what makes a password changed by another process (`run.py
set-password` while the server runs) take effect at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from .clock import as_utc, utcnow
from .errors import Conflict, Invalid, NotFound
from .memory import release_large_blocks
from .stores import SqlStore
from .tables import api_tokens, operators

log = logging.getLogger(__name__)

REALM = "tornado_sched"
ROLES = ("admin", "viewer")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_VERIFY_TTL = 30.0  # default of AUTH_CACHE_SECONDS


@dataclass(frozen=True)
class Operator:
    """A person or script allowed to use the REST API and dashboard."""

    username: str
    role: str
    created_at: datetime | None = None
    # Changes with the password: a browser session signed before a password change
    # is refused after it.
    session_version: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _operator(row) -> Operator:  # noqa: ANN001 - SQLAlchemy Row of `operators`
    version = hashlib.sha256(row.password_hash.encode()).hexdigest()[:16]
    return Operator(row.username, row.role, as_utc(row.created_at), version)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt${n}${r}${p}${salt}${digest}".format(
        **_SCRYPT,
        salt=base64.b64encode(salt).decode(),
        digest=base64.b64encode(digest).decode(),
    )


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=32,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, base64.b64decode(digest))


def digest_ha1(username: str, password: str, realm: str = REALM) -> str:
    """RFC 2617 HA1, UTF-8 encoded (RFC 7616 `charset=UTF-8`)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).hexdigest()


def validate_username(username: object) -> str:
    if not isinstance(username, str) or not 1 <= len(username) <= 64:
        raise Invalid("username: must be a string of 1-64 characters", field="username")
    if ":" in username or any(ord(c) < 32 for c in username):
        raise Invalid("username: must not contain ':' or control characters", field="username")
    return username


def validate_password(password: object) -> str:
    if not isinstance(password, str) or not 8 <= len(password) <= 256:
        raise Invalid("password: must be a string of 8-256 characters", field="password")
    return password


class OperatorAccounts:
    """Accounts in the relational store, with a verification cache."""

    def __init__(self, sql: SqlStore, secret_key: str, cache_seconds: float = _VERIFY_TTL) -> None:
        self._cache_seconds = cache_seconds
        self._sql = sql
        self._cache_key = hashlib.sha256(b"verify-cache:" + secret_key.encode()).digest()
        # Cluster mode tells the other instances to drop their caches too.
        self.on_password_change: Callable[[], None] = lambda: None
        # fingerprint -> the password_hash it was verified against
        self._verified: dict[bytes, tuple[Operator, str, float]] = {}

    def _fingerprint(self, username: str, password: str) -> bytes:
        return hmac.new(self._cache_key, f"{username}\0{password}".encode(), "sha256").digest()

    async def get(self, username: str) -> Operator | None:
        row = await self._row(username)
        return None if row is None else _operator(row)

    async def _row(self, username: str):  # noqa: ANN202 - SQLAlchemy Row
        async with self._sql.connect() as conn:
            result = await conn.execute(select(operators).where(operators.c.username == username))
            return result.first()

    async def list(self) -> list[Operator]:
        async with self._sql.connect() as conn:
            rows = (await conn.execute(select(operators).order_by(operators.c.username))).all()
        return [_operator(r) for r in rows]

    async def create(self, username: str, password: str, role: str = "admin") -> Operator:
        validate_username(username)
        validate_password(password)
        if role not in ROLES:
            raise Invalid(f"role: must be one of {', '.join(ROLES)}", field="role")
        if await self._row(username) is not None:
            raise Conflict(f"operator {username!r} already exists", field="username")
        pw_hash = await asyncio.to_thread(hash_password, password)
        now = utcnow().replace(tzinfo=None)
        async with self._sql.begin() as conn:
            await conn.execute(
                insert(operators).values(
                    username=username,
                    password_hash=pw_hash,
                    digest_ha1=digest_ha1(username, password),
                    role=role,
                    created_at=now,
                    updated_at=now,
                )
            )
        return Operator(username, role)

    async def set_password(self, username: str, password: str) -> None:
        validate_password(password)
        pw_hash = await asyncio.to_thread(hash_password, password)
        async with self._sql.begin() as conn:
            result = await conn.execute(
                update(operators)
                .where(operators.c.username == username)
                .values(
                    password_hash=pw_hash,
                    digest_ha1=digest_ha1(username, password),
                    updated_at=utcnow().replace(tzinfo=None),
                )
            )
        if result.rowcount == 0:
            raise NotFound(f"operator {username!r} not found")
        self._verified.clear()
        self.on_password_change()

    def forget_verified(self) -> None:
        """Another instance changed a password: re-check every cached one."""
        self._verified.clear()

    async def verify_password(self, username: str, password: str) -> Operator | None:
        """Basic auth: the operator if the password is right, else None.

        A verified password is trusted from memory for AUTH_CACHE_SECONDS, then
        re-checked against the stored hash (one indexed read, no scrypt): a change
        made by another process (`run.py set-password`) takes effect within that time,
        one made through this process at once."""
        key = self._fingerprint(username, password)
        cached = self._verified.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[2] < self._cache_seconds:
            return cached[0]
        row = await self._row(username)
        if row is not None and cached is not None and cached[1] == row.password_hash:
            operator = _operator(row)
            self._verified[key] = (operator, row.password_hash, now)
            return operator
        self._verified.pop(key, None)
        if row is None:
            # Same cost as a real check, so timing does not reveal which names exist.
            await asyncio.to_thread(check_password, password, _DUMMY_HASH)
            return None
        if not await asyncio.to_thread(check_password, password, row.password_hash):
            return None
        if len(self._verified) > 1024:
            self._verified.clear()
        operator = _operator(row)
        self._verified[key] = (operator, row.password_hash, now)
        return operator

    async def digest_credentials(self, username: str) -> tuple[Operator, str] | None:
        """Digest auth: (operator, HA1) for a known username."""
        row = await self._row(username)
        if row is None:
            return None
        return _operator(row), row.digest_ha1

    async def ensure_admin(self, username: str, password: str) -> str | None:
        """First start: create the admin. Returns a generated password to print once,
        or None when one was configured or accounts already exist."""
        if await self.list():
            return None
        generated = None
        if not password:
            generated = password = secrets.token_urlsafe(15)
        try:
            await self.create(username, password, "admin")
        except (Conflict, IntegrityError):
            return None  # another instance of a cluster, starting at once, created it
        log.info("created admin operator %r", username)
        return generated


# Before the first scrypt: its 16 MiB buffer goes back to the OS after every check
# instead of staying resident in each worker thread's malloc arena (memory.py).
release_large_blocks()
_DUMMY_HASH = hash_password(secrets.token_urlsafe(8))


TOKEN_PREFIX = "tsk_"


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiToken:
    """A script's credential: stored as a SHA-256 digest, shown in full only once."""

    id: int
    name: str
    username: str
    prefix: str
    created_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def public(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "username": self.username,
            "prefix": self.prefix,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "revoked": self.revoked_at is not None,
            "revoked_at": self.revoked_at,
        }


class ApiTokens:
    """Bearer tokens for scripts. High-entropy random tokens need no slow hash: a
    SHA-256 digest lookup is constant work and reveals nothing usable.

    `last_used_at` is kept in memory and written at most once a minute per token, so
    a busy script does not cost a write per request."""

    _TOUCH_EVERY = 60.0

    def __init__(self, sql: SqlStore, accounts: OperatorAccounts) -> None:
        self._sql = sql
        self._accounts = accounts
        self._last_touch: dict[int, float] = {}

    async def create(self, username: str, name: str) -> tuple[ApiToken, str]:
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
            raise Invalid("name: required, at most 100 characters", field="name")
        if await self._accounts.get(username) is None:
            raise NotFound(f"operator {username!r} not found")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow().replace(tzinfo=None)
        async with self._sql.begin() as conn:
            result = await conn.execute(
                insert(api_tokens).values(
                    token_hash=_token_digest(token), prefix=token[:10], name=name.strip(),
                    username=username, created_at=now,
                )
            )
            token_id = result.inserted_primary_key[0]
        return ApiToken(token_id, name.strip(), username, token[:10], as_utc(now), None, None), token

    async def list(self) -> list[ApiToken]:
        async with self._sql.connect() as conn:
            rows = (await conn.execute(select(api_tokens).order_by(api_tokens.c.id))).all()
        return [self._from_row(r) for r in rows]

    @staticmethod
    def _from_row(r) -> ApiToken:  # noqa: ANN001
        return ApiToken(r.id, r.name, r.username, r.prefix, as_utc(r.created_at),
                        as_utc(r.last_used_at), as_utc(r.revoked_at))

    async def revoke(self, token_id: int) -> ApiToken:
        async with self._sql.begin() as conn:
            result = await conn.execute(
                update(api_tokens).where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=utcnow().replace(tzinfo=None))
            )
            row = (await conn.execute(select(api_tokens).where(api_tokens.c.id == token_id))).first()
        if row is None:
            raise NotFound(f"token {token_id} not found")
        if result.rowcount == 0:
            raise Conflict(f"token {token_id} is already revoked")
        return self._from_row(row)

    async def verify(self, token: str) -> Operator | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            return None
        async with self._sql.connect() as conn:
            row = (await conn.execute(
                select(api_tokens).where(api_tokens.c.token_hash == _token_digest(token))
            )).first()
        if row is None or row.revoked_at is not None:
            return None
        operator = await self._accounts.get(row.username)
        if operator is None:
            return None
        now = time.monotonic()
        if now - self._last_touch.get(row.id, -1e9) >= self._TOUCH_EVERY:
            self._last_touch[row.id] = now
            async with self._sql.begin() as conn:
                await conn.execute(
                    update(api_tokens).where(api_tokens.c.id == row.id)
                    .values(last_used_at=utcnow().replace(tzinfo=None))
                )
        return operator


class LoginThrottle:
    """Failed logins per client address: after `slow_after` failures each attempt is
    delayed, after `block_after` the address is refused (429) for `block_seconds`.
    A success resets the count. In memory: one process holds every connection."""

    def __init__(self, slow_after: int = 5, block_after: int = 10, block_seconds: float = 600,
                 window_seconds: float = 900) -> None:
        self.slow_after, self.block_after = slow_after, block_after
        self.block_seconds, self.window_seconds = block_seconds, window_seconds
        # address -> (failures, first failure, blocked until); monotonic times.
        self._failures: dict[str, tuple[int, float, float]] = {}
        self.max_tracked = 100_000
        # Cluster mode shares each failure and success with the other instances.
        self.on_change: Callable[[str, str], None] = lambda _event, _address: None

    def _entry(self, address: str) -> tuple[int, float, float]:
        entry = self._failures.get(address)
        if entry is None:
            return 0, 0.0, 0.0
        now = time.monotonic()
        # A block lasts block_seconds from the failure that started it; the counting
        # window (from the first failure) only forgets failures that never led to one.
        expired = now >= entry[2] if entry[2] else now - entry[1] > self.window_seconds
        if expired:
            self._failures.pop(address, None)
            return 0, 0.0, 0.0
        return entry

    def _count(self, address: str) -> int:
        return self._entry(address)[0]

    def blocked(self, address: str) -> bool:
        return bool(self._entry(address)[2])

    def delay(self, address: str) -> float:
        """Seconds to wait before answering this address's next attempt."""
        excess = self._count(address) - self.slow_after
        return 0.0 if excess < 0 else min(0.25 * 2**excess, 4.0)

    def failure(self, address: str) -> None:
        self._failure(address)
        self.on_change("failure", address)

    def success(self, address: str) -> None:
        self._failures.pop(address, None)
        self.on_change("success", address)

    def apply(self, event: str, address: str) -> None:
        """A failure or success seen by another instance (cluster mode)."""
        if event == "failure":
            self._failure(address)
        elif event == "success":
            self._failures.pop(address, None)

    def _failure(self, address: str) -> None:
        count, first, until = self._entry(address)
        now = time.monotonic()
        count, first = count + 1, first if count else now
        if count >= self.block_after and not until:
            until = now + self.block_seconds
        if len(self._failures) > self.max_tracked:
            self._evict(now)
        self._failures.pop(address, None)  # re-insert: dict order is recency order
        self._failures[address] = (count, first, until)

    def _evict(self, now: float) -> None:
        """Bounded memory under a spray of addresses: drop the oldest entries that are
        not blocked. A block is never dropped, or spraying would lift it."""
        for address in list(self._failures):
            if len(self._failures) <= self.max_tracked // 2:
                return
            _count, _first, until = self._failures[address]
            if not until or until <= now:
                del self._failures[address]



class ReplayGuard:
    """Accepts each key once within `ttl` seconds: a Digest response (nonce, nc,
    cnonce) captured off the wire cannot be replayed while its nonce is still valid.
    Memory is bounded by the keys seen in one `ttl` (and by `limit`)."""

    def __init__(self, ttl: float = 300.0, limit: int = 200_000) -> None:
        self._ttl = ttl
        self._limit = limit
        self._seen: dict[str, float] = {}  # insertion order == time order
        # Cluster mode: SET NX in Redis, so a response used on one instance is refused
        # on every other; None from it (Redis down) leaves the decision to this one.
        self.shared: Callable[[str, float], Awaitable[bool | None]] | None = None

    async def accept(self, key: str) -> bool:
        """`first_use` across the cluster when there is one."""
        if not self.first_use(key):
            return False
        if self.shared is None:
            return True
        return await self.shared(key, self._ttl) is not False

    def first_use(self, key: str) -> bool:
        now = time.monotonic()
        while self._seen:
            oldest_key, seen_at = next(iter(self._seen.items()))
            if now - seen_at < self._ttl and len(self._seen) < self._limit:
                break
            del self._seen[oldest_key]
        if key in self._seen:
            return False
        self._seen[key] = now
        return True
