"""The OpenAPI 3.1 description of the REST API, served at /openapi.json: its paths
and operations here, the component schemas they refer to in apischemas.py.

Written by hand next to the handlers (not generated from them) so it can say what
the code cannot: units, defaults, which error a client gets and why. Each path item
carries `x-tornado-route`, the route regex it documents; tests/handlers/test_openapi.py
walks the Application's routes and fails on any API route or method missing here,
and validates real responses against these schemas.
"""

from __future__ import annotations

from typing import Any

from tornado_sched.history import MODULE_STEP_STATUSES
from tornado_sched.run_state import RUN_STATUSES
from tornado_sched.workflows import ORDER

from .apischemas import JSON, TIMESTAMP, component_schemas, page_of, ref

PAGE_PARAMS = [
    {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1}},
    {"name": "page_size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20}},
]
# Run history: `page` numbers reach the first 10,000 runs of a filter (page x 200);
# `before` (the previous page's `next_before`) goes on from there.
RUN_PAGE_PARAMS = [
    {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 50, "default": 1},
     "description": "Page number; at most 10,000 runs are skipped this way (use `before` beyond)"},
    {"name": "page_size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20}},
    {"name": "before", "in": "query", "schema": {"type": "string", "maxLength": 100},
     "description": "Opaque cursor: the `next_before` of the previous page (400 if not one)"},
    {"name": "status", "in": "query", "schema": {"enum": [*RUN_STATUSES, "failed"]},
     "description": "A run status, or `failed` (failure, partial, interrupted)"},
    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"},
     "description": "Runs started at or after (ISO 8601; no zone means UTC)"},
    {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"},
     "description": "Runs started before (exclusive)"},
]
ERRORS = {
    "400": "Bad input: `result.field` names the field (code 4000)",
    "401": "No or bad credentials (code 4010); `WWW-Authenticate` offers Digest and Basic",
    "403": "Authenticated, not allowed: a viewer writing, a non-admin on admin routes (code 4030)",
    "404": "No such thing (code 4040)",
    "405": "Method not allowed on this path (code 4050)",
    "409": "Conflict: duplicate name, module offline, module still used (code 4090)",
    "429": "Too many failed logins from this address (code 4290)",
    "503": "A store is unreachable (code 5030)",
}


def _ok(result: dict[str, Any], description: str = "Success (code 2000)") -> dict[str, Any]:
    schema = {
        "allOf": [ref("Envelope")],
        "properties": {"code": {"const": "2000"}, "result": result},
    }
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {
        status: {"description": ERRORS[status], "content": {JSON: {"schema": ref("ErrorEnvelope")}}}
        for status in statuses
    }


