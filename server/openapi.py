"""``/openapi.json``, generated from the routes and their pydantic wire models.

Each API view is decorated with :func:`documented`; :func:`build_spec` walks the
app's URL map, so a route without documentation is caught by
``tests/test_openapi.py`` instead of silently missing from the spec.
"""

from __future__ import annotations

from typing import Callable

from flask import Flask
from pydantic import BaseModel

from server.protocol import ErrorResponse

DOC_ATTR = "_tuneloop_openapi"
DOCUMENTED_PREFIXES = ("/api/", "/v1/")


def documented(
    summary: str,
    *,
    request: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    stream: bool = False,
    errors: tuple[int, ...] = (),
    tag: str = "chat",
) -> Callable:
    """Attach OpenAPI facts to a view function."""

    def wrap(view: Callable) -> Callable:
        setattr(
            view,
            DOC_ATTR,
            dict(summary=summary, request=request, response=response, stream=stream, errors=errors, tag=tag),
        )
        return view

    return wrap


def build_spec(app: Flask, version: str) -> dict:
    """The OpenAPI 3.1 document for every documented route of ``app``."""
    schemas: dict[str, dict] = {}

    def ref(model: type[BaseModel]) -> dict:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    paths: dict[str, dict] = {}
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        meta = getattr(view, DOC_ATTR, None)
        if meta is None:
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict = {"summary": meta["summary"], "tags": [meta["tag"]], "responses": {}}
            params = [
                {"name": arg, "in": "path", "required": True, "schema": {"type": "string"}}
                for arg in sorted(rule.arguments)
            ]
            if params:
                op["parameters"] = params
            if meta["request"] is not None:
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": ref(meta["request"])}},
                }
            ok: dict = {"description": "OK"}
            content = {}
            if meta["response"] is not None:
                content["application/json"] = {"schema": ref(meta["response"])}
            if meta["stream"]:
                content["text/event-stream"] = {"schema": {"type": "string"}}
            if content:
                ok["content"] = content
            op["responses"]["200"] = ok
            for status in meta["errors"]:
                op["responses"][str(status)] = {
                    "description": "Error",
                    "content": {"application/json": {"schema": ref(ErrorResponse)}},
                }
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "tuneloop gateway", "version": version},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }
