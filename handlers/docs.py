"""API documentation: `GET /openapi.json` (OpenAPI 3.1) and `GET /docs`, a page
rendered on the server from the same document (no scripts, no CDN)."""

from __future__ import annotations

import json
from typing import Any

from .apispec import openapi_document
from .base import BaseHandler

METHODS = ("get", "post", "put", "delete")


class OpenApiHandler(BaseHandler):
    """The machine-readable API description; public, like the routes it describes."""

    auth = "public"

    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(openapi_document(), ensure_ascii=False, indent=1))


class ApiDocsHandler(BaseHandler):
    """The same document as a readable page."""

    auth = "public"

    def get(self) -> None:
        document = openapi_document()
        operations = []
        for path, item in document["paths"].items():
            shared = item.get("parameters", [])
            for method in METHODS:
                if method in item:
                    operations.append(_operation(path, method, item[method], shared))
        self.render("api_docs.html", info=document["info"], operations=operations,
                    schemas=document["components"]["schemas"], dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)


def _operation(path: str, method: str, op: dict[str, Any], shared: list[dict[str, Any]]) -> dict[str, Any]:
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    return {
        "path": path,
        "method": method.upper(),
        "summary": op.get("summary", ""),
        "public": op.get("security") == [],
        "parameters": [*shared, *op.get("parameters", [])],
        "body": body,
        "responses": {status: r["description"] for status, r in op["responses"].items()},
    }


default_handlers = [
    (r"/openapi.json", OpenApiHandler),
    (r"/docs", ApiDocsHandler),
]
