"""The run page of a data-ordered run: the plan as an inline SVG (no script needed),
each node in its step's status colour, outputs in the steps table; a parallel run's
page has no graph. Module pages list registered requirements. The workflow form sets
`order`, and a data-ordered workflow's unmet inputs and conflicts show on the
workflows list and its form."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import urlencode

from tests.conftest import RunningServer
from tests.dashboard.test_dashboard import _need_chromium, admin_page
from tests.flows.support import create_workflow, execute, wait_run, workflow_body
from tests.flows.test_data_order_api import register_with
from tests.flows.test_data_order_runs import chain, result_with_output


def nodes(body: str) -> dict[str, tuple[str, str]]:
    """data-node -> (tone class, data-status) of every node in the page's SVG."""
    found = re.findall(r'<g class="node node--(\w+)" data-node="(\d+)" data-status="(\w+)">', body)
    return {index: (tone, status) for tone, index, status in found}


async def test_run_page_draws_the_plan_in_status_colours(server: RunningServer) -> None:
    fetch, features, model = await chain(server)
    wid = await create_workflow(server, workflow_body(modules=[fetch.hash, features.hash, model.hash], order="data"))
    run_id = await execute(server, wid)
    assert await result_with_output(fetch, await fetch.recv_execute(), {"path": "/p<1>"}) == "receive result"

    body = (await server.fetch(f"/history/{run_id}")).body.decode()
    assert body.count("<svg") == 1 and "cdn" not in body.lower()
    assert nodes(body) == {"0": ("ok", "success"), "1": ("info", "sent"), "2": ("info", "pending")}
    assert body.count('<path class="edge"') == 2
    assert "<title>prices</title>" in body and "<title>features</title>" in body
    assert "{&quot;path&quot;: &quot;/p&lt;1&gt;&quot;}" in body  # the output, escaped

    assert await features.result(await features.recv_execute(), "failure", error="no data") == "receive result"
    await wait_run(server, run_id)
    body = (await server.fetch(f"/history/{run_id}")).body.decode()
    assert nodes(body) == {"0": ("ok", "success"), "1": ("bad", "failure"), "2": ("bad", "upstream_failed")}
    assert "Upstream failed" in body

    parallel = await create_workflow(server, workflow_body(modules=[fetch.hash, features.hash]))
    other = await execute(server, parallel)
    body = (await server.fetch(f"/history/{other}")).body.decode()
    assert "<svg" not in body and 'data-step="1"' in body


async def test_module_page_lists_registered_inputs_and_outputs(server: RunningServer) -> None:
    _fetch, features, _model = await chain(server)
    status, env = await server.api(f"/module/{features.hash}")
    body = (await server.fetch(f"/modules/{env['result']['module_id']}")).body.decode()
    inputs, outputs = body.split(">Inputs<", 1)[1].split(">Outputs<", 1)
    assert "<td>prices</td>" in inputs and "<td>features</td>" in outputs.split("Used by workflows")[0]

    # Typed details are listed beside each name, escaped.
    typed = await register_with(server, "typed", [{"name": "bars", "fields": ["open", "close"], "frequency": "1d",
                                                   "source": "db.<bars>", "optional": True}], [{"name": "signal"}])
    status, env = await server.api(f"/module/{typed}")
    raw = (await server.fetch(f"/modules/{env['result']['module_id']}")).body.decode()
    assert "db.<bars>" not in raw
    inputs, outputs = html.unescape(raw).split(">Inputs<", 1)[1].split(">Outputs<", 1)
    assert '<td>bars</td><td><code>{"fields": ["open", "close"], "frequency": "1d", "source": "db.<bars>", ' \
           '"optional": true}</code></td>' in inputs
    assert "<td>signal</td><td><code>{}</code></td>" in outputs


