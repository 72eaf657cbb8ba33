"""Client side of HTTP Digest (RFC 2617, qop=auth), written from the RFC so the
server's implementation is tested against an independent one."""

from __future__ import annotations

import hashlib
import os
import re


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def parse_challenge(header: str) -> dict[str, str]:
    return {k: v for k, v in re.findall(r'(\w+)="([^"]*)"', header)}


def digest_header(challenge: str, username: str, password: str, method: str, uri: str) -> str:
    params = parse_challenge(challenge)
    realm, nonce, opaque = params["realm"], params["nonce"], params["opaque"]
    cnonce = os.urandom(8).hex()
    nc = "00000001"
    ha1 = _md5(f"{username}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    response = _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}", response="{response}", '
        f'opaque="{opaque}"'
    )
