"""Who is asking: the Host check every handler applies first, and operator
authentication (Basic, Digest, Bearer, or the signed session cookie) shared by the
request handlers and the dashboard's WebSocket. Scheme parsing is in httpauth.py."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from tornado_sched.auth import Operator
from tornado_sched.config import Settings
from tornado_sched.context import AppContext
from tornado_sched.errors import TooManyRequests

from .httpauth import BASIC_CHALLENGE, DigestVerifier, parse_basic

SESSION_COOKIE = "tsched_session"


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Django-style ALLOWED_HOSTS: exact names, `.example.com` for subdomains, `*`.
    IPv6 literals match with or without brackets (`[::1]:8080` matches `::1`)."""
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0]
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern == "*" or name == pattern or (pattern.startswith("[") and name == pattern.strip("[]")):
            return True
        if pattern.startswith(".") and (name.endswith(pattern) or name == pattern[1:]):
            return True
    return False



def wrong_host(settings: Settings, request: Any) -> bool:
    """With DEBUG=False the Host header must match ALLOWED_HOSTS (the seed's Django
    rule); every handler, WebSocket ones included, applies it first."""
    return not settings.debug and not host_allowed(request.host, settings.allowed_hosts)


class OperatorAuthMixin:
    """Operator authentication shared by request and WebSocket handlers: Basic,
    Digest or Bearer from the Authorization header, else the signed session cookie."""

    ctx: AppContext
    auth_method: str | None = None
    request: Any

    async def authenticate(self) -> Operator | None:
        """Basic, Digest or Bearer credentials from the Authorization header; without
        one, the signed session cookie. Sets `auth_method`."""
        header = self.request.headers.get("Authorization", "")
        scheme = header[:7].lower()
        accounts = self.ctx.accounts
        if scheme.startswith("basic "):
            self.auth_method = "basic"
            creds = parse_basic(header)
            if creds is None:
                return None
            return await accounts.verify_password(creds.username, creds.password)
        if scheme == "digest ":
            self.auth_method = "digest"
            verifier = self._digest_verifier()
            digest = verifier.parse(header)
            if digest is None:
                return None
            found = await accounts.digest_credentials(digest.username)
            if found is None or not verifier.matches(digest, found[1]):
                return None
            params = digest.params
            if not await self.ctx.replay.accept(f"{params['nonce']}:{params['nc']}:{params['cnonce']}"):
                return None  # the same response seen before: a replay
            return found[0]
        if scheme == "bearer ":
            self.auth_method = "bearer"
            return await self.ctx.tokens.verify(header[7:].strip())
        if header:
            self.auth_method = "unknown"
            return None
        return await self.session_operator()

    async def session_operator(self) -> Operator | None:
        """The operator of the server-side session named by the signed cookie."""
        raw = self.get_signed_cookie(SESSION_COOKIE, max_age_days=self.ctx.settings.session_max_seconds / 86400)
        if raw is None:
            return None
        self.auth_method = "cookie"
        return await self.ctx.sessions.resolve(raw.decode("ascii", "replace"))

    def cookie_secure(self) -> bool:
        """Secure cookies on https (as seen through a trusted proxy) or when configured."""
        return self.ctx.settings.cookie_secure or self.request.protocol == "https"

    async def start_session(self, operator: Operator) -> None:
        """A new server-side session and its cookie (a browser-session cookie)."""
        session_id = await self.ctx.sessions.start(
            operator, self.request.remote_ip, self.request.headers.get("User-Agent", "")
        )
        self.set_signed_cookie(SESSION_COOKIE, session_id, expires_days=None, httponly=True, samesite="Lax",
                               secure=self.cookie_secure())

    async def end_session(self) -> None:
        raw = self.get_signed_cookie(SESSION_COOKIE, max_age_days=self.ctx.settings.session_max_seconds / 86400)
        if raw is not None:
            await self.ctx.sessions.end(raw.decode("ascii", "replace"))
        self.clear_cookie(SESSION_COOKIE)

    async def throttled_authenticate(self) -> Operator | None:
        """`authenticate` behind the one login throttle every entry point shares
        (REST, pages, both WebSockets, the login form, registration tokens): while
        the address is blocked even the right credentials get TooManyRequests; each
        failed credential counts and is slowed down."""
        throttle = self.ctx.throttle
        address = self.request.remote_ip or ""
        if throttle.blocked(address):
            raise TooManyRequests("too many failed logins from this address; try again later")
        operator = await self.authenticate()
        if operator is None:
            if self.auth_method in ("basic", "digest", "bearer"):
                throttle.failure(address)
                delay = throttle.delay(address)
                if delay:
                    await asyncio.sleep(delay)
        elif self.auth_method != "cookie":
            throttle.success(address)
        return operator

    def _digest_verifier(self) -> DigestVerifier:
        key = hashlib.sha256(b"digest-opaque:" + self.ctx.settings.secret_key.encode()).digest()
        return DigestVerifier(self.request, key)

    def _add_challenges(self) -> None:
        # After send_error's clear(): both schemes are offered on every 401.
        self.add_header("WWW-Authenticate", self._digest_verifier().challenge())
        self.add_header("WWW-Authenticate", BASIC_CHALLENGE)
