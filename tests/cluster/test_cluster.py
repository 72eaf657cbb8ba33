"""Three instances as separate processes on one Redis, MariaDB and document server.

The tests run in order on one cluster (module scope): an every-minute workflow is
created first and its execution log is checked last, after one instance was killed
with SIGKILL mid-run and restarted, and another killed just before a tick and
restarted after it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

import pytest
import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from handlers.auth import SESSION_COOKIE
from tests.conftest import ADMIN, basic_auth
from tests.support.httpauth import digest_header
from tornado_sched.client import ModuleClient, ModuleReplaced
from tornado_sched.cluster import BROADCAST
from tornado_sched.tables import execution_log, notification_outbox, runs

from .conftest import BLOCK_AFTER, BLOCK_SECONDS, REDIS_URL, ROOT, TOKEN, ClusterHarness

pytestmark = [pytest.mark.slow, pytest.mark.mariadb]

state: dict[str, Any] = {}


def module(urls: list[str], name: str, handler: Any = None, **kwargs: Any) -> ModuleClient:
    async def echo(args: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        if args.get("sleep"):
            await asyncio.sleep(float(args["sleep"]))
        if args.get("fail"):
            raise RuntimeError("asked to fail")
        return {"echo": args}

    kwargs.setdefault("backoff_base", 0.2)
    kwargs.setdefault("backoff_max", 1.0)
    return ModuleClient(urls, name, handler or echo, token=TOKEN, ping_interval=1, ping_timeout=1, **kwargs)


tasks: dict[int, asyncio.Task[None]] = {}


async def start(client: ModuleClient) -> ModuleClient:
    tasks[id(client)] = client.start()
    await asyncio.wait_for(client.wait_connected(), 15)
    return client


async def create_workflow(cluster: ClusterHarness, on: str, name: str, steps: list[tuple[str, dict[str, Any]]],
                          **fields: Any) -> int:
    body = {
        "name": name, "description": "cluster test", "enable": False,
        "execute_cron_list": ["0 3 * * *"], "execute_shift_time": 0, "execute_shift_unit": "s",
        "execute_modules": [{"module_hash": h, "args": a} for h, a in steps],
        "timeout_seconds": 120,
    }
    body.update(fields)
    _code, data = await cluster.call(on, "POST", "/workflow/create", body)
    return int(data["result"]["workflow_id"])


async def run_status(cluster: ClusterHarness, on: str, run_id: str) -> dict[str, Any]:
    _code, data = await cluster.call(on, "GET", f"/runs/{run_id}")
    return data["result"]


async def test_every_minute_workflow_is_scheduled_first(cluster: ClusterHarness) -> None:
    ticker = await start(module(cluster.urls("i3", "i1", "i2"), "ticker"))
    state["ticker"] = ticker
    state["tick_workflow"] = await create_workflow(
        cluster, "i1", "every-minute", [(ticker.module_hash, {})],
        enable=True, execute_cron_list=["* * * * *"],
    )
    state["tick_created"] = time.time()
    # Every instance schedules it (each would fire it without the claim).
    for name in ("i1", "i2", "i3"):
        _code, data = await cluster.call(name, "GET", "/scheduler/jobs")
        jobs = data["result"] if isinstance(data["result"], list) else data["result"].get("jobs", [])
        assert any(j.get("workflow_id") == state["tick_workflow"] for j in jobs), (name, data)


async def test_presence_commands_and_results_across_instances(cluster: ClusterHarness) -> None:
    received: list[str] = []
    alpha = await start(module(cluster.urls("i1", "i2", "i3"), "alpha", on_message=received.append))
    beta = await start(module(cluster.urls("i2", "i3", "i1"), "beta"))
    state["alpha"], state["beta"] = alpha, beta

    # Every instance lists every module with the instance that holds it.
    for name in ("i1", "i2", "i3"):
        seen = await cluster.wait_for(
            lambda n=name: _holds(cluster, n, {"alpha": "i1", "beta": "i2"}), what=f"presence on {name}"
        )
        assert seen

    # send_message through an instance that holds neither module.
    await cluster.call("i3", "POST", "/module/send_message", {"module_hash": alpha.module_hash, "message": "hi from i3"})
    await cluster.wait_for(lambda: _true(received == ["hi from i3"]), what="the routed message", timeout=5)
    # Unknown module: 404; known but offline nowhere: 409, as in one process.
    await cluster.call("i3", "POST", "/module/send_message", {"module_hash": "0" * 40, "message": "x"}, expect=404)
    gamma = module(cluster.urls("i1"), "gamma")
    await gamma.register()
    await cluster.call("i2", "POST", "/module/send_message", {"module_hash": gamma.module_hash, "message": "x"}, expect=409)

    # Each instance's log lines carry its name (logs are often read merged).
    assert "INFO i1 [tornado_sched.cluster] instance 'i1' joined the cluster" in cluster["i1"].log_text()
    # The dashboard of an instance that holds neither shows where each one is.
    page = await AsyncHTTPClient().fetch(cluster["i3"].url + "/modules", headers={"Authorization": basic_auth(*ADMIN)})
    assert "@ i1" in page.body.decode() and "@ i2" in page.body.decode()
    # Its live feed sees runs of other instances.
    live = await websocket_connect(HTTPRequest(
        cluster["i3"].url.replace("http", "ws") + "/dashboard/live", headers={"Authorization": basic_auth(*ADMIN)},
    ))

    # A run started on i3 with steps on i1 and i2: results come back to i3.
    workflow_id = await create_workflow(
        cluster, "i3", "across", [(alpha.module_hash, {"n": 1}), (beta.module_hash, {"n": 2})]
    )
    _code, data = await cluster.call("i3", "POST", f"/workflow/{workflow_id}/execute")
    run_id = data["result"]["run_id"]
    run = await cluster.wait_for(lambda: _finished(cluster, "i3", run_id), what="the run to finish", timeout=15)
    assert run["status"] == "success", run
    assert run["instance"] == "i3"
    # Each module's `receive result` came from the instance it is connected to, once
    # the owner had stored the result.
    await cluster.wait_for(
        lambda: _true(alpha.results_acknowledged == 1 and beta.results_acknowledged == 1), what="acks", timeout=5
    )
    # Any instance shows the stored run.
    assert (await run_status(cluster, "i1", run_id))["status"] == "success"

    # A run owned by i1 reaches the dashboard open on i3.
    _code, data = await cluster.call("i1", "POST", f"/workflow/{workflow_id}/execute")
    other_run = data["result"]["run_id"]

    async def seen_on_i3() -> None:
        while True:
            message = json.loads(await live.read_message())
            if message.get("type") == "run" and message["run"]["run_id"] == other_run:
                return

    await asyncio.wait_for(seen_on_i3(), 10)
    live.close()

    # Each manual execute ran once, on the instance that received it (no claim, and
    # no other instance's scheduler saw it).
    await cluster.wait_for(lambda: _finished(cluster, "i1", other_run), what="the second run", timeout=15)
    engine = create_async_engine(cluster.sql_url)
    try:
        async with engine.connect() as conn:
            started = (await conn.execute(
                select(runs.c.run_id, runs.c.instance, runs.c.trigger).where(runs.c.workflow_id == workflow_id)
            )).all()
    finally:
        await engine.dispose()
    assert sorted((r.run_id, r.instance, r.trigger) for r in started) == sorted(
        [(run_id, "i3", "manual"), (other_run, "i1", "manual")]
    ), started

    # A module online nowhere in the cluster: its step is `offline`, as in one process.
    nowhere = await create_workflow(cluster, "i2", "nowhere", [(gamma.module_hash, {})])
    _code, data = await cluster.call("i2", "POST", f"/workflow/{nowhere}/execute")
    run = await cluster.wait_for(lambda: _finished(cluster, "i3", data["result"]["run_id"]), what="offline run")
    assert [s["status"] for s in run["steps"]] == ["offline"], run


async def test_a_fan_out_is_shared_as_merged_updates_not_one_broadcast_per_result(cluster: ClusterHarness) -> None:
    """A 40-module run owned by i1, watched on i3's dashboard: i1 shares the run's
    updates merged (at most one per REPORT_SECONDS; read off Redis) instead of
    broadcasting every step for every result, and i3's page still ends with every
    step's final state."""
    count = 40
    clients = [await start(module(cluster.urls("i1"), f"fan-{i:02d}")) for i in range(count)]
    redis = aioredis.Redis.from_url(REDIS_URL)
    pubsub = redis.pubsub()
    await pubsub.subscribe(BROADCAST)
    shared: list[dict[str, Any]] = []

    async def overhear() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                shared.extend(m for m in json.loads(message["data"]) if m.get("op") == "event")

    listener = asyncio.ensure_future(overhear())
    try:
        workflow_id = await create_workflow(cluster, "i1", "fan-out", [(c.module_hash, {}) for c in clients])
        live = await websocket_connect(HTTPRequest(
            cluster["i3"].url.replace("http", "ws") + "/dashboard/live", headers={"Authorization": basic_auth(*ADMIN)},
        ))
        try:
            _code, data = await cluster.call("i1", "POST", f"/workflow/{workflow_id}/execute")
            run_id = data["result"]["run_id"]
            messages: list[dict[str, Any]] = []

            async def until_finished() -> None:
                # Until the page shows the run closed: a start and an end that arrive
                # together are one message (a start: the page adds the run's row).
                while not messages or messages[-1]["run"]["open"]:
                    message = json.loads(await live.read_message())
                    if message.get("type") == "run" and message["run"]["run_id"] == run_id:
                        messages.append(message)

            await asyncio.wait_for(until_finished(), 20)
        finally:
            live.close()
    finally:
        listener.cancel()
        await pubsub.aclose()
        await redis.aclose()
        for client in clients:
            await client.stop()
    kinds = [m["kind"] for m in shared if m["run"]["run_id"] == run_id]
    assert kinds.count("run.started") == 1 and kinds.count("run.finished") == 1, kinds
    assert kinds.count("run.updated") <= count // 4, kinds
    shown: dict[int, str] = {}
    for message in messages:
        for step in message["run"]["steps"]:
            shown[step["index"]] = step["status"]["key"]
    assert shown == dict.fromkeys(range(count), "success")


