"""ModuleRegistry, ConnectionHub and ModuleService built directly on the embedded
document server. The hub's `Connection` is a protocol (write_message/close); a tiny
recording object stands in for the socket here, since these tests are about the
hub's bookkeeping, not the wire (tests/handlers/test_websocket.py covers that)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.rawclient import eventually
from tornado_sched.errors import Conflict, Invalid, NotFound
from tornado_sched.events import MODULE_OFFLINE, MODULE_ONLINE
from tornado_sched.protocol import CLOSE_DELETED, CLOSE_REPLACED

from .conftest import Core


class RecordingConnection:
    """Records what the hub writes and how it closes the socket."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.closed: tuple[int | None, str | None] | None = None

    def write_message(self, message: Any, binary: bool = False) -> None:
        if self.closed is not None:
            raise RuntimeError("closed")
        self.written.append(message)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.closed = (code, reason)


async def test_register_again_keeps_hash_and_id_and_updates_fields(core: Core) -> None:
    first = await core.registry.register("alpha", "v1", [{"name": "prices"}], [], "m1")
    again = await core.registry.register("alpha", "v2", [], [{"name": "signal"}], "m2")
    assert (again.hash, again.module_id) == (first.hash, first.module_id)
    stored = await core.registry.get(first.hash)
    assert stored.description == "v2" and stored.output_data == [{"name": "signal"}] and stored.model_hash == "m2"
    other = await core.registry.register("beta", "", [], [], "")
    assert other.hash != first.hash and other.module_id == first.module_id + 1
    assert [r.name for r in await core.registry.list()] == ["alpha", "beta"]


async def test_register_refuses_a_blank_name(core: Core) -> None:
    with pytest.raises(Invalid) as caught:
        await core.registry.register("  ", "", [], [], "")
    assert caught.value.field == "name"


async def test_hub_attach_replace_detach(core: Core) -> None:
    record = await core.registry.register("alpha", "", [], [], "")
    old, new = RecordingConnection(), RecordingConnection()
    first = core.hub.attach(record, old, "10.0.0.1")
    second = core.hub.attach(record, new, "10.0.0.2")
    assert old.closed == (CLOSE_REPLACED, "replaced") and new.closed is None
    assert core.hub.session(record.hash) is second
    assert core.hub.detach(first) is False  # the replaced one changes nothing
    assert core.hub.is_online(record.hash)
    assert core.hub.detach(second) is True
    assert not core.hub.is_online(record.hash)
    assert [k for k in core.kinds() if k.startswith("module.")] == [MODULE_ONLINE, MODULE_ONLINE, MODULE_OFFLINE]


async def test_hub_writes_online_state_to_the_store_in_the_background(core: Core) -> None:
    record = await core.registry.register("alpha", "", [], [], "")
    session = core.hub.attach(record, RecordingConnection(), "10.0.0.1")

    async def stored_online() -> bool:
        return (await core.registry.get(record.hash)).online

    await eventually(stored_online)
    core.hub.detach(session)

    async def stored_offline() -> bool:
        return not (await core.registry.get(record.hash)).online

    await eventually(stored_offline)


async def test_send_reaches_the_connection_or_conflicts_when_offline(core: Core) -> None:
    record = await core.registry.register("alpha", "", [], [], "")
    with pytest.raises(Conflict):
        core.hub.send(record.hash, {"type": "execute"})
    connection = RecordingConnection()
    core.hub.attach(record, connection, None)
    core.hub.send(record.hash, {"type": "execute", "args": {"x": 1}})
    assert json.loads(connection.written[0]) == {"type": "execute", "args": {"x": 1}}


async def test_service_register_updates_the_live_description(core: Core) -> None:
    record = await core.modules.register("alpha", "old", [], [], "")
    core.hub.attach(record, RecordingConnection(), None)
    await core.modules.register("alpha", "new", [], [], "")
    assert core.hub.session(record.hash).description == "new"
    assert core.modules.online()[0].public()["description"] == "new"


async def test_service_delete_closes_the_socket_with_4404(core: Core) -> None:
    record = await core.modules.register("alpha", "", [], [], "")
    connection = RecordingConnection()
    core.hub.attach(record, connection, None)
    deleted = await core.modules.delete(record.hash)
    assert deleted.module_id == record.module_id
    assert connection.closed == (CLOSE_DELETED, "module deleted")
    with pytest.raises(NotFound):
        await core.registry.get(record.hash)


async def test_service_delete_refuses_a_module_in_use(core: Core) -> None:
    record = await core.modules.register("alpha", "", [], [], "")
    await core.workflows.create({
        "name": "uses alpha", "enable": False, "execute_modules": [{"module_hash": record.hash, "args": {}}],
    })
    with pytest.raises(Conflict):
        await core.modules.delete(record.hash)
    assert (await core.registry.get(record.hash)).name == "alpha"


async def test_service_view_shows_live_state_over_the_stored_one(core: Core) -> None:
    record = await core.modules.register("alpha", "", [], [], "")
    offline = await core.modules.get(record.hash)
    assert offline.online is False and offline.public()["remote_address"] is None
    session = core.hub.attach(record, RecordingConnection(), "10.1.2.3")
    view = await core.modules.get(record.hash)
    assert view.online and view.remote_address == "10.1.2.3"
    assert view.public()["online"] is True and view.public()["last_heartbeat"] == session.last_heartbeat
    by_id, users = await core.modules.get_by_id(record.module_id)
    assert by_id.record.hash == record.hash and users == []
    with pytest.raises(NotFound):
        await core.modules.get_by_id(record.module_id + 100)


async def test_service_send_message_checks_input_then_state(core: Core) -> None:
    record = await core.modules.register("alpha", "", [], [], "")
    with pytest.raises(Invalid):
        await core.modules.send_message({"$ne": None}, "hi")
    with pytest.raises(Invalid):
        await core.modules.send_message(record.hash, {"$set": 1})
    with pytest.raises(NotFound):
        await core.modules.send_message("0" * 40, "hi")
    with pytest.raises(Conflict):
        await core.modules.send_message(record.hash, "hi")
    connection = RecordingConnection()
    core.hub.attach(record, connection, None)
    await core.modules.send_message(record.hash, {"text": "你好"})
    assert json.loads(connection.written[-1]) == {"text": "你好"}
