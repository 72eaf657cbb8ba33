"""Logging to the console and a rotating file; secrets kept out of both.

Module hashes, tokens and passwords can arrive in query strings
(`/websocket?hash=...`, `/module/register?token=...`), so every logged URL goes
through :func:`redact_url` and only a short prefix of a hash is ever printed.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
from datetime import UTC, datetime
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
# `log.info(..., extra=FILE_ONLY)`: a line already printed to the console for people
# (run.py's "listening on port") goes to the log file only.
FILE_ONLY = {"file_only": True}


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


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


class JsonFormatter(logging.Formatter):
    """One JSON object per line (LOG_FORMAT=json); json.dumps escapes control characters, so no value can forge a line either for log shippers: time (ISO 8601,
    UTC), level, logger, message, the instance in a cluster, and the traceback when
    there is one."""

    def __init__(self, instance: str = "") -> None:
        super().__init__()
        self._instance = instance

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._instance:
            entry["instance"] = self._instance
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_dir: Path, log_format: str = "text", instance: str = "") -> None:
    """Console + `LOG_DIR/tornado_sched.log` (10 MB x 5), as the seed did; plain text
    or, with `log_format="json"`, one JSON object per line in both. The directory is
    private (0700) and the files 0600. `instance` (cluster mode: INSTANCE_NAME) is
    on every line, after the level (a field in JSON): the logs of several instances
    are often read merged."""
    log_dir.mkdir(parents=True, exist_ok=True)
    make_private(log_dir)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter(instance)
    elif instance:
        # A literal in the format string: '%' would start a placeholder.
        named = escape_controls(instance).replace("%", "%%")
        formatter = SafeFormatter(_FORMAT.replace("[%(name)s]", f"{named} [%(name)s]"))
    else:
        formatter = SafeFormatter(_FORMAT)
    console = logging.StreamHandler()
    console.setFormatter(formatter)
    console.addFilter(_ConsoleFilter())
    file_handler = logging.handlers.RotatingFileHandler(
        log_dir / "tornado_sched.log", maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8"
    )
    file_handler.setFormatter(formatter)
    root.addHandler(console)
    root.addHandler(file_handler)
    root.setLevel(level)
    # The driver logs every heartbeat at DEBUG; keep it quiet unless asked.
    logging.getLogger("pymongo").setLevel(max(logging.INFO, logging.getLevelName(level)))
    # APScheduler logs "Running job" / "executed successfully" at INFO for every run of
    # every job, the 30 s liveness mark included (~5,760 lines a day): DEBUG only.
    # Its warnings (missed runs, errors) still come through.
    if logging.getLevelName(level) > logging.DEBUG:
        logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
