"""Connection benchmark: N module sockets held by one server process.

    python bench/bench_connections.py --quick          # N=200 smoke run
    python bench/bench_connections.py                  # N=1,000 and 10,000, 3 repeats
    python bench/bench_connections.py --n 1000 10000 --repeats 3 --clients 2

For each N and each repeat, two servers run the same client load, one after the
other, each in its own fresh process:

  ours  `run.py` (embedded nx-27017 child, SQLite system store), modules registered
        beforehand through `POST /module/register` (timed separately, once per N)
  bare  bench/bare_server.py: a minimal Tornado WebSocket server, hash -> handler dict,
        `POST /send` writes to one socket; no auth, no store

and measures
  (a) time to connect all N sockets (client side: every handshake completed),
  (b) server RSS per socket: (VmRSS with N connected - VmRSS idle) / N,
  (c) one message to every module: N `POST /module/send_message` (`/send` for bare)
      from the client processes with bounded concurrency, until every socket has
      received its message; also first POST -> last receipt, the REST part alone,
      and the per-message latency (POST written -> frame received).
Server CPU seconds per phase come from /proc/<pid>/stat (and, for ours, of the
nx-27017 child, which is a separate process and not in the server's RSS).

Clients run in `--clients` separate processes (bench/client_worker.py) so they do
not share the server's loop. Medians over the repeats are printed with ours/bare.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kahttp import Connection, json_request, raise_nofile

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
ADMIN = ("admin", "bench-admin-password-1")
REG_TOKEN = "bench-registration-token-0123456789"
BASIC = "Basic " + base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- /proc --------------------------------------------------------------------------------
def rss_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def loadavg() -> float | None:
    """1-minute load average: other work on the machine shows up here."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError):
        return None


# -- server processes ---------------------------------------------------------------------
@dataclass
class Server:
    kind: str
    proc: asyncio.subprocess.Process
    port: int
    nx_pid: int | None
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))
    drains: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid


async def _drain(stream: asyncio.StreamReader, tail: collections.deque[str]) -> None:
    while line := await stream.readline():
        tail.append(line.decode(errors="replace").rstrip())


async def start_server(
    kind: str, data_dir: Path, within: float = 60.0, profile: Path | None = None
) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "MYSQL_"))}
    if kind == "ours":
        cmd = [PY, str(ROOT / "run.py")]
        if profile is not None:  # cProfile writes its stats when run.py exits on SIGTERM
            cmd[1:1] = ["-m", "cProfile", "-o", str(profile)]
        env.update(
            DATA_DIR=str(data_dir),
            LOG_DIR=str(data_dir / "logs"),
            SERVER_PORT="0",
            SERVER_HOST="127.0.0.1",
            ADMIN_USERNAME=ADMIN[0],
            ADMIN_PASSWORD=ADMIN[1],
            REGISTRATION_TOKEN=REG_TOKEN,
            SECRET_KEY="bench-secret-key-0123456789abcdef",
            LOG_LEVEL="WARNING",
        )
    else:
        cmd = [PY, str(BENCH / "bare_server.py")]
        env.update(SERVER_PORT="0")
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=str(data_dir),  # no stray .env is picked up
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=1 << 20,
    )
    tail: collections.deque[str] = collections.deque(maxlen=40)
    assert proc.stdout is not None and proc.stderr is not None
    drains = [asyncio.create_task(_drain(proc.stderr, tail))]

    async def read_port() -> int:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            tail.append(text)
            if text.startswith("listening on port "):
                return int(text.rsplit(" ", 1)[1])
        raise RuntimeError(f"{kind} server exited before listening:\n" + "\n".join(tail))

    try:
        port = await asyncio.wait_for(read_port(), within)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    drains.append(asyncio.create_task(_drain(proc.stdout, tail)))
    nx_pid = None
    if kind == "ours":
        pid_file = data_dir / "mongo" / "nx.pid"
        with contextlib.suppress(OSError, ValueError):
            nx_pid = int(pid_file.read_text().strip())
    return Server(kind, proc, port, nx_pid, tail, drains)


