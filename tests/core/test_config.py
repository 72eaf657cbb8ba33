"""Settings: seed names, defaults, and one clear line for each bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from tornado_sched.config import ConfigError, Settings, load_or_create_secret

PROD = {
    "DEBUG": "False",
    "SECRET_KEY": "x" * 32,
    "ALLOWED_HOSTS": "example.com",
    "NOTIFICATION_EMAIL": "ops@example.com",
    "EMAIL_API_URL": "http://mail.example.com/send",
}


def parse(env: dict[str, str]) -> Settings:
    return Settings.from_env(env, dotenv_path=None)


def test_embedded_defaults() -> None:
    s = parse({})
    assert s.debug is True and s.server_port == 10080
    assert s.uses_embedded_mongo and s.sql_url.startswith("sqlite+aiosqlite:///")
    assert s.time_zone == "Asia/Shanghai" and s.mongodb_name == "forecast_platform"


def test_mysql_url_quotes_credentials_and_label_hides_password() -> None:
    s = parse({"MYSQL_HOST": "db", "MYSQL_PASSWORD": "p@ss:w/rd", "MYSQL_DB": "module_server"})
    assert s.sql_url == "mysql+aiomysql://root:p%40ss%3Aw%2Frd@db:3306/module_server?charset=utf8mb4"
    assert "p@ss" not in s.sql_label and "p@ss" not in repr(s)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SERVER_PORT": "abc"}, "SERVER_PORT"),
        ({"SERVER_PORT": "70000"}, "SERVER_PORT"),
        ({"MYSQL_PORT": "x"}, "MYSQL_PORT"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"TIME_ZONE": "Mars/Olympus"}, "TIME_ZONE"),
        ({"MONGODB_HOST": "localhost:27017"}, "MONGODB_HOST"),
        ({"EMAIL_API_URL": "ftp://x"}, "EMAIL_API_URL"),
        ({"NOTIFICATION_EMAIL": "not-an-address"}, "NOTIFICATION_EMAIL"),
        # A CR or LF would start a new mail header (Bcc:) wherever the address is used.
        ({"NOTIFICATION_EMAIL": "ops@example.com\rbcc:x@evil.test"}, "NOTIFICATION_EMAIL"),
        ({"NOTIFICATION_EMAIL": "ops@example.com\nBcc:x@evil.test"}, "NOTIFICATION_EMAIL"),
        ({"WEBSOCKET_PING_INTERVAL": "-1"}, "WEBSOCKET_PING_INTERVAL"),
        ({"TRUSTED_PROXIES": "10.0.0.1, proxy.example.com"}, "TRUSTED_PROXIES"),
        ({"COOKIE_SECURE": "perhaps"}, "COOKIE_SECURE"),
        ({"SESSION_IDLE_SECONDS": "5"}, "SESSION_IDLE_SECONDS"),
    ],
)
def test_bad_value_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(env)
    assert str(err.value).startswith(variable + ":")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("missing", ["SECRET_KEY", "ALLOWED_HOSTS", "NOTIFICATION_EMAIL", "EMAIL_API_URL"])
def test_production_refuses_to_start_half_configured(missing: str) -> None:
    env = {k: v for k, v in PROD.items() if k != missing}
    with pytest.raises(ConfigError) as err:
        parse(env)
    assert str(err.value).startswith(missing + ":")
    assert parse(PROD).debug is False


def test_log_format_and_metrics_token() -> None:
    assert parse({}).log_format == "text" and parse({}).metrics_token == ""
    s = parse({"LOG_FORMAT": "JSON", "METRICS_TOKEN": " scrape-token-1 "})
    assert s.log_format == "json" and s.metrics_token == "scrape-token-1"
    assert "scrape-token-1" not in repr(s)


def test_ping_timeout_is_clamped_to_interval_like_tornado() -> None:
    s = parse({"WEBSOCKET_PING_INTERVAL": "5", "WEBSOCKET_PING_TIMEOUT": "30"})
    assert (s.websocket_ping_interval, s.websocket_ping_timeout) == (5.0, 5.0)


def test_dotenv_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("SERVER_PORT=12345\nMONGODB_NAME=from_file\n")
    s = Settings.from_env({"MONGODB_NAME": "from_env"}, dotenv_path=dotenv)
    assert s.server_port == 12345 and s.mongodb_name == "from_env"


def test_generated_secret_survives_restart(tmp_path: Path) -> None:
    s = parse({"DATA_DIR": str(tmp_path)})
    first = load_or_create_secret(s).secret_key
    second = load_or_create_secret(s).secret_key
    assert first == second and len(first) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_security_settings() -> None:
    settings = parse({"TRUSTED_PROXIES": "10.0.0.0/8, ::1", "COOKIE_SECURE": "true",
                      "SESSION_IDLE_SECONDS": "600", "SESSION_MAX_SECONDS": "7200"})
    assert settings.trusted_proxies == ("10.0.0.0/8", "::1") and settings.cookie_secure is True
    assert (settings.session_idle_seconds, settings.session_max_seconds) == (600, 7200)
    assert parse({}).trusted_proxies == () and parse({}).cookie_secure is False


# -- cluster mode ----------------------------------------------------------------------
def test_redis_url_requires_the_shared_stores_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^MONGODB_HOST: required when REDIS_URL is set"):
        parse({"REDIS_URL": "redis://127.0.0.1:6379/14", "MYSQL_HOST": "db"})
    with pytest.raises(ConfigError, match=r"^MYSQL_HOST: required when REDIS_URL is set"):
        parse({"REDIS_URL": "redis://127.0.0.1:6379/14", "MONGODB_HOST": "mongodb://db:27017"})
    with pytest.raises(ConfigError, match=r"^REDIS_URL: expected a redis/rediss/unix URL"):
        parse({"REDIS_URL": "http://127.0.0.1:6379"})
    with pytest.raises(ConfigError, match=r"^INSTANCE_NAME"):
        parse({"INSTANCE_NAME": "has space"})


def test_cluster_settings_and_default_instance_name() -> None:
    s = parse({"REDIS_URL": "redis://:pw@127.0.0.1:6379/14", "MYSQL_HOST": "db", "MONGODB_HOST": "mongodb://db"})
    assert s.clustered and s.instance.endswith(":10080")
    assert "pw" not in repr(s)
    named = parse({"REDIS_URL": "redis://r/14", "MYSQL_HOST": "db", "MONGODB_HOST": "mongodb://db", "INSTANCE_NAME": "api-1"})
    assert named.instance == "api-1"
    assert not parse({}).clustered


def test_nothing_of_redis_is_imported_without_redis_url() -> None:
    """The server's every module imports without redis (only cluster.py needs it, and
    cluster_wiring.py, which builds on it)."""
    import subprocess
    import sys

    code = (
        "import sys, pkgutil, importlib, run, handlers.app, tornado_sched\n"
        "for m in pkgutil.iter_modules(tornado_sched.__path__):\n"
        "    if m.name not in ('cluster', 'cluster_wiring'): importlib.import_module('tornado_sched.' + m.name)\n"
        "print(sorted(n for n in sys.modules if n == 'redis' or n.startswith('redis.')))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
