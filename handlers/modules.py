"""The seed's module API: register, online, send_message; plus list/detail/delete."""

from __future__ import annotations

import hmac

from tornado_sched.errors import Forbidden, Invalid, TooManyRequests
from tornado_sched.logs import short_secret
from tornado_sched.registry import parse_requirements

from .auth import wrong_host
from .base import ApiHandler


class RegisterHandler(ApiHandler):
    """`GET|POST /module/register` -> {hash, module_id}. Needs operator credentials
    or REGISTRATION_TOKEN (`token` parameter or `X-Registration-Token` header). With
    the token alone, an existing name is updated only for a caller that passes its
    current hash (`X-Module-Hash` header or `module_hash` parameter)."""

    auth = "operator"
    by_token = False

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
                self.by_token = True
                return
            self.ctx.throttle.failure(address)  # token guesses count like password guesses
        await super().prepare()
        if self.auth_method == "cookie" and self.request.method == "GET":
            # Cross-site navigation carries SameSite=Lax cookies: a GET must not write.
            raise Forbidden("registering by GET needs the registration token or Basic/Digest/Bearer "
                            "credentials; a browser session must POST with the XSRF token")
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
        proof = self.request.headers.get("X-Module-Hash") or self.text_param("module_hash", required=False, max_len=128)
        try:
            record = await self.ctx.modules.register(
                name=self.text_param("name", max_len=100),
                description=self.text_param("description", required=False),
                input_data=parse_requirements("input_data", self.param("input_data")),
                output_data=parse_requirements("output_data", self.param("output_data")),
                model_hash=self.text_param("modelHash", required=False, max_len=200),
                trusted=not self.by_token,
                proof=proof,
            )
        except Forbidden:
            if self.by_token:
                self.ctx.throttle.failure(self.request.remote_ip or "")  # a hash guess
            raise
        actor = "registration-token" if self.by_token else self.current_user.username
        await self.ctx.audit.record(actor, "register", f"module:{record.module_id}", {"name": record.name},
                                    self.request.remote_ip)
        self.write_envelope({"hash": record.hash, "module_id": record.module_id})


class OnlineHandler(ApiHandler):
    """`GET /module/online`: modules with an open session."""

    auth = "operator"

    async def get(self) -> None:
        # Served from memory: the hub holds every live session.
        self.write_envelope([session.public() for session in self.ctx.modules.online()])


class SendMessageHandler(ApiHandler):
    """`POST /module/send_message` (module_hash, message) -> {message}."""

    auth = "operator"

    async def post(self) -> None:
        module_hash = self.param("module_hash")
        size = await self.ctx.modules.send_message(module_hash, self.param("message"))
        # The message itself may hold anything; its size and target are the record.
        await self.audit("send_message", f"module:{short_secret(module_hash)}", {"bytes": size})
        self.write_envelope({"message": "消息已发送"})


class ModuleListHandler(ApiHandler):
    """`GET /module/list`: every module with its online flag."""

    auth = "operator"

    async def get(self) -> None:
        self.write_envelope([view.public() for view in await self.ctx.modules.list()])


class ModuleDetailHandler(ApiHandler):
    """`GET /module/<hash>`, `DELETE /module/<hash>` (409 while a workflow uses it)."""

    auth = "operator"

    async def get(self, module_hash: str) -> None:
        self.write_envelope((await self.ctx.modules.get(module_hash)).public())

    async def delete(self, module_hash: str) -> None:
        record = await self.ctx.modules.delete(module_hash)
        await self.audit("delete", f"module:{record.module_id}", {"name": record.name})
        self.write_envelope({"module_id": record.module_id, "name": record.name, "deleted": True})


class ModuleRotateHandler(ApiHandler):
    """`POST /module/<hash>/rotate` (admin): a new hash for the module; the old one
    stops working at once and its live socket is closed (4401 "hash rotated")."""

    auth = "admin"

    async def post(self, module_hash: str) -> None:
        record = await self.ctx.modules.rotate_hash(module_hash)
        await self.audit("rotate_hash", f"module:{record.module_id}", {"name": record.name})
        self.write_envelope({"module_id": record.module_id, "name": record.name, "hash": record.hash})


class ModuleRunsHandler(ApiHandler):
    """`GET /module/<hash>/runs?status=&before=&page_size=`: the steps the module was
    sent, newest first, each with its run and workflow; keyset pages (`next_before`)."""

    auth = "operator"

    async def get(self, module_hash: str) -> None:
        size = self.int_query("page_size", 20)
        if not 1 <= size <= 200:
            raise Invalid("page_size must be 1-200", field="page_size")
        found = await self.ctx.runs.module_history(
            module_hash,
            status=self.get_query_argument("status", "") or None,
            before=self.get_query_argument("before", "") or None,
            page_size=size,
        )
        self.write_envelope(found.public(size))


default_handlers = [
    (r"/module/register", RegisterHandler),
    (r"/module/online", OnlineHandler),
    (r"/module/send_message", SendMessageHandler),
    (r"/module/list", ModuleListHandler),
    (r"/module/([^/]+)/rotate", ModuleRotateHandler),
    (r"/module/([^/]+)/runs", ModuleRunsHandler),
    (r"/module/([^/]+)", ModuleDetailHandler),
]