def _op(summary: str, result: dict[str, Any], *errors: str, params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, security: list[dict[str, list[str]]] | None = None,
        tag: str = "", form: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": _ok(result), **_errors(*errors)}}
    if tag:
        op["tags"] = [tag]
    if params:
        op["parameters"] = params
    if body is not None:
        content = {JSON: {"schema": body}}
        if form:  # flat bodies may also be posted as a form
            content["application/x-www-form-urlencoded"] = {"schema": body}
        op["requestBody"] = {"required": True, "content": content}
    if security is not None:
        op["security"] = security
    return op


def _path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


WORKFLOW_ID = _path_param(
    "workflow_id", {"type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999},
    "The integer `workflow_id`. The document `id` (24 hex digits) here gets a 404 naming the path to use",
)
MODULE_HASH = _path_param("module_hash", {"type": "string", "minLength": 1, "maxLength": 128}, "The module's hash")
RUN_ID = _path_param("run_id", {"type": "string", "pattern": "^[0-9a-f]{1,64}$"}, "A run id")
TOKEN_ID = _path_param("token_id", {"type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999}, "Token id")

PUBLIC: list[dict[str, list[str]]] = []
OBJECT_ID_ROUTE = r"/workflow/([0-9a-fA-F]{24})(/enable|/disable|/execute|/runs|/plan)?"
ADMIN_NOTE = "Admin role only."


def _paths() -> dict[str, Any]:
    register_params = [
        {"name": "name", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1, "maxLength": 100}},
        {"name": "description", "in": "query", "schema": {"type": ["string", "null"], "maxLength": 10000}},
        {"name": "input_data", "in": "query", "schema": {"type": "string"},
         "description": 'JSON list of objects with a string "name"'},
        {"name": "output_data", "in": "query", "schema": {"type": "string"},
         "description": 'JSON list of objects with a string "name"'},
        {"name": "modelHash", "in": "query", "schema": {"type": ["string", "null"], "maxLength": 200}},
        {"name": "module_hash", "in": "query", "schema": {"type": "string", "maxLength": 128},
         "description": "With REGISTRATION_TOKEN alone: the module's current hash, needed to register an "
                        "existing name again (else 403). Ignored for operator credentials"},
    ]
    proof_header = {"name": "X-Module-Hash", "in": "header", "schema": {"type": "string", "maxLength": 128},
                    "description": "The same proof as `module_hash`, as a header"}
    register_security = [{"basicAuth": []}, {"digestAuth": []}, {"bearerAuth": []}, {"registrationToken": []},
                         {"registrationTokenParameter": []}]
    registered = {"type": "object", "required": ["hash", "module_id"],
                  "properties": {"hash": {"type": "string"}, "module_id": {"type": "integer"}}}
    deleted = {"type": "object", "required": ["name", "deleted"],
               "properties": {"name": {"type": "string"}, "deleted": {"const": True}}}
    auth = ("401", "403", "429", "503")
    return {
        "/health": {"x-tornado-route": r"/health", "get": _op(
            "Liveness: the IOLoop answers; touches no store", {
                "type": "object", "required": ["status"],
                "properties": {"status": {"const": "ok"}, "uptime_seconds": {"type": "number"}}},
            security=PUBLIC, tag="probes")},
        "/ready": {"x-tornado-route": r"/ready", "get": _op(
            "Readiness: both stores answer, else 503 naming the one that does not", {
                "type": "object", "required": ["status", "stores"],
                "properties": {"status": {"const": "ready"},
                               "stores": {"type": "object", "additionalProperties": {"type": "string"}},
                               "failed_writes": {"type": "object", "additionalProperties": {"type": "integer"}}}},
            "503", security=PUBLIC, tag="probes")},
        "/metrics": {"x-tornado-route": r"/metrics", "get": {
            "summary": "Prometheus metrics (text format); operator credentials or `Bearer <METRICS_TOKEN>`",
            "tags": ["probes"],
            "security": [{"basicAuth": []}, {"digestAuth": []}, {"bearerAuth": []}, {"metricsToken": []}],
            "responses": {"200": {"description": "Prometheus text exposition format 0.0.4",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **_errors(*auth)}}},
        "/openapi.json": {"x-tornado-route": r"/openapi.json", "get": {
            "summary": "This document", "tags": ["docs"], "security": PUBLIC,
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}}}}},
        "/docs": {"x-tornado-route": r"/docs", "get": {
            "summary": "This document as a page (no external assets)", "tags": ["docs"], "security": PUBLIC,
            "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        "/module/register": {
            "x-tornado-route": r"/module/register",
            "get": _op("Register a module (the seed's call); same name -> same hash and id. Admin credentials "
                       "or REGISTRATION_TOKEN (`X-Registration-Token` header or `token` parameter)",
                       registered, "400", *auth, params=[*register_params, proof_header],
                       security=register_security, tag="modules"),
            "post": _op("Register a module, parameters in the body", registered, "400", *auth,
                        params=[proof_header],
                        body={"type": "object", "required": ["name"], "properties": {
                            p["name"]: p["schema"] for p in register_params}},
                        security=register_security, tag="modules"),
        },
        "/module/online": {"x-tornado-route": r"/module/online", "get": _op(
            "Modules with an open WebSocket", {"type": "array", "items": ref("OnlineModule")}, *auth, tag="modules")},
        "/module/send_message": {"x-tornado-route": r"/module/send_message", "post": _op(
            "Send a message to a module's socket; 409 when offline, 404 unknown",
            {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}},
            "400", "404", "409", *auth, tag="modules",
            body={"type": "object", "required": ["module_hash", "message"], "properties": {
                "module_hash": {"type": "string", "minLength": 1, "maxLength": 128},
                "message": {"description": "Text (not empty), or JSON sent as text; no object key may start "
                                           "with `$`", "not": {"anyOf": [{"const": ""}, {"type": "null"}]}}}})},
        "/module/list": {"x-tornado-route": r"/module/list", "get": _op(
            "Every module with its online flag", {"type": "array", "items": ref("Module")}, *auth, tag="modules")},
        "/module/{module_hash}": {
            "x-tornado-route": r"/module/([^/]+)", "parameters": [MODULE_HASH],
            "get": _op("One module", ref("Module"), "400", "404", *auth, tag="modules"),
            "delete": _op("Delete a module (409 while a workflow uses it); its socket is closed with 4404",
                          {**deleted, "properties": {**deleted["properties"], "module_id": {"type": "integer"}}},
                          "400", "404", "409", *auth, tag="modules"),
        },
        "/module/{module_hash}/rotate": {
            "x-tornado-route": r"/module/([^/]+)/rotate", "parameters": [MODULE_HASH],
            "post": _op("A new hash for the module; the old one stops working and its socket is closed "
                        "with 4401. " + ADMIN_NOTE, {
                            "type": "object", "required": ["module_id", "name", "hash"],
                            "properties": {"module_id": {"type": "integer"}, "name": {"type": "string"},
                                           "hash": {"type": "string"}}},
                        "400", "404", *auth, tag="modules"),
        },
        "/module/{module_hash}/runs": {
            "x-tornado-route": r"/module/([^/]+)/runs", "parameters": [MODULE_HASH],
            "get": _op("The steps this module was sent, newest first (sent time), with their run and "
                       "workflow; steps never sent are not listed", ref("ModuleStepPage"), "400", "404",
                       *auth, tag="modules", params=[
                           {"name": "page_size", "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20}},
                           {"name": "before", "in": "query", "schema": {"type": "string", "maxLength": 160},
                            "description": "Opaque cursor: the `next_before` of the previous page (400 if not one)"},
                           {"name": "status", "in": "query", "schema": {"enum": list(MODULE_STEP_STATUSES)},
                            "description": "A step status, or `failed` (failure, offline, timeout, cancelled, "
                                           "interrupted, upstream_failed)"},
                       ]),
        },
        "/sessions": {"x-tornado-route": r"/sessions", "get": _op(
            "Live browser sessions, newest first. " + ADMIN_NOTE, {"type": "array", "items": ref("Session")},
            *auth, tag="admin")},
        "/sessions/{session_id}": {
            "x-tornado-route": r"/sessions/(\d{1,18})",
            "parameters": [_path_param("session_id", {"type": "integer", "minimum": 0,
                                                      "maximum": 999_999_999_999_999_999}, "Session id")],
            "delete": _op("End a browser session at once. " + ADMIN_NOTE, ref("Session"), "404", "409", *auth,
                          tag="admin"),
        },
        "/workflow/create": {"x-tornado-route": r"/workflow/create", "post": _op(
            "Create a workflow (the seed's body); 409 for a name in use",
            {"type": "object", "required": ["id", "workflow_id", "name"], "properties": {
                "id": {"type": "string"}, "workflow_id": {"type": "integer"}, "name": {"type": "string"}}},
            "400", "409", *auth, body=ref("WorkflowCreate"), tag="workflows", form=False)},
        "/workflow/list": {"x-tornado-route": r"/workflow/list", "get": _op(
            "Every workflow with its next run time", {"type": "array", "items": ref("Workflow")}, *auth,
            tag="workflows")},
        "/workflow/{workflow_id}": {
            # The second route: a document id (ObjectId) in this place, with or without
            # /enable, /disable, /execute, /runs, gets a 404 naming the path to use.
            "x-tornado-route": [r"/workflow/(\d{1,18})", OBJECT_ID_ROUTE],
            "parameters": [WORKFLOW_ID],
            "get": _op("One workflow with its next five fire times", {
                "allOf": [ref("Workflow")],
                "properties": {"upcoming": {"type": "array", "items": TIMESTAMP}}}, "404", *auth, tag="workflows"),
            "put": _op("Update any subset of fields", ref("Workflow"), "400", "404", "409", *auth,
                       body=ref("WorkflowUpdate"), tag="workflows", form=False),
            "delete": _op("Delete", {**deleted, "properties": {**deleted["properties"],
                                                              "workflow_id": {"type": "integer"}}},
                          "404", *auth, tag="workflows"),
        },
        "/workflow/{workflow_id}/{action}": {
            "x-tornado-route": [r"/workflow/(\d{1,18})/(enable|disable)", OBJECT_ID_ROUTE],
            "parameters": [WORKFLOW_ID, _path_param("action", {"enum": ["enable", "disable"]}, "What to do")],
            "post": _op("Enable or disable; reaches the scheduler at once", ref("Workflow"), "400", "404", *auth,
                        tag="workflows"),
        },
        "/workflow/{workflow_id}/execute": {
            "x-tornado-route": [r"/workflow/(\d{1,18})/execute", OBJECT_ID_ROUTE], "parameters": [WORKFLOW_ID],
            "post": _op("Run now (also when disabled)", {
                "type": "object", "required": ["workflow_id", "workflow_name", "run_id", "message"],
                "properties": {"workflow_id": {"type": "integer"}, "workflow_name": {"type": "string"},
                               "run_id": {"type": ["string", "null"]}, "message": {"const": "工作流执行已启动"}}},
                "404", *auth, tag="workflows"),
        },
        "/workflow/{workflow_id}/plan": {
            "x-tornado-route": [r"/workflow/(\d{1,18})/plan", OBJECT_ID_ROUTE], "parameters": [WORKFLOW_ID],
            "get": _op("The data plan: which step's outputs feed which step's inputs", {
                "type": "object", "required": ["workflow_id", "workflow_name", "order", "steps"],
                "properties": {"workflow_id": {"type": "integer"}, "workflow_name": {"type": "string"},
                               "order": {"enum": list(ORDER)},
                               "steps": {"type": "array", "items": {"type": "object", "required": ["step"]}}}},
                "404", *auth, tag="workflows"),
        },
        "/workflow/{workflow_id}/runs": {
            "x-tornado-route": [r"/workflow/(\d{1,18})/runs", OBJECT_ID_ROUTE], "parameters": [WORKFLOW_ID],
            "get": _op("Run history of one workflow, newest first", ref("RunPage"), "400", "404", *auth,
                       params=RUN_PAGE_PARAMS, tag="runs"),
        },
        "/runs": {"x-tornado-route": r"/runs", "get": _op(
            "Every run, newest first", ref("RunPage"), "400", *auth, tag="runs", params=[
                {"name": "workflow_id", "in": "query",
                 "schema": {"type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999}},
                *RUN_PAGE_PARAMS])},
        "/runs/{run_id}": {
            "x-tornado-route": r"/runs/([0-9a-f]{1,64})", "parameters": [RUN_ID],
            "get": _op("One run with its steps", ref("Run"), "404", *auth, tag="runs"),
        },
        "/runs/{run_id}/cancel": {
            "x-tornado-route": r"/runs/([0-9a-f]{1,64})/cancel", "parameters": [RUN_ID],
            "post": _op("Cancel an open run: each running step's module gets a `cancel` frame; open steps and "
                        "the run end `cancelled` (409 when the run is closed)",
                        ref("Run"), "404", "409", *auth, tag="runs"),
        },
        "/runs/{run_id}/rerun": {
            "x-tornado-route": r"/runs/([0-9a-f]{1,64})/rerun", "parameters": [RUN_ID],
            "post": _op("Start a new run (trigger `rerun`, `rerun_of` this run) of the steps that did not "
                        "succeed, or of all steps; 409 when the run is open, its workflow is gone or nothing failed",
                        ref("Run"), "400", "404", "409", *auth, tag="runs", body={
                            "type": "object", "properties": {"steps": {"enum": ["failed", "all"],
                                                                       "default": "failed"}}}),
        },
        "/scheduler/jobs": {"x-tornado-route": r"/scheduler/jobs", "get": _op(
            "Scheduled jobs (one per enabled workflow, plus the system jobs)",
            {"type": "array", "items": ref("Job")}, *auth, tag="scheduler")},
        "/scheduler/reload": {"x-tornado-route": r"/scheduler/reload", "post": _op(
            "Rebuild the jobs from the store (the seed's reload)", {
                "type": "object", "required": ["removed_count", "current_count", "enabled_workflows", "message"],
                "properties": {"removed_count": {"type": "integer"}, "current_count": {"type": "integer"},
                               "enabled_workflows": {"type": "array", "items": {"type": "object"}},
                               "message": {"type": "string"}}}, *auth, tag="scheduler")},
        "/notifications": {"x-tornado-route": r"/notifications", "get": _op(
            "The notification outbox, newest first", page_of("notifications", ref("Notification")), "400", *auth,
            tag="notifications", params=[
                {"name": "status", "in": "query", "schema": {"enum": ["pending", "retrying", "sent",
                                                                     "not_configured"]}},
                *[{**p, "schema": {**p["schema"], "maximum": 500 if p["name"] == "page_size" else 1_000_000}}
                  for p in PAGE_PARAMS]])},
        "/tokens": {
            "x-tornado-route": r"/tokens",
            "get": _op("API tokens. " + ADMIN_NOTE, {"type": "array", "items": ref("Token")}, *auth, tag="admin"),
            "post": _op("Create an API token; `token` is shown once. " + ADMIN_NOTE, {
                "allOf": [ref("Token")], "required": ["token"], "properties": {"token": {"type": "string"}}},
                "400", "404", *auth, tag="admin", body={
                    "type": "object", "required": ["name"], "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 100},
                        "username": {"type": ["string", "null"], "maxLength": 64,
                                     "description": "Whose token (default: the caller)"}}}),
        },
        "/tokens/{token_id}": {
            "x-tornado-route": r"/tokens/(\d{1,18})", "parameters": [TOKEN_ID],
            "delete": _op("Revoke (409 if already revoked). " + ADMIN_NOTE, ref("Token"), "404", "409", *auth,
                          tag="admin"),
        },
        "/audit": {"x-tornado-route": r"/audit", "get": _op(
            "Who changed what, when, from where, newest first. " + ADMIN_NOTE,
            page_of("entries", ref("AuditEntry")), "400", *auth, tag="admin",
            params=[{**p, "schema": {**p["schema"], "maximum": 500 if p["name"] == "page_size" else 1_000_000}}
                    for p in PAGE_PARAMS])},
    }


def openapi_document() -> dict[str, Any]:
    """The whole document (built fresh: callers may not share mutable state)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tornado_sched",
            "version": "0.1.0",
            "description": (
                "Component scheduling server. Every response uses the seed's envelope "
                '`{"code", "message", "result"}`; success is code `2000`, errors carry HTTP status x 10. '
                "Every timestamp is ISO 8601 in UTC with its offset, except the seed's `execution_time` "
                "(the nominal tick, local to the workflow's zone). Bodies are JSON or form-encoded. "
                "The module WebSocket protocol is described in docs/asyncapi.yaml."
            ),
        },
        "security": [{"basicAuth": []}, {"digestAuth": []}, {"bearerAuth": []}],
        "components": {
            "securitySchemes": {
                "basicAuth": {"type": "http", "scheme": "basic"},
                "digestAuth": {"type": "http", "scheme": "digest"},
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "An API token from POST /tokens or `create-token`"},
                "registrationToken": {"type": "apiKey", "in": "header", "name": "X-Registration-Token",
                                      "description": "REGISTRATION_TOKEN; only /module/register"},
                "registrationTokenParameter": {
                    "type": "apiKey", "in": "query", "name": "token",
                    "description": "REGISTRATION_TOKEN as the `token` parameter (query string, or the body of a "
                                   "POST); only /module/register"},
                "metricsToken": {"type": "http", "scheme": "bearer", "description": "METRICS_TOKEN; only /metrics"},
            },
            "schemas": component_schemas(),
        },
        "paths": _paths(),
    }
