"""Modules: registration by name, hash authentication, stored online state.

A module is identified by its name; registering again updates its description,
data requirements and modelHash and keeps its hash and module_id. The hash is a
server-generated secret, the module's only credential on the WebSocket: registering
an existing name hands it back only to a caller who proves it already holds it (the
current hash) or who registers with operator credentials (the seed's "same name ->
same hash"). An admin can rotate a hash; workflows follow the new one.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import DuplicateKeyError

from .clock import read_datetime, utcnow
from .errors import Conflict, Forbidden, Invalid, NotFound
from .logs import short_secret
from .requirements import (
    DataRequirement,
    parse_requirement_list,
    requirement_docs,
    requirements_from_docs,
)
from .stores import DocumentStore
from .text import has_control_chars

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModuleRecord:
    """A registered module as stored (types normalised for both MongoDB servers)."""

    module_id: int
    name: str
    hash: str
    doc_id: Any
    description: str
    input_data: list[dict[str, Any]]
    output_data: list[dict[str, Any]]
    model_hash: str
    online: bool
    last_heartbeat: datetime | None
    connected_at: datetime | None
    remote_address: str | None
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ModuleRecord:
        return cls(
            module_id=int(doc["module_id"]),
            name=str(doc["name"]),
            hash=str(doc["hash"]),
            doc_id=doc["_id"],
            description=str(doc.get("description") or ""),
            input_data=list(doc.get("input_data") or []),
            output_data=list(doc.get("output_data") or []),
            model_hash=str(doc.get("modelHash") or ""),
            online=bool(doc.get("online")),
            last_heartbeat=read_datetime(doc.get("last_heartbeat")),
            connected_at=read_datetime(doc.get("connected_at")),
            remote_address=doc.get("remote_address"),
            created_at=read_datetime(doc.get("created_at")),
            updated_at=read_datetime(doc.get("updated_at")),
        )

    def public(self) -> dict[str, Any]:
        return {
            "module_id": self.module_id,
            "name": self.name,
            "hash": self.hash,
            "description": self.description,
            "input_data": self.input_data,
            "output_data": self.output_data,
            "modelHash": self.model_hash,
            "online": self.online,
            "last_heartbeat": self.last_heartbeat,
            "connected_at": self.connected_at,
            "remote_address": self.remote_address,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def parse_requirements(field: str, raw: Any) -> list[dict[str, Any]]:
    """input_data / output_data as submitted -> validated documents to store (see
    `requirements.parse_requirement_list`: 400 naming the field and entry)."""
    return requirement_docs(parse_requirement_list(field, raw))


def validate_module_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise Invalid("name: required", field="name")
    name = name.strip()
    if len(name) > 100:
        raise Invalid("name: at most 100 characters", field="name")
    if has_control_chars(name):
        raise Invalid("name: must not contain control characters", field="name")
    return name


def validate_hash(value: Any, field: str = "module_hash") -> str:
    """Hashes reach queries: only plain short strings, never operator objects."""
    if not isinstance(value, str) or not value or len(value) > 128:
        raise Invalid(f"{field}: must be a module hash string", field=field)
    return value


@dataclass(frozen=True)
class ModuleRequirements:
    """A module's identity and typed data requirements: what the solver needs."""

    module_id: int
    name: str
    inputs: tuple[DataRequirement, ...]
    outputs: tuple[DataRequirement, ...]


