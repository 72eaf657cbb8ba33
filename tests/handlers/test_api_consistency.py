"""One shape across the API: UTC timestamps with their offset, the seed's
execution_time untouched, ids in paths, 409 on a duplicate name, loose bodies refused."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from tests.conftest import RunningServer
from tests.flows.support import register

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")
TIME_KEYS = ("_at", "_time", "upcoming", "last_heartbeat")


def _timestamps(value: Any, path: str = "") -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str | list) and key != "execution_time" and key.endswith(TIME_KEYS):
                found.extend((f"{path}.{key}", v) for v in (item if isinstance(item, list) else [item]))
            else:
                found.extend(_timestamps(item, f"{path}.{key}"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_timestamps(item, f"{path}[{index}]"))
    return found


async def _workflow(server: RunningServer, name: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    module_hash = await register(server, f"mod-{name}")
    body = {"name": name, "execute_cron_list": ["*/10 10 * * 1-5"],
            "execute_modules": [{"module_hash": module_hash, "args": {}}], **fields}
    return await server.api("/workflow/create", "POST", json_body=body)


async def test_every_timestamp_is_iso_8601_utc_and_execution_time_stays_local(server: RunningServer) -> None:
    status, env = await _workflow(server, "times", timezone="Asia/Shanghai")
    assert status == 200, env
    wid = env["result"]["workflow_id"]
    await server.api(f"/workflow/{wid}/execute", "POST")
    seen: list[tuple[str, Any]] = []
    for path in ("/workflow/list", f"/workflow/{wid}", "/scheduler/jobs", "/module/list", "/runs",
                 "/notifications", "/audit", "/tokens"):
        status, env = await server.api(path)
        assert status == 200, (path, env)
        seen.extend((path + where, value) for where, value in _timestamps(env["result"]))
    values = [v for _, v in seen if v is not None]
    assert len(values) > 15, seen
    bad = [(where, v) for where, v in seen if v is not None and not ISO_UTC.match(v)]
    assert not bad, bad
    jobs = (await server.api("/scheduler/jobs"))[1]["result"]
    assert any(j["next_run_time"] for j in jobs)  # APScheduler's zone (+08:00) no longer leaks
    run = (await server.api("/runs"))[1]["result"]["runs"][0]
    # The seed's execution_time: local to the workflow's zone, no offset.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", run["execution_time"])


async def test_object_id_in_a_path_names_the_workflow_id_to_use(server: RunningServer) -> None:
    status, env = await _workflow(server, "ids")
    object_id, wid = env["result"]["id"], env["result"]["workflow_id"]
    for method, suffix in (("GET", ""), ("POST", "/execute"), ("DELETE", "")):
        status, env = await server.api(f"/workflow/{object_id}{suffix}", method)
        assert status == 404 and env["code"] == "4040", env
        assert f"/workflow/{wid}{suffix}" in env["message"], env
    status, env = await server.api("/workflow/0123456789abcdef01234567")
    assert status == 404 and "workflow_id" in env["message"]
    assert (await server.api(f"/workflow/{wid}"))[0] == 200  # untouched by the refused DELETE


async def test_duplicate_name_is_409(server: RunningServer) -> None:
    assert (await _workflow(server, "twice"))[0] == 200
    status, env = await _workflow(server, "twice")
    assert status == 409 and env["code"] == "4090" and env["result"] == {"field": "name"}, env
    status, other = await _workflow(server, "other")
    status, env = await server.api(f"/workflow/{other['result']['workflow_id']}", "PUT", json_body={"name": "twice"})
    assert status == 409 and env["result"] == {"field": "name"}, env


async def test_empty_module_list_and_non_list_crontabs_are_refused(server: RunningServer) -> None:
    status, env = await server.api("/workflow/create", "POST", json_body={
        "name": "empty", "execute_cron_list": ["0 3 * * *"], "execute_modules": []})
    assert status == 400 and env["result"] == {"field": "execute_modules"}, env
    # A disabled draft may be empty, but it can neither run nor be enabled.
    status, env = await server.api("/workflow/create", "POST", json_body={
        "name": "draft", "enable": False, "execute_modules": []})
    assert status == 200, env
    draft = env["result"]["workflow_id"]
    status, env = await server.api(f"/workflow/{draft}/execute", "POST")
    assert status == 400 and env["result"] == {"field": "execute_modules"}, env
    status, env = await server.api(f"/workflow/{draft}", "PUT", json_body={"enable": True, "execute_cron_list": ["0 3 * * *"]})
    assert status == 400 and env["result"] == {"field": "execute_modules"}, env
    assert (await server.api(f"/workflow/{draft}/runs"))[1]["result"]["total"] == 0
    await server.api(f"/workflow/{draft}", "DELETE")
    status, env = await _workflow(server, "stringy", execute_cron_list="0 3 * * *")
    assert status == 400 and env["result"] == {"field": "execute_cron_list"}, env
    assert "list" in env["message"]
    status, env = await server.api("/workflow/list")
    assert [w["name"] for w in env["result"]] == [], env  # nothing was created


def test_timedelta_is_not_a_timestamp() -> None:
    # Guards the helper above: only *_at / *_time / upcoming keys are checked.
    assert _timestamps({"timeout_seconds": 5, "x": {"fired_at": "a"}, "d": str(timedelta(1))}) == [(".x.fired_at", "a")]
