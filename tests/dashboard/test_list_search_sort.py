"""Search, filters and sort on the workflows list and the runs list (/history), over
real HTTP against a real server; the run searches on SQLite and MariaDB."""

from __future__ import annotations

import html
import re

from tests.conftest import MakeServer, RunningServer
from tests.flows.support import (
    Module,
    create_workflow,
    execute,
    register,
    wait_run,
    workflow_body,
)


def _run_rows(body: str) -> list[str]:
    return re.findall(r'<tr data-run="([0-9a-f]{32})">', body)


def _link(body: str, rel: str) -> str | None:
    found = re.search(rf'href="([^"]+)" rel="{rel}"', body)
    return html.unescape(found.group(1)) if found else None


async def _page(server: RunningServer, path: str, **headers: str) -> str:
    response = await server.fetch(path, headers=headers or None)
    assert response.code == 200, (path, response.body[:300])
    return response.body.decode()


async def _offline_runs(server: RunningServer, plan: list[int]) -> list[str]:
    """Run each workflow in `plan` in turn (its module is offline: each run fails at
    once); returns the run ids, oldest first."""
    ran = []
    for wid in plan:
        run_id = await execute(server, wid)
        await wait_run(server, run_id)
        ran.append(run_id)
    return ran


async def test_history_search_by_name_and_run_id_sort_and_bad_values(
    sql_url: str, make_server: MakeServer,
) -> None:
    server = await make_server(sql_url_override=sql_url)
    module_hash = await register(server, "search-offline")
    on_demand = {"enable": False, "execute_cron_list": []}
    alpha = await create_workflow(server, workflow_body("Alpha report", [module_hash], **on_demand))
    alpha_sync = await create_workflow(server, workflow_body("nightly-ALPHA-sync", [module_hash], **on_demand))
    beta = await create_workflow(server, workflow_body("Beta", [module_hash], **on_demand))
    plan = [alpha, beta, alpha_sync] * 14 + [alpha]
    ran = await _offline_runs(server, plan)
    of = {wid: [r for r, w in zip(ran, plan, strict=True) if w == wid] for wid in (alpha, alpha_sync, beta)}
    alphas_newest_first = [r for r, w in zip(ran, plan, strict=True) if w != beta][::-1]

    # The name search: case-insensitive, both "alpha" workflows, newest first, 25 a page.
    body = await _page(server, "/history?q=aLpHa")
    assert _run_rows(body) == alphas_newest_first[:25]
    assert 'value="aLpHa"' in body and "data-prepend-runs" not in body
    older = _link(body, "next")
    assert older is not None and "q=aLpHa" in older and "before=" in older
    rest = await _page(server, older)
    assert _run_rows(rest) == alphas_newest_first[25:] and _link(rest, "next") is None
    assert _link(rest, "first") == "/history?q=aLpHa"
    # ... with the other filters: one workflow, a status.
    assert _run_rows(await _page(server, f"/history?q=alpha&workflow_id={alpha_sync}")) == of[alpha_sync][::-1]
    assert _run_rows(await _page(server, f"/history?q=alpha&workflow_id={beta}")) == []
    assert _run_rows(await _page(server, "/history?q=beta&status=failed")) == of[beta][::-1]
    assert "No runs match these filters." in await _page(server, "/history?q=beta&status=success")

    # A run id prefix: a range on the run id; 4 characters at least.
    target = of[beta][3]
    for prefix in (target[:6], target[:6].upper(), target):
        assert target in _run_rows(await _page(server, f"/history?q={prefix}"))
    assert _run_rows(await _page(server, f"/history?q={target}&status=success")) == []
    # Shorter: a name search only (no workflow name here holds three hex digits in a row).
    assert _run_rows(await _page(server, f"/history?q={target[:3]}")) == []

    # Oldest first: the other direction, paged the same way; the Started header says so.
    body = await _page(server, "/history?sort=oldest")
    assert _run_rows(body) == ran[:25]
    assert 'aria-sort="ascending"' in body and '<option value="oldest" selected>' in body
    newer = _link(body, "next")
    assert newer is not None and "sort=oldest" in newer
    assert _run_rows(await _page(server, newer)) == ran[25:]
    assert _run_rows(await _page(server, "/history?q=alpha&sort=oldest")) == alphas_newest_first[::-1][:25]
    newest = await _page(server, "/history")
    assert _run_rows(newest) == ran[::-1][:25]
    assert re.search(r'<th scope="col" aria-sort="descending"><a href="/history\?sort=oldest">', newest)

    # Bad values: a clear message on an HTML 400 page, never a 500.
    for query, message in (("sort=sideways", "sort: must be one of newest, oldest"),
                           ("q=" + "x" * 101, "q: at most 100 characters"),
                           ("before=not-a-cursor&q=alpha", "before: not a history cursor"),
                           ("status=nope", "status: must be one of")):
        response = await server.fetch(f"/history?{query}")
        assert response.code == 400 and "text/html" in response.headers["Content-Type"], query
        assert message in html.unescape(response.body.decode()), query

    zh = await _page(server, "/history?q=alpha&sort=oldest", Cookie="lang=zh_CN")
    assert "工作流名称或运行 ID" in zh and "最早的在前" in zh and "Workflow name or run id" not in zh


