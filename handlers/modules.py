"""The seed's module API: register, online, send_message; plus list/detail/delete."""

from __future__ import annotations

import hmac
import json
from typing import Any

from tornado_sched.errors import Forbidden, Invalid, TooManyRequests
from tornado_sched.registry import ModuleRecord, parse_requirements, validate_hash

from .base import ApiHandler, wrong_host


class RegisterHandler(ApiHandler):
    """`GET|POST /module/register` -> {hash, module_id}. Needs operator credentials
    or REGISTRATION_TOKEN (`token` parameter or `X-Registration-Token` header)."""

    auth = "operator"

    async def prepare(self) -> None:
        if wrong_host(self.ctx.settings, self.request):  # before the token short-cut
            raise Invalid("Host header not in ALLOWED_HOSTS")
        token = self.request.headers.get("X-Registration-Token") or self._token_param()
        expected = self.ctx.settings.registration_token
        address = self.request.remote_ip or ""
        if token:
            if self.ctx.throttle.blocked(address):
                raise TooManyRequests("too many failed attempts from this address; try again later")
            if expected and hmac.compare_digest(token.encode(), expected.encode()):
                return
            self.ctx.throttle.failure(address)  # token guesses count like password guesses
        await super().prepare()
        # Registering returns a module's hash, its WebSocket credential: even by GET
        # it is a write, which the viewer role may not do.
        if self.current_user is not None and not self.current_user.is_admin:
            raise Forbidden("registering a module needs the admin role or the registration token")

    def _token_param(self) -> str:
        try:
            value = self.param("token")
        except Exception:  # noqa: BLE001 - a malformed body is reported by the verb itself
            return ""
        return value if isinstance(value, str) else ""

    async def get(self) -> None:
        await self._register()

    async def post(self) -> None:
        await self._register()

    async def _register(self) -> None:
        record = await self.ctx.registry.register(
            name=self.text_param("name", max_len=100),
            description=self.text_param("description", required=False),
            input_data=parse_requirements("input_data", self.param("input_data")),
            output_data=parse_requirements("output_data", self.param("output_data")),
            model_hash=self.text_param("modelHash", required=False, max_len=200),
        )
        session = self.ctx.hub.session(record.hash)
        if session is not None:
            session.description = record.description
        self.write_envelope({"hash": record.hash, "module_id": record.module_id})


class OnlineHandler(ApiHandler):
    """`GET /module/online`: modules with an open session."""

    auth = "operator"

    async def get(self) -> None:
        # Served from memory: the hub holds every live session.
        sessions = sorted(self.ctx.hub.sessions(), key=lambda s: s.module_id)
        self.write_envelope([session.public() for session in sessions])


class SendMessageHandler(ApiHandler):
    """`POST /module/send_message` (module_hash, message) -> {message}."""

    auth = "operator"

    async def post(self) -> None:
        module_hash = validate_hash(self.param("module_hash"))
        message: Any = self.param("message")
        if message is None or message == "":
            raise Invalid("message: required", field="message")
        if _has_operator_keys(message):
            # Not a query today, but results and messages are kept in MongoDB
            # documents later on, where such keys are operators or refused outright.
            raise Invalid("message: object keys must not start with '$'", field="message")
        if not self.ctx.hub.is_online(module_hash):
            await self.ctx.registry.get(module_hash)  # 404 for an unknown module, else 409 below
        if not isinstance(message, str):
            message = json.dumps(message, ensure_ascii=False)
        self.ctx.hub.send(module_hash, message)  # 409 when offline
        self.write_envelope({"message": "消息已发送"})


def _has_operator_keys(value: Any, depth: int = 0) -> bool:
    if depth > 32:
        return True  # deeper than any real message; refuse rather than recurse on
    if isinstance(value, dict):
        return any(
            (isinstance(k, str) and k.startswith("$")) or _has_operator_keys(v, depth + 1) for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_has_operator_keys(v, depth + 1) for v in value)
    return False


def _with_live_state(handler: ApiHandler, record: ModuleRecord) -> dict[str, Any]:
    """The stored module, with online state and heartbeat from the hub (the truth
    while a session is open; the store's copy lags by up to a minute)."""
    item = record.public()
    session = handler.ctx.hub.session(record.hash)
    item["online"] = session is not None
    if session is not None:
        item.update(
            last_heartbeat=session.last_heartbeat, connected_at=session.connected_at,
            remote_address=session.remote_address,
        )
    return item


class ModuleListHandler(ApiHandler):
    """`GET /module/list`: every module with its online flag."""

    auth = "operator"

    async def get(self) -> None:
        self.write_envelope([_with_live_state(self, r) for r in await self.ctx.registry.list()])


class ModuleDetailHandler(ApiHandler):
    """`GET /module/<hash>`, `DELETE /module/<hash>` (409 while a workflow uses it)."""

    auth = "operator"

    async def get(self, module_hash: str) -> None:
        record = await self.ctx.registry.get(module_hash)
        self.write_envelope(_with_live_state(self, record))

    async def delete(self, module_hash: str) -> None:
        record = await self.ctx.registry.delete(module_hash)
        await self.audit("delete", f"module:{record.module_id}", {"name": record.name})
        session = self.ctx.hub.session(record.hash)
        if session is not None:
            session.connection.close(4404, "module deleted")
        self.write_envelope({"module_id": record.module_id, "name": record.name, "deleted": True})


default_handlers = [
    (r"/module/register", RegisterHandler),
    (r"/module/online", OnlineHandler),
    (r"/module/send_message", SendMessageHandler),
    (r"/module/list", ModuleListHandler),
    (r"/module/([^/]+)", ModuleDetailHandler),
]
