"""Which client a request comes from, behind reverse proxies we trust.

`X-Forwarded-For` and `X-Forwarded-Proto` are believed only when the direct peer is
one of TRUSTED_PROXIES; anyone else could write them (and dodge the login throttle
or fake https). Tornado's own `xheaders` trusts them from every peer, so we do not
use it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


class ProxyPolicy:
    """TRUSTED_PROXIES (addresses or networks) and what to make of forwarded headers."""

    def __init__(self, trusted: Iterable[str] = ()) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(t, strict=False) for t in trusted)

    def trusts(self, address: str) -> bool:
        ip = _address(address)
        return ip is not None and any(ip in network for network in self.networks)

    def client(self, peer: str, forwarded_for: str | None, forwarded_proto: str | None) -> tuple[str, str | None]:
        """(client address, scheme or None). From an untrusted peer: the peer itself
        and no scheme. From a trusted one: the right-most X-Forwarded-For hop that is
        not itself a trusted proxy (hops further left are the client's own claims),
        and the scheme the nearest proxy saw."""
        if not self.trusts(peer):
            return peer, None
        client = peer
        for hop in reversed([h for h in (forwarded_for or "").split(",") if h.strip()]):
            ip = _address(hop)
            if ip is None:
                break
            client = str(ip)
            if not self.trusts(client):
                break
        proto = (forwarded_proto or "").split(",")[-1].strip().lower()
        return client, proto if proto in ("http", "https") else None