class ModuleRegistry:
    """Module documents in the `modules` collection, with hash -> module in memory.

    The WebSocket handshake authenticates a hash on every connect; 10,000 modules
    reconnecting after a restart must not mean 10,000 store reads, so the map is
    loaded once at start and kept current by register and delete (this process is
    the only writer of `modules`)."""

    def __init__(self, docs: DocumentStore) -> None:
        self._docs = docs
        self._by_hash: dict[str, ModuleRecord] = {}
        # Cluster mode: a hash registered on another instance is read from the store
        # on its first handshake here; a hash deleted or rotated there is forgotten here.
        self.read_through = False
        self.on_forget: Callable[[str], None] = lambda _hash: None

    async def load(self) -> int:
        """Read every module once (at start). Returns how many."""
        self._by_hash = {r.hash: r for r in await self.list()}
        return len(self._by_hash)

    @property
    def _col(self) -> Any:
        return self._docs["modules"]

    async def register(
        self,
        name: str,
        description: str,
        input_data: list[dict[str, Any]],
        output_data: list[dict[str, Any]],
        model_hash: str,
        *,
        trusted: bool = True,
        proof: str = "",
    ) -> ModuleRecord:
        """Create the module, or update an existing one of that name. `trusted`
        (operator credentials) may update any module; otherwise the caller must pass
        the module's current hash as `proof`, or the hash stays secret (Forbidden)."""
        name = validate_module_name(name)
        fields = {
            "description": description,
            "input_data": input_data,
            "output_data": output_data,
            "modelHash": model_hash,
            "updated_at": utcnow(),
        }
        for _attempt in range(3):
            existing = await self._col.find_one({"name": name})
            if existing is not None:
                if not trusted and not hmac.compare_digest(proof.encode(), str(existing["hash"]).encode()):
                    raise Forbidden(
                        f"module {name!r} is already registered: pass its current hash (X-Module-Hash "
                        "header or module_hash parameter) or register with operator credentials",
                        field="module_hash",
                    )
                await self._col.update_one({"_id": existing["_id"]}, {"$set": fields})
                existing.update(fields)
                record = ModuleRecord.from_doc(existing)
                self._by_hash[record.hash] = record
                return record
            doc = {
                "name": name,
                # 160 random bits; never derived from public fields.
                "hash": secrets.token_hex(20),
                "module_id": await self._docs.next_id("modules"),
                "online": False,
                "last_heartbeat": None,
                "connected_at": None,
                "remote_address": None,
                "created_at": utcnow(),
                **fields,
            }
            try:
                await self._col.insert_one(doc)
            except DuplicateKeyError:
                continue  # a concurrent registration of the same name won; update it
            log.info("registered module %r (id %d)", name, doc["module_id"])
            record = ModuleRecord.from_doc(doc)
            self._by_hash[record.hash] = record
            return record
        raise Conflict(f"module {name!r} is being registered concurrently; retry")

    async def get(self, module_hash: str) -> ModuleRecord:
        doc = await self._col.find_one({"hash": validate_hash(module_hash)})
        if doc is None:
            raise NotFound(f"module {short_secret(module_hash)} not found")
        return ModuleRecord.from_doc(doc)

    def authenticate(self, module_hash: str) -> ModuleRecord | None:
        """The module a hash belongs to, from memory (no store read); None if unknown.
        Its online/heartbeat fields are as loaded: live state is the hub's."""
        return self._by_hash.get(module_hash)

    async def admit(self, module_hash: str) -> ModuleRecord | None:
        """The handshake's lookup: `authenticate`, and in cluster mode the store for a
        hash another instance registered since this one loaded its memory."""
        record = self._by_hash.get(module_hash)
        if record is None and self.read_through:
            record = await self.find(module_hash)
            if record is not None:
                self._by_hash[record.hash] = record
        return record

    def forget(self, module_hash: str) -> None:
        """Another instance deleted or rotated this hash."""
        self._by_hash.pop(module_hash, None)

    async def find(self, module_hash: str) -> ModuleRecord | None:
        doc = await self._col.find_one({"hash": module_hash})
        return None if doc is None else ModuleRecord.from_doc(doc)

    async def list(self) -> list[ModuleRecord]:
        return [ModuleRecord.from_doc(d) async for d in self._col.find({}).sort("module_id", 1)]

    async def names(self, hashes: list[str]) -> dict[str, str]:
        """hash -> module name for the given hashes (unknown ones are absent). From
        memory: a hash's name never changes (a new name is a new hash), and a run
        start must not pay a store query over every module of a 1,000-module
        workflow (nx-27017 answers `$in` by a scan). Hashes not in memory (another
        instance registered them) are read from the store."""
        found: dict[str, str] = {}
        missing: list[str] = []
        for module_hash in hashes:
            record = self._by_hash.get(module_hash)
            if record is None:
                missing.append(module_hash)
            else:
                found[module_hash] = record.name
        if missing:
            cursor = self._col.find({"hash": {"$in": missing}}, {"hash": 1, "name": 1})
            found.update({d["hash"]: d["name"] async for d in cursor})
        return found

    async def requirements(self, hashes: list[str]) -> dict[str, ModuleRequirements]:
        """hash -> name and typed input/output requirements (unknown hashes are absent)."""
        cursor = self._col.find(
            {"hash": {"$in": hashes}}, {"hash": 1, "name": 1, "module_id": 1, "input_data": 1, "output_data": 1}
        )
        return {
            d["hash"]: ModuleRequirements(
                module_id=int(d.get("module_id") or 0),
                name=str(d.get("name") or "?"),
                inputs=requirements_from_docs(d.get("input_data")),
                outputs=requirements_from_docs(d.get("output_data")),
            )
            async for d in cursor
        }

    async def delete(self, module_hash: str) -> ModuleRecord:
        record = await self.get(module_hash)
        users = await self._docs["workflows"].count_documents({"module_hashes": record.hash})
        if users:
            raise Conflict(f"module {record.name!r} is used by {users} workflow(s)")
        await self._col.delete_one({"hash": record.hash})
        self._by_hash.pop(record.hash, None)
        self.on_forget(record.hash)
        return record

    async def rotate_hash(self, module_hash: str, new_hash: str | None = None) -> tuple[ModuleRecord, str]:
        """Give the module a new random hash; returns (updated record, old hash).
        Workflows that run it are rewritten to the new hash, so schedules go on; the
        caller closes the old hash's live socket."""
        record = await self.get(module_hash)
        new_hash = new_hash or secrets.token_hex(20)
        await self._col.update_one({"_id": record.doc_id}, {"$set": {"hash": new_hash, "updated_at": utcnow()}})
        # The old hash stops opening sockets now, before workflows are rewritten.
        self._by_hash.pop(record.hash, None)
        self.on_forget(record.hash)
        workflows = self._docs["workflows"]
        async for doc in workflows.find({"module_hashes": record.hash}, {"_id": 1, "execute_modules": 1,
                                                                         "module_hashes": 1}):
            steps = [
                {**step, "module_hash": new_hash} if step.get("module_hash") == record.hash else step
                for step in doc.get("execute_modules") or []
            ]
            hashes = sorted({new_hash if h == record.hash else h for h in doc.get("module_hashes") or []})
            await workflows.update_one({"_id": doc["_id"]}, {"$set": {"execute_modules": steps,
                                                                      "module_hashes": hashes}})
        log.info("rotated the hash of module %r (id %d)", record.name, record.module_id)
        rotated = await self.get(new_hash)
        self._by_hash[rotated.hash] = rotated
        return rotated, record.hash

    async def save_states(self, states: dict[Any, dict[str, Any]]) -> None:
        """Bulk writes of many modules' online/heartbeat state, keyed by `_id`: the
        embedded server scans the collection for an update by any other field."""
        items = list(states.items())
        for start in range(0, len(items), 1000):
            ops = [UpdateOne({"_id": doc_id}, {"$set": state}) for doc_id, state in items[start:start + 1000]]
            await self._col.bulk_write(ops, ordered=False)

    async def mark_offline_except(self, held: set[str]) -> int:
        """Cluster start-up: every module no live instance holds goes offline."""
        stale = {
            doc["_id"]: {"online": False}
            async for doc in self._col.find({"online": True}, {"_id": 1, "hash": 1})
            if doc.get("hash") not in held
        }
        if stale:
            await self.save_states(stale)
        return len(stale)

    async def mark_all_offline(self) -> int:
        result = await self._col.update_many({"online": True}, {"$set": {"online": False}})
        return result.modified_count
