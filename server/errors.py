"""The HTTP boundary for errors: every failure becomes ``{"error": {...}}`` JSON.

Domain code raises :mod:`config.errors`; this module maps them — and Werkzeug's
own HTTP errors (404 route, 405, 413 body too large) and anything unexpected —
to one error shape per API family, with the class's status. No stack trace, no
HTML page, on any API path. Admin pages (HTML) render the same message as text.

- ``/api`` and pages: ours, ``{"error": {"code", "message", "field"?}}``.
- ``/v1`` (every path under it, unknown ones and wrong methods included): OpenAI's,
  ``{"error": {"message", "type", "param", "code"}}``, so the OpenAI SDKs raise the
  exception class of the status and show our message. ``param`` is our ``field``.
"""

from __future__ import annotations

import logging

from flask import Flask, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from config.errors import TuneloopError

log = logging.getLogger("tuneloop.gateway")

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
}


# OpenAI's error ``type`` for a status; a status not listed is an ``invalid_request_error`` (4xx) or a
# ``server_error`` (5xx), as OpenAI's own API answers them.
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
OPENAI_PREFIX = "/v1"
V1_ROUTES = "POST /v1/chat/completions, POST /v1/responses, GET /v1/responses/{id} and GET /v1/models"


def openai_family(path: str) -> bool:
    """Whether ``path`` is on the OpenAI-compatible API (``/v1`` and everything under it)."""
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def openai_error(code: str, message: str, status: int | None, field: str | None = None) -> dict:
    """OpenAI's error body. ``status`` None: an error inside a stream (after the first byte), a server error."""
    if status is None or status >= 500:
        kind = "server_error"
    else:
        kind = _OPENAI_TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": field, "code": code}}


def openai_in_band(body: dict) -> dict:
    """Our in-stream error body (``serving._in_band``) in OpenAI's shape, for a /v1 stream."""
    error = body["error"]
    return openai_error(error["code"], error["message"], None, error.get("field"))


def error_response(code: str, message: str, status: int, field: str | None = None, headers: dict | None = None):
    """A Flask response in the error shape of the API family the request is on."""
    if has_request_context() and openai_family(request.path):
        payload = openai_error(code, message, status, field)
    else:
        body = {"code": code, "message": message}
        if field:
            body["field"] = field
        payload = {"error": body}
    response = jsonify(payload)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Install the handlers on ``app``."""

    @app.errorhandler(TuneloopError)
    def _domain(exc: TuneloopError):
        if exc.status >= 500:
            # The model server's address stays here, in the log: clients never see internal URLs.
            where = getattr(exc, "where", None)
            log.warning("%s: %s%s", exc.code, exc.message, f" ({where})" if where else "")
        response = error_response(exc.code, exc.message, exc.status, exc.field)
        if exc.status == 429 and getattr(exc, "retry_after", None):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = exc.description or exc.name
        if status == 413:
            message = f"request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes"
        if status == 404 and openai_family(request.path):
            # What OpenAI answers (the SDKs show it), plus what is here: a client with the wrong base URL or an
            # API this gateway lacks learns which.
            message = f"Invalid URL ({request.method} {request.path}): this gateway's OpenAI API serves {V1_ROUTES}"
        headers = {}
        if status == 429:
            headers["Retry-After"] = _retry_after(exc)
        if status == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(exc.valid_methods)
        return error_response(code, message, status, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response("internal_error", "internal error; the event was logged", 500)


def _retry_after(exc: HTTPException) -> str:
    # flask-limiter puts the reset time on the exception's response headers.
    response = getattr(exc, "response", None)
    if response is not None and response.headers.get("Retry-After"):
        return response.headers["Retry-After"]
    limit = getattr(exc, "limit", None)
    if limit is not None:
        try:
            return str(int(limit.limit.get_expiry()))
        except Exception:  # noqa: BLE001 - best effort; 1 s is a safe default
            pass
    return "1"
