"""Data requirements over the real server: typed details on registration, the workflow
`order` field (a data-ordered workflow refuses a cycle or an ambiguous producer with a
400 naming it, and warns about unmet inputs), and `GET /workflow/<id>/plan`."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.conftest import RunningServer
from tests.flows.support import create_workflow, register, workflow_body


async def register_with(
    server: RunningServer, name: str, inputs: list[Any] | None = None, outputs: list[Any] | None = None
) -> str:
    """Register with JSON-encoded requirements (as the seed's clients send them); returns the hash."""
    status, env = await server.api(
        "/module/register", "POST",
        json_body={"name": name, "input_data": json.dumps(inputs or []), "output_data": json.dumps(outputs or [])},
    )
    assert status == 200, env
    return env["result"]["hash"]


async def pipeline(server: RunningServer) -> dict[str, str]:
    """fetch -> features -> model -> publish, plus the model's optional and external inputs."""
    return {
        "fetch": await register_with(server, "fetch", [{"name": "calendar"}], [{"name": "prices", "fields": ["close"]}]),
        "features": await register_with(server, "features", [{"name": "prices"}], [{"name": "features"}]),
        "model": await register_with(
            server, "model", [{"name": "features"}, {"name": "holidays", "optional": True}], [{"name": "forecast"}]
        ),
        "publish": await register_with(server, "publish", [{"name": "forecast"}]),
    }


async def workflow_docs(server: RunningServer) -> list[dict[str, Any]]:
    return [d async for d in server.ctx.docs["workflows"].find({}, {"_id": 0}).sort("workflow_id", 1)]


async def test_typed_details_are_stored_and_bad_ones_refused(server: RunningServer) -> None:
    details = [{"name": "prices", "fields": ["open", "close"], "frequency": "1d", "source": "db.prices",
                "optional": True, "description": "daily", "type": "table"}]
    module_hash = await register_with(server, "typed", details, [{"name": "signal"}])
    status, env = await server.api(f"/module/{module_hash}")
    assert status == 200 and env["result"]["input_data"] == details
    assert env["result"]["output_data"] == [{"name": "signal"}]

    before = [d async for d in server.ctx.docs["modules"].find({}, {"_id": 0})]
    for raw, names in (
        ([{"name": "prices", "optional": "yes"}], "input_data[0].optional"),
        ([{"name": "prices", "fields": ["close", 1]}], "input_data[0].fields[1]"),
        ([{"name": "a"}, {"name": "a"}], "input_data[1].name"),
    ):
        status, env = await server.api(
            "/module/register", "POST", json_body={"name": "typed", "input_data": json.dumps(raw)}
        )
        assert status == 400 and env["code"] == "4000", env
        assert env["result"] == {"field": "input_data"} and env["message"].startswith(names), env
    assert [d async for d in server.ctx.docs["modules"].find({}, {"_id": 0})] == before


async def test_order_defaults_to_parallel_and_keeps_the_seed_create_shape(server: RunningServer) -> None:
    hashes = await pipeline(server)
    status, env = await server.api("/workflow/create", "POST", json_body=workflow_body("seed", list(hashes.values())))
    assert status == 200 and set(env["result"]) == {"id", "workflow_id", "name"}, env
    wid = env["result"]["workflow_id"]
    status, env = await server.api(f"/workflow/{wid}")
    assert env["result"]["order"] == "parallel"
    # Parallel workflows are not checked: a cycle is allowed (everything is sent at once).
    p = await register_with(server, "cyc-p", [{"name": "b"}], [{"name": "a"}])
    q = await register_with(server, "cyc-q", [{"name": "a"}], [{"name": "b"}])
    await create_workflow(server, workflow_body("parallel-cycle", [p, q], order="parallel"))


async def test_data_order_stores_returns_and_warns_about_unmet_inputs(server: RunningServer) -> None:
    hashes = await pipeline(server)
    body = workflow_body("chain", [hashes[k] for k in ("publish", "model", "features", "fetch")], order="data")
    status, env = await server.api("/workflow/create", "POST", json_body=body)
    assert status == 200, env
    result = env["result"]
    assert set(result) == {"id", "workflow_id", "name", "warnings"}
    # Only the required external input warns; the optional one ("holidays") does not.
    assert len(result["warnings"]) == 1, result
    assert "fetch (step 3)" in result["warnings"][0] and "'calendar'" in result["warnings"][0]
    wid = result["workflow_id"]

    status, env = await server.api(f"/workflow/{wid}")
    assert env["result"]["order"] == "data"
    [doc] = await workflow_docs(server)
    assert doc["order"] == "data"

    status, env = await server.api(f"/workflow/{wid}/plan")
    assert status == 200 and env["code"] == "2000", env
    plan = env["result"]
    assert plan["workflow_id"] == wid and plan["order"] == "data"
    assert plan["stages"] == [[3], [2], [1], [0]]
    assert {(e["from"], e["to"], e["data"]) for e in plan["edges"]} == {
        (3, 2, "prices"), (2, 1, "features"), (1, 0, "forecast")
    }
    assert [(x["module_name"], x["data"], x["optional"]) for x in plan["external_inputs"]] == [
        ("model", "holidays", True), ("fetch", "calendar", False)
    ]
    assert plan["conflicts"] == [] and plan["unresolved"] == []
    assert [s["module_name"] for s in plan["steps"]] == ["publish", "model", "features", "fetch"]
    assert plan["steps"][3]["outputs"] == [{"name": "prices", "fields": ["close"]}]
    assert plan["steps"][0]["upstream"] == [1]
    # The plan names modules, never their hashes (WebSocket credentials).
    assert not any(h in json.dumps(plan) for h in hashes.values())


async def test_data_order_refuses_a_cycle_naming_it_and_changes_nothing(server: RunningServer) -> None:
    p = await register_with(server, "cyc-p", [{"name": "b"}], [{"name": "a"}])
    q = await register_with(server, "cyc-q", [{"name": "a"}], [{"name": "b"}])
    status, env = await server.api("/workflow/create", "POST", json_body=workflow_body("c", [p, q], order="data"))
    assert status == 400 and env["code"] == "4000" and env["result"] == {"field": "order"}, env
    assert "cycle: cyc-p (step 0) -[a]-> cyc-q (step 1) -[b]-> cyc-p (step 0)" in env["message"]
    assert await workflow_docs(server) == []


async def test_data_order_refuses_an_ambiguous_producer(server: RunningServer) -> None:
    a = await register_with(server, "fetch-a", outputs=[{"name": "prices"}])
    b = await register_with(server, "fetch-b", outputs=[{"name": "prices"}])
    c = await register_with(server, "model", inputs=[{"name": "prices"}])
    status, env = await server.api("/workflow/create", "POST", json_body=workflow_body("amb", [a, b, c], order="data"))
    assert status == 400 and env["result"] == {"field": "order"}, env
    assert "'prices' is produced by fetch-a (step 0), fetch-b (step 1)" in env["message"]
    assert "model (step 2)" in env["message"]
    assert await workflow_docs(server) == []


@pytest.mark.parametrize("value", ["sequential", "", 1, None, ["data"], {"$ne": "x"}])
async def test_bad_order_values_are_refused(server: RunningServer, value: Any) -> None:
    module_hash = await register(server)
    status, env = await server.api("/workflow/create", "POST", json_body=workflow_body(modules=[module_hash], order=value))
    assert status == 400 and env["code"] == "4000" and env["result"] == {"field": "order"}, env
    assert "order" in env["message"]
    assert await workflow_docs(server) == []


async def test_update_to_data_order_is_checked_and_warns(server: RunningServer) -> None:
    p = await register_with(server, "cyc-p", [{"name": "b"}], [{"name": "a"}])
    q = await register_with(server, "cyc-q", [{"name": "a"}], [{"name": "b"}])
    wid = await create_workflow(server, workflow_body("upd", [p, q]))
    [before] = await workflow_docs(server)

    status, env = await server.api(f"/workflow/{wid}", "PUT", json_body={"order": "data"})
    assert status == 400 and env["result"] == {"field": "order"} and "cycle" in env["message"], env
    assert await workflow_docs(server) == [before]

    # Dropping one module breaks the cycle: accepted, and the now-external input warns.
    status, env = await server.api(
        f"/workflow/{wid}", "PUT", json_body={"order": "data", "execute_modules": [{"module_hash": q, "args": {}}]}
    )
    assert status == 200, env
    assert env["result"]["order"] == "data"
    assert env["result"]["warnings"] == ["cyc-q (step 0) needs 'a', which no module in this workflow produces"]

    # Back to parallel: no warnings key, the seed's detail shape plus our fields.
    status, env = await server.api(f"/workflow/{wid}", "PUT", json_body={"order": "parallel"})
    assert status == 200 and env["result"]["order"] == "parallel" and "warnings" not in env["result"]


async def test_plan_of_a_parallel_workflow_reports_conflicts_without_refusing(server: RunningServer) -> None:
    p = await register_with(server, "cyc-p", [{"name": "b"}], [{"name": "a"}])
    q = await register_with(server, "cyc-q", [{"name": "a"}], [{"name": "b"}])
    r = await register_with(server, "after", [{"name": "b"}])
    wid = await create_workflow(server, workflow_body("show", [p, q, r]))
    status, env = await server.api(f"/workflow/{wid}/plan")
    assert status == 200, env
    plan = env["result"]
    assert plan["order"] == "parallel" and plan["stages"] == [] and plan["unresolved"] == [0, 1, 2]
    [conflict] = plan["conflicts"]
    assert conflict["kind"] == "cycle" and conflict["modules"] == ["cyc-p", "cyc-q"] and conflict["data"] == ["a", "b"]


async def test_plan_follows_re_registration_and_unknown_workflow_is_404(server: RunningServer) -> None:
    producer = await register_with(server, "prod", outputs=[{"name": "x"}])
    consumer = await register_with(server, "cons", inputs=[{"name": "x"}])
    wid = await create_workflow(server, workflow_body(f"re-{uuid.uuid4().hex[:6]}", [consumer, producer], order="data"))
    status, env = await server.api(f"/workflow/{wid}/plan")
    assert env["result"]["stages"] == [[1], [0]]
    await register_with(server, "prod", outputs=[{"name": "y"}])  # no longer makes x
    status, env = await server.api(f"/workflow/{wid}/plan")
    assert env["result"]["stages"] == [[0, 1]]
    assert [x["data"] for x in env["result"]["external_inputs"]] == ["x"]

    status, env = await server.api("/workflow/99999/plan")
    assert status == 404 and env["code"] == "4040" and env["result"] is None
    status, env = await server.api(f"/workflow/{wid}/plan", auth=None)
    assert status == 401 and env["code"] == "4010"
