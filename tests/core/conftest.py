"""Core fixtures: the services built directly on real stores, no HTTP server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tornado_sched.events import EventBus
from tornado_sched.hub import ConnectionHub
from tornado_sched.modules import ModuleService
from tornado_sched.registry import ModuleRegistry
from tornado_sched.stores import DocumentStore
from tornado_sched.workflows import WorkflowStore


@dataclass
class Core:
    """A document store on the embedded server (a fresh database) and the services
    over it; `events` records every published event."""

    docs: DocumentStore
    events: EventBus
    registry: ModuleRegistry
    hub: ConnectionHub
    workflows: WorkflowStore
    modules: ModuleService
    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [kind for kind, _data in self.seen]

    async def steps(self, name: str = "step-module") -> list[dict[str, Any]]:
        """`execute_modules` with one registered (offline) module: an enabled or
        runnable workflow needs at least one."""
        module = await self.registry.register(name, "", [], [], "")
        return [{"module_hash": module.hash, "args": {}}]


@pytest.fixture
async def docs(docserver_uri: str) -> AsyncIterator[DocumentStore]:
    store = DocumentStore(docserver_uri, f"c{uuid.uuid4().hex[:16]}")
    await store.ensure_indexes()
    yield store
    await store.close()


@pytest.fixture
async def core(docs: DocumentStore) -> AsyncIterator[Core]:
    events = EventBus()
    registry = ModuleRegistry(docs)
    hub = ConnectionHub(registry, events, flush_seconds=0.1, heartbeat_store_seconds=0.1)
    await hub.start()
    workflows = WorkflowStore(docs, registry, "Asia/Shanghai", events)
    built = Core(docs, events, registry, hub, workflows, ModuleService(registry, hub, workflows))
    events.subscribe(lambda kind, data: built.seen.append((kind, data)))
    yield built
    await hub.close()
