"""Module use-cases: what an operator or a module does to a module, in one call each.

The registry holds what is stored, the hub what is live; this joins them, so
registering updates a live session, deleting closes the socket (4404) and every
view of a module shows the live state while it is connected.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import Invalid, NotFound
from .hub import ConnectionHub, ModuleSession
from .protocol import CLOSE_DELETED, CLOSE_ROTATED
from .registry import ModuleRecord, ModuleRegistry, validate_hash
from .workflows import Workflow, WorkflowStore

MAX_MESSAGE_DEPTH = 32


@dataclass(frozen=True)
class ModuleView:
    """A stored module with its live session, if any. While a session is open its
    values are the truth (the store's copy of the heartbeat lags)."""

    record: ModuleRecord
    session: ModuleSession | None

    @property
    def online(self) -> bool:
        return self.session is not None

    @property
    def connected_at(self) -> datetime | None:
        return self.session.connected_at if self.session else self.record.connected_at

    @property
    def last_heartbeat(self) -> datetime | None:
        return self.session.last_heartbeat if self.session else self.record.last_heartbeat

    @property
    def remote_address(self) -> str | None:
        return self.session.remote_address if self.session else self.record.remote_address

    @property
    def instance(self) -> str:
        """Cluster mode: the instance holding the socket ("" in one process)."""
        return self.session.instance if self.session else ""

    @property
    def where(self) -> str:
        """The address, and in a cluster the instance it is connected to."""
        address = self.remote_address or ""
        return f"{address} @ {self.instance}" if self.instance else address

    def public(self) -> dict[str, Any]:
        """The API's shape: the stored record with live state over it."""
        view = {
            **self.record.public(),
            "online": self.online,
            "connected_at": self.connected_at,
            "last_heartbeat": self.last_heartbeat,
            "remote_address": self.remote_address,
        }
        if self.instance:
            view["instance"] = self.instance
        return view


MODULE_STATES = ("online", "offline")
MODULE_SORTS = ("name", "id", "state", "last_seen")


@dataclass(frozen=True)
class ModuleListing:
    """Modules as the operator browses them: filtered and sorted, with the enabled
    workflows that need each offline module."""

    modules: list[ModuleView]
    total: int  # before the filter
    needed_by: dict[str, list[str]]  # offline module hash -> names of enabled workflows using it


class ModuleService:
    """Register, view, message and delete modules across the store and the hub."""

    def __init__(self, registry: ModuleRegistry, hub: ConnectionHub, workflows: WorkflowStore) -> None:
        self._registry = registry
        self._hub = hub
        self._workflows = workflows

    async def register(
        self, name: str, description: str, input_data: list[dict[str, Any]],
        output_data: list[dict[str, Any]], model_hash: str, *, trusted: bool = True, proof: str = "",
    ) -> ModuleRecord:
        """Register or re-register by name; a live session shows the new description.
        Without `trusted` (operator credentials) an existing name needs its current
        hash as `proof` (see ModuleRegistry.register)."""
        record = await self._registry.register(name, description, input_data, output_data, model_hash,
                                               trusted=trusted, proof=proof)
        self._hub.set_description(record.hash, record.description)
        return record

    async def rotate_hash(self, module_hash: str) -> ModuleRecord:
        """A new hash for the module (workflows follow it); the old hash's live socket
        is closed with 4401 at once."""
        new_hash = secrets.token_hex(20)
        try:
            rotated, old_hash = await self._registry.rotate_hash(module_hash, new_hash)
        finally:
            # Whatever the rewrite reached is published, also when it stopped halfway:
            # the schedule must not keep firing the old hash for a rewritten workflow.
            await self._workflows.follow_rotation(new_hash)
        self._hub.disconnect(old_hash, CLOSE_ROTATED, "hash rotated")
        return rotated

    async def delete(self, module_hash: str) -> ModuleRecord:
        """Delete (Conflict while a workflow uses it) and close its socket with 4404."""
        record = await self._registry.delete(module_hash)
        self._hub.disconnect(record.hash, CLOSE_DELETED, "module deleted")
        return record

    def view(self, record: ModuleRecord) -> ModuleView:
        return ModuleView(record, self._hub.session(record.hash))

    async def get(self, module_hash: str) -> ModuleView:
        return self.view(await self._registry.get(module_hash))

    async def list(self) -> list[ModuleView]:
        return [self.view(record) for record in await self._registry.list()]

    async def browse(self, name_contains: str = "", state: str = "", sort: str = "name") -> ModuleListing:
        """Filter by a name fragment (case-insensitive) and `online`/`offline`; sort by
        name, id, state (offline first: those need attention) or last seen (oldest
        first). Offline modules that an enabled workflow needs are named in `needed_by`."""
        if state and state not in MODULE_STATES:
            raise Invalid(f"state: must be one of {', '.join(MODULE_STATES)}", field="state")
        if sort not in MODULE_SORTS:
            raise Invalid(f"sort: must be one of {', '.join(MODULE_SORTS)}", field="sort")
        views = await self.list()
        fragment = name_contains.strip().casefold()
        shown = [
            v for v in views
            if (not fragment or fragment in v.record.name.casefold())
            and (not state or v.online == (state == "online"))
        ]
        keys = {
            "name": lambda v: (v.record.name.casefold(), v.record.module_id),
            "id": lambda v: v.record.module_id,
            "state": lambda v: (v.online, v.record.name.casefold()),
            "last_seen": lambda v: (v.online, v.last_heartbeat.timestamp() if v.last_heartbeat else 0.0),
        }
        shown.sort(key=keys[sort])
        offline = {v.record.hash for v in views if not v.online}
        needed_by: dict[str, list[str]] = {}
        if offline:
            for workflow in await self._workflows.list():
                if not workflow.enable:
                    continue
                for module_hash in {step.get("module_hash") for step in workflow.execute_modules} & offline:
                    needed_by.setdefault(module_hash, []).append(workflow.name)
        return ModuleListing(shown, len(views), needed_by)

    async def get_by_id(self, module_id: int) -> tuple[ModuleView, list[Workflow]]:
        """One module by its integer id, with the workflows that use it."""
        records = [r for r in await self._registry.list() if r.module_id == module_id]
        if not records:
            raise NotFound(f"module {module_id} not found")
        users = [
            w for w in await self._workflows.list()
            if any(step.get("module_hash") == records[0].hash for step in w.execute_modules)
        ]
        return self.view(records[0]), users

    def online(self) -> list[ModuleSession]:
        """Live sessions, by module id (served from memory)."""
        return sorted(self._hub.sessions(), key=lambda s: s.module_id)

    def online_count(self) -> int:
        return len(self._hub.sessions())

    def session(self, module_hash: str) -> ModuleSession | None:
        return self._hub.session(module_hash)

    async def send_message(self, module_hash: Any, message: Any) -> int:
        """The seed's send_message: 404 for an unknown module, 409 when offline.
        Returns the size sent, in UTF-8 bytes (for the audit row)."""
        module_hash = validate_hash(module_hash)
        if message is None or message == "":
            raise Invalid("message: required", field="message")
        if _has_operator_keys(message):
            # Not a query today, but results and messages are kept in MongoDB
            # documents later on, where such keys are operators or refused outright.
            raise Invalid("message: object keys must not start with '$'", field="message")
        if not self._hub.is_online(module_hash):
            await self._registry.get(module_hash)  # 404 for an unknown module, else 409 below
        if not isinstance(message, str):
            message = json.dumps(message, ensure_ascii=False)
        self._hub.send(module_hash, message)  # 409 when offline
        return len(message.encode("utf-8"))


def _has_operator_keys(value: Any, depth: int = 0) -> bool:
    if depth > MAX_MESSAGE_DEPTH:
        return True  # deeper than any real message; refuse rather than recurse on
    if isinstance(value, dict):
        return any(
            (isinstance(k, str) and k.startswith("$")) or _has_operator_keys(v, depth + 1) for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_has_operator_keys(v, depth + 1) for v in value)
    return False
