"""Settings read once at start-up from the environment and an optional `.env` file.

Names follow the seed server's README (DEBUG, SECRET_KEY, MYSQL_*, MONGODB_*, ...);
everything we add is additive. A bad value stops start-up with one line naming the
variable, so an operator never has to read a traceback to fix a typo.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_plus, urlsplit

from dotenv import dotenv_values

from .clock import DEFAULT_TIME_ZONE
from .text import has_control_chars


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the variable."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


@dataclass(frozen=True)
class Settings:
    """Validated configuration. Build it with :meth:`from_env`."""

    debug: bool = True
    secret_key: str = ""
    allowed_hosts: tuple[str, ...] = ("*",)
    server_host: str = "0.0.0.0"
    server_port: int = 10080
    mysql_host: str = ""
    mysql_port: int = 3306
    mysql_user: str = "root"
    mysql_password: str = field(default="", repr=False)
    mysql_db: str = "module_server"
    mongodb_host: str = ""
    mongodb_name: str = "forecast_platform"
    notification_email: tuple[str, ...] = ()
    email_api_url: str = ""
    webhook_url: str = ""
    public_url: str = ""
    static_root: str = ""
    log_level: str = "INFO"
    log_format: str = "text"
    log_dir: Path = Path("logs")
    data_dir: Path = Path("data")
    time_zone: str = DEFAULT_TIME_ZONE
    admin_username: str = "admin"
    admin_password: str = field(default="", repr=False)
    registration_token: str = field(default="", repr=False)
    metrics_token: str = field(default="", repr=False)
    websocket_ping_interval: float = 20.0
    websocket_ping_timeout: float = 20.0
    websocket_max_message_size: int = 1024 * 1024
    # Outgoing bytes a module's socket may have queued (not yet taken by the kernel);
    # past it the module is too slow and is disconnected (close code 4008).
    websocket_max_queued_bytes: int = 1024 * 1024
    heartbeat_flush_seconds: float = 5.0
    heartbeat_store_seconds: float = 60.0
    auth_cache_seconds: float = 30.0
    misfire_settle_seconds: float = 30.0
    run_retention_days: int = 90
    notify_aggregate_seconds: float = 60.0
    email_timeout_seconds: float = 10.0
    login_slow_after: int = 5
    login_block_after: int = 10
    login_block_seconds: float = 600.0
    session_idle_seconds: float = 8 * 3600.0
    session_max_seconds: float = 24 * 3600.0
    # Addresses or networks of reverse proxies whose X-Forwarded-For/-Proto we believe.
    trusted_proxies: tuple[str, ...] = ()
    cookie_secure: bool = False
    sql_url_override: str = field(default="", repr=False)
    # Cluster mode (tornado_sched/cluster.py): set REDIS_URL to join one.
    redis_url: str = field(default="", repr=False)
    instance_name: str = ""

    @property
    def sql_url(self) -> str:
        """SQLAlchemy URL: MySQL via aiomysql when MYSQL_HOST is set, else SQLite in DATA_DIR."""
        if self.sql_url_override:
            return self.sql_url_override
        if self.mysql_host:
            return (
                f"mysql+aiomysql://{quote_plus(self.mysql_user)}:{quote_plus(self.mysql_password)}"
                f"@{self.mysql_host}:{self.mysql_port}/{quote_plus(self.mysql_db)}?charset=utf8mb4"
            )
        return f"sqlite+aiosqlite:///{(self.data_dir / 'system.sqlite3').resolve()}"

    @property
    def sql_label(self) -> str:
        """Where system data lives, safe to log (no password)."""
        if self.mysql_host:
            return f"mysql://{self.mysql_host}:{self.mysql_port}/{self.mysql_db}"
        return f"sqlite:{self.data_dir / 'system.sqlite3'}"

    @property
    def clustered(self) -> bool:
        return bool(self.redis_url)

    @property
    def instance(self) -> str:
        """This instance's name in the API, logs and dashboard (default host:port)."""
        return self.instance_name or f"{socket.gethostname()}:{self.server_port}"

    @property
    def uses_embedded_mongo(self) -> bool:
        return not self.mongodb_host

    @property
    def email_configured(self) -> bool:
        return bool(self.notification_email and self.email_api_url)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        dotenv_path: str | os.PathLike[str] | None = ".env",
    ) -> Settings:
        """Read settings; the process environment wins over the `.env` file."""
        values: dict[str, str] = {}
        if dotenv_path and Path(dotenv_path).is_file():
            values.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        return cls._parse(values)

    @classmethod
    def _parse(cls, env: Mapping[str, str]) -> Settings:
        def text(name: str, default: str = "") -> str:
            return env.get(name, default).strip()

        def boolean(name: str, default: bool) -> bool:
            raw = env.get(name)
            if raw is None:
                return default
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ConfigError(f"{name}: expected true/false, got {raw!r}")

        def number(name: str, default: float, *, lo: float, hi: float, integer: bool) -> float:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = int(raw) if integer else float(raw)
            except ValueError:
                kind = "an integer" if integer else "a number"
                raise ConfigError(f"{name}: expected {kind}, got {raw!r}") from None
            if not lo <= value <= hi:
                raise ConfigError(f"{name}: must be between {lo:g} and {hi:g}, got {raw!r}")
            return value

        def url(name: str, schemes: tuple[str, ...]) -> str:
            raw = text(name)
            if raw and urlsplit(raw).scheme not in schemes:
                raise ConfigError(f"{name}: expected a {'/'.join(schemes)} URL")
            return raw

        d = cls()  # every default is written once, on the fields above
        debug = boolean("DEBUG", d.debug)
        log_level = text("LOG_LEVEL", d.log_level).upper()
        if log_level not in _LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL: expected one of {sorted(_LOG_LEVELS)}, got {log_level!r}")
        log_format = text("LOG_FORMAT", d.log_format).lower()
        if log_format not in ("text", "json"):
            raise ConfigError(f"LOG_FORMAT: expected text or json, got {log_format!r}")
        tz = text("TIME_ZONE", d.time_zone)
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"TIME_ZONE: unknown time zone {tz!r}") from None
        hosts = tuple(h.strip() for h in text("ALLOWED_HOSTS", ",".join(d.allowed_hosts)).split(",") if h.strip())
        emails = tuple(e.strip() for e in text("NOTIFICATION_EMAIL").split(",") if e.strip())
        for address in emails:
            if "@" not in address or " " in address or has_control_chars(address):
                raise ConfigError(f"NOTIFICATION_EMAIL: {address!r} is not an email address")
        mongodb_host = text("MONGODB_HOST")
        if mongodb_host and urlsplit(mongodb_host).scheme not in ("mongodb", "mongodb+srv"):
            raise ConfigError("MONGODB_HOST: expected a mongodb:// or mongodb+srv:// URI")
        redis_url = url("REDIS_URL", ("redis", "rediss", "unix"))
        instance_name = text("INSTANCE_NAME")
        if len(instance_name) > 64 or any(c.isspace() for c in instance_name):
            raise ConfigError("INSTANCE_NAME: at most 64 characters, no spaces")
        if redis_url:
            # A cluster shares its stores: a SQLite file or an embedded document
            # server belongs to one process, so the combination is refused.
            unshared = [n for n, v in (("MONGODB_HOST", mongodb_host), ("MYSQL_HOST", text("MYSQL_HOST"))) if not v]
            if unshared:
                raise ConfigError(f"{unshared[0]}: required when REDIS_URL is set (cluster mode shares MongoDB and MySQL)")
        interval = number("WEBSOCKET_PING_INTERVAL", d.websocket_ping_interval, lo=0.05, hi=3600, integer=False)
        timeout = number("WEBSOCKET_PING_TIMEOUT", d.websocket_ping_timeout, lo=0.05, hi=3600, integer=False)

        proxies = tuple(p.strip() for p in text("TRUSTED_PROXIES").split(",") if p.strip())
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigError(f"TRUSTED_PROXIES: {proxy!r} is not an IP address or network") from None

        settings = cls(
            debug=debug,
            secret_key=text("SECRET_KEY"),
            allowed_hosts=hosts or d.allowed_hosts,
            server_host=text("SERVER_HOST", d.server_host),
            server_port=int(number("SERVER_PORT", d.server_port, lo=0, hi=65535, integer=True)),
            mysql_host=text("MYSQL_HOST"),
            mysql_port=int(number("MYSQL_PORT", d.mysql_port, lo=1, hi=65535, integer=True)),
            mysql_user=text("MYSQL_USER", d.mysql_user),
            mysql_password=env.get("MYSQL_PASSWORD", ""),
            mysql_db=text("MYSQL_DB", d.mysql_db),
            mongodb_host=mongodb_host,
            mongodb_name=text("MONGODB_NAME", d.mongodb_name),
            notification_email=emails,
            email_api_url=url("EMAIL_API_URL", ("http", "https")),
            webhook_url=url("WEBHOOK_URL", ("http", "https")),
            public_url=url("PUBLIC_URL", ("http", "https")).rstrip("/"),
            static_root=text("STATIC_ROOT"),
            log_level=log_level,
            log_format=log_format,
            log_dir=Path(text("LOG_DIR", str(d.log_dir))),
            data_dir=Path(text("DATA_DIR", str(d.data_dir))),
            time_zone=tz,
            admin_username=text("ADMIN_USERNAME", d.admin_username),
            admin_password=env.get("ADMIN_PASSWORD", ""),
            registration_token=env.get("REGISTRATION_TOKEN", "").strip(),
            metrics_token=env.get("METRICS_TOKEN", "").strip(),
            websocket_ping_interval=interval,
            # Tornado clamps the timeout to the interval; do it here so /health-style
            # introspection reports the value really in force.
            websocket_ping_timeout=min(timeout, interval),
            websocket_max_message_size=int(
                number("WEBSOCKET_MAX_MESSAGE_SIZE", d.websocket_max_message_size, lo=1024, hi=64 * 1024 * 1024, integer=True)
            ),
            websocket_max_queued_bytes=int(number(
                "WEBSOCKET_MAX_QUEUED_BYTES", d.websocket_max_queued_bytes, lo=64 * 1024, hi=1024 * 1024 * 1024,
                integer=True,
            )),
            heartbeat_flush_seconds=number("HEARTBEAT_FLUSH_SECONDS", d.heartbeat_flush_seconds, lo=0.05, hi=3600, integer=False),
            misfire_settle_seconds=number("MISFIRE_SETTLE_SECONDS", d.misfire_settle_seconds, lo=0, hi=3600, integer=False),
            auth_cache_seconds=number("AUTH_CACHE_SECONDS", d.auth_cache_seconds, lo=0, hi=3600, integer=False),
            heartbeat_store_seconds=number("HEARTBEAT_STORE_SECONDS", d.heartbeat_store_seconds, lo=0.05, hi=86400, integer=False),
            run_retention_days=int(number("RUN_RETENTION_DAYS", d.run_retention_days, lo=1, hi=36500, integer=True)),
            notify_aggregate_seconds=number("NOTIFY_AGGREGATE_SECONDS", d.notify_aggregate_seconds, lo=0, hi=86400, integer=False),
            login_slow_after=int(number("LOGIN_SLOW_AFTER", d.login_slow_after, lo=1, hi=1_000_000, integer=True)),
            login_block_after=int(number("LOGIN_BLOCK_AFTER", d.login_block_after, lo=1, hi=1_000_000, integer=True)),
            login_block_seconds=number("LOGIN_BLOCK_SECONDS", d.login_block_seconds, lo=1, hi=86400, integer=False),
            session_idle_seconds=number("SESSION_IDLE_SECONDS", d.session_idle_seconds, lo=60, hi=30 * 86400, integer=False),
            session_max_seconds=number("SESSION_MAX_SECONDS", d.session_max_seconds, lo=60, hi=365 * 86400, integer=False),
            trusted_proxies=proxies,
            cookie_secure=boolean("COOKIE_SECURE", d.cookie_secure),
            email_timeout_seconds=number("EMAIL_TIMEOUT_SECONDS", d.email_timeout_seconds, lo=0.1, hi=600, integer=False),
            redis_url=redis_url,
            instance_name=instance_name,
        )
        if not settings.mongodb_name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"MONGODB_NAME: invalid database name {settings.mongodb_name!r}")
        if not settings.admin_username or len(settings.admin_username) > 64:
            raise ConfigError("ADMIN_USERNAME: must be 1-64 characters")
        if not debug:
            # The seed's rule: production refuses to start half-configured.
            missing = [
                name
                for name, present in (
                    ("SECRET_KEY", settings.secret_key),
                    ("ALLOWED_HOSTS", env.get("ALLOWED_HOSTS", "").strip()),
                    ("NOTIFICATION_EMAIL", settings.notification_email),
                    ("EMAIL_API_URL", settings.email_api_url),
                )
                if not present
            ]
            if missing:
                raise ConfigError(f"{missing[0]}: required when DEBUG=False (missing: {', '.join(missing)})")
            if len(settings.secret_key) < 16:
                raise ConfigError("SECRET_KEY: must be at least 16 characters when DEBUG=False")
        return settings

    def with_secret_key(self, key: str) -> Settings:
        from dataclasses import replace

        return replace(self, secret_key=key)


def load_or_create_secret(settings: Settings) -> Settings:
    """Development only: keep a generated SECRET_KEY in DATA_DIR so signed cookies and
    digest nonces survive a restart (a key made at import time would not)."""
    if settings.secret_key:
        return settings
    path = settings.data_dir / "secret_key"
    if path.is_file():
        key = path.read_text().strip()
    else:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key)
    return settings.with_secret_key(key)
