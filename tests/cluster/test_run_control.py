"""Run control across the cluster: two instances as separate processes on one Redis,
MariaDB and document server. Every run here is owned by c1 and its module is
connected to c2 only, so each control crosses instances."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.conftest import ADMIN, basic_auth
from tornado_sched.client import ModuleClient, StepContext

from .conftest import TOKEN, ClusterHarness, running_cluster
from .test_cluster import create_workflow, run_status, start

pytestmark = [pytest.mark.slow, pytest.mark.mariadb]

OWNER, OTHER = "c1", "c2"


@pytest.fixture(scope="module")
async def pair(tmp_path_factory: pytest.TempPathFactory, mariadb_admin_url: str) -> AsyncIterator[ClusterHarness]:
    async with running_cluster(tmp_path_factory.mktemp("control"), mariadb_admin_url, (OWNER, OTHER)) as harness:
        yield harness


class Worker:
    """A module on c2 whose handler reports progress and a log line, then waits to be
    released (or cancelled)."""

    def __init__(self, cluster: ClusterHarness, name: str) -> None:
        self.release = asyncio.Event()
        self.cancelled: list[str] = []
        self.client = ModuleClient(
            cluster.urls(OTHER), name, self.handle, token=TOKEN,
            ping_interval=1, ping_timeout=1, backoff_base=0.2, backoff_max=1.0,
        )

    async def handle(self, args: dict[str, Any], meta: dict[str, Any], step: StepContext) -> dict[str, Any]:
        step.progress(50, "halfway")
        step.log(f"working on {args.get('n')}")
        if args.get("quick"):
            # Reports sent just before the result must not be lost on the way.
            step.progress(100, "done")
            step.log("finished")
            return {"n": args.get("n")}
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(str(meta.get("run_id")))
            raise
        return {"n": args.get("n")}


async def live_socket(cluster: ClusterHarness, on: str) -> WebSocketClientConnection:
    return await websocket_connect(HTTPRequest(
        cluster[on].url.replace("http", "ws") + "/dashboard/live", headers={"Authorization": basic_auth(*ADMIN)},
    ))


async def step_report(live: WebSocketClientConnection, run_id: str) -> dict[str, Any]:
    while True:
        message = json.loads(await live.read_message())
        if message.get("type") == "step" and message["run_id"] == run_id and message["progress"]:
            return message


async def reported(cluster: ClusterHarness, on: str, run_id: str, line: str) -> dict[str, Any] | None:
    step = (await run_status(cluster, on, run_id))["steps"][0]
    progress = step.get("progress") or {}
    return step if progress.get("percent") == 50 and line in step["log"] else None


@pytest.mark.timeout(120)
async def test_cancel_and_reports_through_the_other_instance(pair: ClusterHarness) -> None:
    worker = Worker(pair, "worker")
    await start(worker.client)
    workflow_id = await create_workflow(pair, OWNER, "held-by-c1", [(worker.client.module_hash, {"n": 1})])
    live = await live_socket(pair, OTHER)
    try:
        _c, data = await pair.call(OWNER, "POST", f"/workflow/{workflow_id}/execute")
        run_id = data["result"]["run_id"]

        # Progress and log frames arrive on c2, which does not hold the run: they
        # reach the owner, so GET shows them on both instances while the run is open.
        for name in (OWNER, OTHER):
            step = await pair.wait_for(lambda n=name: reported(pair, n, run_id, "working on 1"),
                                       what=f"progress on {name}", timeout=15)
            assert step["status"] == "sent" and step["progress"]["message"] == "halfway", step
        # So does the run page of the instance that does not own the run.
        page = await AsyncHTTPClient().fetch(pair[OTHER].url + f"/history/{run_id}",
                                             headers={"Authorization": basic_auth(*ADMIN)})
        assert "halfway" in page.body.decode() and "working on 1" in page.body.decode()
        # c2's dashboard feed carries them: c2 only relayed the frames, the owner
        # recorded them and shared the step's progress with the other instances.
        report = await asyncio.wait_for(step_report(live, run_id), 10)
        assert report["progress"]["percent"] == 50
    finally:
        live.close()

    # Cancel asked of c2: forwarded to c1, which sends `cancel` to the module on c2.
    _c, data = await pair.call(OTHER, "POST", f"/runs/{run_id}/cancel")
    run = data["result"]
    assert run["status"] == "cancelled" and run["instance"] == OWNER, run
    assert run["reason"] == f"cancelled by {ADMIN[0]}"
    assert run["steps"][0]["status"] == "cancelled"
    await pair.wait_for(lambda: _true(worker.cancelled == [run_id]), what="the module's cancel", timeout=10)
    for name in (OWNER, OTHER):
        assert (await run_status(pair, name, run_id))["status"] == "cancelled", name
    # Audited once, by the instance the operator used.
    _c, data = await pair.call(OWNER, "GET", "/audit?page_size=200")
    cancels = [e for e in data["result"]["entries"] if e["action"] == "cancel" and e["target"] == f"run:{run_id}"]
    assert len(cancels) == 1, cancels
    # Closed now: both instances say so.
    for name in (OWNER, OTHER):
        _c, data = await pair.call(name, "POST", f"/runs/{run_id}/cancel", expect=409)
        assert "already closed (cancelled)" in data["message"], data
    # The module answered the cancel with a failure; the run stays cancelled.
    await asyncio.sleep(1)
    assert (await run_status(pair, OWNER, run_id))["status"] == "cancelled"

    # Re-run from the instance that did not own it: a new run there, linked.
    worker.release.set()
    _c, data = await pair.call(OTHER, "POST", f"/runs/{run_id}/rerun", {"steps": "all"})
    rerun = data["result"]
    assert rerun["rerun_of"] == run_id and rerun["trigger"] == "rerun" and rerun["instance"] == OTHER, rerun
    done = await pair.wait_for(lambda: _finished(pair, OWNER, rerun["run_id"]), what="the re-run", timeout=15)
    assert done["status"] == "success" and done["rerun_of"] == run_id, done
    await worker.client.stop(grace=1)
    # Nothing was dropped at the relay's bound, and /metrics says so.
    metrics = await AsyncHTTPClient().fetch(pair[OTHER].url + "/metrics",
                                            headers={"Authorization": basic_auth(*ADMIN)})
    assert "tsched_cluster_step_reports_dropped_total 0.0" in metrics.body.decode()


@pytest.mark.timeout(120)
async def test_reports_just_before_the_result_are_kept(pair: ClusterHarness) -> None:
    worker = Worker(pair, "quick-worker")
    await start(worker.client)
    workflow_id = await create_workflow(pair, OWNER, "quick", [(worker.client.module_hash, {"n": 2, "quick": True})])
    _c, data = await pair.call(OWNER, "POST", f"/workflow/{workflow_id}/execute")
    run_id = data["result"]["run_id"]
    run = await pair.wait_for(lambda: _finished(pair, OTHER, run_id), what="the run", timeout=15)
    assert run["status"] == "success", run
    for name in (OWNER, OTHER):
        step = (await run_status(pair, name, run_id))["steps"][0]
        assert step["progress"] == {"percent": 100, "message": "done"}, (name, step)
        assert step["log"] == ["working on 2", "finished"], (name, step)
    await worker.client.stop(grace=1)


async def _finished(cluster: ClusterHarness, on: str, run_id: str) -> dict[str, Any] | None:
    run = await run_status(cluster, on, run_id)
    return run if run["status"] != "running" else None


async def _true(value: bool) -> bool:
    return value



@pytest.mark.timeout(120)
async def test_cancel_after_the_owner_died(pair: ClusterHarness) -> None:
    """kill -9 of the owner: until it is known dead the cancel is 503 (it may be
    alive); then the survivor owns the run (takeover) and cancels it itself."""
    worker = Worker(pair, "orphan-worker")
    await start(worker.client)
    workflow_id = await create_workflow(pair, OWNER, "orphaned", [(worker.client.module_hash, {"n": 3})])
    _c, data = await pair.call(OWNER, "POST", f"/workflow/{workflow_id}/execute")
    run_id = data["result"]["run_id"]
    await pair.wait_for(lambda: reported(pair, OTHER, run_id, "working on 3"), what="the step running", timeout=15)
    await pair[OWNER].kill()

    codes: list[int] = []

    async def cancelled() -> dict[str, Any] | None:
        code, data = await pair.call(OTHER, "POST", f"/runs/{run_id}/cancel", expect=None)
        codes.append(code)
        assert code in (200, 503), (code, data)
        return data["result"] if code == 200 else None

    run = await pair.wait_for(cancelled, what="the cancel once the owner is known dead", timeout=30, interval=0.5)
    assert run["status"] == "cancelled" and run["instance"] == OTHER, run
    assert f"after instance {OWNER} was lost" not in (run["reason"] or "")  # the operator's reason wins
    await pair.wait_for(lambda: _true(worker.cancelled == [run_id]), what="the module's cancel", timeout=10)
    await worker.client.stop(grace=1)
