"""Conformance of the embedded document server (nx-27017 via our shim) with MongoDB.

Each test pins one semantic our store code relies on, or one known deviation the store
code is written to avoid (docs/design.md). When nx-27017, neosqlite or the shim
changes, these say what moved.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pymongo
import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from tornado_sched.docserver import EmbeddedDocumentServer

# BSON dates have millisecond precision; keep test values exact.
T0 = datetime(2030, 5, 5, 1, 2, 3, 456000, tzinfo=UTC)
PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def docserver_uri(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server = EmbeddedDocumentServer(tmp_path_factory.mktemp("docserver"))
    uri = await server.start()
    try:
        yield uri
    finally:
        await server.stop()


@pytest.fixture
async def db(docserver_uri: str) -> AsyncIterator[AsyncDatabase]:
    # A database per test: in --data-dir mode each is its own SQLite file.
    client: AsyncMongoClient = AsyncMongoClient(docserver_uri, tz_aware=True)
    try:
        yield client[f"t_{uuid.uuid4().hex[:12]}"]
    finally:
        await client.close()


def _process_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (a zombie counts as gone)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    # The state letter follows the parenthesised command name.
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


async def _wait_gone(pid: int) -> bool:
    for _ in range(100):
        if _process_gone(pid):
            return True
        await asyncio.sleep(0.05)
    return _process_gone(pid)


# --- types ------------------------------------------------------------------------


async def test_insert_keeps_types(db: AsyncDatabase) -> None:
    oid = ObjectId()
    doc = {
        "_id": oid,
        "flag": True,
        "off": False,
        "at": T0,
        "ref": ObjectId(),
        "none": None,
        "n": 3,
        "x": 1.5,
        "s": "text",
        "nested": {"at": T0, "flag": False, "list": [1, "a", {"deep": T0}]},
        "steps": [{"status": "pending", "at": T0}],
    }
    await db.c.insert_one(dict(doc))
    got = await db.c.find_one({"_id": oid})
    assert got == doc
    assert got["flag"] is True and got["off"] is False
    assert type(got["at"]) is datetime and got["at"].tzinfo is not None
    assert isinstance(got["ref"], ObjectId)
    assert type(got["n"]) is int and type(got["x"]) is float
    assert got["nested"]["list"][2]["deep"] == T0
    assert type(got["steps"][0]["at"]) is datetime


async def test_set_bool_stays_bool(db: AsyncDatabase) -> None:
    await db.c.insert_one({"_id": "a", "enabled": False})
    await db.c.update_one({"_id": "a"}, {"$set": {"enabled": True}})
    got = await db.c.find_one({"_id": "a"})
    assert got["enabled"] is True
    assert await db.c.count_documents({"enabled": True}) == 1
    await db.c.update_one({"_id": "a"}, {"$set": {"enabled": False, "nested.flag": True}})
    got = await db.c.find_one({"_id": "a"})
    assert got["enabled"] is False
    assert got["nested"] == {"flag": True}
    assert got["nested"]["flag"] is True


async def test_set_datetime_stays_datetime_and_range_and_sort_work(db: AsyncDatabase) -> None:
    await db.c.insert_many([{"_id": f"d{i}", "at": None} for i in range(4)])
    # Set out of order, so a sort by _id or insertion would not pass by accident.
    offsets = {"d0": 3, "d1": 1, "d2": 0, "d3": 2}
    for _id, days in offsets.items():
        await db.c.update_one({"_id": _id}, {"$set": {"at": T0 + timedelta(days=days)}})

    got = await db.c.find_one({"_id": "d1"})
    assert type(got["at"]) is datetime
    assert got["at"] == T0 + timedelta(days=1)

    in_range = db.c.find({"at": {"$gte": T0 + timedelta(days=1), "$lt": T0 + timedelta(days=3)}})
    assert sorted(d["_id"] for d in await in_range.to_list()) == ["d1", "d3"]

    ascending = await db.c.find({}, sort=[("at", pymongo.ASCENDING)]).to_list()
    assert [d["_id"] for d in ascending] == ["d2", "d1", "d3", "d0"]
    descending = await db.c.find({}, sort=[("at", pymongo.DESCENDING)]).to_list()
    assert [d["_id"] for d in descending] == ["d0", "d3", "d1", "d2"]


async def test_set_datetime_on_inserted_and_updated_docs_sorts_together(db: AsyncDatabase) -> None:
    # Mixed provenance: one date came with the insert, one with $set.
    await db.c.insert_one({"_id": "inserted", "at": T0 + timedelta(hours=1)})
    await db.c.insert_one({"_id": "updated", "at": None})
    await db.c.update_one({"_id": "updated"}, {"$set": {"at": T0}})
    ordered = await db.c.find({}, sort=[("at", pymongo.ASCENDING)]).to_list()
    assert [d["_id"] for d in ordered] == ["updated", "inserted"]
    assert await db.c.count_documents({"at": {"$lt": T0 + timedelta(minutes=30)}}) == 1


async def test_push_subdocument_with_datetime_keeps_types(db: AsyncDatabase) -> None:
    await db.c.insert_one({"_id": "r", "events": []})
    await db.c.update_one(
        {"_id": "r"}, {"$push": {"events": {"kind": "start", "at": T0, "ok": True}}}
    )
    await db.c.update_one(
        {"_id": "r"},
        {"$push": {"events": {"$each": [{"kind": "end", "at": T0 + timedelta(seconds=5)}]}}},
    )
    await db.c.update_one({"_id": "r"}, {"$addToSet": {"stamps": T0}})
    got = await db.c.find_one({"_id": "r"})
    assert got["events"] == [
        {"kind": "start", "at": T0, "ok": True},
        {"kind": "end", "at": T0 + timedelta(seconds=5)},
    ]
    assert type(got["events"][0]["at"]) is datetime
    assert got["events"][0]["ok"] is True
    assert got["stamps"] == [T0]
    assert await db.c.count_documents({"events.at": T0}) == 1


async def test_set_on_insert_upsert_keeps_types(db: AsyncDatabase) -> None:
    await db.c.update_one(
        {"_id": "u"}, {"$setOnInsert": {"created": T0, "active": True}}, upsert=True
    )
    await db.c.update_one({"_id": "u"}, {"$setOnInsert": {"created": 0}}, upsert=True)
    got = await db.c.find_one({"_id": "u"})
    assert got == {"_id": "u", "created": T0, "active": True}
    assert got["active"] is True


async def test_set_none_and_unset(db: AsyncDatabase) -> None:
    await db.c.insert_one({"_id": "a", "x": 1, "y": 2})
    await db.c.update_one({"_id": "a"}, {"$set": {"x": None}, "$unset": {"y": ""}})
    got = await db.c.find_one({"_id": "a"})
    assert got == {"_id": "a", "x": None}


# --- updates and counters ------------------------------------------------------------


async def test_inc(db: AsyncDatabase) -> None:
    # Typed neighbours: $inc takes neosqlite's SQL path, which must leave them alone.
    await db.c.insert_one({"_id": "a", "n": 1, "at": T0, "flag": True})
    await db.c.update_one({"_id": "a"}, {"$inc": {"n": 2, "fresh": 5}})
    await db.c.update_one({"_id": "a"}, {"$inc": {"n": -1}})
    got = await db.c.find_one({"_id": "a"})
    assert got == {"_id": "a", "n": 2, "at": T0, "flag": True, "fresh": 5}
    assert got["flag"] is True and type(got["n"]) is int


async def test_counter_upserts_stay_unique_under_concurrency(docserver_uri: str) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    clients = [AsyncMongoClient(docserver_uri) for _ in range(4)]
    try:

        async def worker(client: AsyncMongoClient) -> list[int]:
            seqs = []
            for _ in range(200):
                doc = await client[name].counters.find_one_and_update(
                    {"_id": "runs"},
                    {"$inc": {"seq": 1}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                seqs.append(doc["seq"])
            return seqs

        results = await asyncio.gather(*(worker(c) for c in clients))
        seqs = [s for r in results for s in r]
        assert sorted(seqs) == list(range(1, 801))
        assert await clients[0][name].counters.find({}).to_list() == [{"_id": "runs", "seq": 800}]
    finally:
        for client in clients:
            await client.close()


async def test_insert_duplicate_raises(db: AsyncDatabase) -> None:
    await db.c.create_index("name", unique=True)
    await db.c.insert_one({"_id": "a", "name": "alpha"})
    with pytest.raises(DuplicateKeyError):
        await db.c.insert_one({"_id": "b", "name": "alpha"})
    with pytest.raises(DuplicateKeyError):
        await db.c.insert_one({"_id": "a", "name": "other"})
    assert await db.c.count_documents({}) == 1


async def test_create_index_unique(db: AsyncDatabase) -> None:
    await db.c.create_index([("key", pymongo.ASCENDING)], unique=True)
    # Idempotent, as our start-up code calls it every time.
    await db.c.create_index([("key", pymongo.ASCENDING)], unique=True)
    info = await db.c.index_information()
    # Look indexes up by key: nx-27017 lists "idx_c_key" where create_index returned
    # "key_1", so index names are not portable (never drop an index by name).
    on_key = [spec for spec in info.values() if spec["key"] == [("key", 1)]]
    assert len(on_key) == 1
    assert on_key[0].get("unique") is True
    await db.c.insert_one({"key": "k"})
    with pytest.raises(DuplicateKeyError):
        await db.c.insert_one({"key": "k"})


async def test_positional_dollar_updates_matched_element(db: AsyncDatabase) -> None:
    await db.c.insert_one(
        {
            "_id": "run1",
            "steps": [
                {"module_hash": "h1", "status": "pending"},
                {"module_hash": "h2", "status": "pending"},
            ],
        }
    )
    result = await db.c.update_one(
        {"_id": "run1", "steps.module_hash": "h2"},
        {"$set": {"steps.$.status": "success", "steps.$.ended": T0}},
    )
    assert result.matched_count == 1
    got = await db.c.find_one({"_id": "run1"})
    assert got["steps"] == [
        {"module_hash": "h1", "status": "pending"},
        {"module_hash": "h2", "status": "success", "ended": T0},
    ]


async def test_update_many(db: AsyncDatabase) -> None:
    await db.c.insert_many(
        [{"_id": f"r{i}", "state": "running" if i % 2 else "done"} for i in range(6)]
    )
    result = await db.c.update_many(
        {"state": "running"}, {"$set": {"state": "failed", "stopped": True, "at": T0}}
    )
    assert (result.matched_count, result.modified_count) == (3, 3)
    failed = await db.c.find({"state": "failed"}, sort=[("_id", 1)]).to_list()
    assert [d["_id"] for d in failed] == ["r1", "r3", "r5"]
    assert all(d["stopped"] is True and d["at"] == T0 for d in failed)
    assert await db.c.count_documents({"state": "done"}) == 3


# --- queries ---------------------------------------------------------------------------


async def test_find_sort_skip_limit(db: AsyncDatabase) -> None:
    await db.c.insert_many([{"_id": f"w{i:02d}", "rank": (i * 7) % 10} for i in range(10)])
    page = await db.c.find({}, sort=[("rank", pymongo.DESCENDING)], skip=2, limit=3).to_list()
    assert [d["rank"] for d in page] == [7, 6, 5]
    chained = await db.c.find({}).sort("rank", 1).skip(8).limit(5).to_list()
    assert [d["rank"] for d in chained] == [8, 9]


async def test_count_documents(db: AsyncDatabase) -> None:
    await db.c.insert_many([{"kind": "a"}, {"kind": "a"}, {"kind": "b"}])
    assert await db.c.count_documents({}) == 3
    assert await db.c.count_documents({"kind": "a"}) == 2
    assert await db.c.count_documents({"kind": "zzz"}) == 0


async def test_delete_many_before_datetime(db: AsyncDatabase) -> None:
    await db.c.insert_many([{"_id": f"l{i}", "at": T0 + timedelta(days=i)} for i in range(5)])
    # One date set by update, so the deletion also sees the shimmed $set path.
    await db.c.update_one({"_id": "l4"}, {"$set": {"at": T0 - timedelta(days=1)}})
    result = await db.c.delete_many({"at": {"$lt": T0 + timedelta(days=2)}})
    assert result.deleted_count == 3
    remaining = await db.c.find({}, sort=[("_id", 1)]).to_list()
    assert [d["_id"] for d in remaining] == ["l2", "l3"]


async def test_in_query_on_strings(db: AsyncDatabase) -> None:
    await db.c.insert_many([{"_id": s, "v": s.upper()} for s in ("a", "b", "c", "d")])
    got = await db.c.find({"_id": {"$in": ["b", "d", "zz"]}}, sort=[("_id", 1)]).to_list()
    assert [d["_id"] for d in got] == ["b", "d"]
    assert await db.c.count_documents({"v": {"$in": ["A", "C"]}}) == 2


async def test_query_on_string_id_field(db: AsyncDatabase) -> None:
    wf_id = str(ObjectId())
    await db.c.insert_many(
        [
            {"workflow_id": wf_id, "n": 1},
            {"workflow_id": wf_id, "n": 2},
            {"workflow_id": str(ObjectId()), "n": 3},
        ]
    )
    got = await db.c.find({"workflow_id": wf_id}, sort=[("n", 1)]).to_list()
    assert [d["n"] for d in got] == [1, 2]


async def test_find_by_objectid_in_id(db: AsyncDatabase) -> None:
    result = await db.c.insert_one({"v": 1})
    assert isinstance(result.inserted_id, ObjectId)
    got = await db.c.find_one({"_id": result.inserted_id})
    assert got == {"_id": result.inserted_id, "v": 1}


# --- known deviations the store code avoids (docs/design.md) ------------------------


async def test_deviation_objectid_outside_id_does_not_match(db: AsyncDatabase) -> None:
    """Why references are string ids. If this fails, nx-27017 got better."""
    ref = ObjectId()
    await db.c.insert_one({"ref": ref})
    assert (await db.c.find_one({}))["ref"] == ref
    assert await db.c.count_documents({"ref": ref}) == 0


async def test_deviation_find_one_and_update_swallows_duplicate_key(db: AsyncDatabase) -> None:
    """Why unique things are created with insert_one. Real MongoDB raises here."""
    await db.c.create_index("name", unique=True)
    await db.c.insert_one({"_id": "a", "name": "alpha"})
    await db.c.insert_one({"_id": "b", "name": "beta"})
    got = await db.c.find_one_and_update({"_id": "b"}, {"$set": {"name": "alpha"}})
    assert got is None
    assert (await db.c.find_one({"_id": "b"}))["name"] == "beta"


async def test_deviation_array_filters_modify_nothing(db: AsyncDatabase) -> None:
    """Why array elements are updated with the positional $."""
    await db.c.insert_one({"_id": "a", "steps": [{"h": "x", "s": "p"}]})
    await db.c.update_one(
        {"_id": "a"}, {"$set": {"steps.$[e].s": "done"}}, array_filters=[{"e.h": "x"}]
    )
    assert (await db.c.find_one({"_id": "a"}))["steps"] == [{"h": "x", "s": "p"}]


# --- process lifecycle -----------------------------------------------------------------


async def test_stop_ends_process_and_removes_pid_file(tmp_path: pathlib.Path) -> None:
    server = EmbeddedDocumentServer(tmp_path)
    # A stale pid file (as a SIGKILL leaves) must not block the start.
    (tmp_path / "mongo").mkdir()
    server.pid_file.write_text("4194304")
    uri = await server.start()
    pid = server.pid
    assert pid is not None and uri == server.uri
    # No TCP port: a Unix socket (the server has no authentication).
    assert uri == f"mongodb://{quote(str(server.socket_path), safe='')}/"
    assert server.socket_path.is_socket()
    assert server.pid_file.read_text().strip() == str(pid)
    client: AsyncMongoClient = AsyncMongoClient(uri)
    assert (await client.admin.command("ping"))["ok"] == 1
    await client.close()

    await server.stop()
    assert _process_gone(pid)
    assert not server.pid_file.exists() and not server.socket_path.exists()
    assert server.pid is None and server.uri is None
    await server.stop()  # idempotent


async def test_data_survives_restart(tmp_path: pathlib.Path) -> None:
    server = EmbeddedDocumentServer(tmp_path)
    uri = await server.start()
    client: AsyncMongoClient = AsyncMongoClient(uri, tz_aware=True)
    await client.app.runs.insert_one({"_id": "r1", "at": T0, "ok": True})
    await client.app.runs.update_one({"_id": "r1"}, {"$set": {"done": T0, "ok": False}})
    await client.close()
    await server.stop()

    uri = await server.start()
    try:
        client = AsyncMongoClient(uri, tz_aware=True)
        got = await client.app.runs.find_one({"_id": "r1"})
        await client.close()
    finally:
        await server.stop()
    assert got == {"_id": "r1", "at": T0, "ok": False, "done": T0}
    assert got["ok"] is False


async def test_start_failure_reports_stderr(tmp_path: pathlib.Path) -> None:
    # A directory where the log file should be makes nx-27017 die at start-up.
    (tmp_path / "mongo" / "nx.log").mkdir(parents=True)
    server = EmbeddedDocumentServer(tmp_path)
    with pytest.raises(RuntimeError, match="IsADirectoryError"):
        await server.start()
    assert server.pid is None
    assert not server.pid_file.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
async def test_server_dies_with_sigkilled_parent(tmp_path: pathlib.Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, pathlib, sys
        from tornado_sched.docserver import EmbeddedDocumentServer

        async def main():
            server = EmbeddedDocumentServer(pathlib.Path({str(tmp_path)!r}))
            await server.start()
            print(server.pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=PROJECT_ROOT, stdout=subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(parent.stdout.readline(), 20)
        child_pid = int(line)
        assert not _process_gone(child_pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        await parent.wait()
    try:
        assert await _wait_gone(child_pid)
    finally:
        if not _process_gone(child_pid):
            os.kill(child_pid, signal.SIGKILL)
