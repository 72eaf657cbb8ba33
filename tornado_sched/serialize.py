"""The one JSON encoder for REST responses and handshake refusals.

Apart from protocol.py on purpose: the module SDK (client.py) imports the protocol
and must not need the server's store drivers (bson comes with PyMongo).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

from bson import ObjectId


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        # Every instant in API output is ISO 8601 in UTC with its offset (`+00:00`),
        # whatever zone the core computed it in (APScheduler's next_run_time is in the
        # scheduler's zone); naive values come from SQL columns that keep UTC. The
        # seed's `execution_time` is already a string and stays as the seed shows it.
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return utc.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(value: Any) -> str:
    """The one JSON encoder for REST responses and WebSocket replies (datetimes as
    ISO 8601 in UTC, ObjectIds as str)."""
    return json.dumps(value, ensure_ascii=False, default=_json_default)
