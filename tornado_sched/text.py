"""Control characters in untrusted text: refused on the way in where a value can
reach a header, an email subject or a log line, and neutralised on the way out for
values stored before that rule (or coming from modules)."""

from __future__ import annotations

import re

# C0 controls, DEL and the C1 controls; also U+2028/U+2029, which some viewers treat
# as line breaks.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_control_chars(text: str) -> bool:
    """CR, LF, TAB, NUL, DEL...: they forge log lines and headers, and no name,
    subject or redirect target needs one."""
    return _CONTROL.search(text) is not None


def one_line(text: str) -> str:
    """`text` with every control character replaced by a space (for a subject line)."""
    return _CONTROL.sub(" ", text)


def escape_controls(text: str) -> str:
    """`text` with control characters shown as escapes (`\\n`, `\\x1b`, `\\u2028`), so
    a logged value can never start a line of its own."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)
