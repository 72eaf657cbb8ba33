"""Scheduling benchmark: how late firings are, and how long a 1,000-module run takes.

    python bench/bench_scheduling.py --quick      # ~1.5 min: 40 s of firings, 200 modules
    python bench/bench_scheduling.py              # ~4-5 min: 150 s of firings, 1,000 modules x 3
    python bench/bench_scheduling.py --under-load # lateness with 1,000 modules connected and fanning out

(1) Lateness. Our server runs in this process as run.py serves it (open_context +
    make_app on a free port, on eventloop.new_event_loop with a CollectionPacer;
    --stock-loop: asyncio's default loop and CPython's own GC timing), MongoDB from
    the embedded nx-27017, SQLite system store (--mariadb: a MariaDB database), with K workflows
    on `* * * * *` whose shifts (0, 60/K, ... s) spread the fires over the minute;
    one module (in a client subprocess) answers every command. After the run,
    lateness = run.fired_at - (nominal tick + shift), from the stored runs, and
    the module's first execute arrival - (nominal tick + shift), what a module waits.
    Baseline, at the same time in its own process: a bare APScheduler
    TornadoScheduler with one CronTrigger(second=...) job per workflow, each job
    recording now - its scheduled time. With --under-load, the N modules of (2) are
    connected first and their workflow runs back to back (execute -> durable, 0.5 s
    pause) for the whole lateness window; the baseline process has no such load.
    The client processes share the 2 cores with the server; --client-nice N runs
    them at nice N, closer to production, where modules run on other machines.

(2) A 1,000-module workflow to completion. N modules registered, N WebSockets held
    by client subprocesses (`websockets`), each answering `execute` with a success
    result echoing run_id. Timed: POST /workflow/<id>/execute -> the run is durable
    as success in the store (GET /runs/<run_id> then confirms it). Baseline: a bare
    Tornado WebSocket server in this process (after ours is stopped) sends the same N
    execute messages and waits for N replies, acknowledging each; no store, no auth.
    Repeated; medians and ours/bare are printed.

No figure here is asserted anywhere; it prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import platform
import resource
import signal
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

PY = sys.executable
ADMIN = ("admin", "bench-admin-password-1")
BASIC = "Basic " + base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def describe_ms(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"n={len(ms)}  p50={pct(ms, 50):.1f} ms  p90={pct(ms, 90):.1f} ms  "
        f"p99={pct(ms, 99):.1f} ms  max={max(ms):.1f} ms  min={min(ms):.1f} ms"
    )


async def until(predicate: Any, interval: float = 0.05, within: float = 120) -> None:
    deadline = time.perf_counter() + within
    while True:
        if predicate():
            return
        if time.perf_counter() > deadline:
            raise RuntimeError("condition not met in time")
        await asyncio.sleep(interval)


# -- client subprocess: N module sockets answering every execute ------------------------
async def worker_main(url: str, hashes: list[str]) -> None:
    raise_nofile()
    from websockets.asyncio.client import connect

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    answered = 0
    # When the first execute of each run arrived (wall clock, this machine): what a
    # module waits for, beside the run's fired_at.
    received: dict[str, float] = {}

    async def serve(ws: Any, name: str) -> None:
        nonlocal answered
        with contextlib.suppress(Exception):
            async for raw in ws:
                if not isinstance(raw, str) or not raw.startswith("{"):
                    continue  # "receive result"
                arrived = time.time()
                msg = json.loads(raw)
                if msg.get("type") != "execute":
                    continue
                meta = msg["meta"]
                received.setdefault(str(meta.get("run_id")), arrived)
                await ws.send(
                    json.dumps(
                        {
                            "type": "result",
                            "status": "success",
                            "workflow_id": str(meta["workflow_id"]),
                            "workflow_name": meta.get("workflow_name"),
                            "module_name": name,
                            "error": None,
                            "message": "ok",
                            "run_id": meta.get("run_id"),
                        }
                    )
                )
                answered += 1

    gate = asyncio.Semaphore(100)
    sockets: list[Any] = []

    async def open_one(index: int, module_hash: str) -> None:
        async with gate:
            ws = await connect(
                f"{url}?hash={module_hash}",
                ping_interval=None,
                max_size=None,
                open_timeout=60,
                compression=None,
            )
        sockets.append(ws)
        asyncio.ensure_future(serve(ws, f"bench-{index}"))

    await asyncio.gather(*(open_one(i, h) for i, h in enumerate(hashes)))
    print("ready", flush=True)
    await stop.wait()
    print(json.dumps(received), flush=True)
    for ws in sockets:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 1)


class Workers:
    """Client subprocesses holding module sockets."""

    def __init__(self, nice: int = 0) -> None:
        self.nice = nice
        self.procs: list[asyncio.subprocess.Process] = []
        self.received: dict[str, float] = {}  # run_id -> first execute's arrival (after stop)

    async def start(self, url: str, hashes: list[str], processes: int, tmp: Path) -> float:
        started = time.perf_counter()
        share = -(-len(hashes) // processes)
        for index in range(processes):
            part = hashes[index * share : (index + 1) * share]
            if not part:
                continue
            path = tmp / f"hashes-{uuid.uuid4().hex[:8]}.json"
            path.write_text(json.dumps(part))
            proc = await asyncio.create_subprocess_exec(
                PY,
                __file__,
                "--worker",
                url,
                str(path),
                stdout=asyncio.subprocess.PIPE,
                preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None,
            )
            self.procs.append(proc)
        for proc in self.procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            if line.strip() != b"ready":
                raise RuntimeError(f"worker failed to connect: {line!r}")
        return time.perf_counter() - started

    async def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 10)
                self.received.update(json.loads(line or b"{}"))
                await asyncio.wait_for(proc.wait(), 10)
            except (TimeoutError, ValueError):
                proc.kill()
                await proc.wait()
        self.procs = []


# -- baseline subprocess: bare TornadoScheduler lateness --------------------------------
async def baseline_lateness_main(duration: float, seconds: list[int]) -> None:
    from apscheduler.schedulers.tornado import TornadoScheduler
    from apscheduler.triggers.cron import CronTrigger

    samples: list[float] = []

    async def job(second: int) -> None:
        now = datetime.now(UTC)
        expected = now.replace(second=second, microsecond=0)
        if expected > now:
            expected -= timedelta(minutes=1)
        samples.append((now - expected).total_seconds())

    scheduler = TornadoScheduler(
        timezone="UTC",
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
    )
    scheduler.start()
    for second in seconds:
        scheduler.add_job(job, CronTrigger(second=second, timezone="UTC"), args=[second])
    await asyncio.sleep(duration)
    scheduler.shutdown(wait=False)
    print(json.dumps(samples), flush=True)


# -- our server, in process ------------------------------------------------------------
class OurServer:
    def __init__(self, tmp: Path, stock_loop: bool = False, mariadb: str | None = None) -> None:
        self.stock_loop = stock_loop
        # A MariaDB server URL: the system store is a database of its own there,
        # created now and dropped at stop (else a SQLite file, the embedded default).
        self.mariadb = mariadb
        self.database = f"bench_sched_{os.getpid()}"
        self.pacer: Any = None
        self.tmp = tmp
        self.docserver: Any = None
        self.ctx: Any = None
        self.http_server: Any = None
        self.port = 0

    async def start(self) -> None:
        from tornado.httpserver import HTTPServer
        from tornado.netutil import bind_sockets

        from handlers.app import make_app
        from tornado_sched.config import Settings
        from tornado_sched.context import open_context
        from tornado_sched.docserver import EmbeddedDocumentServer

        self.docserver = EmbeddedDocumentServer(self.tmp / "docserver")
        uri = await self.docserver.start()
        sql_url = f"sqlite+aiosqlite:///{self.tmp / 'system.sqlite3'}"
        if self.mariadb:
            from sqlalchemy import make_url

            await self._database(f"CREATE DATABASE {self.database}")
            sql_url = str(make_url(self.mariadb).set(database=self.database))
        settings = Settings(
            debug=True,
            secret_key="bench-secret-key-0123456789",
            server_host="127.0.0.1",
            server_port=0,
            mongodb_host=uri,
            mongodb_name="bench",
            data_dir=self.tmp / "data",
            log_dir=self.tmp / "logs",
            admin_username=ADMIN[0],
            admin_password=ADMIN[1],
            registration_token="bench-registration-token-0123",
            sql_url_override=sql_url,
        )
        self.ctx = await open_context(settings)
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.http_server = HTTPServer(make_app(self.ctx))
        self.http_server.add_sockets(sockets)
        if not self.stock_loop:  # as run.py serves
            from tornado_sched.eventloop import CollectionPacer

            self.pacer = CollectionPacer(self.ctx.scheduler.next_fire_time)
            self.pacer.start()

    async def stop(self) -> None:
        if self.http_server is not None:
            self.http_server.stop()
            if self.pacer is not None:
                await self.pacer.stop()
            await self.ctx.close()
            await self.http_server.close_all_connections()
            self.http_server = None
        if self.docserver is not None:
            await self.docserver.stop()
            self.docserver = None
        if self.mariadb:
            await self._database(f"DROP DATABASE IF EXISTS {self.database}")

    async def _database(self, statement: str) -> None:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(self.mariadb)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    async def api(self, path: str, method: str = "GET", body: Any = None) -> dict[str, Any]:
        from tornado.httpclient import AsyncHTTPClient

        response = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            body=None if method == "GET" else json.dumps(body or {}),
            headers={"Authorization": BASIC, "Content-Type": "application/json"},
            raise_error=False,
            request_timeout=120,
        )
        envelope = json.loads(response.body)
        if response.code != 200:
            raise RuntimeError(f"{method} {path}: {response.code} {envelope}")
        return envelope["result"]


async def fan_out_loop(big: BigRun, stop: asyncio.Event, done: list[float]) -> None:
    """Load for --under-load: run the N-module workflow again and again (each to
    durable success, then a 0.5 s pause) until told to stop."""
    while not stop.is_set():
        durable, _closed = await big.run_once()
        done.append(durable)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def lateness(
    server: OurServer, tmp: Path, duration: float, workflows: int, load: BigRun | None = None
) -> dict[str, Any]:
    ctx = server.ctx
    step = 60 // workflows
    shifts = [i * step for i in range(workflows)]
    module = await ctx.registry.register("lateness-module", "", [], [], "")
    workers = Workers()
    await workers.start(f"ws://127.0.0.1:{server.port}/websocket", [module.hash], 1, tmp)
    baseline = await asyncio.create_subprocess_exec(
        PY,
        __file__,
        "--baseline-lateness",
        str(duration),
        json.dumps(shifts),
        stdout=asyncio.subprocess.PIPE,
    )
    started = datetime.now(UTC)
    ids = []
    for shift in shifts:
        result = await server.api(
            "/workflow/create",
            "POST",
            {
                "name": f"lateness-{shift:02d}",
                "enable": True,
                "execute_cron_list": ["* * * * *"],
                "execute_shift_time": shift,
                "execute_shift_unit": "s",
                "timezone": "UTC",
                "timeout_seconds": 30,
                "execute_modules": [{"module_hash": module.hash, "args": {"shift": shift}}],
            },
        )
        ids.append(result["workflow_id"])
    print(
        f"  {workflows} workflows on '* * * * *', shifts 0..{shifts[-1]} s; firing for {duration:.0f} s"
        + (f" while {load.modules} modules are connected and their workflow runs back to back" if load else "")
        + " ...",
        flush=True,
    )
    stop, fan_outs = asyncio.Event(), []
    loader = asyncio.ensure_future(fan_out_loop(load, stop, fan_outs)) if load is not None else None
    await asyncio.sleep(duration)
    if loader is not None:
        stop.set()
        await loader
    for wid in ids:
        await server.api(f"/workflow/{wid}/disable", "POST")
    await asyncio.sleep(1)  # let the last runs close
    assert baseline.stdout is not None
    base_samples = json.loads(await asyncio.wait_for(baseline.stdout.read(), 30))
    await baseline.wait()
    await workers.stop()

    ours: list[float] = []
    received: list[float] = []
    statuses: dict[str, int] = {}
    from sqlalchemy import select

    from tornado_sched.clock import as_utc
    from tornado_sched.tables import runs as runs_table

    async with ctx.sql.engine.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(
            select(runs_table).where(runs_table.c.workflow_id.in_(ids), runs_table.c.trigger == "schedule"))]
    for doc in rows:
        doc["nominal_time"], doc["fired_at"] = as_utc(doc["nominal_time"]), as_utc(doc["fired_at"])
        statuses[doc["status"]] = statuses.get(doc["status"], 0) + 1
        workflow = next(s for i, s in zip(ids, shifts, strict=True) if i == doc["workflow_id"])
        expected = doc["nominal_time"] + timedelta(seconds=workflow)
        ours.append((doc["fired_at"] - expected).total_seconds())
        if doc["run_id"] in workers.received:
            received.append(workers.received[doc["run_id"]] - expected.timestamp())
    return {"ours": ours, "received": received, "bare": base_samples, "statuses": statuses, "since": started,
            "fan_outs": fan_outs}


class BigRun:
    """Ours: one workflow of N modules, run through the REST API until durable."""

    def __init__(self, server: OurServer, modules: int) -> None:
        self.server = server
        self.modules = modules
        self.hashes: list[str] = []
        self.workflow_id = 0
        self.finished: dict[str, float] = {}

    async def setup(self) -> float:
        ctx = self.server.ctx
        started = time.perf_counter()
        for i in range(self.modules):
            self.hashes.append((await ctx.registry.register(f"big-{i:05d}", "", [], [], "")).hash)
        elapsed = time.perf_counter() - started
        result = await self.server.api("/workflow/create", "POST", {
            "name": f"big-{self.modules}", "enable": False, "execute_cron_list": [], "timeout_seconds": 600,
            "execute_modules": [{"module_hash": h, "args": {"stock_list": ["600000", "000001"]}} for h in self.hashes],
        })
        self.workflow_id = result["workflow_id"]

        from tornado_sched.events import RUN_FINISHED

        def on_event(kind: str, data: dict[str, Any]) -> None:
            # Every run.finished by run id: the run may finish before the POST returns.
            if kind == RUN_FINISHED:
                self.finished.setdefault(data["run"].run_id, time.perf_counter())

        ctx.events.subscribe(on_event)
        return elapsed

    async def connected(self) -> None:
        hub = self.server.ctx.hub
        await until(lambda: sum(1 for h in self.hashes if hub.is_online(h)) == self.modules)

    async def run_once(self) -> tuple[float, float]:
        """(POST -> durable success, POST -> closed in memory), seconds."""
        ctx = self.server.ctx
        started = time.perf_counter()
        run_id = (await self.server.api(f"/workflow/{self.workflow_id}/execute", "POST"))["run_id"]
        await until(lambda: run_id in self.finished, interval=0.002, within=300)
        from sqlalchemy import select

        from tornado_sched.tables import runs as runs_table

        while True:  # durable: the stored run says it is closed
            async with ctx.sql.engine.connect() as conn:
                status = (await conn.execute(
                    select(runs_table.c.status).where(runs_table.c.run_id == run_id))).scalar_one_or_none()
            if status is not None and status != "running":
                break
            await asyncio.sleep(0.005)
        done = time.perf_counter()
        run = await self.server.api(f"/runs/{run_id}")
        if run["status"] != "success" or sum(s["status"] == "success" for s in run["steps"]) != self.modules:
            raise RuntimeError(f"run {run_id} ended {run['status']}")
        return done - started, self.finished[run_id] - started


class BareServer:
    """Baseline: a bare Tornado WebSocket server; N executes out, N replies in."""

    def __init__(self) -> None:
        self.sessions: dict[str, Any] = {}
        self.left = 0
        self.done: asyncio.Future[float] | None = None
        self.server: Any = None
        self.port = 0

    def start(self) -> None:
        import tornado.websocket
        from tornado.httpserver import HTTPServer
        from tornado.netutil import bind_sockets
        from tornado.web import Application

        bare = self

        class Handler(tornado.websocket.WebSocketHandler):
            def open(self, *args: Any) -> None:
                self.module_hash = self.get_query_argument("hash")
                bare.sessions[self.module_hash] = self

            def on_message(self, message: str | bytes) -> None:
                if json.loads(message).get("type") == "result":
                    self.write_message("receive result")
                    bare.left -= 1
                    if bare.left == 0 and bare.done is not None and not bare.done.done():
                        bare.done.set_result(time.perf_counter())

            def on_close(self) -> None:
                if bare.sessions.get(self.module_hash) is self:
                    del bare.sessions[self.module_hash]

        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.server = HTTPServer(Application([(r"/websocket", Handler)]))
        self.server.add_sockets(sockets)

    async def run_once(self) -> float:
        run_id = uuid.uuid4().hex
        self.left = len(self.sessions)
        self.done = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        for handler in list(self.sessions.values()):
            handler.write_message(json.dumps({
                "type": "execute",
                "meta": {"execution_time": "2026-01-01T10:00:00", "workflow_id": 1, "workflow_name": "bare",
                         "run_id": run_id, "fired_at": datetime.now(UTC).isoformat(), "timezone": "UTC"},
                "args": {"stock_list": ["600000", "000001"]},
            }, ensure_ascii=False))
        return await asyncio.wait_for(self.done, 300) - started

    async def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()
            self.server = None


async def main(args: argparse.Namespace) -> None:
    limit = raise_nofile()
    logging.basicConfig(level=logging.ERROR)
    print(f"bench_scheduling: python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"RLIMIT_NOFILE {limit}, {'quick' if args.quick else 'full'} run", flush=True)
    bench_started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-sched-") as name:
        tmp = Path(name)
        server = OurServer(tmp, stock_loop=args.stock_loop, mariadb=args.mariadb)
        bare = BareServer()
        ours_workers, bare_workers = Workers(args.client_nice), Workers(args.client_nice)
        await server.start()
        try:
            big = BigRun(server, args.modules)
            if args.under_load:
                # The N modules first: lateness is then measured with them connected
                # and their workflow fanning out again and again meanwhile.
                register_s = await big.setup()
                connect_s = await ours_workers.start(
                    f"ws://127.0.0.1:{server.port}/websocket", big.hashes, args.clients, tmp)
                await big.connected()
                await asyncio.sleep(1.0)
            print("(1) scheduling lateness", flush=True)
            late = await lateness(server, tmp, args.lateness_seconds, args.workflows,
                                  big if args.under_load else None)
            print(f"  ours (fired_at - (tick + shift)): {describe_ms(late['ours'])}")
            print(f"  ours (module receives execute - (tick + shift)): {describe_ms(late['received'])}")
            print(f"    run outcomes: {late['statuses']}")
            if args.under_load:
                print(f"    meanwhile {len(late['fan_outs'])} runs of the {args.modules}-module workflow: "
                      f"execute -> durable {describe_ms(late['fan_outs'])}")
            print(f"  bare TornadoScheduler + CronTrigger:  {describe_ms(late['bare'])}")
            print(f"  p50 ours/bare {pct(late['ours'], 50) / pct(late['bare'], 50):.2f}x, "
                  f"p99 ours - bare {1000 * (pct(late['ours'], 99) - pct(late['bare'], 99)):.1f} ms", flush=True)

            print(f"(2) a {args.modules}-module workflow to completion, {args.repeats} repeats, "
                  "ours and bare alternating", flush=True)
            if not args.under_load:
                register_s = await big.setup()
                connect_s = await ours_workers.start(
                    f"ws://127.0.0.1:{server.port}/websocket", big.hashes, args.clients, tmp)
                await big.connected()
            bare.start()
            bare_connect_s = await bare_workers.start(
                f"ws://127.0.0.1:{bare.port}/websocket", big.hashes, args.clients, tmp)
            await until(lambda: len(bare.sessions) == args.modules)
            print(f"  setup: {args.modules} modules registered in {register_s:.2f} s; sockets connected "
                  f"in {connect_s:.2f} s (ours) / {bare_connect_s:.2f} s (bare), {args.clients} client "
                  "processes per server", flush=True)
            await asyncio.sleep(1.0)  # let the online-state flush settle
            ours, in_memory, bare_times = [], [], []
            for _ in range(args.repeats):
                durable, closed = await big.run_once()
                ours.append(durable)
                in_memory.append(closed)
                await asyncio.sleep(0.5)
                bare_times.append(await bare.run_once())
                await asyncio.sleep(0.5)
        finally:
            await ours_workers.stop()
            await bare_workers.stop()
            await bare.stop()
            await server.stop()
    ours_med, bare_med = statistics.median(ours), statistics.median(bare_times)

    def row(values: list[float]) -> str:
        return ", ".join(f"{v * 1000:.0f}" for v in values) + f" ms; median {statistics.median(values) * 1000:.0f} ms"

    print(f"  ours: execute POST -> run durable as success: {row(ours)}")
    print(f"        (POST -> run closed in memory: {row(in_memory)})")
    print(f"  bare: send N executes -> N replies:            {row(bare_times)}")
    print(f"  ratio ours/bare (medians): {ours_med / bare_med:.1f}x")
    print(f"total bench time {time.perf_counter() - bench_started:.0f} s")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="40 s of firings, 200 modules, 3 repeats"
    )
    parser.add_argument("--lateness-seconds", type=float, default=None)
    parser.add_argument(
        "--workflows", type=int, default=60, help="workflows on '* * * * *' (divides 60)"
    )
    parser.add_argument("--modules", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--under-load", action="store_true",
        help="measure lateness with the --modules sockets connected and their workflow running back to back",
    )
    parser.add_argument(
        "--clients", type=int, default=2, help="client processes holding module sockets"
    )
    parser.add_argument(
        "--client-nice", type=int, default=0,
        help="run the module client processes at this nice level (on 2 cores they otherwise "
             "take CPU from the server; in production they run on other machines)",
    )
    parser.add_argument(
        "--mariadb", metavar="URL", default=None,
        help="system store on this MariaDB server (e.g. mysql+aiomysql://root@127.0.0.1:3306/test; "
             "a database of its own is created and dropped) instead of a SQLite file",
    )
    parser.add_argument(
        "--stock-loop", action="store_true",
        help="asyncio's default loop and CPython's own full-collection timing (not run.py's "
             "FairEpollSelector and CollectionPacer)",
    )
    args = parser.parse_args(argv)
    if args.lateness_seconds is None:
        args.lateness_seconds = 40.0 if args.quick else 150.0
    if args.modules is None:
        args.modules = 200 if args.quick else 1000
    if not 1 <= args.workflows <= 60 or 60 % args.workflows:
        parser.error("--workflows must divide 60")
    return args


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        asyncio.run(worker_main(sys.argv[2], json.loads(Path(sys.argv[3]).read_text())))
    elif len(sys.argv) > 1 and sys.argv[1] == "--baseline-lateness":
        raise_nofile()
        asyncio.run(baseline_lateness_main(float(sys.argv[2]), json.loads(sys.argv[3])))
    else:
        options = parse(sys.argv[1:])
        if options.stock_loop:
            asyncio.run(main(options))
        else:
            from tornado_sched.eventloop import new_event_loop

            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                runner.run(main(options))