async def stop_server(server: Server, within: float) -> tuple[float, bool]:
    """SIGTERM; SIGKILL after `within` seconds. Returns (seconds, clean)."""
    t0 = time.monotonic()
    clean = True
    with contextlib.suppress(ProcessLookupError):
        server.proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(server.proc.wait(), within)
    except TimeoutError:
        clean = False
        with contextlib.suppress(ProcessLookupError):
            server.proc.kill()
        await server.proc.wait()
    elapsed = time.monotonic() - t0
    for task in server.drains:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, 5)
    return elapsed, clean


# -- client processes ---------------------------------------------------------------------
class Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, cfg: dict[str, Any]) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            PY,
            str(BENCH / "client_worker.py"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 26,
        )
        worker = cls(proc)
        reply = await worker.call(cfg, within=60)
        assert reply.get("ready"), reply
        return worker

    async def send_cmd(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        await self.proc.stdin.drain()

    async def reply(self, within: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        if not line:
            raise RuntimeError(f"client worker {self.proc.pid} exited")
        return json.loads(line)

    async def call(self, obj: dict[str, Any], within: float) -> dict[str, Any]:
        await self.send_cmd(obj)
        return await self.reply(within)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.call({"cmd": "exit"}, within=10)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 10)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def broadcast(
    workers: list[Worker], cmd: dict[str, Any], within: float
) -> list[dict[str, Any]]:
    for w in workers:
        await w.send_cmd(cmd)
    return list(await asyncio.gather(*(w.reply(within + 30) for w in workers)))


# -- registration (setup, timed separately) -----------------------------------------------
async def register_modules(
    n: int, data_dir: Path, concurrency: int, tag: str
) -> tuple[list[str], float]:
    server = await start_server("ours", data_dir)
    hashes: list[str | None] = [None] * n
    errors: list[str] = []
    it = iter(range(n))

    async def worker() -> None:
        conn = Connection("127.0.0.1", server.port, timeout=60)
        try:
            for i in it:
                body = {
                    "name": f"bench-{tag}-{i:05d}",
                    "description": "bench module",
                    "input_data": "[]",
                    "output_data": '[{"name": "out"}]',
                    "modelHash": f"model-{i}",
                }
                status, env = await json_request(
                    conn, "POST", "/module/register", body, {"X-Registration-Token": REG_TOKEN}
                )
                if status == 200:
                    hashes[i] = env["result"]["hash"]
                elif len(errors) < 5:
                    errors.append(f"{status}: {env}")
        finally:
            await conn.close()

    t0 = time.monotonic()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - t0
    finally:
        await stop_server(server, 120)
    missing = sum(h is None for h in hashes)
    if missing:
        raise RuntimeError(f"registration: {missing} of {n} failed, e.g. {errors}")
    return [h for h in hashes if h], elapsed


# -- one measured run ---------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def online_count(server: Server) -> tuple[int, float]:
    conn = Connection("127.0.0.1", server.port, timeout=30)
    t0 = time.monotonic()
    try:
        if server.kind == "ours":
            status, env = await json_request(
                conn, "GET", "/module/online", None, {"Authorization": BASIC}
            )
            count = len(env["result"]) if status == 200 else -1
        else:
            status, body = await json_request(conn, "GET", "/count")
            count = body["online"] if status == 200 else -1
    finally:
        await conn.close()
    return count, time.monotonic() - t0


async def run_one(
    kind: str, n: int, hashes: list[str], data_dir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    m: dict[str, Any] = {
        "kind": kind,
        "n": n,
        "phase_timeout": args.phase_timeout,
        "loadavg_before": loadavg(),
    }
    profile = None
    if args.profile_dir and kind == "ours":
        profile = args.profile_dir / f"ours-n{n}-{time.strftime('%H%M%S')}.prof"
    server = await start_server(kind, data_dir, profile=profile)
    workers: list[Worker] = []
    try:
        shares = [hashes[i :: args.clients] for i in range(args.clients)]
        cfg = {
            "ws_url": f"ws://127.0.0.1:{server.port}/websocket",
            "http_host": "127.0.0.1",
            "http_port": server.port,
            "send_path": "/module/send_message" if kind == "ours" else "/send",
            "headers": {"Authorization": BASIC} if kind == "ours" else {},
            "connect_concurrency": args.connect_concurrency,
            "send_concurrency": args.send_concurrency,
        }
        workers = list(await asyncio.gather(*(Worker.start(dict(cfg, hashes=s)) for s in shares)))
        await asyncio.sleep(args.settle)
        pid, nx = server.pid, server.nx_pid
        m["rss_idle_kib"] = rss_kib(pid)
        m["nx_rss_idle_kib"] = rss_kib(nx)

        # (a) connect all
        timeout = args.phase_timeout
        cpu0, nxcpu0 = cpu_seconds(pid), cpu_seconds(nx)
        t0 = time.monotonic()
        replies = await broadcast(workers, {"cmd": "connect", "timeout": timeout}, timeout)
        ends = [r["t_end"] for r in replies if r["t_end"] is not None]
        m["connected"] = sum(r["connected"] for r in replies)
        m["connect_errors"] = [e for r in replies for e in r["errors"]][:5]
        m["connect_error_count"] = sum(r["error_count"] for r in replies)
        m["connect_timed_out"] = any(r["timed_out"] for r in replies)
        m["connect_rate"] = m["connected"] / (max(ends) - t0) if ends else None
        # "time to connect all" exists only if all connected within the phase timeout
        m["connect_s"] = (max(ends) - t0) if ends and m["connected"] == n else None
        m["cpu_connect_s"] = cpu_seconds(pid) - cpu0
        m["nx_cpu_connect_s"] = (cpu_seconds(nx) - nxcpu0) if nx else None
        if m["connected"] == 0:
            raise RuntimeError(f"{kind}: no socket connected: {m['connect_errors']}")
        try:
            m["server_online"], m["online_list_s"] = await online_count(server)
        except Exception as exc:  # noqa: BLE001 - a figure, not a reason to stop
            m["server_online"], m["online_list_error"] = None, f"{type(exc).__name__}: {exc}"[:200]

        # (b) RSS with N connected (after the hub's state flush had a moment)
        await asyncio.sleep(args.settle)
        m["rss_connected_kib"] = rss_kib(pid)
        m["nx_rss_connected_kib"] = rss_kib(nx)
        m["rss_per_socket_kib"] = (m["rss_connected_kib"] - m["rss_idle_kib"]) / m["connected"]

        if args.hold:
            # Idle with N connected: what do pings/pongs and heartbeat flushes cost?
            cpu_h, nxcpu_h = cpu_seconds(pid), cpu_seconds(nx)
            await asyncio.sleep(args.hold)
            m["hold_s"] = args.hold
            m["cpu_hold_s"] = cpu_seconds(pid) - cpu_h
            m["nx_cpu_hold_s"] = (cpu_seconds(nx) - nxcpu_h) if nx else None

        # (c) one message to every module
        timeout = args.phase_timeout
        cpu1, nxcpu1 = cpu_seconds(pid), cpu_seconds(nx)
        t0 = time.monotonic()
        replies = await broadcast(workers, {"cmd": "send", "timeout": timeout}, timeout)
        posts = [t for r in replies for t in r["post_t"] if t is not None]
        resps = [t for r in replies for t in r["resp_t"] if t is not None]
        recvs = [t for r in replies for t in r["recv_t"] if t is not None]
        lat = [
            (rv - p) * 1000
            for r in replies
            for p, rv in zip(r["post_t"], r["recv_t"], strict=True)
            if p is not None and rv is not None
        ]
        m["received"] = len(recvs)
        m["send_non_200"] = sum(r["non_200"] for r in replies)
        m["send_errors"] = [e for r in replies for e in r["errors"]][:5]
        complete = len(recvs) == m["connected"]
        m["send_all_s"] = (max(recvs) - t0) if recvs and complete else None
        m["first_post_to_last_recv_s"] = (
            (max(recvs) - min(posts)) if recvs and posts and complete else None
        )
        m["rest_all_s"] = (max(resps) - t0) if resps and len(resps) == m["connected"] else None
        m["msgs_per_s"] = len(recvs) / (max(recvs) - t0) if recvs else None
        m["lat_p50_ms"] = pct(lat, 0.50)
        m["lat_p99_ms"] = pct(lat, 0.99)
        m["cpu_send_s"] = cpu_seconds(pid) - cpu1
        m["nx_cpu_send_s"] = (cpu_seconds(nx) - nxcpu1) if nx else None
        m["rss_after_send_kib"] = rss_kib(pid)

        # teardown (measured, not part of the three figures)
        replies = await broadcast(workers, {"cmd": "close"}, 60)
        m["unexpected_closes"] = sum(r["unexpected_closes"] for r in replies)
    finally:
        await asyncio.gather(*(w.stop() for w in workers))
        m["shutdown_s"], m["shutdown_clean"] = await stop_server(server, args.shutdown_timeout)
        m["loadavg_after"] = loadavg()
    if m.get("connected") != n or m.get("received") != m.get("connected"):
        m["incomplete"] = True
        m["server_tail"] = [line for line in server.tail if "Error" in line][-3:] or list(
            server.tail
        )[-3:]
    return m


# -- report -------------------------------------------------------------------------------
ROWS = [
    # key, label, format, scale
    ("connect_s", "(a) connect all N (s)", "{:.2f}", 1),
    ("connected", "    sockets connected in the phase", "{:,.0f}", 1),
    ("connect_rate", "    connects/s", "{:,.0f}", 1),
    ("cpu_connect_s", "    server CPU during connect (s)", "{:.2f}", 1),
    ("nx_cpu_connect_s", "    nx-27017 CPU during connect (s)", "{:.2f}", 1),
    ("online_list_s", "    one online-list call at N (s)", "{:.3f}", 1),
    ("rss_idle_kib", "(b) server RSS idle (MiB)", "{:.1f}", 1 / 1024),
    ("rss_connected_kib", "    server RSS, N connected (MiB)", "{:.1f}", 1 / 1024),
    ("rss_per_socket_kib", "    RSS per socket (KiB)", "{:.1f}", 1),
    ("nx_rss_connected_kib", "    nx-27017 child RSS (MiB)", "{:.1f}", 1 / 1024),
    ("send_all_s", "(c) N POSTs -> all received (s)", "{:.2f}", 1),
    ("first_post_to_last_recv_s", "    first POST -> last receipt (s)", "{:.2f}", 1),
    ("rest_all_s", "    all N REST responses (s)", "{:.2f}", 1),
    ("received", "    messages received in the phase", "{:,.0f}", 1),
    ("msgs_per_s", "    messages delivered/s", "{:,.0f}", 1),
    ("lat_p50_ms", "    POST->receipt p50 (ms)", "{:.1f}", 1),
    ("lat_p99_ms", "    POST->receipt p99 (ms)", "{:.1f}", 1),
    ("cpu_send_s", "    server CPU during send (s)", "{:.2f}", 1),
    ("nx_cpu_send_s", "    nx-27017 CPU during send (s)", "{:.2f}", 1),
    ("cpu_hold_s", "idle hold: server CPU (s)", "{:.2f}", 1),
    ("nx_cpu_hold_s", "idle hold: nx-27017 CPU (s)", "{:.2f}", 1),
    ("shutdown_s", "shutdown after disconnect (s)", "{:.2f}", 1),
]


# None here means "did not complete within the phase timeout", shown as n/a.
NA_KEYS = {"connect_s", "send_all_s", "first_post_to_last_recv_s", "rest_all_s"}


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def table(
    n: int, runs: dict[str, list[dict[str, Any]]], registration: tuple[int, float] | None
) -> str:
    reps = max((len(v) for v in runs.values()), default=0)
    out = [f"N = {n:,}  (median of {reps} run(s) each; one fresh server process per run)"]
    out.append(f"{'':40} {'ours':>12} {'bare':>12} {'ours/bare':>10}")
    for key, label, fmt, scale in ROWS:
        vals = {k: median_of(runs.get(k, []), key) for k in ("ours", "bare")}
        if vals["ours"] is None and vals["bare"] is None and key not in ("connect_s", "send_all_s"):
            continue
        cells = [
            fmt.format(vals[k] * scale)
            if vals[k] is not None
            else ("n/a" if runs.get(k) and key in NA_KEYS else "-")
            for k in ("ours", "bare")
        ]
        ratio = f"{vals['ours'] / vals['bare']:.2f}x" if vals["ours"] and vals["bare"] else ""
        out.append(f"{label:40} {cells[0]:>12} {cells[1]:>12} {ratio:>10}")
    if registration:
        count, seconds = registration
        out.append(
            f"setup (ours only, not in the figures): registered {count:,} modules via "
            f"POST /module/register in {seconds:.1f} s ({count / seconds:,.0f}/s)"
        )
    for kind, kind_runs in runs.items():
        for r in kind_runs:
            flags = []
            if r.get("incomplete"):
                failed = r.get("connect_error_count", 0)
                example = (
                    f", e.g. {r['connect_errors'][0]}" if failed and r.get("connect_errors") else ""
                )
                pending = r["n"] - r.get("connected", 0) - failed
                flags.append(
                    f"INCOMPLETE within {r.get('phase_timeout', '?')} s phases: connected "
                    f"{r.get('connected', 0):,} of {r['n']:,} ({failed:,} handshakes refused{example}; "
                    f"{pending:,} not done when the phase ended); "
                    f"received {r.get('received', 0):,} of {r.get('connected', 0):,}"
                )
            if r.get("send_non_200"):
                flags.append(f"non-200 sends={r['send_non_200']}")
            if r.get("unexpected_closes"):
                flags.append(f"unexpected closes={r['unexpected_closes']}")
            if not r.get("shutdown_clean", True):
                flags.append("shutdown needed SIGKILL")
            if r.get("error"):
                flags.append(f"error: {r['error']}")
            if flags:
                out.append(f"  ! {kind}: " + "; ".join(flags))
    return "\n".join(out)


def raw_line(r: dict[str, Any]) -> str:
    def f(key: str, fmt: str = "{:.2f}") -> str:
        v = r.get(key)
        return fmt.format(v) if isinstance(v, int | float) else "-"

    return (
        f"  {r['kind']:4} n={r['n']:>6} connect={f('connect_s')}s rss/sock={f('rss_per_socket_kib', '{:.1f}')}KiB "
        f"send_all={f('send_all_s')}s rest={f('rest_all_s')}s p50={f('lat_p50_ms', '{:.0f}')}ms "
        f"cpu(conn/send)={f('cpu_connect_s')}/{f('cpu_send_s')}s shutdown={f('shutdown_s')}s "
        f"load1={f('loadavg_before', '{:.1f}')}->{f('loadavg_after', '{:.1f}')}"
    )


def code_version() -> str:
    """The commit under test, and which tracked files differ from it."""
    import subprocess

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    status = git("status", "--short", "--untracked-files=no").splitlines()
    dirty = [line.split(maxsplit=1)[1] for line in status if line.strip()]
    return f"commit {head}" + (f" + local changes in {', '.join(dirty)}" if dirty else " (clean)")


# -- main ---------------------------------------------------------------------------------
async def amain(args: argparse.Namespace) -> int:
    started = time.monotonic()
    soft, hard = raise_nofile()
    need = max(args.n) + 200
    print(
        f"bench_connections: N={args.n} repeats={args.repeats} clients={args.clients} "
        f"connect_concurrency={args.connect_concurrency}/client send_concurrency={args.send_concurrency}/client; "
        f"{os.cpu_count()} CPUs, python {platform.python_version()}, RLIMIT_NOFILE {soft}/{hard}",
        flush=True,
    )
    print(f"code under test: {code_version()}", flush=True)
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {loadavg()}", flush=True)
    if soft < need:
        print(
            f"WARNING: RLIMIT_NOFILE {soft} < {need} needed by the server for N={max(args.n)}",
            flush=True,
        )
    per_client = max(args.n) // args.clients + 100
    if soft < per_client:
        print(f"WARNING: RLIMIT_NOFILE {soft} < {per_client} needed per client process", flush=True)

    results: dict[int, dict[str, Any]] = {}
    tables: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-conn-") as tmp:
        for n in args.n:
            data_dir = Path(tmp) / f"ours-{n}"
            t = time.monotonic()
            hashes, reg_s = await register_modules(n, data_dir, args.register_concurrency, f"n{n}")
            print(
                f"[{time.monotonic() - started:6.1f}s] N={n}: registered {n} modules in {reg_s:.1f} s "
                f"({n / reg_s:.0f}/s; with server start/stop {time.monotonic() - t:.1f} s)",
                flush=True,
            )
            runs: dict[str, list[dict[str, Any]]] = {"ours": [], "bare": []}
            for rep in range(args.repeats):
                order = ("ours", "bare") if rep % 2 == 0 else ("bare", "ours")
                for kind in order:
                    failed = [r for r in runs[kind] if r.get("incomplete") or r.get("error")]
                    if failed and not args.repeat_failed:
                        print(
                            f"[skip] {kind} N={n} rep {rep + 1}: rep {len(runs[kind])} did not complete "
                            "(--repeat-failed to repeat anyway)",
                            flush=True,
                        )
                        continue
                    if time.monotonic() - started > args.budget:
                        print(
                            f"[budget] {args.budget:.0f} s exceeded: skipping {kind} N={n} rep {rep + 1}",
                            flush=True,
                        )
                        continue
                    bare_hashes = [f"bare{i:05d}{h[9:]}" for i, h in enumerate(hashes)]
                    try:
                        r = await run_one(
                            kind,
                            n,
                            hashes if kind == "ours" else bare_hashes,
                            data_dir if kind == "ours" else Path(tmp) / f"bare-{n}",
                            args,
                        )
                    except Exception as exc:  # noqa: BLE001 - report and go on
                        r = {"kind": kind, "n": n, "error": f"{type(exc).__name__}: {exc}"[:300]}
                    runs[kind].append(r)
                    print(
                        f"[{time.monotonic() - started:6.1f}s] rep {rep + 1}" + raw_line(r),
                        flush=True,
                    )
                    if r.get("incomplete") or r.get("error"):
                        problems = {
                            k: r.get(k)
                            for k in ("connect_errors", "send_errors", "server_tail", "error")
                        }
                        print(f"    problems: {json.dumps(problems)[:1500]}", flush=True)
            results[n] = {"registration_s": reg_s, "runs": runs}
            tables.append(table(n, runs, (n, reg_s)))

    print()
    print("=" * 78)
    print("\n\n".join(tables))
    print("=" * 78)
    print(f"total wall time {time.monotonic() - started:.0f} s")
    if args.json:
        await asyncio.to_thread(
            Path(args.json).write_text, json.dumps(results, indent=1, default=str)
        )
        print(f"raw results written to {args.json}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--n", type=int, nargs="+", default=[1000, 10000], help="socket counts (default 1000 10000)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: N=200")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=50,
        help="handshakes in flight per client (default 50)",
    )
    p.add_argument(
        "--send-concurrency",
        type=int,
        default=32,
        help="keep-alive POST connections per client (default 32)",
    )
    p.add_argument("--register-concurrency", type=int, default=16)
    p.add_argument("--settle", type=float, default=1.5, help="pause before RSS readings (s)")
    p.add_argument(
        "--phase-timeout",
        type=float,
        default=60.0,
        help="bound on the connect and the send phase (s)",
    )
    p.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="idle seconds with N connected, to cost pings/heartbeats",
    )
    p.add_argument(
        "--repeat-failed", action="store_true", help="repeat a configuration even after it failed"
    )
    p.add_argument("--shutdown-timeout", type=float, default=30.0)
    p.add_argument(
        "--budget", type=float, default=540.0, help="skip remaining runs after this many seconds"
    )
    p.add_argument("--json", help="write raw per-run results here")
    p.add_argument(
        "--profile-dir",
        help="run `ours` under cProfile, stats files here (slows it; not for figures)",
    )
    args = p.parse_args()
    if args.quick:
        args.n = [200]
    if args.profile_dir:
        args.profile_dir = Path(args.profile_dir).resolve()
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
