"""The workflows list's run strips over plain HTTP against a real server, real stores
and a real module socket: one square per run (newest right, linked, titled with
status and time), the success rate, and the inline-SVG duration sparkline."""

from __future__ import annotations

import re

from tests.conftest import RunningServer
from tests.dashboard.test_operator_pages import fail_run, on_demand, succeed_run, text
from tests.flows.support import Module, create_workflow


async def test_workflows_page_shows_run_strip_rate_and_sparkline(server: RunningServer) -> None:
    module = await Module.online(server, "striper")
    busy = await create_workflow(server, on_demand([module.hash], name="wf-strip"))
    idle = await create_workflow(server, on_demand([module.hash], name="wf-idle"))
    ran = [
        await succeed_run(server, module, busy),
        await fail_run(server, module, busy, error="nope"),
        await succeed_run(server, module, busy),
        await succeed_run(server, module, busy),
    ]

    page = text(await server.fetch("/workflows"))
    card = page[page.index(f'id="workflow-{busy}"'):page.index(f'id="workflow-{idle}"')]
    squares = re.findall(r'<a class="strip-run strip-run--(\w+)" href="/history/(\w+)" title="([^"]+)" aria-label="([^"]+)"', card)
    assert [run_id for _tone, run_id, _t, _a in squares] == ran  # oldest left, newest right
    assert [tone for tone, *_ in squares] == ["ok", "bad", "ok", "ok"]  # the status badges' tones
    assert squares[1][2].startswith("Failure · ") and squares[1][2] == squares[1][3]
    assert re.search(r"Failure · \d{4}-\d\d-\d\d \d\d:\d\d", squares[1][2])
    assert "75% succeeded" in card
    points = re.search(r'<svg class="sparkline"[^>]*role="img"[^>]*>.*?<polyline points="([^"]+)"', card, re.S)
    assert points is not None and len(points.group(1).split()) == 4
    assert "<script" not in card

    idle_card = page[page.index(f'id="workflow-{idle}"'):]
    idle_card = idle_card[:idle_card.index("</article>")]
    assert "strip-run" not in idle_card and "sparkline" not in idle_card and "No runs yet." in idle_card

    zh = text(await server.fetch("/workflows", headers={"Cookie": "lang=zh_CN"}))
    assert "成功率 75%" in zh and "最近运行" in zh and "wf-strip 的最近 4 次运行，从旧到新" in zh
