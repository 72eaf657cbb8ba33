"""Base handlers: the seed's JSON envelope, body parsing, error rendering and auth.

Every handler class must state `auth` explicitly (one of AUTH_KINDS);
`handlers.app.make_app` refuses to build an application otherwise. The WebSocket
handlers share `SocketHandler` for the same envelope, Host check, redacted logging
and store-outage handling.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar
from urllib.parse import urlsplit

import tornado.web
import tornado.websocket
from tornado.log import app_log

from tornado_sched.context import AppContext
from tornado_sched.errors import DomainError, Forbidden, Invalid
from tornado_sched.logs import redact_url, short_secret
from tornado_sched.payload import PayloadError, check_text, check_value, read_json
from tornado_sched.serialize import to_json, to_json_sliced
from tornado_sched.stores import store_outage

from .auth import SESSION_COOKIE, OperatorAuthMixin, wrong_host

log = logging.getLogger(__name__)

SUCCESS_CODE = "2000"
SUCCESS_MESSAGE = "成功!"
# "operator": any operator (viewers only read); "admin": admins only;
# "module": the WebSocket, where the module hash is the credential.
AUTH_KINDS = ("public", "operator", "admin", "module")
READ_METHODS = ("GET", "HEAD", "OPTIONS")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


_SECRET_KEYS = frozenset({"hash", "module_hash"})


def mask_secrets(value: Any) -> Any:
    """Module hashes are WebSocket credentials: viewers see only a short prefix."""
    if isinstance(value, dict):
        return {
            k: (short_secret(v) if k in _SECRET_KEYS and isinstance(v, str) else
                [short_secret(h) for h in v] if k == "module_hashes" and isinstance(v, list) else
                mask_secrets(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


class BaseHandler(OperatorAuthMixin, tornado.web.RequestHandler):
    """Owns the context, authentication and the JSON envelope."""

    auth: ClassVar[str | None] = None
    # Pages set a signed session cookie after HTTP auth so browsers are not
    # challenged on every request.
    sets_session: ClassVar[bool] = False
    # A viewer may only read; a handler whose POST changes nothing (logout) says so.
    viewer_may_post: ClassVar[bool] = False

    def initialize(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)

    def set_cookie(self, name: str, value: str | bytes, *args: Any, **kwargs: Any) -> None:
        # Tornado sets the _xsrf cookie from static settings, which cannot know that
        # this request came over https (through a trusted proxy): every cookie set on
        # an https request is Secure, the XSRF and language cookies as well as the session.
        if self.cookie_secure():
            kwargs["secure"] = True
        super().set_cookie(name, value, *args, **kwargs)

    # -- authentication --------------------------------------------------------------
    async def prepare(self) -> None:
        if wrong_host(self.ctx.settings, self.request):
            raise Invalid("Host header not in ALLOWED_HOSTS")
        if self.auth == "public":
            return
        if self.auth not in ("operator", "admin"):  # make_app checks this too
            raise tornado.web.HTTPError(500, reason="route has no auth decision")
        operator = await self.throttled_authenticate()
        if operator is None:
            self.send_challenge()
            return
        self.current_user = operator
        if self.sets_session and self.auth_method in ("basic", "digest"):
            # Browsers resend cached HTTP credentials on every request: one session
            # per login, not one per page view.
            method = self.auth_method
            current = await self.session_operator() if self.get_cookie(SESSION_COOKIE) else None
            self.auth_method = method
            if current is None or current.username != operator.username:
                await self.start_session(operator)
        if self.auth == "admin" and not operator.is_admin:
            raise Forbidden("admin role required")
        if self.request.method not in READ_METHODS and operator.role == "viewer" and not self.viewer_may_post:
            raise Forbidden("the viewer role can only read")

    def check_xsrf_cookie(self) -> None:
        # Scripts authenticate with a header and cannot be driven cross-site; only a
        # cookie-carrying browser request needs the XSRF token. But a browser resends
        # cached Basic/Digest credentials on a cross-site form post too, so those are
        # exempt only when the request does not come from a foreign page.
        header = self.request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            return  # a page cannot make a browser attach a token by itself
        if header and not self._cross_site():
            return
        if not header and not self.get_cookie(SESSION_COOKIE):
            return
        if self._cross_site():
            # A cookie-authenticated change from another site's page (a sibling
            # subdomain can plant an _xsrf pair): refused whatever the token says.
            raise tornado.web.HTTPError(403, "cross-site request refused (Origin / Sec-Fetch-Site)")
        super().check_xsrf_cookie()

    def _cross_site(self) -> bool:
        """Whether a browser says this request was started by another site's page.
        Scripts send neither header."""
        fetch_site = self.request.headers.get("Sec-Fetch-Site")
        if fetch_site is not None:
            return fetch_site.lower() not in ("same-origin", "none")
        origin = self.request.headers.get("Origin")
        if origin is None:
            return False
        return urlsplit(origin).netloc.lower() != self.request.host.lower()  # "null" too

    async def audit(self, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
        actor = self.current_user.username if self.current_user else "-"
        await self.ctx.audit.record(actor, action, target, detail, self.request.remote_ip)

    def send_challenge(self) -> None:
        self.send_error(401, reason="authentication required")

    # -- output ----------------------------------------------------------------------
    def write_envelope(
        self, result: Any = None, *, code: str = SUCCESS_CODE, message: str = SUCCESS_MESSAGE
    ) -> None:
        self.finish(to_json({"code": code, "message": message, "result": self._visible(result)}))

    def _visible(self, result: Any) -> Any:
        """The result as this caller may see it, with the JSON content type set."""
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        if self.current_user is not None and not self.current_user.is_admin:
            return mask_secrets(result)
        return result

    async def write_envelope_sliced(self, result: dict[str, Any], key: str) -> None:
        """`write_envelope` for a result holding one long list under `key` (a run's
        steps), encoded in slices with the loop free in between (to_json_sliced)."""
        envelope = {"code": SUCCESS_CODE, "message": SUCCESS_MESSAGE, "result": self._visible(result)}
        self.finish(await to_json_sliced(envelope, "result", key))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        code, message, result = f"{status_code}0", self._reason, None
        if status_code == 401:
            self._add_challenges()
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, DomainError):
            code, message = exc.code, exc.message
            if exc.field:
                result = {"field": exc.field}
        elif status_code >= 500:
            message = "internal server error"
        elif isinstance(exc, tornado.web.HTTPError) and exc.log_message and exc.reason is None:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.write_envelope(result, code=code, message=message)

    def log_exception(self, typ, value, tb) -> None:  # noqa: ANN001
        # Domain errors are the client's mistake, not ours: no traceback in the log.
        if isinstance(value, DomainError):
            log.info("%s %s -> %s %s", self.request.method, redact_url(self.request.path), value.status, value.message)
            return
        if not isinstance(value, tornado.web.HTTPError):
            # Tornado's own line adds `repr(self.request)`, with the unredacted URI.
            app_log.error("Uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb))
            return
        super().log_exception(typ, value, tb)

    def _request_summary(self) -> str:
        # Tornado logs this for HTTP errors (a failed XSRF check, ...): no secrets.
        return f"{self.request.method} {redact_url(self.request.uri or '')} ({self.request.remote_ip})"

    def _handle_request_exception(self, e: BaseException) -> None:
        outage = store_outage(e)
        if outage is not None:
            # A store that cannot be reached is a 503 naming it, not a 500.
            log.error("%s %s: %s (%s)", self.request.method, redact_url(self.request.path), outage.message, type(e).__name__)
            e = outage
        if isinstance(e, DomainError):
            if self._finished:
                return
            self.log_exception(type(e), e, e.__traceback__)
            self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)


class ApiHandler(BaseHandler):
    """JSON API handler: body parsing helpers on top of the envelope."""

    _body_cache: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        """JSON object body, or form fields (last value wins) for form posts."""
        if self._body_cache is not None:
            return self._body_cache
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        data: dict[str, Any]
        if content_type == "application/json" or (
            not content_type and self.request.body.lstrip()[:1] in (b"{", b"[")
        ):
            try:
                parsed = read_json(self.request.body or b"{}", where="")
            except PayloadError as exc:
                raise Invalid(f"{exc.where or 'body'}: {exc.problem}", field=exc.field or "body") from None
            if not isinstance(parsed, dict):
                raise Invalid("body: expected a JSON object", field="body")
            data = parsed
        else:
            data = {
                name: values[-1].decode("utf-8", "replace")
                for name, values in self.request.body_arguments.items()
            }
            try:
                check_value(data, "")
            except PayloadError as exc:
                raise Invalid(str(exc), field=exc.field or "body") from None
        self._body_cache = data
        return data

    def page_args(self, default_size: int = 50, max_size: int = 500) -> tuple[int, int]:
        """`page` (1-1,000,000) and `page_size` query arguments, validated."""
        page = self.int_query("page", 1)
        size = self.int_query("page_size", default_size)
        if not 1 <= page <= 1_000_000 or not 1 <= size <= max_size:
            raise Invalid(f"page must be 1-1000000 and page_size 1-{max_size}", field="page")
        return page, size

    def int_query(self, name: str, default: int | None = None) -> int | None:
        """An integer query argument: ASCII digits only, at most 18 of them (a BSON
        int64 and a SQL BIGINT hold it), else 400 naming it."""
        raw = self.get_query_argument(name, "")
        if raw == "":
            return default
        if not re.fullmatch(r"[0-9]{1,18}", raw):
            raise Invalid(f"{name}: expected a non-negative integer", field=name)
        return int(raw)

    def param(self, name: str, default: Any = None) -> Any:
        """A parameter from the body, else the query string."""
        body = self.body() if self.request.body else {}
        if name in body:
            return body[name]
        value = self.get_query_argument(name, default)
        if isinstance(value, str):
            try:
                check_text(value, name)  # %00 in a query string
            except PayloadError as exc:
                raise Invalid(str(exc), field=name) from None
        return value

    def text_param(self, name: str, *, required: bool = True, max_len: int = 10_000) -> str:
        """A string parameter; operator objects and other non-strings are refused."""
        value = self.param(name)
        if value is None:
            if required:
                raise Invalid(f"{name}: required", field=name)
            return ""
        if not isinstance(value, str):
            raise Invalid(f"{name}: must be a string", field=name)
        if len(value) > max_len:
            raise Invalid(f"{name}: longer than {max_len} characters", field=name)
        return value


class NotFoundHandler(ApiHandler):
    """Catch-all so unknown paths get the envelope, not Tornado's HTML page."""

    auth = "public"

    def prepare(self) -> None:  # type: ignore[override]
        raise tornado.web.HTTPError(404, reason="not found")


