"""Time helpers shared by every layer: the current instant, UTC normalisation of
values read back from either store, and the default zone crontabs are read in.

Everything stored is UTC; SQL columns keep it naive (they drop the zone on MySQL and
SQLite), documents keep it as BSON dates, which an unpatched embedded server may hand
back as ISO text.
"""

from __future__ import annotations

from datetime import UTC, datetime

# The seed's examples are A-share trading hours; TIME_ZONE overrides it.
DEFAULT_TIME_ZONE = "Asia/Shanghai"


def utcnow() -> datetime:
    """The current instant, aware UTC."""
    return datetime.now(UTC)


def naive_utc(value: datetime | None) -> datetime | None:
    """For writing a SQL column: aware -> naive UTC (what the column really keeps)."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def as_utc(value: datetime | None) -> datetime | None:
    """For reading: naive UTC from the database -> aware UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def read_datetime(value: object) -> datetime | None:
    """A datetime read from a document, as aware UTC. Also accepts ISO text: an
    unpatched embedded server hands back a datetime written by `$set` as a string."""
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str) and value:
        try:
            return as_utc(datetime.fromisoformat(value))
        except ValueError:
            return None
    return None
