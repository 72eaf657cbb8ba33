"""The one JSON reader for everything that arrives from outside (REST bodies and
parameters, WebSocket frames).

Whatever it returns can reach MongoDB, SQL and the log without surprises: nesting at
most MAX_DEPTH deep (Python's decoder would raise RecursionError at ~1,000 and the
stores choke well before), no NaN or Infinity (not JSON, and not comparable), integers
within 64 bits (BSON and BIGINT hold them), strings and keys that encode to UTF-8 (no
lone surrogates such as "\\ud800") and hold no NUL. A violation raises `PayloadError`
naming where it is (`args.a[3]`), which handlers turn into a 400 or an error frame.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any

MAX_DEPTH = 32
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
# A JSON number longer than this is not a 64-bit integer or a sane float; refuse it
# before int() spends quadratic time on it.
_MAX_NUMBER_CHARS = 400
# Lone surrogates cannot be encoded to UTF-8 by any store driver, and NUL ends a
# string in C code that reads it back (drivers, log tools, the email API). Other
# control characters are each field's business: names refuse them (text.py), free
# text such as a result message may carry them.
_BAD_TEXT = re.compile("[\ud800-\udfff\x00]")


class PayloadError(ValueError):
    """Input that is not acceptable JSON; `where` names the field (or "body")."""

    def __init__(self, where: str, problem: str) -> None:
        where = _short(where)
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where = where
        self.problem = problem

    @property
    def field(self) -> str:
        """The top-level field the problem is in (`args` for `args.a[3]`)."""
        return re.split(r"[.\[ ]", self.where, maxsplit=1)[0]


class _Refused(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not allowed")


def _parse_int(text: str) -> int:
    if len(text) > _MAX_NUMBER_CHARS:
        raise _Refused("number too long")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise _Refused("integer outside the 64-bit range")
    return value


def _parse_float(text: str) -> float:
    if len(text) > _MAX_NUMBER_CHARS:
        raise _Refused("number too long")
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf
        raise _Refused("number out of range")
    return value


# Built once: json.loads with any hook builds a new decoder and scanner per call,
# which cost 4x the parse of a typical result frame.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_int=_parse_int, parse_float=_parse_float)


def _loads(raw: str | bytes) -> Any:
    """`json.loads(raw, parse_constant=..., parse_int=..., parse_float=...)` with the
    decoder above: the same input handling (bytes in any JSON encoding, a BOM refused)."""
    if isinstance(raw, str):
        if raw.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", raw, 0)
        text = raw
    elif isinstance(raw, bytes | bytearray):
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    else:
        raise TypeError(f"the JSON object must be str, bytes or bytearray, not {type(raw).__name__}")
    return _DECODER.decode(text)


def read_json(raw: str | bytes, where: str = "body") -> Any:
    """Parse and check one JSON document; PayloadError names the offending field."""
    try:
        value = _loads(raw)
    except _Refused as exc:
        raise PayloadError(where, str(exc)) from None
    except RecursionError:
        raise PayloadError(where, f"nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise PayloadError(where, "not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(where, f"malformed JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    except ValueError:
        raise PayloadError(where, "malformed JSON") from None
    check_value(value, where)
    return value


def check_value(value: Any, where: str = "body") -> None:
    """Apply read_json's rules to an already-decoded value (form fields, query
    arguments, values built in code). Iterative: depth never costs stack."""
    if _acceptable(value):
        return
    _find_problem(value, where)


def _acceptable(value: Any) -> bool:
    """check_value's rules without naming where: the walk every frame pays, with no
    path strings built. A value it does not accept is walked again to name the place."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    search = _BAD_TEXT.search
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str:
            if search(item):
                return False
        elif item is None or kind is bool or isinstance(item, datetime):
            continue
        elif kind is int:
            if not INT_MIN <= item <= INT_MAX:
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is dict:
            if depth >= MAX_DEPTH:
                return False
            for key, child in item.items():
                if type(key) is not str or search(key):
                    return False
                stack.append((child, depth + 1))
        elif kind is list:
            if depth >= MAX_DEPTH:
                return False
            stack.extend((child, depth + 1) for child in item)
        else:
            return False  # subclasses and other types: the careful walk decides
    return True


def _find_problem(value: Any, where: str) -> None:
    """The careful walk: raises PayloadError naming where the problem is."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            check_text(item, path)
        elif isinstance(item, bool | datetime) or item is None:
            continue  # datetimes come from code (a stored document merged with a body)
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                raise PayloadError(path, "integer outside the 64-bit range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise PayloadError(path, "NaN and Infinity are not allowed")
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise PayloadError(path, f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    name = key if isinstance(key, str) and len(key) <= 64 else "<key>"
                    child_path = f"{path}.{name}" if path else name
                    if isinstance(key, str):
                        check_text(key, f"{path} (a key)" if path else "(a key)")
                    stack.append((child, child_path, depth + 1))
            else:
                for index, child in enumerate(item):
                    stack.append((child, f"{path}[{index}]", depth + 1))
        else:
            raise PayloadError(path, f"unsupported value of type {type(item).__name__}")


def check_text(text: str, where: str, max_len: int | None = None) -> str:
    """A string that may reach a store: no lone surrogate, no NUL, bounded length."""
    if _BAD_TEXT.search(text):
        if "\x00" in text:
            raise PayloadError(where, "contains a NUL character")
        raise PayloadError(where, "contains a lone surrogate (not valid UTF-8)")
    if max_len is not None and len(text) > max_len:
        raise PayloadError(where, f"longer than {max_len} characters")
    return text


def _short(where: str) -> str:
    # A path is echoed in the error: keep it readable even for hostile keys.
    return where if len(where) <= 200 else where[:200] + "…"
