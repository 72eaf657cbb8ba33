"""/openapi.json covers every REST route and method, and real responses from a real
server conform to it (jsonschema, Draft 2020-12 as OpenAPI 3.1 uses)."""

from __future__ import annotations

import inspect
import json
import re
from typing import Any

import tornado.websocket
from jsonschema import Draft202012Validator

from handlers.apispec import openapi_document
from handlers.app import collect_routes
from handlers.dashboard.pages import PageHandler
from tests.conftest import RunningServer
from tests.flows.support import Module, create_workflow, execute, wait_run, workflow_body
from tornado_sched.workflows import validate_workflow


def _is_rest(handler: type) -> bool:
    """Not an HTML page, not a WebSocket (those are in docs/asyncapi.yaml)."""
    return not issubclass(handler, PageHandler | tornado.websocket.WebSocketHandler)
METHODS = ("get", "post", "put", "delete")


def _implemented(handler: type) -> set[str]:
    return {m for m in METHODS if getattr(handler, m) is not getattr(handler.__mro__[-2], m, None)}


async def _spec(server: RunningServer) -> dict[str, Any]:
    response = await server.fetch("/openapi.json", auth=None)
    assert response.code == 200
    return json.loads(response.body)


async def test_every_rest_route_and_method_is_documented(server: RunningServer) -> None:
    spec = await _spec(server)
    assert spec["openapi"].startswith("3.1")
    documented: dict[str, set[str]] = {}  # route regex -> documented methods
    for item in spec["paths"].values():
        routes = item["x-tornado-route"]
        for route in routes if isinstance(routes, list) else [routes]:
            documented.setdefault(route, set()).update(m for m in METHODS if m in item)
    rest = [(p, h) for p, h in collect_routes() if _is_rest(h)]
    assert len(rest) > 20
    missing = [p for p, _ in rest if p not in documented]
    assert not missing, f"routes missing from /openapi.json: {missing}"
    unknown = set(documented) - {p for p, _ in rest}
    assert not unknown, f"documented routes that do not exist: {unknown}"
    for pattern, handler in rest:
        undocumented = _implemented(handler) - documented[pattern]
        assert not undocumented, (pattern, undocumented)
    for schema in spec["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    # The docs page renders every operation, locally (no external asset).
    page = await server.fetch("/docs", auth=None)
    assert page.code == 200
    html = page.body.decode()
    assert "POST /workflow/create" in html and "ErrorEnvelope" in html
    assert not re.search(r"""(src|href)=["']https?://""", html)


# What a REST handler reads from the request: parameters, body keys and headers.
READS = re.compile(r"""(?:param|text_param|int_query|get_query_argument|get_argument|get_body_argument)"""
                   r"""\(\s*["']([A-Za-z_]+)["']|headers\.get\(\s*["']([A-Za-z-]+)["']|body\(\)\.get\(\s*["']([A-Za-z_]+)["']""")


def _reads(handler: type) -> set[str]:
    """Names the route's own module reads (credentials and proxy headers are read in
    handlers/base.py and auth.py for every route; the security schemes say those)."""
    source = "".join(inspect.getsource(cls) for cls in handler.__mro__ if cls.__module__ == handler.__module__)
    names = {a or b or c for a, b, c in READS.findall(source)}
    return names | ({"page", "page_size"} if "page_args(" in source else set())


def _documented_names(spec: dict[str, Any], item: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for method in METHODS:
        op = item.get(method)
        if op is None:
            continue
        names |= {p["name"] for p in [*item.get("parameters", []), *op.get("parameters", [])]}
        for content in op.get("requestBody", {}).get("content", {}).values():
            names |= set(content["schema"].get("properties", {}))
        for requirement in op.get("security", spec["security"]):
            for scheme in requirement:
                definition = spec["components"]["securitySchemes"][scheme]
                if definition["type"] == "apiKey":
                    names.add(definition["name"])
    return names


async def test_every_parameter_a_handler_reads_is_documented(server: RunningServer) -> None:
    spec = await _spec(server)
    by_route: dict[str, set[str]] = {}
    for item in spec["paths"].values():
        routes = item["x-tornado-route"]
        for route in routes if isinstance(routes, list) else [routes]:
            by_route.setdefault(route, set()).update(_documented_names(spec, item))
    read_somewhere = set()
    for pattern, handler in collect_routes():
        if not _is_rest(handler):
            continue
        read = _reads(handler) - {"Authorization"}
        read_somewhere |= read
        assert read <= by_route[pattern], (pattern, sorted(read - by_route[pattern]))
    # Guards the scan itself: it sees query, body and header reads.
    assert {"module_hash", "X-Module-Hash", "token", "before", "page_size", "steps", "username"} <= read_somewhere


def test_documented_workflow_defaults_are_what_the_core_fills_in() -> None:
    """Every `default` the document states for a workflow field is the value
    validate_workflow stores when the field is left out (and every field the core
    fills in has one), so the document cannot promise a default the server does
    not apply."""
    fields = openapi_document()["components"]["schemas"]["WorkflowCreate"]["properties"]
    documented = {name: schema["default"] for name, schema in fields.items() if "default" in schema}
    filled = validate_workflow({"name": "a", "execute_cron_list": ["0 9 * * *"],
                                "execute_modules": [{"module_hash": "h", "args": {}}]}, "UTC")
    assert documented == {name: filled[name] for name in documented}
    given = {"name", "description", "execute_cron_list", "execute_modules", "module_hashes", "timezone"}
    assert set(documented) == set(filled) - given


class Conformance:
    """Finds the operation a real request hit and validates the answer against it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.templates = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path) for path in spec["paths"]
        ]
        self.checked: set[tuple[str, str, int]] = set()

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        # Concrete paths win over templated ones, as OpenAPI says.
        matches = [t for rx, t in self.templates if rx.match(path)]
        matches.sort(key=lambda t: t.count("{"))
        assert matches, f"{path} matches no documented path"
        return matches[0], self.spec["paths"][matches[0]][method.lower()]

    async def check(self, server: RunningServer, method: str, path: str, **kwargs: Any) -> Any:
        response = await server.fetch(path, method, **kwargs)
        template, op = self.operation(method, path.split("?")[0])
        status = str(response.code)
        assert status in op["responses"], f"{method} {path}: undocumented status {status}: {response.body[:300]!r}"
        content = op["responses"][status]["content"]
        media = response.headers["Content-Type"].split(";")[0]
        assert media in content, (method, path, media)
        body = json.loads(response.body) if media == "application/json" else response.body.decode()
        root = {"$ref": "#/x-response", "x-response": content[media]["schema"], "components": self.spec["components"]}
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in Draft202012Validator(root).iter_errors(body)]
        assert not errors, (method, path, status, errors[:5])
        self.checked.add((method, template, response.code))
        return body


async def test_real_responses_conform_to_the_spec(server: RunningServer) -> None:
    c = Conformance(await _spec(server))
    module = await Module.online(server, "conform")
    wid = await create_workflow(server, workflow_body("符合", [module.hash]))
    run_id = await execute(server, wid)
    await module.result(await module.recv_execute(), "failure", error="x")
    await wait_run(server, run_id)
    doc_id = (await server.api(f"/workflow/{wid}"))[1]["result"]["id"]
    token = (await c.check(server, "POST", "/tokens", json_body={"name": "spec"}))["result"]

    for method, path, kwargs in [
        ("GET", "/health", {"auth": None}), ("GET", "/ready", {"auth": None}), ("GET", "/metrics", {}),
        ("GET", "/openapi.json", {"auth": None}), ("GET", "/docs", {"auth": None}),
        ("GET", "/module/register?name=conform&input_data=[]", {}),
        ("POST", "/module/register", {"json_body": {"name": "conform2"}}),
        ("GET", "/module/online", {}), ("GET", "/module/list", {}), ("GET", f"/module/{module.hash}", {}),
        ("GET", "/module/nope", {}),
        ("POST", "/module/send_message", {"json_body": {"module_hash": module.hash, "message": "hi"}}),
        ("POST", "/module/send_message", {"json_body": {"module_hash": module.hash}}),
        ("GET", "/workflow/list", {}), ("GET", f"/workflow/{wid}", {}), ("GET", "/workflow/999", {}),
        ("GET", f"/workflow/{doc_id}", {}),
        ("PUT", f"/workflow/{wid}", {"json_body": {"description": "d"}}),
        ("POST", f"/workflow/{wid}/disable", {}), ("POST", f"/workflow/{wid}/enable", {}),
        ("GET", f"/workflow/{wid}/runs", {}), ("GET", "/runs?status=failure", {}), ("GET", f"/runs/{run_id}", {}),
        ("GET", "/runs?page=0", {}),
        ("GET", "/scheduler/jobs", {}), ("POST", "/scheduler/reload", {}),
        ("GET", "/notifications", {}), ("GET", "/tokens", {}), ("GET", "/audit", {}),
        ("DELETE", f"/tokens/{token['id']}", {}),
        ("GET", "/sessions", {}), ("DELETE", "/sessions/999", {}), ("POST", "/module/nope/rotate", {}),
        ("POST", "/workflow/create", {"json_body": {"name": "符合", "execute_modules": []}}),
        ("GET", "/module/list", {"auth": None}),
        ("POST", f"/workflow/{wid}/execute", {}),
        ("DELETE", f"/module/{module.hash}", {}),
        ("DELETE", f"/workflow/{wid}", {}),
    ]:
        await c.check(server, method, path, **kwargs)
    statuses = {code for _, _, code in c.checked}
    assert {200, 400, 401, 404, 409} <= statuses, statuses
    module.close()
