"""Who is asking: the Host check every handler applies first, and operator
authentication (Basic, Digest, Bearer, or the signed session cookie) shared by the
request handlers and the dashboard's WebSocket. Scheme parsing is in httpauth.py."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from tornado_sched.auth import Operator
from tornado_sched.config import Settings
from tornado_sched.context import AppContext

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
            if not self.ctx.replay.first_use(f"{params['nonce']}:{params['nc']}:{params['cnonce']}"):
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
        raw = self.get_signed_cookie(SESSION_COOKIE, max_age_days=1)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            username, version = data["u"], data["v"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(username, str) or not isinstance(version, str):
            return None
        self.auth_method = "cookie"
        operator = await self.ctx.accounts.get(username)
        if operator is None or not hmac.compare_digest(operator.session_version, version):
            return None
        return operator

    def _digest_verifier(self) -> DigestVerifier:
        key = hashlib.sha256(b"digest-opaque:" + self.ctx.settings.secret_key.encode()).digest()
        return DigestVerifier(self.request, key)

    def _add_challenges(self) -> None:
        # After send_error's clear(): both schemes are offered on every 401.
        self.add_header("WWW-Authenticate", self._digest_verifier().challenge())
        self.add_header("WWW-Authenticate", BASIC_CHALLENGE)
