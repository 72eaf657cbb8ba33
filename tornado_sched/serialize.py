"""The one JSON encoder for REST responses and handshake refusals.

Apart from protocol.py on purpose: the module SDK (client.py) imports the protocol
and must not need the server's store drivers (bson comes with PyMongo).
"""

from __future__ import annotations

import asyncio
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


# List items encoded between two yields to the loop (to_json_sliced).
ITEMS_PER_SLICE = 200
# NUL is refused in every input, so this string is nowhere else in an answer.
_PLACEHOLDER = "\0sliced"
_ENCODED_PLACEHOLDER = json.dumps(_PLACEHOLDER)


async def to_json_sliced(value: dict[str, Any], *path: str) -> str:
    """`to_json(value)`, where the list at `value[path[0]][path[1]]...` is long (a
    run's steps): the list is encoded ITEMS_PER_SLICE items at a time with the loop
    free in between, so a 10,000-step run does not hold every timer back while it is
    encoded. The text is the same as to_json's."""
    items: Any = value
    for key in path:
        items = items.get(key) if isinstance(items, dict) else None
    if not isinstance(items, list) or len(items) <= ITEMS_PER_SLICE:
        return to_json(value)
    head = to_json(_with_placeholder(value, path))
    parts = []
    for start in range(0, len(items), ITEMS_PER_SLICE):
        parts.append(to_json(items[start:start + ITEMS_PER_SLICE])[1:-1])
        await asyncio.sleep(0)
    before, after = head.split(_ENCODED_PLACEHOLDER, 1)
    return before + "[" + ", ".join(parts) + "]" + after


def _with_placeholder(value: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    key, *rest = path
    return {**value, key: _with_placeholder(value[key], tuple(rest)) if rest else _PLACEHOLDER}
