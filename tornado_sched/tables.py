"""Relational schema (system data, as the seed kept in MySQL).

Times are stored as naive UTC: `DateTime(timezone=True)` keeps no zone on MySQL or
SQLite, so we strip it on the way in and add it back on the way out
(`clock.naive_utc` / `clock.as_utc`).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql

metadata = MetaData()

# Microseconds on MySQL too (its DATETIME keeps whole seconds by default): run times
# order the history and form its page cursors.
PreciseDateTime = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# MySQL's TEXT holds 65,535 bytes: less than a bounded output (64 KiB) needs.
LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
# Columns added after their table first shipped: create_all() does not add them to an
# existing table, so SqlStore.create_schema adds each one that is missing.
ADDED_COLUMNS: list[tuple[str, str]] = [
    ("run_steps", "output"),
    ("runs", "rerun_of"),
    ("run_steps", "progress_percent"),
    ("run_steps", "progress_message"),
    ("run_steps", "log_tail"),
]
# Indexes added after their table first shipped: create_all() does not add them to an
# existing table either, so SqlStore.create_schema creates each one that is missing.
ADDED_INDEXES: list[tuple[str, str]] = [
    ("run_steps", "ix_run_steps_module_sent"),
    ("run_steps", "ix_run_steps_module_status_sent"),
]
# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid).
RowId = BigInteger().with_variant(Integer, "sqlite")

operators = Table(
    "operators",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    # scrypt$n$r$p$salt$hash; never plaintext.
    Column("password_hash", String(255), nullable=False),
    # MD5(username:realm:password) so Digest auth works without the password; it is
    # as sensitive as a password for this realm and is treated as such.
    Column("digest_ha1", String(64), nullable=False),
    Column("role", String(16), nullable=False, default="admin"),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    mysql_charset="utf8mb4",
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("name", String(100), nullable=False),
    Column("username", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("last_used_at", DateTime, nullable=True),
    Column("revoked_at", DateTime, nullable=True),
    mysql_charset="utf8mb4",
)

execution_log = Table(
    "execution_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(100), nullable=False),
    Column("workflow_id", Integer, nullable=False),
    Column("run_id", String(40), nullable=True),
    Column("trigger", String(16), nullable=False),
    Column("nominal_time", DateTime, nullable=True),
    Column("fired_at", DateTime, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("error", Text, nullable=True),
    Index("ix_execution_log_fired_at", "fired_at"),
    Index("ix_execution_log_workflow", "workflow_id", "fired_at"),
    mysql_charset="utf8mb4",
)

# One row per scheduled tick that fired (or was recorded missed): the primary key is
# the once-only guarantee. Every instance of a cluster schedules every workflow; the
# one whose insert wins fires the tick, the others see a duplicate key and stand down.
tick_claims = Table(
    "tick_claims",
    metadata,
    Column("workflow_id", Integer, primary_key=True, autoincrement=False),
    Column("nominal_time", DateTime, primary_key=True),
    Column("instance", String(64), nullable=False),
    Column("claimed_at", DateTime, nullable=False),
    mysql_charset="utf8mb4",
)

notification_outbox = Table(
    "notification_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("channel", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("workflow_id", Integer, nullable=True),
    Column("subject", String(255), nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("next_attempt_at", DateTime, nullable=True),
    Column("sent_at", DateTime, nullable=True),
    Index("ix_outbox_due", "status", "next_attempt_at"),
    mysql_charset="utf8mb4",
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", String(100), nullable=False),
    Column("detail", Text, nullable=True),
    Column("remote_ip", String(64), nullable=True),
    Index("ix_audit_at", "at"),
    mysql_charset="utf8mb4",
)

# Browser sessions: only a SHA-256 digest of the random session id is stored, so a
# copy of the database opens no session.
browser_sessions = Table(
    "browser_sessions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("username", String(64), nullable=False),
    # The operator's session_version at login: a password change ends the session.
    Column("version", String(32), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("last_seen_at", DateTime, nullable=False),
    Column("ended_at", DateTime, nullable=True),
    Column("end_reason", String(16), nullable=True),
    Column("remote_ip", String(64), nullable=True),
    Column("user_agent", String(200), nullable=True),
    Index("ix_browser_sessions_user", "username", "ended_at"),
    mysql_charset="utf8mb4",
)

# Run history: one row per run, one row per step. The run row carries the status and
# step counters so lists never read steps; a result updates its step by key and the
# run row by key, whatever the size of the history.
runs = Table(
    "runs",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("run_id", String(32), nullable=False, unique=True),
    Column("workflow_id", Integer, nullable=False),
    Column("workflow_name", String(200), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("nominal_time", PreciseDateTime, nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("fired_at", PreciseDateTime, nullable=False),
    Column("started_at", PreciseDateTime, nullable=False),
    Column("ended_at", PreciseDateTime, nullable=True),
    Column("status", String(16), nullable=False),
    # status in the "failed" group (failure, partial, interrupted, ...), kept as a
    # column so the dashboard's "failed" filter walks an index instead of an IN list.
    Column("failed", Boolean, nullable=False, default=False),
    Column("reason", Text, nullable=True),
    Column("timeout_seconds", Integer, nullable=False),
    Column("retries", Integer, nullable=False),
    Column("retry_delay_seconds", Integer, nullable=False),
    Column("steps_total", Integer, nullable=False),
    Column("steps_ok", Integer, nullable=False, default=0),
    Column("steps_failed", Integer, nullable=False, default=0),
    # Cluster mode: the instance that owns the open run (its timers, its retries).
    Column("instance", String(64), nullable=True),
    # A re-run names the run it repeats (POST /runs/<id>/rerun).
    Column("rerun_of", String(32), nullable=True),
    # Every list is "newest first": (started_at, id) is the page key.
    Index("ix_runs_started", "started_at", "id"),
    Index("ix_runs_workflow_started", "workflow_id", "started_at", "id"),
    Index("ix_runs_status_started", "status", "started_at", "id"),
    Index("ix_runs_failed_started", "failed", "started_at", "id"),
    mysql_charset="utf8mb4",
)

run_steps = Table(
    "run_steps",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("step_index", Integer, primary_key=True, autoincrement=False),
    Column("module_hash", String(128), nullable=False),
    Column("module_name", String(200), nullable=False),
    Column("args", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("sent_at", PreciseDateTime, nullable=True),
    Column("ended_at", PreciseDateTime, nullable=True),
    Column("message", Text, nullable=True),
    Column("error", Text, nullable=True),
    # The module's `output` (JSON text, at most 64 KiB encoded: protocol.OUTPUT_LIMIT_BYTES),
    # handed to the steps that consume it in a data-ordered run.
    Column("output", LongText, nullable=True),
    # What the module last reported while the step ran (progress and log frames):
    # kept in memory and written with the step's next state write, not per frame.
    Column("progress_percent", Float, nullable=True),
    Column("progress_message", Text, nullable=True),
    Column("log_tail", Text, nullable=True),  # JSON list of the last lines
    # A module's history: its steps newest first, (sent_at, run_id, step_index) the
    # page key. Steps never sent (NULL sent_at) are not part of it. The second serves
    # its status filter: a status the module rarely has would otherwise walk all of
    # its steps to fill a page.
    Index("ix_run_steps_module_sent", "module_hash", "sent_at", "run_id", "step_index"),
    Index("ix_run_steps_module_status_sent", "module_hash", "status", "sent_at", "run_id", "step_index"),
    mysql_charset="utf8mb4",
)
