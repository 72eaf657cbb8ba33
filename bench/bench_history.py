"""History benchmark: list, filter, run-page and execute->success at 0 / 100k / 1M runs.

    python bench/bench_history.py --quick                      # 0 and 10,000 runs, SQLite
    python bench/bench_history.py                              # 0 / 100,000 / 1,000,000, SQLite + MariaDB
    python bench/bench_history.py --sizes 0 100000 --backends sqlite mariadb --reps 15

For each backend (the embedded default, SQLite under DATA_DIR; or MariaDB at
--mysql-url) and each size, a fresh `run.py` starts (embedded nx-27017 for
documents); 15 workflows and one 3-module workflow are created through the API;
the history is filled with `size` runs straight into SQL (bulk inserts: 15
workflows, 3 steps per run, started over the last 90 days, statuses mixed 85%
success / 8% failure / 4% partial / 2% interrupted / 1% skipped). Then, from the
client side over one keep-alive connection, medians of --reps calls of

  GET /workflow/<id>/runs      (first page, 20)
  GET /runs?status=failure     (first page, 20)
  GET /runs/<run_id>           (a run from the middle of the history)
  GET /history                 (dashboard page, Basic auth)
  GET /runs?before=<cursor>    (third keyset page)
  GET /module/<hash>/runs      (a module's history, first page, 20; every run has a
                                step of each module, so 1 step per run per module)
  GET /module/<hash>/runs?status=failed   (the third module: ~14% of its steps)
  GET /module/<hash>/runs?before=<cursor> (its third keyset page)
  GET /modules/<id>            (dashboard page with the module's recent steps)
  GET /history?q=bench-wf3     (search by name: one workflow matches)
  GET /history?q=bench-wf      (search by name: all 15 workflows match)
  GET /history?q=<6 hex>       (search by run id prefix)
  GET /history?sort=oldest     (oldest first)
  execute -> success           (POST /workflow/<id>/execute until all 3 modules
                                got `receive result`, which follows durability)

The 0-run row is the baseline of the same run. Fill time is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import websockets
from kahttp import Connection, json_request
from sqlalchemy import create_engine, insert, text

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench_connections import BASIC, REG_TOKEN, start_server, stop_server  # noqa: E402

from tornado_sched.tables import run_steps, runs  # noqa: E402

STATUSES = [("success", 85), ("failure", 8), ("partial", 4), ("interrupted", 2), ("skipped", 1)]
FAILED = {"failure", "partial", "interrupted"}
AUTH = {"Authorization": BASIC}


def fill(url: str, size: int, workflow_ids: list[int], module_hashes: list[str]) -> float:
    """Bulk-insert `size` runs (+3 steps each) straight into SQL; returns seconds."""
    engine = create_engine(url)
    population = [s for s, _ in STATUSES]
    weights = [w for _, w in STATUSES]
    rng = random.Random(11)
    now = datetime.utcnow()
    span = 90 * 86400
    t0 = time.monotonic()
    chunk = 5000
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("PRAGMA synchronous=OFF"))
    for start in range(0, size, chunk):
        run_rows, step_rows = [], []
        for i in range(start, min(size, start + chunk)):
            status = rng.choices(population, weights)[0]
            started = now - timedelta(seconds=rng.uniform(60, span))
            run_id = uuid.UUID(int=rng.getrandbits(128)).hex
            ok = {"success": 3, "partial": 1}.get(status, 0)
            run_rows.append({
                "run_id": run_id, "workflow_id": workflow_ids[i % len(workflow_ids)], "workflow_name": "filled",
                "trigger": "schedule", "nominal_time": started, "timezone": "UTC", "fired_at": started,
                "started_at": started, "ended_at": started + timedelta(seconds=2), "status": status,
                "failed": status in FAILED, "reason": None, "timeout_seconds": 600, "retries": 0,
                "retry_delay_seconds": 0, "steps_total": 3, "steps_ok": ok,
                "steps_failed": 0 if status in ("success", "skipped") else 3 - ok,
            })
            for index in range(3):
                step_status = "success" if index < ok else ("skipped" if status == "skipped" else "failure")
                step_rows.append({
                    "run_id": run_id, "step_index": index, "module_hash": module_hashes[index],
                    "module_name": f"m{index}", "args": "{}", "status": step_status, "attempts": 1,
                    "sent_at": started, "ended_at": started + timedelta(seconds=1), "message": "ok",
                    "error": None if step_status == "success" else "boom",
                })
        with engine.begin() as conn:
            conn.execute(insert(runs), run_rows)
            conn.execute(insert(run_steps), step_rows)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("ANALYZE"))
        else:
            conn.execute(text("ANALYZE TABLE runs, run_steps"))
    engine.dispose()
    return time.monotonic() - t0


class Module:
    """A module client answering every execute with success, echoing run_id."""

    def __init__(self, port: int, module_hash: str) -> None:
        self.url = f"ws://127.0.0.1:{port}/websocket?hash={module_hash}"
        self.acks: asyncio.Queue[float] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.ws = await websockets.connect(self.url, max_size=None)
        self.task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        async for raw in self.ws:
            if raw == "receive result":
                self.acks.put_nowait(time.perf_counter())
                continue
            data = json.loads(raw)
            if data.get("type") == "execute":
                meta = data["meta"]
                await self.ws.send(json.dumps({
                    "type": "result", "status": "success", "workflow_id": meta["workflow_id"],
                    "workflow_name": meta["workflow_name"], "module_name": "bench", "error": None,
                    "message": "ok", "run_id": meta["run_id"],
                }))

    async def stop(self) -> None:
        await self.ws.close()
        if self.task is not None:
            self.task.cancel()


async def timed(reps: int, call: Any) -> float:
    samples = []
    await call()  # warm-up
    for _ in range(reps):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


async def one_size(backend: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-history-{backend}-{size}-"))
    extra: dict[str, str] = {}
    if backend == "mariadb":
        db = f"bench_h11_{size}"
        admin = create_engine(args.mysql_url.replace("+aiomysql", "+pymysql"))
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {db}"))
            conn.execute(text(f"CREATE DATABASE {db} CHARACTER SET utf8mb4"))
        admin.dispose()
        extra = {"MYSQL_HOST": "127.0.0.1", "MYSQL_PORT": "3306", "MYSQL_USER": "root", "MYSQL_DB": db}
        sync_url = args.mysql_url.replace("+aiomysql", "+pymysql").rsplit("/", 1)[0] + f"/{db}"
    else:
        sync_url = f"sqlite:///{data_dir / 'system.sqlite3'}"
    # start_server drops MYSQL_* from the child's environment; the server reads a .env
    # file in its working directory (DATA_DIR), so MariaDB is asked for there.
    (data_dir / ".env").write_text("".join(f"{k}={v}\n" for k, v in extra.items()))
    server = await start_server("ours", data_dir, within=120)
    conn = Connection("127.0.0.1", server.port)
    result: dict[str, Any] = {"backend": backend, "runs": size}
    modules = []
    try:
        hashes, module_ids = [], []
        for i in range(3):
            status, env = await json_request(
                conn, "GET", f"/module/register?name=bench-m{i}", headers={"X-Registration-Token": REG_TOKEN})
            assert status == 200, env
            hashes.append(env["result"]["hash"])
            module_ids.append(env["result"]["module_id"])
        ids = []
        for i in range(15):
            status, env = await json_request(conn, "POST", "/workflow/create", {
                "name": f"bench-wf{i}", "enable": False, "execute_cron_list": [],
                "execute_modules": [{"module_hash": h, "args": {}} for h in hashes]}, AUTH)
            assert status == 200, env
            ids.append(env["result"]["workflow_id"])
        status, env = await json_request(conn, "POST", "/workflow/create", {
            "name": "bench-exec", "enable": False, "execute_cron_list": [], "overlap": "allow",
            "execute_modules": [{"module_hash": h, "args": {"n": 1}} for h in hashes]}, AUTH)
        assert status == 200, env
        exec_id = env["result"]["workflow_id"]
        if size:
            result["fill_s"] = round(await asyncio.to_thread(fill, sync_url, size, ids, hashes), 1)
        modules = [Module(server.port, h) for h in hashes]
        for m in modules:
            await m.start()

        async def get(path: str) -> None:
            status, env = await json_request(conn, "GET", path, headers=AUTH)
            assert status == 200, (path, status, env)

        async def page(path: str) -> None:
            status, _ = await conn.request("GET", path, b"", AUTH)
            assert status == 200, (path, status)

        status, env = await json_request(conn, "GET", f"/workflow/{ids[3]}/runs?page_size=20", headers=AUTH)
        runs_page = env["result"]["runs"]
        middle = runs_page[len(runs_page) // 2]["run_id"] if runs_page else None
        result["workflow_runs_ms"] = await timed(args.reps, lambda: get(f"/workflow/{ids[3]}/runs"))
        result["status_failure_ms"] = await timed(args.reps, lambda: get("/runs?status=failure"))
        result["failed_group_ms"] = await timed(args.reps, lambda: get("/runs?status=failed"))
        if middle:
            result["run_page_ms"] = await timed(args.reps, lambda: get(f"/runs/{middle}"))
        result["history_page_ms"] = await timed(args.reps, lambda: conn.request("GET", "/history", b"", AUTH))
        status, env = await json_request(conn, "GET", "/runs?page_size=20", headers=AUTH)
        cursor = env["result"]["next_before"]
        if cursor:
            status, env = await json_request(conn, "GET", f"/runs?page_size=20&before={cursor}", headers=AUTH)
            cursor = env["result"]["next_before"] or cursor
            result["keyset_page3_ms"] = await timed(args.reps, lambda: get(f"/runs?page_size=20&before={cursor}"))

        result["module_runs_ms"] = await timed(args.reps, lambda: get(f"/module/{hashes[1]}/runs"))
        result["module_failed_ms"] = await timed(args.reps, lambda: get(f"/module/{hashes[2]}/runs?status=failed"))
        status, env = await json_request(conn, "GET", f"/module/{hashes[1]}/runs", headers=AUTH)
        step_cursor = env["result"]["next_before"]
        if step_cursor:
            status, env = await json_request(conn, "GET", f"/module/{hashes[1]}/runs?before={step_cursor}",
                                             headers=AUTH)
            step_cursor = env["result"]["next_before"] or step_cursor
            result["module_page3_ms"] = await timed(
                args.reps, lambda: get(f"/module/{hashes[1]}/runs?before={step_cursor}"))
        result["module_page_ms"] = await timed(
            args.reps, lambda: page(f"/modules/{module_ids[1]}"))
        result["search_one_ms"] = await timed(args.reps, lambda: page("/history?q=bench-wf3"))
        result["search_all_ms"] = await timed(args.reps, lambda: page("/history?q=bench-wf"))
        if middle:
            result["search_run_id_ms"] = await timed(args.reps, lambda: page(f"/history?q={middle[:6]}"))
        result["oldest_first_ms"] = await timed(args.reps, lambda: page("/history?sort=oldest"))

        async def execute() -> None:
            status, env = await json_request(conn, "POST", f"/workflow/{exec_id}/execute", None, AUTH)
            assert status == 200, env
            for m in modules:
                await asyncio.wait_for(m.acks.get(), 30)

        result["execute_success_ms"] = await timed(args.reps, execute)
    finally:
        for m in modules:
            await m.stop()
        await conn.close()
        await stop_server(server, 30)
    return result


COLUMNS = [
    ("runs", "stored runs"), ("fill_s", "fill s"), ("workflow_runs_ms", "GET /workflow/<id>/runs"),
    ("status_failure_ms", "GET /runs?status=failure"), ("failed_group_ms", "GET /runs?status=failed"),
    ("run_page_ms", "GET /runs/<id>"), ("history_page_ms", "/history"),
    ("keyset_page3_ms", "3rd keyset page"), ("execute_success_ms", "execute -> success (3 modules)"),
]
# Issue 15: a module's history, and the /history search and sort (a second table).
COLUMNS_15 = [
    ("runs", "stored runs"), ("module_runs_ms", "GET /module/<hash>/runs"),
    ("module_failed_ms", "... ?status=failed"), ("module_page3_ms", "... 3rd keyset page"),
    ("module_page_ms", "/modules/<id>"), ("search_one_ms", "/history?q= (1 workflow)"),
    ("search_all_ms", "/history?q= (15 workflows)"), ("search_run_id_ms", "/history?q=<run id prefix>"),
    ("oldest_first_ms", "/history?sort=oldest"),
]


def table(results: list[dict[str, Any]], columns: list[tuple[str, str]] = COLUMNS) -> str:
    lines = ["| backend | " + " | ".join(label for _, label in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for r in results:
        cells = []
        for key, _ in columns:
            value = r.get(key)
            cells.append("-" if value is None else (f"{value:,}" if key == "runs" else f"{value:.1f}"))
        lines.append(f"| {r['backend']} | " + " | ".join(cells) + " |")
    if columns is not COLUMNS:
        return "\n".join(lines)
    base = {r["backend"]: r for r in results if r["runs"] == 0}
    for r in results:
        b = base.get(r["backend"])
        if r["runs"] and b and b.get("execute_success_ms"):
            lines.append(f"{r['backend']} {r['runs']:,}: execute->success "
                         f"{r['execute_success_ms'] / b['execute_success_ms']:.2f}x the empty history")
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> int:
    results = []
    for backend in args.backends:
        for size in args.sizes:
            t0 = time.monotonic()
            r = await one_size(backend, size, args)
            r["total_s"] = round(time.monotonic() - t0, 1)
            results.append(r)
            print(json.dumps(r), flush=True)
    print()
    print(f"medians of {args.reps} calls, ms; {os.cpu_count()} CPUs; loadavg {os.getloadavg()[0]:.1f}")
    print(table(results))
    print()
    print(table(results, COLUMNS_15))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 100_000, 1_000_000])
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "mariadb"], default=["sqlite", "mariadb"])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--mysql-url", default=os.environ.get(
        "MYSQL_BENCH_URL", "mysql+pymysql://root@127.0.0.1:3306/mysql"))
    parser.add_argument("--quick", action="store_true", help="0 and 10,000 runs, SQLite, 7 reps")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.backends, args.reps = [0, 10_000], ["sqlite"], 7
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
