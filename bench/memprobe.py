"""Where a connected socket's memory goes: tracemalloc in the server under test.

    python bench/memprobe.py --n 1000 [--kind ours|bare] [--top 25] [--depth 8]
    python bench/memprobe.py --n 1000 --smaps [--online]

Starts the server (`run.py` or `bare_server.py`) under `memprobe.py --child`. By
default the child runs tracemalloc (25 frames) and writes a snapshot on SIGUSR1;
snapshots are taken idle and with N sockets connected (client processes as in
bench_connections), and the top allocation sites of the difference are printed with
bytes per socket, by line and by traceback (allocation site first). Tracemalloc sees
Python allocations only, not C buffers (zlib, OpenSSL's scrypt) or allocator slack.

`--smaps` runs without tracemalloc and prints the RSS growth per memory mapping
(/proc/<pid>/smaps) instead: a thread's malloc arena, the main heap, file mappings.
`--online` makes the authenticated `GET /module/online` call that bench_connections
makes between its two RSS readings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import runpy
import signal
import sys
import tempfile
import time
from pathlib import Path

SELF = Path(__file__).resolve()
BENCH = SELF.parent
ROOT = BENCH.parent


SIZES: dict[str, int] = {}


def smaps(pid: int) -> dict[str, int]:
    """Resident KiB per mapping (start address + name) of a process."""
    out: dict[str, int] = {}
    sizes: dict[str, int] = {}
    key = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            start, end = (int(x, 16) for x in head[0].split("-"))
            name = head[5] if len(head) > 5 else "anon"
            key = f"{head[0].split('-')[0]} {name}"
            sizes[key] = (end - start) // 1024
        elif head[0] == "Rss:":
            out[key] = int(head[1])
    SIZES.update(sizes)
    return out


def child() -> None:
    import tracemalloc

    if os.environ.get("MEMPROBE_TRACE", "1") == "1":
        tracemalloc.start(25)
    out = Path(os.environ["MEMPROBE_DIR"])
    count = [0]

    def dump(*_: object) -> None:
        count[0] += 1
        import gc

        gc.collect()
        tracemalloc.take_snapshot().dump(str(out / f"snap{count[0]}.pickle"))
        (out / f"done{count[0]}").write_text("")

    signal.signal(signal.SIGUSR1, dump)
    script = sys.argv[2]
    sys.argv = [script]
    sys.path.insert(0, str(Path(script).parent))
    runpy.run_path(script, run_name="__main__")


async def amain(args: argparse.Namespace) -> None:
    import tracemalloc

    import bench_connections as bc
    from kahttp import raise_nofile

    raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="memprobe-"))
    data_dir = tmp / "data"
    hashes, _ = await bc.register_modules(args.n, data_dir, 16, "mem")
    os.environ["MEMPROBE_DIR"] = str(tmp)
    os.environ["MEMPROBE_TRACE"] = "0" if args.smaps else "1"
    orig = bc.PY
    # start_server runs [PY, script]; run it through this file instead.
    wrapper = tmp / "py.sh"
    wrapper.write_text(f"#!/bin/sh\nexec {orig} {SELF} --child \"$@\"\n")  # noqa: ASYNC240 - setup
    wrapper.chmod(0o755)
    bc.PY = str(wrapper)
    server = await bc.start_server(args.kind, data_dir)
    bc.PY = orig


    async def snap(i: int) -> tracemalloc.Snapshot | None:
        if args.smaps:
            smaps_by[i] = smaps(server.pid)
            return None
        os.kill(server.pid, signal.SIGUSR1)
        while not (tmp / f"done{i}").exists():  # noqa: ASYNC110 - another process writes it
            await asyncio.sleep(0.1)
        return tracemalloc.Snapshot.load(str(tmp / f"snap{i}.pickle"))

    workers = []
    smaps_by: dict[int, dict[str, int]] = {}
    try:
        await asyncio.sleep(2.0)
        rss0 = bc.rss_kib(server.pid)
        before = await snap(1)
        shares = [hashes[i::2] for i in range(2)]
        cfg = {"ws_url": f"ws://127.0.0.1:{server.port}/websocket", "http_host": "127.0.0.1",
               "http_port": server.port, "send_path": "/send", "headers": {},
               "connect_concurrency": 50, "send_concurrency": 8}
        workers = list(await asyncio.gather(*(bc.Worker.start(dict(cfg, hashes=s)) for s in shares)))
        replies = await bc.broadcast(workers, {"cmd": "connect", "timeout": 120}, 120)
        print("connected", sum(r["connected"] for r in replies))
        if args.online:  # as bench_connections does before its RSS reading
            print("online list", await bc.online_count(server))
        await asyncio.sleep(args.settle)
        rss1 = bc.rss_kib(server.pid)
        after = await snap(2)
    finally:
        for w in workers:
            await w.stop()
        await bc.stop_server(server, 60)
    n = args.n
    print(f"{args.kind}: RSS {rss0} -> {rss1} KiB: {(rss1 - rss0) / n:.1f} KiB/socket")
    if args.smaps:
        a, b = smaps_by[1], smaps_by[2]
        rows = sorted(((b.get(k, 0) - a.get(k, 0), k) for k in set(a) | set(b)), reverse=True)
        for diff, k in rows[: args.top]:
            print(f"{diff:8d} KiB  {k} (mapping {SIZES.get(k, 0)} KiB)")
        return
    filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    before, after = before.filter_traces(filters), after.filter_traces(filters)
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(f"traced Python growth {total / 1024:.0f} KiB = {total / n:.0f} B/socket")
    for kind in ("lineno", "traceback"):
        stats = after.compare_to(before, kind)
        stats.sort(key=lambda s: -s.size_diff)
        print(f"\n-- top by {kind} --")
        for s in stats[: args.top]:
            if kind == "lineno":
                print(f"{s.size_diff / n:8.0f} B/socket {s.count_diff / n:6.2f} blocks  {s.traceback[0]}")
            else:
                # Most recent frame last: the allocation site, then its callers.
                print(f"{s.size_diff / n:8.0f} B/socket  {s.count_diff / n:6.2f} blocks")
                for f in list(s.traceback)[::-1][:args.depth]:
                    print(f"          {f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child()
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--kind", choices=["ours", "bare"], default="ours")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--smaps", action="store_true", help="no tracemalloc: RSS growth per mapping")
    parser.add_argument("--online", action="store_true", help="one authenticated GET /module/online at N")
    parser.add_argument("--depth", type=int, default=6, help="frames shown per traceback")
    sys.path.insert(0, str(BENCH))
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    t = time.monotonic()
    main()
    print(f"({time.monotonic() - t:.0f} s)")