async def test_hot_switch_across_instances(cluster: ClusterHarness) -> None:
    alpha: ModuleClient = state["alpha"]
    assert alpha.server_url == cluster["i1"].url
    newer = await start(module(cluster.urls("i2"), "alpha", module_hash=alpha.module_hash))
    # i1 closes the older session with 4000 "replaced": that client stops.
    with pytest.raises(ModuleReplaced):
        await asyncio.wait_for(tasks[id(alpha)], 10)
    assert await cluster.wait_for(lambda: _holds(cluster, "i3", {"alpha": "i2"}), what="alpha moved to i2")
    state["alpha"] = newer


@pytest.mark.timeout(150)
async def test_kill_an_instance_mid_run(cluster: ClusterHarness) -> None:
    """kill -9 of i1 while it owns open runs and holds modules that are busy on them
    and on a run of i2: the modules fail over to i2 (their next URL); i2's run gets
    its result; i1's runs are taken over by a live instance, one finishing with the
    result its module sends after moving, one ending by its timeout and one retrying
    its failed step although the instance that started them is dead."""
    slow = await start(module(cluster.urls("i1", "i2", "i3"), "slow"))
    owned_by_i1 = await create_workflow(cluster, "i1", "owned-by-i1", [(slow.module_hash, {"sleep": 12})])
    mute = await start(module(cluster.urls("i1", "i2", "i3"), "mute"))
    times_out = await create_workflow(
        cluster, "i1", "times-out", [(mute.module_hash, {"sleep": 600})], timeout_seconds=15,
    )
    busy = await start(module(cluster.urls("i1", "i2", "i3"), "busy"))
    owned_by_i2 = await create_workflow(cluster, "i2", "owned-by-i2", [(busy.module_hash, {"sleep": 3})])
    await cluster.wait_for(
        lambda: _holds(cluster, "i2", {"slow": "i1", "busy": "i1", "mute": "i1"}), what="modules on i1",
    )

    _c, data = await cluster.call("i1", "POST", f"/workflow/{owned_by_i1}/execute")
    run_i1 = data["result"]["run_id"]
    _c, data = await cluster.call("i1", "POST", f"/workflow/{times_out}/execute")
    run_timeout = data["result"]["run_id"]
    _c, data = await cluster.call("i2", "POST", f"/workflow/{owned_by_i2}/execute")
    run_i2 = data["result"]["run_id"]

    # A run of i1 whose step failed and waits for its retry (in 120 s, on a timer in
    # i1's memory) when i1 dies: the instance that takes the run over re-sends it.
    calls: list[dict[str, Any]] = []

    async def fails_once(args: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        calls.append(meta)
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")
        return {"attempt": len(calls)}

    flaky = await start(module(cluster.urls("i2", "i3"), "flaky", fails_once))
    retried = await create_workflow(cluster, "i1", "retried", [(flaky.module_hash, {})],
                                    retries=1, retry_delay_seconds=120)
    _c, data = await cluster.call("i1", "POST", f"/workflow/{retried}/execute")
    run_retry = data["result"]["run_id"]

    async def waiting_for_retry() -> bool:
        step = (await run_status(cluster, "i2", run_retry))["steps"][0]
        return step["status"] == "pending" and step["attempts"] == 1 and "first attempt fails" in (step["error"] or "")

    await cluster.wait_for(waiting_for_retry, what="the step waiting for its retry", timeout=10)
    await asyncio.sleep(0.5)  # every step dispatched

    killed_at = time.monotonic()
    await cluster["i1"].kill()
    moved = await cluster.wait_for(
        lambda: _holds(cluster, "i3", {"slow": "i2", "busy": "i2", "mute": "i2"}), what="modules failed over",
        timeout=20,
    )
    failover = time.monotonic() - killed_at
    print(f"\nfailover of 3 modules after kill -9: {failover:.2f} s")
    assert moved

    # busy's result (computed while it moved) is recorded by the run's owner, i2.
    run = await cluster.wait_for(lambda: _finished(cluster, "i3", run_i2), what="i2's run", timeout=20)
    assert run["status"] == "success", run
    # i1's run is taken over and ends with the result slow sends from its new instance.
    run = await cluster.wait_for(lambda: _finished(cluster, "i2", run_i1), what="i1's run", timeout=40)
    assert run["status"] == "success", run
    assert run["instance"] in ("i2", "i3") and "after instance i1 was lost" in (run["reason"] or ""), run
    # The other one times out: the new owner re-armed its timeout.
    run = await cluster.wait_for(lambda: _finished(cluster, "i3", run_timeout), what="timeout", timeout=40)
    assert run["status"] == "failure" and run["steps"][0]["status"] == "timeout", run
    # The retry happened although the instance whose timer held it is dead.
    run = await cluster.wait_for(lambda: _finished(cluster, "i3", run_retry), what="the retried run", timeout=40)
    assert run["status"] == "success" and run["steps"][0]["attempts"] == 2, run
    assert "after instance i1 was lost" in (run["reason"] or "") and len(calls) == 2, (run, calls)
    assert time.monotonic() - killed_at < 40

    # i1 comes back under the same name and rejoins; it interrupts nothing it does not own.
    _c, data = await cluster.call("i2", "POST", f"/workflow/{owned_by_i2}/execute")
    open_run = data["result"]["run_id"]
    await cluster["i1"].start()
    await cluster.wait_for(lambda: _sees(cluster, "i1", {"i1", "i2", "i3"}), what="i1 rejoined")
    run = await cluster.wait_for(lambda: _finished(cluster, "i2", open_run), what="the run across the restart", timeout=20)
    assert run["status"] == "success", run
    state["slow"], state["busy"], state["mute"], state["flaky"] = slow, busy, mute, flaky


async def test_notifications_are_sent_once(cluster: ClusterHarness) -> None:
    beta: ModuleClient = state["beta"]
    failing = await create_workflow(cluster, "i2", "failing", [(beta.module_hash, {"fail": True})])
    for name in ("i1", "i2", "i3", "i1", "i2", "i3"):
        _c, data = await cluster.call(name, "POST", f"/workflow/{failing}/execute")
        await cluster.wait_for(lambda r=data["result"]["run_id"]: _finished(cluster, "i3", r), what="failed run")
    engine = create_async_engine(cluster.sql_url)
    try:
        async def all_sent() -> list[Any]:
            async with engine.connect() as conn:
                rows = (await conn.execute(
                    select(notification_outbox).where(notification_outbox.c.channel == "webhook")
                )).all()
            return rows if rows and all(r.status == "sent" for r in rows) else []

        # Rows are written as failures are recorded: wait until every one is sent
        # and no new one appeared for 2 s (a duplicate send would arrive by then).
        while True:
            rows = await cluster.wait_for(all_sent, what="every webhook row sent", timeout=30)
            await asyncio.sleep(2)
            if len(await all_sent()) == len(rows):
                break
        assert len(rows) >= 6
        assert len(cluster.webhooks) == len(rows), (len(cluster.webhooks), len(rows))
        assert all(r.attempts == 1 for r in rows), [r.attempts for r in rows]
    finally:
        await engine.dispose()


async def test_security_state_is_shared(cluster: ClusterHarness) -> None:
    http = AsyncHTTPClient()

    async def get(on: str, headers: dict[str, str]) -> int:
        response = await http.fetch(cluster[on].url + "/module/list", headers=headers, raise_error=False)
        return response.code

    # A Digest response used on i1 is refused on i2 (the replay memory is shared).
    challenge = await http.fetch(cluster["i1"].url + "/module/list", raise_error=False)
    digest = next(c for c in challenge.headers.get_list("WWW-Authenticate") if c.startswith("Digest "))
    header = digest_header(digest, *ADMIN, "GET", "/module/list")
    assert await get("i1", {"Authorization": header}) == 200
    assert await get("i2", {"Authorization": header}) == 401
    fresh = digest_header(digest, *ADMIN, "GET", "/module/list")
    assert await get("i3", {"Authorization": fresh}) == 200  # same nonce, new cnonce: fine anywhere

    # Failed logins on i1 block the address on i2 too.
    for _ in range(BLOCK_AFTER):
        assert await get("i1", {"Authorization": basic_auth("admin", "wrong-password")}) == 401
    await asyncio.sleep(0.5)
    assert await get("i2", {"Authorization": basic_auth(*ADMIN)}) == 429
    await asyncio.sleep(BLOCK_SECONDS + 0.5)
    assert await get("i2", {"Authorization": basic_auth(*ADMIN)}) == 200

    # A password changed by the CLI (another process) stops working on every instance
    # at once, although each had it cached.
    env = cluster["i1"].env
    await cli(env, "create-user", "viewer1", "--role", "viewer", stdin="viewer-password-1\n")
    for name in ("i1", "i2", "i3"):
        assert await get(name, {"Authorization": basic_auth("viewer1", "viewer-password-1")}) == 200
    await cli(env, "set-password", "viewer1", stdin="viewer-password-2\n")
    await asyncio.sleep(0.5)
    for name in ("i1", "i2", "i3"):
        assert await get(name, {"Authorization": basic_auth("viewer1", "viewer-password-1")}) == 401, name
        assert await get(name, {"Authorization": basic_auth("viewer1", "viewer-password-2")}) == 200, name


async def test_ended_sessions_are_refused_everywhere(cluster: ClusterHarness) -> None:
    """A browser session started on one instance works on every other (sessions live
    in MySQL, read on each request); ended by an admin on another instance, or by a
    password change from the CLI, it is refused by all of them at the next request.
    The same holds for a revoked API token."""
    http = AsyncHTTPClient()

    async def get(on: str, cookie: dict[str, str]) -> int:
        response = await http.fetch(cluster[on].url + "/module/list", headers=cookie, raise_error=False)
        return response.code

    admin = await login(cluster, "i1", *ADMIN)
    for name in ("i1", "i2", "i3"):
        assert await get(name, admin) == 200, name
    _c, data = await cluster.call("i2", "GET", "/sessions")
    session_id = max(s["id"] for s in data["result"] if s["username"] == ADMIN[0])
    await cluster.call("i3", "DELETE", f"/sessions/{session_id}")
    for name in ("i1", "i2", "i3"):
        assert await get(name, admin) == 401, name

    env = cluster["i1"].env
    await cli(env, "create-user", "viewer2", "--role", "viewer", stdin="viewer2-password-1\n")
    viewer = await login(cluster, "i2", "viewer2", "viewer2-password-1")
    for name in ("i1", "i2", "i3"):
        assert await get(name, viewer) == 200, name
    await cli(env, "set-password", "viewer2", stdin="viewer2-password-2\n")
    for name in ("i1", "i2", "i3"):
        assert await get(name, viewer) == 401, name

    # So is an API token revoked on another instance.
    _c, data = await cluster.call("i1", "POST", "/tokens", {"name": "script"})
    bearer = {"Authorization": f"Bearer {data['result']['token']}"}
    for name in ("i1", "i2", "i3"):
        assert await get(name, bearer) == 200, name
    await cluster.call("i2", "DELETE", f"/tokens/{data['result']['id']}")
    for name in ("i1", "i2", "i3"):
        assert await get(name, bearer) == 401, name


async def login(cluster: ClusterHarness, on: str, username: str, password: str) -> dict[str, str]:
    """The login form on instance `on`; returns the session cookie header."""
    http = AsyncHTTPClient()
    page = await http.fetch(cluster[on].url + "/login")
    jar: SimpleCookie = SimpleCookie()
    for header in page.headers.get_list("Set-Cookie"):
        jar.load(header)
    xsrf = jar["_xsrf"].value
    done = await http.fetch(
        cluster[on].url + "/login", method="POST", follow_redirects=False, raise_error=False,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"_xsrf={xsrf}"},
        body=urlencode({"username": username, "password": password, "_xsrf": xsrf, "next": "/"}),
    )
    assert done.code == 303, (done.code, done.body)
    for header in done.headers.get_list("Set-Cookie"):
        jar.load(header)
    return {"Cookie": f"{SESSION_COOKIE}={jar[SESSION_COOKIE].value}"}


