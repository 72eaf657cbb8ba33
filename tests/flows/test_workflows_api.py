"""The seed's workflow and scheduler REST shapes, our additions (detail, update,
enable/disable, delete), and input validation: every bad field is a 400 that names
it, and changes nothing."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import RunningServer
from tests.flows.support import (
    Module,
    create_workflow,
    get_run,
    register,
    wait_run,
    workflow_body,
)


def _jobs_by_workflow(env: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {j["workflow_id"]: j for j in env["result"] if j["workflow_id"] is not None}


async def test_create_returns_seed_shape_with_sequential_ids(server: RunningServer) -> None:
    module_hash = await register(server)
    ids = []
    for name in ("早盘", "午盘", "尾盘"):
        status, env = await server.api("/workflow/create", "POST", json_body=workflow_body(name, [module_hash]))
        assert status == 200, env
        assert env["code"] == "2000" and env["message"] == "成功!"
        assert set(env["result"]) == {"id", "workflow_id", "name"}
        assert env["result"]["name"] == name
        assert isinstance(env["result"]["id"], str) and len(env["result"]["id"]) == 24
        ids.append(env["result"]["workflow_id"])
    assert ids == [ids[0], ids[0] + 1, ids[0] + 2]

    status, env = await server.api("/workflow/list")
    assert status == 200 and env["code"] == "2000"
    listed = env["result"]
    assert [w["workflow_id"] for w in listed] == ids
    first = listed[0]
    assert first["name"] == "早盘"
    assert first["execute_cron_list"] == ["*/10 10 * * 1-5", "*/10 14 * * 1-5"]
    assert first["execute_shift_time"] == -30 and first["execute_shift_unit"] == "s"
    assert first["execute_modules"] == [{"module_hash": module_hash, "args": {"stock_list": ["600000"]}}]
    assert first["enable"] is True
    # Enabled workflows have a next run time, and it is tick + shift (…:59:30 or …:09:30 …).
    next_run = datetime.fromisoformat(first["next_run_time"])
    assert next_run.second == 30 and next_run.minute % 10 == 9


async def test_execute_seed_shape_and_unknown_id(server: RunningServer) -> None:
    module = await Module.online(server, "exec-mod")
    wid = await create_workflow(server, workflow_body("执行", [module.hash]))
    status, env = await server.api(f"/workflow/{wid}/execute", "POST")
    assert status == 200, env
    result = env["result"]
    assert result["workflow_id"] == wid and result["workflow_name"] == "执行"
    assert result["message"] == "工作流执行已启动"
    assert isinstance(result["run_id"], str) and result["run_id"]
    command = await module.recv_execute()
    assert command["meta"]["run_id"] == result["run_id"]
    assert await module.result(command) == "receive result"

    status, env = await server.api("/workflow/99999/execute", "POST")
    assert status == 404, env
    assert env["code"] == "4040" and env["result"] is None and "99999" in env["message"]
    for path in ("/workflow/99999", "/workflow/99999/runs"):
        status, env = await server.api(path)
        assert status == 404 and env["code"] == "4040", (path, env)
    module.close()


async def test_disabled_workflow_runs_on_demand_but_is_not_scheduled(server: RunningServer) -> None:
    module = await Module.online(server)
    wid = await create_workflow(server, workflow_body(modules=[module.hash], enable=False, execute_cron_list=[]))
    status, env = await server.api("/scheduler/jobs")
    assert wid not in _jobs_by_workflow(env)

    status, env = await server.api(f"/workflow/{wid}/execute", "POST")
    assert status == 200, env
    run_id = env["result"]["run_id"]
    command = await module.recv_execute()
    assert await module.result(command) == "receive result"
    run = await wait_run(server, run_id)
    assert run["status"] == "success" and run["trigger"] == "manual"
    module.close()


async def test_detail_update_enable_disable_delete_reach_the_scheduler(server: RunningServer) -> None:
    module_hash = await register(server)
    wid = await create_workflow(server, workflow_body("detail", [module_hash]))

    status, env = await server.api(f"/workflow/{wid}")
    assert status == 200, env
    detail = env["result"]
    assert detail["workflow_id"] == wid and detail["name"] == "detail"
    assert len(detail["upcoming"]) == 5
    assert detail["next_run_time"] == detail["upcoming"][0]
    status, env = await server.api("/scheduler/jobs")
    job = _jobs_by_workflow(env)[wid]
    assert set(job) >= {"id", "name", "workflow_id", "trigger", "next_run_time"}
    assert job["id"] == f"workflow-{wid}" and job["name"] == "detail"
    assert "*/10 10 * * 1-5" in job["trigger"] and "-30s" in job["trigger"]
    assert job["next_run_time"] == detail["next_run_time"]

    # PUT: a new schedule is in the job at once.
    status, env = await server.api(f"/workflow/{wid}", "PUT", json_body={
        "execute_cron_list": ["0 3 1 1 *"], "execute_shift_time": 2, "execute_shift_unit": "h",
        "timezone": "UTC",
    })
    assert status == 200, env
    assert env["result"]["execute_cron_list"] == ["0 3 1 1 *"]
    assert env["result"]["name"] == "detail"  # untouched fields kept
    status, env = await server.api("/scheduler/jobs")
    job = _jobs_by_workflow(env)[wid]
    assert "0 3 1 1 *" in job["trigger"] and "+2h" in job["trigger"]
    fire = datetime.fromisoformat(job["next_run_time"])
    assert (fire.month, fire.day, fire.hour, fire.minute) == (1, 1, 5, 0)

    # disable: the job is gone at once; enable: it is back.
    status, env = await server.api(f"/workflow/{wid}/disable", "POST")
    assert status == 200 and env["result"]["enable"] is False
    status, env = await server.api("/scheduler/jobs")
    assert wid not in _jobs_by_workflow(env)
    status, env = await server.api(f"/workflow/{wid}")
    assert env["result"]["enable"] is False and env["result"]["next_run_time"] is None

    status, env = await server.api(f"/workflow/{wid}/enable", "POST")
    assert status == 200 and env["result"]["enable"] is True
    status, env = await server.api("/scheduler/jobs")
    assert wid in _jobs_by_workflow(env)

    # PUT enable=false through the body also reaches the scheduler.
    status, env = await server.api(f"/workflow/{wid}", "PUT", json_body={"enable": False})
    assert status == 200 and env["result"]["enable"] is False
    status, env = await server.api("/scheduler/jobs")
    assert wid not in _jobs_by_workflow(env)
    await server.api(f"/workflow/{wid}/enable", "POST")

    status, env = await server.api(f"/workflow/{wid}", "DELETE")
    assert status == 200, env
    assert env["result"] == {"workflow_id": wid, "name": "detail", "deleted": True}
    status, env = await server.api("/scheduler/jobs")
    assert wid not in _jobs_by_workflow(env)
    status, env = await server.api(f"/workflow/{wid}")
    assert status == 404
    status, env = await server.api(f"/workflow/{wid}", "DELETE")
    assert status == 404


async def test_enable_without_crontab_is_refused(server: RunningServer) -> None:
    wid = await create_workflow(server, workflow_body(enable=False, execute_cron_list=[]))
    status, env = await server.api(f"/workflow/{wid}/enable", "POST")
    assert status == 400 and env["result"] == {"field": "enable"}, env
    status, env = await server.api("/scheduler/jobs")
    assert wid not in _jobs_by_workflow(env)


async def test_jobs_and_reload_shapes(server: RunningServer) -> None:
    module_hash = await register(server)
    on1 = await create_workflow(server, workflow_body("on-1", [module_hash]))
    on2 = await create_workflow(server, workflow_body("on-2", [module_hash], execute_cron_list=["@daily"]))
    await create_workflow(server, workflow_body("off", [module_hash], enable=False))

    status, env = await server.api("/scheduler/jobs")
    assert status == 200 and env["code"] == "2000"
    for job in env["result"]:
        assert set(job) == {"id", "name", "workflow_id", "trigger", "next_run_time"}, job
        assert isinstance(job["trigger"], str) and job["trigger"]
        datetime.fromisoformat(job["next_run_time"])
    assert set(_jobs_by_workflow(env)) == {on1, on2}
    # The built-in jobs are listed too, without a workflow.
    system = {j["id"] for j in env["result"] if j["workflow_id"] is None}
    assert "system-cleanup" in system

    # A job that drifted from the store (removed behind the API's back) comes back.
    server.ctx.scheduler.sync(None, on2)
    status, env = await server.api("/scheduler/jobs")
    assert set(_jobs_by_workflow(env)) == {on1}

    status, env = await server.api("/scheduler/reload", "POST")
    assert status == 200, env
    result = env["result"]
    assert set(result) == {"removed_count", "current_count", "enabled_workflows", "message"}
    assert result["removed_count"] == 1
    assert result["current_count"] == 2
    assert [w["workflow_id"] for w in result["enabled_workflows"]] == [on1, on2]
    assert [w["name"] for w in result["enabled_workflows"]] == ["on-1", "on-2"]
    assert isinstance(result["message"], str) and result["message"]
    status, env = await server.api("/scheduler/jobs")
    assert set(_jobs_by_workflow(env)) == {on1, on2}


# -- invalid input ---------------------------------------------------------------------

BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("bad crontab", {"execute_cron_list": ["61 * * * *"]}, "execute_cron_list"),
    ("not a crontab", {"execute_cron_list": ["every day"]}, "execute_cron_list"),
    ("6-field crontab", {"execute_cron_list": ["0 */10 10 * * 1-5"]}, "execute_cron_list"),
    ("crontab not a string", {"execute_cron_list": [5]}, "execute_cron_list"),
    ("enabled without crontab", {"execute_cron_list": []}, "execute_cron_list"),
    ("bad shift unit", {"execute_shift_unit": "d"}, "execute_shift_unit"),
    ("non-int shift", {"execute_shift_time": "soon"}, "execute_shift_time"),
    ("float shift", {"execute_shift_time": 1.5}, "execute_shift_time"),
    ("bool shift", {"execute_shift_time": True}, "execute_shift_time"),
    ("shift out of range", {"execute_shift_time": 200, "execute_shift_unit": "h"}, "execute_shift_time"),
    ("enable not bool", {"enable": "yes"}, "enable"),
    ("enable an int", {"enable": 1}, "enable"),
    ("name missing", {"name": ""}, "name"),
    ("name an object", {"name": {"$ne": None}}, "name"),
    ("unknown time zone", {"timezone": "Mars/Olympus"}, "timezone"),
    ("bad overlap", {"overlap": "queue"}, "overlap"),
    ("bad misfire", {"misfire": "always"}, "misfire"),
    ("timeout zero", {"timeout_seconds": 0}, "timeout_seconds"),
    ("retries not int", {"retries": "many"}, "retries"),
    ("modules not a list", {"execute_modules": {"module_hash": "x"}}, "execute_modules"),
]


@pytest.mark.parametrize(("label", "change", "field"), BAD_FIELDS, ids=[c[0] for c in BAD_FIELDS])
async def test_invalid_field_is_400_naming_it(
    server: RunningServer, label: str, change: dict[str, Any], field: str
) -> None:
    module_hash = await register(server)
    body = workflow_body("bad", [module_hash]) | change
    status, env = await server.api("/workflow/create", "POST", json_body=body)
    assert status == 400, (label, env)
    assert env["code"] == "4000"
    assert env["result"] == {"field": field}, env
    assert env["message"].startswith(field), env
    status, env = await server.api("/workflow/list")
    assert env["result"] == []
    assert await server.ctx.docs["workflows"].count_documents({}) == 0


MODULE_REFS: list[tuple[str, Any]] = [
    ("unknown hash", "0" * 40),
    ("operator $ne", {"$ne": None}),
    ("operator $gt", {"$gt": ""}),
    ("operator $regex", {"$regex": ".*"}),
    ("list of hashes", ["a", "b"]),
    ("empty", ""),
]


@pytest.mark.parametrize(("label", "ref"), MODULE_REFS, ids=[c[0] for c in MODULE_REFS])
async def test_module_hash_must_be_a_known_plain_string(server: RunningServer, label: str, ref: Any) -> None:
    # A real module exists, so an operator object would match it if it reached a query.
    await register(server)
    body = workflow_body("refs", [])
    body["execute_modules"] = [{"module_hash": ref, "args": {}}]
    status, env = await server.api("/workflow/create", "POST", json_body=body)
    assert status == 400, (label, env)
    assert env["result"] == {"field": "execute_modules"}, env
    assert env["message"].startswith("execute_modules[0].module_hash"), env
    assert await server.ctx.docs["workflows"].count_documents({}) == 0


ARGS: list[tuple[str, Any]] = [
    ("args a list", ["600000"]),
    ("args a string", "stock_list=600000"),
    ("args a number", 3),
    ("$ key", {"$where": "1"}),
    ("nested $ key", {"filter": {"price": {"$gt": 1}}}),
    ("$ key in a list", {"items": [{"$set": 1}]}),
    ("dotted key", {"a.b": 1}),
]


@pytest.mark.parametrize(("label", "args"), ARGS, ids=[c[0] for c in ARGS])
async def test_args_must_be_a_plain_object(server: RunningServer, label: str, args: Any) -> None:
    module_hash = await register(server)
    body = workflow_body("args", [])
    body["execute_modules"] = [{"module_hash": module_hash, "args": args}]
    status, env = await server.api("/workflow/create", "POST", json_body=body)
    assert status == 400, (label, env)
    field = env["result"]["field"]
    assert field.startswith("execute_modules"), env
    assert env["message"].startswith("execute_modules[0].args"), env
    assert await server.ctx.docs["workflows"].count_documents({}) == 0


async def test_duplicate_name_is_409_and_keeps_the_first(server: RunningServer) -> None:
    module_hash = await register(server)
    wid = await create_workflow(server, workflow_body("同名", [module_hash]))
    status, env = await server.api("/workflow/create", "POST", json_body=workflow_body("同名", [module_hash], enable=False))
    assert status == 409 and env["result"] == {"field": "name"}, env
    assert env["message"].startswith("name")
    status, env = await server.api("/workflow/list")
    assert [(w["workflow_id"], w["enable"]) for w in env["result"]] == [(wid, True)]

    # Renaming another workflow onto it is refused the same way, and changes nothing.
    other = await create_workflow(server, workflow_body("另一个", [module_hash]))
    status, env = await server.api(f"/workflow/{other}", "PUT", json_body={"name": "同名"})
    assert status == 409 and env["result"] == {"field": "name"}, env
    status, env = await server.api(f"/workflow/{other}")
    assert env["result"]["name"] == "另一个"


async def test_invalid_update_changes_nothing(server: RunningServer) -> None:
    module_hash = await register(server)
    wid = await create_workflow(server, workflow_body("keep", [module_hash]))
    status, before = await server.api(f"/workflow/{wid}")
    status, jobs_before = await server.api("/scheduler/jobs")
    for change, field in (
        ({"execute_cron_list": ["* * * *"]}, "execute_cron_list"),
        ({"execute_shift_unit": "w"}, "execute_shift_unit"),
        ({"enable": "nope"}, "enable"),
        ({"execute_modules": [{"module_hash": {"$gt": ""}}]}, "execute_modules"),
    ):
        status, env = await server.api(f"/workflow/{wid}", "PUT", json_body=change)
        assert status == 400 and env["result"] == {"field": field}, (change, env)
    status, after = await server.api(f"/workflow/{wid}")
    assert after["result"] == before["result"]
    status, jobs_after = await server.api("/scheduler/jobs")
    assert _jobs_by_workflow(jobs_after) == _jobs_by_workflow(jobs_before)


@pytest.mark.parametrize(
    ("label", "raw"),
    [("malformed JSON", b'{"name": "x",'), ("a JSON list", b'[{"name": "x"}]'), ("a JSON string", b'"x"')],
)
async def test_body_must_be_a_json_object(server: RunningServer, label: str, raw: bytes) -> None:
    response = await server.fetch("/workflow/create", "POST", body=raw, headers={"Content-Type": "application/json"})
    env = json.loads(response.body)
    assert response.code == 400, (label, env)
    assert env["code"] == "4000"
    assert env["result"] == {"field": "body"}, env
    assert env["message"].startswith("body"), env
    assert await server.ctx.docs["workflows"].count_documents({}) == 0


async def test_run_queries_validate_their_input(server: RunningServer) -> None:
    wid = await create_workflow(server, workflow_body(enable=False, execute_cron_list=[]))
    for query in ("page=0", "page=abc", "page_size=0", "page_size=1000", "page=-1"):
        status, env = await server.api(f"/workflow/{wid}/runs?{query}")
        assert status == 400 and env["result"] == {"field": "page"}, (query, env)
    status, env = await server.api("/runs?status=bogus")
    assert status == 400 and env["result"] == {"field": "status"}, env
    status, env = await server.api("/runs?workflow_id=abc")
    assert status == 400 and env["result"] == {"field": "workflow_id"}, env
    status, env = await server.api("/runs/" + "ab" * 16)
    assert status == 404 and env["code"] == "4040", env
    status, env = await server.api("/runs/not-a-run-id")
    assert status == 404, env


async def test_run_history_is_newest_first_and_paginated(server: RunningServer) -> None:
    # No module connected: every run closes at once (offline), which keeps this quick.
    module_hash = await register(server)
    wid = await create_workflow(server, workflow_body(modules=[module_hash], enable=False, execute_cron_list=[]))
    other = await create_workflow(server, workflow_body(modules=[module_hash], enable=False, execute_cron_list=[]))
    run_ids = []
    for _ in range(5):
        status, env = await server.api(f"/workflow/{wid}/execute", "POST")
        run_ids.append(env["result"]["run_id"])
        await wait_run(server, run_ids[-1])
        await asyncio.sleep(0.005)  # BSON dates keep milliseconds: keep started_at distinct
    status, env = await server.api(f"/workflow/{other}/execute", "POST")

    status, env = await server.api(f"/workflow/{wid}/runs?page=1&page_size=2")
    assert status == 200, env
    page1 = env["result"]
    assert page1["total"] == 5 and page1["page"] == 1 and page1["page_size"] == 2
    status, env = await server.api(f"/workflow/{wid}/runs?page=2&page_size=2")
    page2 = env["result"]
    status, env = await server.api(f"/workflow/{wid}/runs?page=3&page_size=2")
    page3 = env["result"]
    seen = [r["run_id"] for p in (page1, page2, page3) for r in p["runs"]]
    assert seen == list(reversed(run_ids))
    status, env = await server.api(f"/workflow/{wid}/runs?page=4&page_size=2")
    assert env["result"]["runs"] == [] and env["result"]["total"] == 5

    status, env = await server.api(f"/runs?workflow_id={wid}&status=failure&page_size=200")
    assert env["result"]["total"] == 5
    status, env = await server.api("/runs?status=success")
    assert env["result"]["total"] == 0
    run = await get_run(server, run_ids[0])
    assert run["workflow_id"] == wid and run["steps"][0]["status"] == "offline"

    # Keyset pages: `next_before` leads on, `has_more` says when to stop, with the
    # filters kept; a cursor the server did not make is a 400 in the envelope.
    seen, before = [], ""
    for _ in range(4):
        status, env = await server.api(f"/workflow/{wid}/runs?page_size=2{before}")
        assert status == 200, env
        seen += [r["run_id"] for r in env["result"]["runs"]]
        if not env["result"]["has_more"]:
            assert env["result"]["next_before"] is None
            break
        before = f"&before={env['result']['next_before']}"
    assert seen == list(reversed(run_ids))
    status, env = await server.api(f"/runs?status=failed&workflow_id={wid}&page_size=3")
    assert [r["run_id"] for r in env["result"]["runs"]] == list(reversed(run_ids))[:3]
    assert env["result"]["has_more"] is True and env["result"]["total_exact"] is True
    status, env = await server.api(f"/runs?status=failed&workflow_id={wid}&before={env['result']['next_before']}")
    assert [r["run_id"] for r in env["result"]["runs"]] == list(reversed(run_ids))[3:]
    assert env["result"]["page"] is None and env["result"]["has_more"] is False
    started = datetime.fromisoformat(run["started_at"])
    since = (started - timedelta(milliseconds=1)).isoformat()
    until = (started + timedelta(milliseconds=1)).isoformat()
    status, env = await server.api(f"/runs?{urlencode({'since': since, 'until': until})}")
    assert [r["run_id"] for r in env["result"]["runs"]] == [run_ids[0]], env
    for bad in ("before=zzz", "before=" + "A" * 101, "since=yesterday", "until=2026-13-01", "status=nope",
                "page=600&page_size=20"):
        status, env = await server.api(f"/runs?{bad}")
        assert status == 400 and env["code"] == "4000", (bad, env)
