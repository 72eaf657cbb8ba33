"""The run page of a data-ordered run: the plan as an inline SVG (no script needed),
each node in its step's status colour, outputs in the steps table; a parallel run's
page has no graph. Module pages list registered requirements."""

from __future__ import annotations

import re

from tests.conftest import RunningServer
from tests.flows.support import create_workflow, execute, wait_run, workflow_body
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
