"""Who is calling: API keys on the API routes.

``Authorization: Bearer <key>`` (what the OpenAI SDK sends) or ``X-API-Key``.
A tuneloop key (``tl_…``) that is sent must be valid even where keys are optional. Keys are required
when ``gateway.require_api_key`` says so — by default whenever the gateway binds
to a non-loopback address. Publishable keys (embedded in web pages) may only use
routes marked with :func:`publishable`: chat and rate.
"""

from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit

from flask import current_app, g, request

from config.errors import Forbidden, Unauthorized
from feedback.apikeys import ApiKey, verify_key
from server.context import gateway

PUBLISHABLE_OK = "_tuneloop_publishable_ok"
KEY_PREFIX = "tl_"


def publishable(view: Callable) -> Callable:
    """Mark a view as usable with a publishable (browser) key."""
    setattr(view, PUBLISHABLE_OK, True)
    return view


def presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.headers.get("X-API-Key") or None


def authenticate(db, required: bool) -> ApiKey | None:
    """Resolve the caller's key for this request (sets ``g.api_key``)."""
    raw = presented_key()
    if raw and not required and not raw.startswith(KEY_PREFIX):
        # The OpenAI SDK refuses to send no key at all, so where keys are optional a
        # placeholder ("unused", "EMPTY") means anonymous. A tuneloop-shaped key is
        # always checked, so a revoked or mistyped real key never passes silently.
        raw = None
    key = verify_key(db, raw) if raw else None
    if raw and key is None:
        raise Unauthorized("the API key is not valid or was revoked", code="invalid_api_key")
    if key is None and required:
        raise Unauthorized(
            "an API key is required: send 'Authorization: Bearer <key>' (create one with 'tuneloop keys create NAME')",
            code="missing_api_key",
        )
    if key is not None and key.kind == "publishable":
        view = current_app.view_functions.get(request.endpoint or "")
        if not getattr(view, PUBLISHABLE_OK, False):
            raise Forbidden("a publishable key may only chat and rate", code="key_not_allowed")
    origin = request.headers.get("Origin")
    if origin and (key is None or key.kind == "publishable") and not origin_allowed(origin):
        # Browsers enforce CORS; this also stops what CORS lets through (a text/plain POST
        # is sent without a preflight) and non-browser clients replaying a page's key.
        raise Forbidden(f"origin {origin} is not in gateway.cors_origins", code="origin_not_allowed")
    g.api_key = key
    return key


def origin_allowed(origin: str) -> bool:
    """A browser page on ``origin`` may call the API: listed in ``gateway.cors_origins`` (or "*"), or the gateway's
    own."""
    allowed = {o.rstrip("/") for o in gateway().settings.gateway.cors_origins}
    return "*" in allowed or origin.rstrip("/") in allowed or urlsplit(origin).netloc == request.host


def caller_key_id() -> str | None:
    key = getattr(g, "api_key", None)
    return key.id if key else None