async def test_order_is_a_form_field_and_unmet_inputs_show_on_the_list_and_the_form(server: RunningServer) -> None:
    fetch = await register_with(server, "fetch", [{"name": "calendar"}], [{"name": "prices"}])
    model = await register_with(server, "model", [{"name": "prices"}, {"name": "holidays", "optional": True}], [])
    ids = {env["result"]["hash"]: env["result"]["module_id"]
           for env in [(await server.api(f"/module/{h}"))[1] for h in (fetch, model)]}
    form = [("name", "chain-form"), ("execute_cron_list", "0 9 * * 1-5"), ("enable", "1"),
            ("execute_shift_time", "0"), ("execute_shift_unit", "s"), ("timezone", "UTC"), ("order", "data"),
            ("module", str(ids[model])), ("args", "{}"), ("module", str(ids[fetch])), ("args", "{}"),
            ("action", "save")]
    saved = await server.fetch("/workflows/new", "POST", body=urlencode(form))
    assert saved.code == 200  # followed the 303 to /workflows
    status, env = await server.api("/workflow/list")
    [workflow] = [w for w in env["result"] if w["name"] == "chain-form"]
    assert workflow["order"] == "data"
    wid = workflow["workflow_id"]

    unmet = "fetch (step 1) needs 'calendar', which no module in this workflow produces"
    listing = html.unescape(saved.body.decode())
    row = listing.split(f'id="workflow-{wid}"', 1)[1].split("</article>", 1)[0]
    assert 'data-order="data"' in row and "By data" in row
    assert "data-plan-notice" in row and unmet in row
    assert "holidays" not in row  # optional inputs are not warned about

    edit = html.unescape((await server.fetch(f"/workflows/{wid}/edit")).body.decode())
    assert '<option value="data" selected>' in edit and unmet in edit
    zh = (await server.fetch(f"/workflows/{wid}/edit", headers={"Cookie": "lang=zh_CN"})).body.decode()
    assert "未满足的输入" in zh and "按数据" in zh

    # A form save of other fields keeps the order; a parallel workflow has no notice.
    renamed = await server.fetch(f"/workflows/{wid}/edit", "POST",
                                 body=urlencode([("name", "chain-renamed") if k == "name" else (k, v) for k, v in form]))
    assert renamed.code == 200
    status, env = await server.api(f"/workflow/{wid}")
    assert env["result"]["name"] == "chain-renamed" and env["result"]["order"] == "data"
    parallel = [(k, "parallel") if k == "order" else ("name", "par-form") if k == "name" else (k, v) for k, v in form]
    listing = (await server.fetch("/workflows/new", "POST", body=urlencode(parallel))).body.decode()
    status, env = await server.api("/workflow/list")
    [par] = [w for w in env["result"] if w["name"] == "par-form"]
    assert par["order"] == "parallel"
    row = listing.split(f'id="workflow-{par["workflow_id"]}"', 1)[1].split("</article>", 1)[0]
    assert 'data-order="parallel"' in row and "data-plan-notice" not in row


async def test_form_refuses_a_cycle_at_the_order_field(server: RunningServer) -> None:
    p = await register_with(server, "cyc-p", [{"name": "b"}], [{"name": "a"}])
    q = await register_with(server, "cyc-q", [{"name": "a"}], [{"name": "b"}])
    ids = [(await server.api(f"/module/{h}"))[1]["result"]["module_id"] for h in (p, q)]
    form = [("name", "cyc-form"), ("execute_cron_list", "0 9 * * *"), ("enable", "1"), ("timezone", "UTC"),
            ("order", "data"), ("module", str(ids[0])), ("args", "{}"), ("module", str(ids[1])), ("args", "{}"),
            ("action", "save")]
    response = await server.fetch("/workflows/new", "POST", body=urlencode(form))
    assert response.code == 400
    body = response.body.decode()
    assert 'aria-invalid="true" aria-describedby="err-order"' in body and 'id="err-order"' in body
    assert "cycle: cyc-p (step 0) -[a]-> cyc-q (step 1)" in html.unescape(body)
    assert '<details class="advanced" open>' in body
    status, env = await server.api("/workflow/list")
    assert env["result"] == []


async def test_plan_nodes_recolour_live_in_chromium(server: RunningServer) -> None:
    """live.js recolours the SVG's nodes from /dashboard/live as steps move, with no reload."""
    _need_chromium()
    from playwright.async_api import expect

    fetch, features, model = await chain(server)
    wid = await create_workflow(server, workflow_body(modules=[fetch.hash, features.hash, model.hash], order="data"))
    run_id = await execute(server, wid)
    first = await fetch.recv_execute()
    problems: list[str] = []
    async with admin_page(problems) as page:
        await page.goto(f"{server.base_url}/history/{run_id}")
        await expect(page.locator("#live-state")).to_have_attribute("data-state", "open", timeout=10_000)
        await page.evaluate("window.__notReloaded = true")

        def node(index: int) -> Any:
            return page.locator(f'.plan-graph [data-node="{index}"]')

        await expect(node(0)).to_have_attribute("data-status", "sent")
        await expect(node(1)).to_have_attribute("data-status", "pending")

        assert await result_with_output(fetch, first, "p") == "receive result"
        await expect(node(0)).to_have_attribute("data-status", "success", timeout=5_000)
        await expect(node(0)).to_have_attribute("class", "node node--ok")
        await expect(node(1)).to_have_attribute("data-status", "sent", timeout=5_000)

        assert await features.result(await features.recv_execute(), "failure", error="x") == "receive result"
        await expect(node(1)).to_have_attribute("class", "node node--bad", timeout=5_000)
        await expect(node(2)).to_have_attribute("data-status", "upstream_failed", timeout=5_000)
        await expect(node(2)).to_have_attribute("class", "node node--bad")
        assert await page.evaluate("window.__notReloaded === true")
    assert not problems, problems
    await model.no_message(0.1)