class SocketHandler(tornado.websocket.WebSocketHandler):
    """Base of both WebSocket handlers: handshake refusals in the seed's envelope, the
    Host check, a store outage as 503, and logs without the query string (a module's
    hash is its credential)."""

    def initialize(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def refuse(self, status: int, code: str, message: str) -> None:
        """Answer the handshake with an error envelope instead of upgrading."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(to_json({"code": code, "message": message, "result": None}))

    def refuse_wrong_host(self) -> bool:
        """Refuse (400) a Host outside ALLOWED_HOSTS; True when refused."""
        if wrong_host(self.ctx.settings, self.request):
            self.refuse(400, "4000", "Host header not in ALLOWED_HOSTS")
            return True
        return False

    def _handle_request_exception(self, e: BaseException) -> None:
        outage = store_outage(e)
        if outage is not None and not self._finished:
            log.error("websocket refused: %s (%s)", outage.message, type(e).__name__)
            self.refuse(outage.status, outage.code, outage.message)
            return
        super()._handle_request_exception(e)

    def log_exception(self, typ, value, tb) -> None:  # noqa: ANN001
        if isinstance(value, tornado.web.HTTPError):
            # A refused request (a POST or HEAD to a socket route, a missing _xsrf) is
            # the client's doing: one warning line, not an ERROR traceback that any
            # anonymous request could add. Tornado's line uses _request_summary below.
            super().log_exception(typ, value, tb)
            return
        # Tornado's line would include the URI, and with it the module hash.
        log.error("Uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb))

    def _request_summary(self) -> str:
        return f"{self.request.method} {redact_url(self.request.uri or '')} ({self.request.remote_ip})"

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(to_json({"code": f"{status_code}0", "message": self._reason, "result": None}))

    def reply(self, text: str) -> None:
        """Send without waiting; a peer that vanished meanwhile is not an error."""
        try:
            written = self.write_message(text)
        except tornado.websocket.WebSocketClosedError:
            return
        # The peer may vanish before the write completes; nobody else awaits it.
        written.add_done_callback(lambda f: f.cancelled() or f.exception())
