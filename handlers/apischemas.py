"""The OpenAPI document's components: the JSON Schema of every body and answer the
REST API sends or takes (the envelope, modules, workflows, runs, tokens, ...) and
the small schema pieces they share. The paths and operations that use them are in
apispec.py. Defaults and enums come from the core's constants, so the document
cannot drift from what the code does.
"""

from __future__ import annotations

from typing import Any

from tornado_sched.history import MODULE_STEP_STATUSES
from tornado_sched.run_state import RUN_STATUSES
from tornado_sched.workflows import (
    DEFAULT_MISFIRE_GRACE_SECONDS,
    DEFAULT_RETRIES,
    DEFAULT_RETRY_DELAY_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    MISFIRE,
    ORDER,
    OVERLAP,
    SHIFT_UNITS,
)

JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


TIMESTAMP = {"type": "string", "format": "date-time", "description": "ISO 8601, UTC, with its offset (+00:00)"}
MAYBE_TIMESTAMP = {"type": ["string", "null"], "format": "date-time", "description": TIMESTAMP["description"]}


def component_schemas() -> dict[str, Any]:
    module_step = {
        "type": "object", "required": ["module_hash"],
        "properties": {"module_hash": {"type": "string", "minLength": 1, "maxLength": 128},
                       "args": {"type": "object", "description": "This module's args; no key may start with `$`"}},
    }
    workflow_fields = {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "description": {"type": "string", "maxLength": 2000},
        "enable": {"type": "boolean", "default": True},
        "execute_cron_list": {"type": "array", "maxItems": 20, "items": {"type": "string"},
                              "description": "5-field crontab lines (or @daily-style macros); required when enabled"},
        "execute_shift_time": {"type": "integer", "default": 0, "description": "Negative = earlier"},
        "execute_shift_unit": {"enum": list(SHIFT_UNITS), "default": SHIFT_UNITS[0]},
        "execute_modules": {"type": "array", "minItems": 1, "items": module_step},
        "timezone": {"type": "string", "description": "IANA zone the crontab lines are read in (default TIME_ZONE)"},
        "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 604800, "default": DEFAULT_TIMEOUT_SECONDS},
        "overlap": {"enum": list(OVERLAP), "default": OVERLAP[0]},
        "misfire": {"enum": list(MISFIRE), "default": MISFIRE[0]},
        "misfire_grace_seconds": {"type": "integer", "minimum": 1, "maximum": 604800,
                                  "default": DEFAULT_MISFIRE_GRACE_SECONDS},
        "retries": {"type": "integer", "minimum": 0, "maximum": 10, "default": DEFAULT_RETRIES},
        "retry_delay_seconds": {"type": "integer", "minimum": 0, "maximum": 86400,
                                "default": DEFAULT_RETRY_DELAY_SECONDS},
        "order": {"enum": list(ORDER), "default": ORDER[0],
                  "description": "`data`: steps wait for the steps whose outputs feed their inputs"},
    }
    step = {
        "type": "object",
        "required": ["index", "module_hash", "module_name", "status"],
        "properties": {
            "index": {"type": "integer"}, "module_hash": {"type": "string"}, "module_name": {"type": "string"},
            "args": {"type": "object"},
            "status": {"enum": ["pending", "sent", "success", "failure", "offline", "timeout", "interrupted",
                                "skipped", "upstream_failed", "cancelled"],
                       "description": "`upstream_failed` (data-ordered runs): never sent, because a producer "
                                      "of a required input did not succeed"},
            "attempts": {"type": "integer"}, "sent_at": MAYBE_TIMESTAMP, "ended_at": MAYBE_TIMESTAMP,
            "message": {"type": ["string", "null"]}, "error": {"type": ["string", "null"]},
            "output": {"description": "The module's `output` from its result (JSON, at most 64 KiB encoded); "
                                      "null when it sent none"},
            "progress": {
                "type": ["object", "null"], "description": "The module's last `progress` frame for this step",
                "properties": {"percent": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
                               "message": {"type": ["string", "null"]}}},
            "log": {"type": "array", "items": {"type": "string"}, "maxItems": 200,
                    "description": "The last lines of the module's `log` frames (each cut at 1,000 characters)"},
        },
    }
    return {
        "Envelope": {
            "type": "object", "required": ["code", "message", "result"],
            "properties": {"code": {"type": "string", "pattern": "^[0-9]{4}$"}, "message": {"type": "string"},
                           "result": {}},
        },
        "ErrorEnvelope": {
            "type": "object", "required": ["code", "message", "result"],
            "description": "The seed's envelope with an error code: HTTP status x 10 (4000, 4010, ... 5030)",
            "properties": {
                "code": {"type": "string", "pattern": "^[45][0-9]{3}$"},
                "message": {"type": "string", "description": "Readable; names the field for bad input"},
                "result": nullable({"type": "object", "required": ["field"],
                                     "properties": {"field": {"type": "string"}}}),
            },
        },
        "Module": {
            "type": "object", "required": ["module_id", "name", "hash", "online"],
            "properties": {
                "module_id": {"type": "integer"}, "name": {"type": "string"},
                "hash": {"type": "string", "description": "The WebSocket credential; viewers see a prefix"},
                "description": {"type": "string"},
                "input_data": {"type": "array", "items": {"type": "object"}},
                "output_data": {"type": "array", "items": {"type": "object"}},
                "modelHash": {"type": ["string", "null"]}, "online": {"type": "boolean"},
                "last_heartbeat": MAYBE_TIMESTAMP, "connected_at": MAYBE_TIMESTAMP,
                "remote_address": {"type": ["string", "null"]},
                "created_at": MAYBE_TIMESTAMP, "updated_at": MAYBE_TIMESTAMP,
            },
        },
        "OnlineModule": {
            "type": "object", "required": ["module_id", "name", "hash", "connected_at"],
            "properties": {
                "module_id": {"type": "integer"}, "name": {"type": "string"}, "hash": {"type": "string"},
                "description": {"type": "string"}, "connected_at": TIMESTAMP, "last_heartbeat": TIMESTAMP,
                "remote_address": {"type": ["string", "null"]},
            },
        },
        "WorkflowCreate": {"type": "object", "required": ["name", "execute_modules"], "properties": workflow_fields},
        "WorkflowUpdate": {"type": "object", "properties": workflow_fields,
                           "description": "Any subset of the create body"},
        "Workflow": {
            "type": "object", "required": ["id", "workflow_id", "name", "enable", "execute_cron_list",
                                           "execute_modules"],
            "properties": {
                **workflow_fields,
                "execute_modules": {"type": "array", "items": module_step},
                "id": {"type": "string", "description": "Document id (ObjectId); paths take workflow_id"},
                "workflow_id": {"type": "integer"},
                "created_at": MAYBE_TIMESTAMP, "updated_at": MAYBE_TIMESTAMP,
                "last_run": nullable({"type": "object"}),
                "next_run_time": MAYBE_TIMESTAMP,
            },
        },
        "Run": {
            "type": "object", "required": ["run_id", "workflow_id", "status", "steps"],
            "properties": {
                "run_id": {"type": "string"}, "workflow_id": {"type": "integer"},
                "workflow_name": {"type": "string"}, "trigger": {"type": "string"},
                "nominal_time": TIMESTAMP,
                "execution_time": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$",
                                   "description": "The seed's nominal tick, local to `timezone`, no offset"},
                "timezone": {"type": "string"}, "fired_at": TIMESTAMP, "started_at": TIMESTAMP,
                "ended_at": MAYBE_TIMESTAMP,
                "status": {"enum": list(RUN_STATUSES)},
                "rerun_of": {"type": ["string", "null"], "description": "The run this one re-runs"},
                "reason": {"type": ["string", "null"]}, "timeout_seconds": {"type": "integer"},
                "retries": {"type": "integer"}, "retry_delay_seconds": {"type": "integer"},
                "steps": {"type": "array", "items": step},
            },
        },
        "RunPage": {
            "type": "object", "required": ["total", "page", "page_size", "runs", "has_more", "next_before"],
            "properties": {
                "total": {"type": ["integer", "null"],
                          "description": "Exact up to 1,000; then 1,000 with total_exact false; null with `before`"},
                "total_exact": {"type": "boolean"},
                "page": {"type": ["integer", "null"], "description": "null when paging with `before`"},
                "page_size": {"type": "integer"}, "runs": {"type": "array", "items": ref("Run")},
                "has_more": {"type": "boolean"},
                "next_before": {"type": ["string", "null"], "description": "Cursor for the next (older) page"},
            },
        },
        "ModuleStep": {
            "type": "object",
            "required": ["run_id", "workflow_id", "workflow_name", "run_status", "step_index", "status",
                         "attempts", "sent_at", "ended_at", "message", "error"],
            "properties": {
                "run_id": {"type": "string"}, "workflow_id": {"type": "integer"},
                "workflow_name": {"type": "string"}, "run_status": {"type": "string"},
                "step_index": {"type": "integer"},
                "status": {"enum": [s for s in MODULE_STEP_STATUSES if s != "failed"]},
                "attempts": {"type": "integer"}, "sent_at": TIMESTAMP, "ended_at": MAYBE_TIMESTAMP,
                "message": {"type": ["string", "null"]}, "error": {"type": ["string", "null"]},
            },
        },
        "ModuleStepPage": {
            "type": "object", "required": ["page_size", "steps", "has_more", "next_before"],
            "properties": {
                "page_size": {"type": "integer"}, "steps": {"type": "array", "items": ref("ModuleStep")},
                "has_more": {"type": "boolean"},
                "next_before": {"type": ["string", "null"], "description": "Cursor for the next (older) page"},
            },
        },
        "Job": {
            "type": "object", "required": ["id", "name", "trigger", "next_run_time"],
            "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                           "workflow_id": {"type": ["integer", "null"]}, "trigger": {"type": "string"},
                           "next_run_time": MAYBE_TIMESTAMP},
        },
        "Notification": {
            "type": "object", "required": ["id", "channel", "kind", "status"],
            "properties": {
                "id": {"type": "integer"}, "channel": {"type": "string"}, "kind": {"type": "string"},
                "workflow_id": {"type": ["integer", "null"]}, "subject": {"type": "string"},
                "status": {"enum": ["pending", "retrying", "sent", "not_configured"]},
                "attempts": {"type": "integer"}, "last_error": {"type": ["string", "null"]},
                "failures": {"type": "integer"}, "created_at": TIMESTAMP,
                "next_attempt_at": MAYBE_TIMESTAMP, "sent_at": MAYBE_TIMESTAMP,
            },
        },
        "Token": {
            "type": "object", "required": ["id", "name", "username", "prefix", "revoked"],
            "properties": {
                "id": {"type": "integer"}, "name": {"type": "string"}, "username": {"type": "string"},
                "prefix": {"type": "string"}, "created_at": TIMESTAMP, "last_used_at": MAYBE_TIMESTAMP,
                "revoked": {"type": "boolean"}, "revoked_at": MAYBE_TIMESTAMP,
            },
        },
        "Session": {
            "type": "object", "required": ["id", "username", "active"],
            "properties": {
                "id": {"type": "integer"}, "username": {"type": "string"}, "created_at": TIMESTAMP,
                "last_seen_at": MAYBE_TIMESTAMP, "ended_at": MAYBE_TIMESTAMP,
                "end_reason": {"type": ["string", "null"]}, "remote_ip": {"type": ["string", "null"]},
                "user_agent": {"type": ["string", "null"]}, "active": {"type": "boolean"},
            },
        },
        "AuditEntry": {
            "type": "object", "required": ["id", "at", "actor", "action", "target"],
            "properties": {
                "id": {"type": "integer"}, "at": TIMESTAMP, "actor": {"type": "string"},
                "action": {"type": "string"}, "target": {"type": "string"},
                "detail": nullable({"type": "object"}), "remote_ip": {"type": ["string", "null"]},
            },
        },
    }


def page_of(key: str, item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["total", "page", "page_size", key],
            "properties": {"total": {"type": "integer"}, "page": {"type": "integer"},
                           "page_size": {"type": "integer"}, key: {"type": "array", "items": item}}}

