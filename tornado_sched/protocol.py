"""The seed's WebSocket message shapes, parsed and validated in one place.

Server -> module: `{"type": "execute", "meta": {...}, "args": {...}}`.
Module -> server: `{"type": "result", "status": "success"|"failure", "workflow_id",
"workflow_name", "module_name", "error", "message"}` (plus our optional `run_id` and
`output`),
answered with the text `receive result`; `{"type": "heartbeat"}` from older clients
is accepted quietly.

Additive (ours): the server may send `{"type": "cancel", "meta": {"run_id",
"workflow_id", "workflow_name"}}`; a module may send `{"type": "progress", "run_id",
"percent", "message"}` and `{"type": "log", "run_id", "lines": [...]}` while a step
runs. Neither is acknowledged; a bad one gets an error frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .payload import PayloadError, read_json

RESULT_ACK = "receive result"
RESULT_STATUSES = ("success", "failure")
# A result's `message` and `error` are stored in TEXT columns, and MySQL/MariaDB's
# TEXT holds 65,535 bytes: the cut is in UTF-8 bytes (a CJK character is three), or
# a long result would be refused by the store instead of stored shortened.
TEXT_LIMIT_BYTES = 65_535
# A result's `output` is passed to downstream steps in their execute frame and stored
# on the step row: bounded, so one module cannot bloat every consumer's frame.
OUTPUT_LIMIT_BYTES = 64 * 1024

# WebSocket close codes the server sends; the SDK (client.py) acts on each.
CLOSE_SHUTDOWN = 1001
CLOSE_REPLACED = 4000  # another socket connected with the same hash
CLOSE_TOO_SLOW = 4008  # more than the queue bound waited: the module stopped reading
CLOSE_ROTATED = 4401  # the module's hash was rotated: the old one is no credential
CLOSE_DELETED = 4404  # an operator deleted the module


class ProtocolError(ValueError):
    """A frame the server cannot accept; the message is sent back to the module."""


@dataclass(frozen=True)
class ResultMessage:
    status: str
    workflow_id: str | None
    workflow_name: str | None
    module_name: str | None
    error: str | None
    message: str | None
    run_id: str | None
    # Ours, optional: a JSON value (data, or a reference such as a path or table name)
    # handed to the steps that consume this step's outputs. None when not sent.
    output: Any = None

    @property
    def succeeded(self) -> bool:
        return self.status == "success"


@dataclass(frozen=True)
class HeartbeatMessage:
    pass


@dataclass(frozen=True)
class ProgressMessage:
    """How far the module's running step is (0-100) and what it is doing."""

    run_id: str
    percent: float | None
    message: str | None


@dataclass(frozen=True)
class LogMessage:
    """Log lines from the module's running step."""

    run_id: str
    lines: list[str]


PROGRESS_MESSAGE_LIMIT = 1000
LOG_LINES_PER_FRAME = 1000


def _run_id(data: dict[str, Any]) -> str:
    value = data.get("run_id")
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        raise ProtocolError("run_id: required, the meta.run_id of the execute command")
    return value


def _progress(data: dict[str, Any]) -> ProgressMessage:
    percent = data.get("percent")
    if percent is not None:
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not math.isfinite(percent) \
                or not 0 <= percent <= 100:
            raise ProtocolError("percent: expected a number from 0 to 100")
        percent = float(percent)
    message = data.get("message")
    if message is not None and not isinstance(message, str):
        raise ProtocolError("message: expected a string")
    if percent is None and message is None:
        raise ProtocolError("progress: give percent, message or both")
    return ProgressMessage(_run_id(data), percent, message[:PROGRESS_MESSAGE_LIMIT] if message else message)


def _log(data: dict[str, Any]) -> LogMessage:
    lines = data.get("lines")
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise ProtocolError("lines: expected a list of strings")
    if len(lines) > LOG_LINES_PER_FRAME:
        raise ProtocolError(f"lines: at most {LOG_LINES_PER_FRAME} per frame")
    return LogMessage(_run_id(data), lines)


def _optional_text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ProtocolError(f"{name}: expected a string")
    return cut_text(str(value))


