"""HTTP Basic and Digest authentication on top of tornado-http-auth.

tornado-http-auth 1.1.1 answers 500 to malformed headers, compares digests with
`==`, encodes credentials as ASCII and signs its Digest opaque with the fixed key
`secret-random`. We keep its header parsing, challenge format and response
arithmetic, and replace the parts that are wrong: every malformed header becomes a
plain "no credentials", the opaque is an HMAC keyed from SECRET_KEY, comparisons are
constant-time and passwords are UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass

from tornado.httputil import HTTPServerRequest
from tornado_http_auth import DigestAuthMixin

from tornado_sched.auth import REALM

_CHALLENGE_TTL = 300


@dataclass(frozen=True)
class BasicCredentials:
    username: str
    password: str


@dataclass(frozen=True)
class DigestCredentials:
    username: str
    params: dict[str, str]


def parse_basic(header: str) -> BasicCredentials | None:
    """`Basic base64(user:password)` -> credentials, or None for anything malformed."""
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    username, sep, password = raw.partition(":")
    if not sep or not username:
        return None
    return BasicCredentials(username, password)


class DigestVerifier(DigestAuthMixin):
    """One request's Digest check, reusing the library's parsing and arithmetic."""

    def __init__(self, request: HTTPServerRequest, key: bytes) -> None:
        self.request = request
        self._key = key

    # -- opaque: HMAC(SECRET_KEY-derived key), constant-time comparison --------------
    def create_opaque(self, nonce: bytes, clientip: str, now: float) -> bytes:
        payload = b",".join((nonce, clientip.encode("utf-8", "replace"), b"%d" % int(now)))
        mac = hmac.new(self._key, payload, hashlib.sha256).hexdigest().encode()
        return mac + b"-" + base64.urlsafe_b64encode(payload)

    def check_opaque(self, opaque: str, nonce: str) -> bool:
        mac, sep, encoded = opaque.partition("-")
        if not sep:
            return False
        try:
            payload = base64.urlsafe_b64decode(encoded.encode("ascii"))
            got_nonce, got_ip, issued = payload.decode("utf-8").split(",")
            issued_at = int(issued)
        except (ValueError, UnicodeError, binascii.Error):
            return False
        expected = hmac.new(self._key, payload, hashlib.sha256).hexdigest()
        return (
            hmac.compare_digest(mac, expected)
            and hmac.compare_digest(got_nonce, nonce)
            and got_ip == self.request.remote_ip
            and 0 <= time.time() - issued_at <= _CHALLENGE_TTL
        )

    def challenge(self) -> str:
        return self.create_auth_challenge(REALM, self.request.remote_ip or "", time.time())

    def parse(self, header: str) -> DigestCredentials | None:
        try:
            params = self.parse_auth_header(header)
        except Exception:  # noqa: BLE001 - any parse failure is "no credentials"
            return None
        required = ("username", "realm", "nonce", "uri", "response", "opaque", "nc", "cnonce", "qop")
        if any(not params.get(name) for name in required):
            return None
        if params["realm"] != REALM or params["qop"] != "auth":
            return None
        if params.get("algorithm", "MD5").lower() not in ("md5", "md5-sess"):
            return None
        if not self.check_opaque(params["opaque"], params["nonce"]):
            return None
        try:
            # Tornado decodes header bytes as Latin-1; clients send UTF-8 names.
            username = params["username"].encode("latin-1").decode("utf-8")
        except UnicodeError:
            return None
        return DigestCredentials(username, params)

    def HA1(self, algorithm, username, realm, password, nonce, cnonce):  # noqa: N802, ANN001, ANN201
        # The library hashes a plaintext password here; we are handed the stored HA1.
        if algorithm == "md5-sess":
            return hashlib.md5(f"{password}:{nonce}:{cnonce}".encode()).hexdigest()
        return password

    def matches(self, creds: DigestCredentials, ha1: str) -> bool:
        try:
            expected = self.calculate_expected_response(ha1, creds.params)
        except Exception:  # noqa: BLE001 - non-ASCII or missing fields: not a match
            return False
        return hmac.compare_digest(expected.encode(), creds.params["response"].encode("utf-8"))


# Same format as BasicAuthMixin.send_auth_challenge, plus RFC 7617's charset hint.
BASIC_CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'
