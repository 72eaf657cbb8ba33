"""The one JSON encoder for REST responses and handshake refusals.

Apart from protocol.py on purpose: the module SDK (client.py) imports the protocol
and must not need the server's store drivers (bson comes with PyMongo).
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

from bson import ObjectId


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(value: Any) -> str:
    """The one JSON encoder for REST responses and WebSocket replies (datetimes as
    ISO 8601, ObjectIds as str)."""
    return json.dumps(value, ensure_ascii=False, default=_json_default)
