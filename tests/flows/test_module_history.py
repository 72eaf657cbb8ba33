"""A module's run history over real HTTP: `GET /module/<hash>/runs` (keyset pages,
status filter, bad parameters) and the module page's "Recent steps" (paged like
/history, filtered, translated), against a real server and real module sockets."""

from __future__ import annotations

import html
import re

from tests.conftest import RunningServer
from tests.flows.support import Module, create_workflow, execute, register, wait_run, workflow_body


async def _run(server: RunningServer, wid: int, answers: dict[str, tuple[Module, str]]) -> str:
    """Execute `wid`; each module named in `answers` answers with its status."""
    run_id = await execute(server, wid)
    for module, status in answers.values():
        command = await module.recv_execute()
        error = f"{module.name} broke" if status == "failure" else None
        assert await module.result(command, status, error=error) == "receive result"
    await wait_run(server, run_id)
    return run_id


async def _history(server: RunningServer, module_hash: str, query: str = "") -> dict:
    status, env = await server.api(f"/module/{module_hash}/runs{query}")
    assert status == 200, env
    return env["result"]


async def test_module_runs_api_pages_newest_first_and_filters(server: RunningServer) -> None:
    a = await Module.online(server, "hist-a")
    b = await Module.online(server, "hist-b")
    both = await create_workflow(server, workflow_body("hist-both", [a.hash, b.hash], enable=False,
                                                       execute_cron_list=[]))
    only_a = await create_workflow(server, workflow_body("hist-only-a", [a.hash], enable=False,
                                                         execute_cron_list=[]))
    ran = [
        await _run(server, both, {"a": (a, "success"), "b": (b, "failure")}),
        await _run(server, only_a, {"a": (a, "failure")}),
        await _run(server, both, {"a": (a, "success"), "b": (b, "success")}),
        await _run(server, only_a, {"a": (a, "failure")}),
        await _run(server, only_a, {"a": (a, "success")}),
    ]

    first = await _history(server, a.hash, "?page_size=2")
    assert first["page_size"] == 2 and first["has_more"] and first["next_before"]
    seen = list(first["steps"])
    cursor = first["next_before"]
    while cursor:
        page = await _history(server, a.hash, f"?page_size=2&before={cursor}")
        seen += page["steps"]
        cursor = page["next_before"]
        assert page["has_more"] == bool(cursor)
    # Every run of module a once, newest first; module b's steps are not in it.
    assert [s["run_id"] for s in seen] == ran[::-1]
    assert [s["sent_at"] for s in seen] == sorted((s["sent_at"] for s in seen), reverse=True)
    newest = seen[0]
    assert newest["workflow_id"] == only_a and newest["workflow_name"] == "hist-only-a"
    assert newest["status"] == "success" and newest["attempts"] == 1 and newest["run_status"] == "success"
    assert newest["ended_at"] and newest["step_index"] == 0
    assert {s["workflow_name"] for s in seen} == {"hist-both", "hist-only-a"}

    failed = await _history(server, a.hash, "?status=failed")
    assert [s["run_id"] for s in failed["steps"]] == [ran[3], ran[1]] and not failed["has_more"]
    assert failed["steps"][0]["error"] == "hist-a broke"
    assert [s["run_id"] for s in (await _history(server, a.hash, "?status=success"))["steps"]] == \
        [ran[4], ran[2], ran[0]]
    b_steps = (await _history(server, b.hash))["steps"]
    assert [(s["run_id"], s["step_index"], s["status"]) for s in b_steps] == \
        [(ran[2], 1, "success"), (ran[0], 1, "failure")]

    # Bad input: 400 with the envelope naming the field; an unknown module is a 404.
    for query, field in (("?status=bogus", "status"), ("?before=not-a-cursor", "before"),
                         ("?page_size=0", "page_size"), ("?page_size=x", "page_size"),
                         ("?status=%24ne", "status")):
        status, env = await server.api(f"/module/{a.hash}/runs{query}")
        assert status == 400, (query, env)
        assert env["code"] == "4000" and field in env["message"], (query, env)
    status, env = await server.api("/module/no-such-module/runs")
    assert status == 404 and env["code"] == "4040", env
    status, env = await server.api(f"/module/{a.hash}/runs", auth=None)
    assert status == 401


async def test_a_step_to_an_offline_module_is_in_its_history(server: RunningServer) -> None:
    offline_hash = await register(server, "hist-offline")
    wid = await create_workflow(server, workflow_body("hist-offline-wf", [offline_hash], enable=False,
                                                      execute_cron_list=[]))
    run_id = await execute(server, wid)
    await wait_run(server, run_id)
    steps = (await _history(server, offline_hash, "?status=failed"))["steps"]
    assert [(s["run_id"], s["status"]) for s in steps] == [(run_id, "offline")]
    assert "offline" in steps[0]["error"]


async def test_module_page_shows_recent_steps_paged_filtered_and_translated(server: RunningServer) -> None:
    module = await Module.online(server, "page-hist")
    wid = await create_workflow(server, workflow_body("page-hist-wf", [module.hash], enable=False,
                                                      execute_cron_list=[]))
    runs = [await _run(server, wid, {"m": (module, "failure" if i % 3 == 0 else "success")}) for i in range(27)]
    module_id = server.ctx.modules.view(await server.ctx.registry.get(module.hash)).record.module_id
    page = await server.fetch(f"/modules/{module_id}")
    assert page.code == 200
    body = page.body.decode()
    shown = re.findall(r'data-module-step="([0-9a-f]{32})-0"', body)
    assert shown == runs[::-1][:25]  # a page of 25, newest first
    assert f'href="/history/{runs[-1]}"' in body and f'href="/workflows#workflow-{wid}"' in body
    assert "page-hist broke" in body and 'rel="first"' not in body
    older = html.unescape(re.search(r'href="([^"]+)" rel="next"', body).group(1))
    assert older.startswith(f"/modules/{module_id}?before=")
    rest = (await server.fetch(older)).body.decode()
    assert re.findall(r'data-module-step="([0-9a-f]{32})-0"', rest) == runs[::-1][25:]
    assert 'rel="first"' in rest and 'rel="next"' not in rest

    failed = (await server.fetch(f"/modules/{module_id}?status=failed")).body.decode()
    assert re.findall(r'data-module-step="([0-9a-f]{32})-0"', failed) == [r for i, r in enumerate(runs)
                                                                          if i % 3 == 0][::-1]
    assert '<option value="failed" selected>' in failed

    for query in ("?status=bogus", "?before=garbage"):
        bad = await server.fetch(f"/modules/{module_id}{query}")
        assert bad.code == 400 and "text/html" in bad.headers["Content-Type"], query
        assert ("status: must be one of" if "status" in query else "before: not a module history cursor") \
            in bad.body.decode()

    zh = (await server.fetch(f"/modules/{module_id}", headers={"Cookie": "lang=zh_CN"})).body.decode()
    assert "最近的步骤" in zh and "尝试次数" in zh and "Recent steps" not in zh
    empty = await register(server, "page-hist-empty")
    empty_id = server.ctx.modules.view(await server.ctx.registry.get(empty)).record.module_id
    assert "尚未向此模块发送过步骤" in (await server.fetch(f"/modules/{empty_id}",
                                                  headers={"Cookie": "lang=zh_CN"})).body.decode()
