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


def configure_logging(level: str, log_dir: Path) -> None:
    """Console + `LOG_DIR/tornado_sched.log` (10 MB x 5), as the seed did."""
    log_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT)
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
