"""deploy/ stays consistent with the code: every variable the Dockerfile, compose
file and systemd unit set is a setting, their values parse, the proxy and health
check point at real routes, and the Grafana dashboard uses only real metrics."""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import fields
from pathlib import Path

import yaml

from tests.conftest import RunningServer
from tornado_sched.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# Set in the image for Python and pip, not for the server.
NOT_SETTINGS = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR"}
SETTING_NAMES = {f.name.upper() for f in fields(Settings)} - {"SQL_URL_OVERRIDE"}


def _dockerfile_env() -> dict[str, str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


# ${NAME:?msg} / ${NAME:-default}: what an operator's deploy/.env would supply.
SUPPLIED = {"SECRET_KEY": "s" * 48, "MYSQL_PASSWORD": "pw", "NOTIFICATION_EMAIL": "ops@example.com",
            "EMAIL_API_URL": "https://mail.example.com/send", "ADMIN_PASSWORD": "admin-pw-1",
            "METRICS_TOKEN": "m" * 20}


def _substitute(raw: dict[str, object]) -> dict[str, str]:
    def one(value: str) -> str:
        return re.sub(r"\$\{(\w+):[?-]([^}]*)\}",
                      lambda m: SUPPLIED.get(m.group(1), m.group(2) if ":-" in m.group(0) else ""), value)

    return {k: one(str(v)) for k, v in raw.items()}


def _compose_env() -> dict[str, str]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return _substitute(compose["services"]["tornado-sched"]["environment"])


def _cluster_envs() -> dict[str, dict[str, str]]:
    """deploy/cluster/compose.yml: each service built from our Dockerfile."""
    compose = yaml.safe_load((DEPLOY / "cluster" / "compose.yml").read_text())
    return {name: _substitute(service["environment"]) for name, service in compose["services"].items()
            if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"}


def _systemd_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (DEPLOY / "tornado-sched.service").read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line[len("Environment="):].partition("=")
            env[name] = value
    return env


def test_every_variable_the_deploy_files_set_is_a_setting_and_parses() -> None:
    for label, env in (("Dockerfile", _dockerfile_env()), ("compose.yaml", _compose_env()),
                       ("tornado-sched.service", _systemd_env())):
        assert env, label
        unknown = set(env) - SETTING_NAMES - NOT_SETTINGS
        assert not unknown, f"{label} sets variables Settings does not read: {sorted(unknown)}"
        app_env = {k: v for k, v in env.items() if k not in NOT_SETTINGS}
        if app_env.get("DEBUG") == "False" and label != "compose.yaml":
            # The unit's secrets come from its EnvironmentFile; supply them here.
            app_env |= {"SECRET_KEY": "s" * 48, "ALLOWED_HOSTS": "sched.example.com",
                        "NOTIFICATION_EMAIL": "ops@example.com", "EMAIL_API_URL": "https://mail.example.com/send"}
        settings = Settings.from_env(app_env, dotenv_path=None)  # raises ConfigError on a bad value
        assert settings.server_port == 10080, label
    compose = Settings.from_env(_compose_env(), dotenv_path=None)
    assert compose.mysql_host == "mariadb" and compose.mongodb_host.startswith("mongodb://mongodb")
    assert not compose.debug and "127.0.0.1" in compose.allowed_hosts  # the health check's Host
    instances = _cluster_envs()
    assert len(instances) == 3, instances
    names = set()
    for label, env in instances.items():
        unknown = set(env) - SETTING_NAMES
        assert not unknown, f"cluster/compose.yml {label} sets variables Settings does not read: {sorted(unknown)}"
        settings = Settings.from_env(env, dotenv_path=None)
        assert settings.clustered and "127.0.0.1" in settings.allowed_hosts, label
        names.add(settings.instance)
    assert len(names) == 3  # INSTANCE_NAME unique per cluster


def test_dockerfile_runs_unprivileged_with_a_ready_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"HEALTHCHECK .*\n?.*http://127\.0\.0\.1:10080/ready", text)
    assert "EXPOSE 10080" in text and 'ENTRYPOINT ["tornado-sched"]' in text
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert services["mongodb"]["image"].startswith("mongo:") and services["mariadb"]["image"].startswith("mariadb:")
    assert services["tornado-sched"]["build"]["dockerfile"] == "deploy/Dockerfile"


def test_docker_context_leaves_out_local_secrets_and_keeps_the_package() -> None:
    """`COPY . /tmp/src` in the Dockerfile keeps that layer in the image even after
    the rm: a checkout's data/ (secret key, SQLite with password digests, module
    hashes), logs and .env must never be in the build context."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def matches(pattern: list[str], parts: list[str]) -> bool:
        # Docker's rules: segment by segment, `**` any number of directories, and a
        # matched directory takes everything under it.
        if not pattern:
            return True
        if pattern[0] == "**":
            return any(matches(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
        return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and matches(pattern[1:], parts[1:])

    def ignored(path: str) -> bool:
        return any(matches(p.split("/"), path.split("/")) for p in patterns)

    for path in ("data/secret_key", "data/system.sqlite3", "logs/tornado_sched.log", ".env", "deploy/.env",
                 ".venv/bin/python", ".git/config", "tornado_sched/__pycache__/x.pyc"):
        assert ignored(path), path
    # Everything `pip install /tmp/src` reads (pyproject.toml's files and data-files).
    for path in ("pyproject.toml", "requirements.txt", "README.md", "run.py", "tornado_sched/client.py",
                 "handlers/app.py", "templates/base.html", "static/css/app.css", "locale/zh_CN.csv"):
        assert (ROOT / path).exists(), path
        assert not ignored(path), path


def test_nginx_upgrades_both_websockets() -> None:
    for conf in (DEPLOY / "nginx.conf", DEPLOY / "cluster" / "nginx.conf"):
        text = conf.read_text()
        for path in ("/websocket", "/dashboard/live"):
            block = re.search(r"location (?:= )?" + re.escape(path) + r" \{(.*?)\}", text, re.S)
            assert block, (conf, path)
            body = block.group(1)
            assert "proxy_http_version 1.1" in body and re.search(r"Upgrade +\$http_upgrade", body), (conf, path)
            assert "Connection $connection_upgrade" in body, (conf, path)
            timeout = int(re.search(r"proxy_read_timeout (\d+)s", body).group(1))
            assert timeout > Settings().websocket_ping_interval + Settings().websocket_ping_timeout
    unit = (DEPLOY / "tornado-sched.service").read_text()
    assert "TRUSTED_PROXIES=127.0.0.1" in unit and "RestartPreventExitStatus=2" in unit


def test_cluster_compose_shares_the_stores_and_nginx_balances_without_affinity() -> None:
    """deploy/cluster: MongoDB, MariaDB and Redis for three instances that all point at
    them with one SECRET_KEY; nginx sends to every instance with no sticky sessions."""
    compose = yaml.safe_load((DEPLOY / "cluster" / "compose.yml").read_text())
    services = compose["services"]
    assert services["mongodb"]["image"].startswith("mongo:") and services["mariadb"]["image"].startswith("mariadb:")
    assert services["redis"]["image"].startswith("redis:")
    instances = _cluster_envs()
    for name, env in instances.items():
        settings = Settings.from_env(env, dotenv_path=None)
        assert settings.redis_url == "redis://redis:6379/0", name
        assert settings.mongodb_host == "mongodb://mongodb:27017" and settings.mysql_host == "mariadb", name
        assert settings.server_port == 10080 and not settings.debug, name
        assert str(services[name]["environment"]["SECRET_KEY"]).startswith("${SECRET_KEY"), name
        assert set(services[name]["depends_on"]) == {"mongodb", "mariadb", "redis"}, name
    text = (DEPLOY / "cluster" / "nginx.conf").read_text()
    upstream = re.search(r"upstream tornado_sched \{(.*?)\}", text, re.S)
    assert upstream
    servers = re.findall(r"^\s*server (\w+):(\d+)", upstream.group(1), re.M)
    assert {host for host, _port in servers} == set(instances) and {port for _host, port in servers} == {"10080"}
    # No affinity of any kind: every instance serves any request and any module socket.
    assert not re.search(r"\b(ip_hash|hash|sticky)\b", upstream.group(1))
    assert all(block == "http://tornado_sched" for block in re.findall(r"proxy_pass (\S+);", text))
    assert "8080:80" in services["nginx"]["ports"]


async def test_grafana_dashboard_uses_only_real_metrics(server: RunningServer) -> None:
    response = await server.fetch("/metrics")
    assert response.code == 200
    # Families by their TYPE line (a labelled family has no sample until first use).
    exposed: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (tsched_\w+) (\w+)", response.body.decode(), re.M):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(kind, [""])
        base = name.removesuffix("_total") if kind == "counter" else name
        exposed |= {base + suffix for suffix in suffixes}
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"tsched_\w+", target["expr"])}
    assert len(used) >= 12
    assert used <= exposed, sorted(used - exposed)
    # And it charts every family a single server exposes (README: "every one").
    families = {name for name in re.findall(r"^# TYPE (tsched_\w+) ", response.body.decode(), re.M)
                if not name.endswith("_created")}
    uncharted = {f for f in families if not any(u.startswith(f) for u in used)}
    assert not uncharted, sorted(uncharted)
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["metrics_path"] == "/metrics"
