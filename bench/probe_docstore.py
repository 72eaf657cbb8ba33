"""Probe: why `ours` collapses at N=10,000 in bench_connections.

Times, on the embedded nx-27017 started exactly as run.py starts it (through
tornado_sched.docserver_shim), the per-module operations of the registry and the
hub, against one document near the start and one near the end of a `modules`
collection of 10,000 documents with the indexes `DocumentStore.ensure_indexes`
creates:

    find_one({"hash": h})                       ModuleSocketHandler.prepare, send_message
    update_one({"hash": h}, {"$set": ...})      what hub flushes do (bulk UpdateOne by hash)
    update_one({"_id": id}, {"$set": ...})      the same update addressed by _id

    python bench/probe_docstore.py [--size 10000] [--ops 50]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymongo import AsyncMongoClient, UpdateOne  # noqa: E402

from tornado_sched.docserver import EmbeddedDocumentServer  # noqa: E402


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=10000)
    p.add_argument("--ops", type=int, default=50)
    args = p.parse_args()
    size, ops = args.size, args.ops
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="probe-nx-") as tmp:
        server = EmbeddedDocumentServer(Path(tmp))
        uri = await server.start()
        client: AsyncMongoClient = AsyncMongoClient(uri, tz_aware=True)
        col = client["probe"]["modules"]
        try:
            for key in ("name", "hash", "module_id"):
                await col.create_index(key, unique=True)
            docs = [
                {
                    "name": f"m{i:06d}",
                    "hash": secrets.token_hex(20),
                    "module_id": i + 1,
                    "online": False,
                    "last_heartbeat": None,
                    "connected_at": None,
                    "remote_address": None,
                    "created_at": now,
                    "description": "d",
                    "input_data": [],
                    "output_data": [{"name": "o"}],
                    "modelHash": "x",
                    "updated_at": now,
                }
                for i in range(size)
            ]
            for start in range(0, size, 1000):
                await col.insert_many(docs[start : start + 1000])

            async def per_op(factory, batch) -> float:  # noqa: ANN001
                t0 = time.perf_counter()
                for d in batch:
                    await factory(d)
                return (time.perf_counter() - t0) / len(batch) * 1000

            state = {
                "online": True,
                "connected_at": now,
                "last_heartbeat": now,
                "remote_address": "127.0.0.1",
            }
            print(
                f"nx-27017 via tornado_sched.docserver_shim, {size:,} module documents, ms per operation"
            )
            print(f"{'operation':58}{'docs 0..' + str(ops):>16}{f'docs {size - ops}..{size}':>18}")
            head, tail = docs[:ops], docs[-ops:]
            rows = [
                ("find_one({hash})", lambda d: col.find_one({"hash": d["hash"]})),
                (
                    "update_one({hash}, $set str)          [SQL path]",
                    lambda d: col.update_one(
                        {"hash": d["hash"]}, {"$set": {"remote_address": "x"}}
                    ),
                ),
                (
                    "update_one({hash}, $set hub state)    [shim: Python path]",
                    lambda d: col.update_one({"hash": d["hash"]}, {"$set": state}),
                ),
                (
                    "update_one({_id},  $set hub state)",
                    lambda d: col.update_one({"_id": d["_id"]}, {"$set": state}),
                ),
            ]
            for label, factory in rows:
                print(
                    f"{label:58}{await per_op(factory, head):>16.2f}{await per_op(factory, tail):>18.2f}"
                )
            for label, batch in (("head", head), ("tail", tail)):
                t0 = time.perf_counter()
                await col.bulk_write(
                    [UpdateOne({"hash": d["hash"]}, {"$set": state}) for d in batch], ordered=False
                )
                print(
                    f"bulk_write of {ops} UpdateOne({{hash}}) ({label} docs): "
                    f"{(time.perf_counter() - t0) / ops * 1000:.2f} ms per op"
                )
        finally:
            await client.close()
            await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
