"""``/openapi.json``, generated from the routes and their pydantic wire models.

Each API view is decorated with :func:`documented`; :func:`build_spec` walks the
app's URL map, so a route without documentation is caught by
``tests/test_openapi.py`` instead of silently missing from the spec.
"""

from __future__ import annotations

from typing import Callable, Mapping

from flask import Flask
from pydantic import BaseModel
from werkzeug.http import HTTP_STATUS_CODES

from config.settings import Settings
from server.context import gateway
from server.errors import openai_family
from server.protocol import SETTINGS_ENUM, ErrorResponse, EventData, OpenAIErrorResponse

DOC_ATTR = "_tuneloop_openapi"
# The public API, and the admin API's privacy routes (erasure and export on request are made by scripts too).
DOCUMENTED_PREFIXES = ("/api/", "/v1/", "/admin/api/privacy/")


# Statuses every API route can answer, added to each route's own: the key check runs before every /api and /v1
# route (401 missing or bad key; 403 a publishable key on a route it may not use, or an origin not allowed).
ALWAYS = (401, 403)
# ... and every route that reads a JSON body: 400 not JSON the gateway can hold, 413 too large, 422 wrong fields.
WITH_BODY = (400, 413, 422)


def documented(
    summary: str,
    *,
    request: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    events: Mapping[str, EventData] | None = None,
    headers: Mapping[str, str] | None = None,
    errors: tuple[int, ...] = (),
    tag: str = "chat",
) -> Callable:
    """Attach OpenAPI facts to a view function.

    ``events``: the route can also answer ``text/event-stream``: each event's name and what its data holds.
    ``headers``: optional request headers the route reads, with what each means.
    ``errors``: the statuses particular to this route (:data:`ALWAYS` and :data:`WITH_BODY` are added).
    """

    def wrap(view: Callable) -> Callable:
        setattr(
            view,
            DOC_ATTR,
            dict(
                summary=summary,
                request=request,
                response=response,
                events=events,
                headers=headers or {},
                errors=errors,
                tag=tag,
            ),
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
            params += [
                {"name": name, "in": "header", "required": False, "description": text, "schema": {"type": "string"}}
                for name, text in meta["headers"].items()
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
            if meta["events"]:
                content["text/event-stream"] = _event_stream(meta["events"], ref)
            if content:
                ok["content"] = content
            op["responses"]["200"] = ok
            statuses = set(meta["errors"]) | set(ALWAYS) | (set(WITH_BODY) if meta["request"] is not None else set())
            error_model = OpenAIErrorResponse if openai_family(rule.rule) else ErrorResponse  # one shape per family
            for status in sorted(statuses):
                op["responses"][str(status)] = {
                    "description": HTTP_STATUS_CODES.get(status, "Error"),
                    "content": {"application/json": {"schema": ref(error_model)}},
                }
            paths.setdefault(path, {})[method.lower()] = op
    _settings_enums(schemas, gateway(app).settings)
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


def _event_stream(events: Mapping[str, EventData], ref: Callable[[type[BaseModel]], dict]) -> dict:
    """A ``text/event-stream`` media type whose ``schema`` describes one event, as OpenAPI 3.1 reads it.

    Each event is ``{"event": name, "data": text}``; the text is JSON of one of the named models (``contentSchema``)
    or a literal. OpenAPI 3.2 would say the same under ``itemSchema``.
    """

    def data(holds: EventData) -> dict:
        options: list[dict] = []
        models = [ref(item) for item in holds if not isinstance(item, str)]
        if models:
            content = models[0] if len(models) == 1 else {"anyOf": models}
            options.append({"type": "string", "contentMediaType": "application/json", "contentSchema": content})
        options += [{"const": item} for item in holds if isinstance(item, str)]
        return options[0] if len(options) == 1 else {"anyOf": options}

    one_event = [
        {
            "type": "object",
            "required": ["event", "data"],
            "properties": {"event": {"const": name}, "data": data(holds)},
        }
        for name, holds in events.items()
    ]
    return {
        "schema": {
            "description": f"Server-sent events ({', '.join(events)}); this schema describes one event.",
            "anyOf": one_event,
        }
    }


def _settings_enums(schemas: dict[str, dict], settings: Settings) -> None:
    """Fields whose allowed values are a setting (``SETTINGS_ENUM``) get those values as their enum."""
    for schema in schemas.values():
        for prop in schema.get("properties", {}).values():
            dotted = prop.pop(SETTINGS_ENUM, None)
            if dotted is None:
                continue
            section, key = dotted.split(".")
            values = list(getattr(getattr(settings, section), key))
            nullable = any(option.get("type") == "null" for option in prop.get("anyOf", []))
            prop["enum"] = values + ([None] if nullable else [])