def _message_text(data: dict[str, Any]) -> str | None:
    # The seed calls `message` "结果消息" (a result message); modules in the wild send
    # objects too, so keep structured values as JSON text instead of refusing them.
    value = data.get("message")
    if value is None or isinstance(value, str):
        return value if value is None else cut_text(value)
    if isinstance(value, dict | list | int | float | bool):
        return cut_text(json.dumps(value, ensure_ascii=False))
    raise ProtocolError("message: unsupported type")


def cut_text(text: str, limit: int = TEXT_LIMIT_BYTES) -> str:
    """`text` if it encodes to at most `limit` UTF-8 bytes, else its longest prefix
    that does with "…" (3 bytes) appended."""
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    # A character cut in half at the end is dropped, not turned into U+FFFD.
    return data[:limit - 3].decode("utf-8", "ignore") + "…"


def _output(data: dict[str, Any]) -> Any:
    """The result's `output`: the frame already passed payload.read_json (depth, no
    NaN/Infinity, 64-bit integers, no lone surrogates), so what is left is its size."""
    value = data.get("output")
    if value is None:
        return None
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    if size > OUTPUT_LIMIT_BYTES:
        raise ProtocolError(
            f"output: {size} bytes encoded, more than {OUTPUT_LIMIT_BYTES}; "
            "pass a reference (a path or table name) instead"
        )
    return value


def parse_module_message(raw: str | bytes) -> ResultMessage | HeartbeatMessage | ProgressMessage | LogMessage:
    if isinstance(raw, bytes):
        raise ProtocolError("binary frames are not part of the protocol; send JSON text")
    try:
        # Depth, NaN, 64-bit integers, lone surrogates and NULs: refused here, so a
        # 10,000-deep frame is an error reply, not a RecursionError that ends the session.
        data = read_json(raw, where="")
    except PayloadError as exc:
        raise ProtocolError("not JSON" if exc.problem.startswith("malformed JSON") else str(exc)) from None
    if not isinstance(data, dict):
        raise ProtocolError("expected a JSON object")
    kind = data.get("type")
    if kind == "heartbeat":
        return HeartbeatMessage()
    if kind == "progress":
        return _progress(data)
    if kind == "log":
        return _log(data)
    if kind != "result":
        raise ProtocolError(f"unknown message type {kind!r}" if isinstance(kind, str) else "type: required")
    status = data.get("status")
    if status not in RESULT_STATUSES:
        raise ProtocolError("status: expected \"success\" or \"failure\"")
    return ResultMessage(
        status=status,
        workflow_id=_optional_text(data, "workflow_id"),
        workflow_name=_optional_text(data, "workflow_name"),
        module_name=_optional_text(data, "module_name"),
        error=_optional_text(data, "error"),
        message=_message_text(data),
        run_id=_optional_text(data, "run_id"),
        output=_output(data),
    )


def execute_frame(
    *, execution_time: str, workflow_id: int, workflow_name: str, run_id: str, fired_at: str,
    timezone: str, args: dict[str, Any], inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The seed's `execute` command; `run_id`, `fired_at` and `timezone` are ours
    (additive: the seed's clients ignore them), and so is `inputs` (data-ordered
    runs only: data name -> the producing step's `output`)."""
    frame = {
        "type": "execute",
        "meta": {
            "execution_time": execution_time,
            "workflow_id": workflow_id,
            "workflow_name": workflow_name,
            "run_id": run_id,
            "fired_at": fired_at,
            "timezone": timezone,
        },
        "args": args,
    }
    if inputs is not None:
        frame["meta"]["inputs"] = inputs
    return frame


def cancel_frame(*, run_id: str, workflow_id: int, workflow_name: str) -> dict[str, Any]:
    """Stop the step of this run that the module is running (POST /runs/<id>/cancel)."""
    return {
        "type": "cancel",
        "meta": {"run_id": run_id, "workflow_id": workflow_id, "workflow_name": workflow_name},
    }


def error_reply(reason: str) -> str:
    return json.dumps({"type": "error", "error": reason}, ensure_ascii=False)