async def cli(env: dict[str, str], *args: str, stdin: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "run.py"), *args, cwd=ROOT, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(stdin.encode())
    assert proc.returncode == 0, out.decode()


@pytest.mark.timeout(300)
async def test_each_tick_fired_exactly_once(cluster: ClusterHarness) -> None:
    """The every-minute workflow: across the kill and restart of i1 (mid-run, above)
    and a kill -9 of i3 3 s before a tick with its restart after it, every nominal
    tick since the workflow was created has exactly one execution-log row."""
    # A tick at least one minute after the first one, far enough ahead to kill first.
    first = (int(state["tick_created"]) + 2) // 60 * 60 + 60
    tick = max(first + 60, (int(time.time()) + 5) // 60 * 60 + 60)
    await asyncio.sleep(tick - 3 - time.time())
    await cluster["i3"].kill()  # it schedules the workflow too, and holds the ticker
    await asyncio.sleep(max(0.0, tick + 3 - time.time()))
    await cluster["i3"].start()
    await cluster.wait_for(lambda: _sees(cluster, "i3", {"i1", "i2", "i3"}), what="i3 rejoined")
    await asyncio.sleep(3)  # a catch-up of the tick it missed would be logged by now
    engine = create_async_engine(cluster.sql_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(
                select(execution_log.c.nominal_time, execution_log.c.trigger, execution_log.c.outcome)
                .where(execution_log.c.workflow_id == state["tick_workflow"])
            )).all()
    finally:
        await engine.dispose()
    per_tick = Counter(r.nominal_time for r in rows if r.trigger in ("schedule", "misfire"))
    expected = {datetime.fromtimestamp(t, UTC).replace(tzinfo=None) for t in range(first, tick + 1, 60)}
    assert expected <= set(per_tick) and len(expected) >= 2, (sorted(expected), per_tick)
    assert all(count == 1 for count in per_tick.values()), per_tick
    for client in ("ticker", "alpha", "beta", "slow", "busy", "mute", "flaky"):
        if client in state:
            await state[client].stop(grace=1)


async def _holds(cluster: ClusterHarness, on: str, expected: dict[str, str]) -> bool:
    seen = await cluster.online(on)
    return all(seen.get(name) == where for name, where in expected.items())


async def _sees(cluster: ClusterHarness, on: str, instances: set[str]) -> bool:
    _c, data = await cluster.call(on, "GET", "/ready", expect=None)
    return set((data.get("result") or {}).get("instances") or []) == instances


async def _finished(cluster: ClusterHarness, on: str, run_id: str) -> dict[str, Any] | None:
    run = await run_status(cluster, on, run_id)
    return run if run["status"] != "running" else None


async def _true(value: bool) -> bool:
    return value