async def test_history_search_matching_too_many_workflows_asks_for_more(server: RunningServer) -> None:
    module_hash = await register(server, "many-offline")
    for i in range(51):
        await create_workflow(server, workflow_body(f"many-{i:02d}", [module_hash], enable=False,
                                                    execute_cron_list=[]))
    response = await server.fetch("/history?q=MANY")
    assert response.code == 400
    assert "q: 51 workflows match (at most 50 are searched); type more of the name" in response.body.decode()
    assert (await server.fetch("/history?q=many-1")).code == 200  # ten match


def _cards(body: str) -> list[int]:
    return [int(x) for x in re.findall(r'<article class="workflow" id="workflow-(\d+)"', body)]


async def test_workflows_search_filter_sort_and_bad_values(server: RunningServer) -> None:
    module = await Module.online(server, "wf-sort-worker")
    offline = await register(server, "wf-sort-offline")
    zeta = await create_workflow(server, workflow_body("Zeta daily", [module.hash], execute_cron_list=["0 3 * * *"]))
    alpha = await create_workflow(server, workflow_body("alpha hourly", [module.hash],
                                                        execute_cron_list=["30 * * * *"]))
    paused = await create_workflow(server, workflow_body("Mid paused", [module.hash], enable=False))
    beta = await create_workflow(server, workflow_body("beta flaky", [offline], execute_cron_list=["15 4 * * *"]))
    # alpha: one success (rate 100%); beta: one failure, so failing now (rate 0%).
    run_id = await execute(server, alpha)
    command = await module.recv_execute()
    assert await module.result(command, "success") == "receive result"
    await wait_run(server, run_id)
    await wait_run(server, await execute(server, beta))

    body = await _page(server, "/workflows")
    assert _cards(body) == [zeta, alpha, paused, beta]  # the default: creation order
    assert "4 of 4 workflow(s)" in body and 'href="/workflows?sort=name"' in body
    assert re.search(r'href="/workflows" aria-current="true"', body)
    assert _cards(await _page(server, "/workflows?q=ALPHA")) == [alpha]
    assert _cards(await _page(server, "/workflows?q=a&sort=name")) == [alpha, beta, paused, zeta]
    assert _cards(await _page(server, "/workflows?state=paused")) == [paused]
    assert _cards(await _page(server, "/workflows?state=enabled&sort=name")) == [alpha, beta, zeta]
    assert _cards(await _page(server, "/workflows?state=failing")) == [beta]
    # Lowest success rate first; no ended run to judge by: last, by name.
    assert _cards(await _page(server, "/workflows?sort=success_rate")) == [beta, alpha, paused, zeta]
    # The latest run first; never ran: last, by name.
    assert _cards(await _page(server, "/workflows?sort=last_run")) == [beta, alpha, paused, zeta]
    # The next to fire first (as the scheduler has them); paused: last.
    fires = {wid: server.ctx.scheduler.next_run_time(wid) for wid in (zeta, alpha, beta)}
    assert _cards(await _page(server, "/workflows?sort=next_fire")) == [*sorted(fires, key=fires.get), paused]
    filtered = await _page(server, "/workflows?q=nothing-like-this&state=enabled&sort=name")
    assert _cards(filtered) == [] and "No workflows match." in filtered and "0 of 4 workflow(s)" in filtered
    assert 'href="/workflows?q=nothing-like-this&amp;state=enabled&amp;sort=last_run"' in filtered
    assert '<a href="/workflows">Clear</a>' in filtered

    for query, message in (("state=sleeping", "state: must be one of enabled, paused, failing"),
                           ("sort=colour", "sort: must be one of id, name, next_fire, last_run, success_rate"),
                           ("q=" + "y" * 101, "q: at most 100 characters")):
        response = await server.fetch(f"/workflows?{query}")
        assert response.code == 400 and "text/html" in response.headers["Content-Type"], query
        assert message in html.unescape(response.body.decode()), query

    zh = await _page(server, "/workflows?sort=success_rate", Cookie="lang=zh_CN")
    assert "成功率：最低的在前" in zh and "显示 4 / 共 4 个工作流" in zh and "Success rate" not in zh
