"""Logging to the console and a rotating file; secrets kept out of both.

Module hashes, tokens and passwords can arrive in query strings
(`/websocket?hash=...`, `/module/register?token=...`), so every logged URL goes
through :func:`redact_url` and only a short prefix of a hash is ever printed.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
from pathlib import Path

from .private import make_private
from .text import escape_controls

_SENSITIVE_PARAMS = re.compile(
    r"(?i)([?&](?:hash|module_hash|token|password|secret|api_key|_xsrf)=)([^&#]*)"
)
# `/module/<hash>` (detail, delete) carries the hash in the path itself.
_MODULE_PATH = re.compile(r"(/module/)(?!(?:register|online|send_message|list)(?:[/?#]|$))([^/?#]+)")
_API_TOKEN = re.compile(r"tsk_[A-Za-z0-9_\-]{7,}")
_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


def redact_url(url: str) -> str:
    """Replace sensitive query values, module hashes in paths and API tokens anywhere
    with a short prefix and an ellipsis."""
    url = _SENSITIVE_PARAMS.sub(lambda m: m.group(1) + short_secret(m.group(2)), url)
    url = _MODULE_PATH.sub(lambda m: m.group(1) + short_secret(m.group(2)), url)
    return _API_TOKEN.sub(lambda m: short_secret(m.group(0)), url)


def short_secret(value: str) -> str:
    """What a secret looks like in a log line: enough to tell two apart, no more."""
    return (value[:6] + "…") if len(value) > 6 else "…"


class SafeFormatter(logging.Formatter):
    """The one place log records are made safe: every control character in the
    message (a module's run_id, a user name, a URL...) is written as an escape, so no
    value can forge a log line. Tracebacks, appended after, keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def configure_logging(level: str, log_dir: Path) -> None:
    """Console + `LOG_DIR/tornado_sched.log` (10 MB x 5), as the seed did; the
    directory is private (0700) and the files 0600."""
    log_dir.mkdir(parents=True, exist_ok=True)
    make_private(log_dir)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = SafeFormatter(_FORMAT)
    console = logging.StreamHandler()
    console.setFormatter(formatter)
    file_handler = logging.handlers.RotatingFileHandler(
        log_dir / "tornado_sched.log", maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8"
    )
    file_handler.setFormatter(formatter)
    root.addHandler(console)
    root.addHandler(file_handler)
    root.setLevel(level)
    # The driver logs every heartbeat at DEBUG; keep it quiet unless asked.
    logging.getLogger("pymongo").setLevel(max(logging.INFO, logging.getLevelName(level)))
