"""The one error tree every layer raises from.

Domain code raises these; only two boundaries translate them: the Flask error
handlers (``server/errors.py``) into ``{"error": {"code", "message", "field"?}}``
with an HTTP status, and the CLI into a message and an exit code. Each class
carries its HTTP status so the mapping lives in exactly one place::

    TuneloopError
    ├── ConfigError                 bad setting; stops start-up          (500)
    ├── InvalidRequest              malformed JSON, bad field             (400)
    │   ├── ValidationFailed        well-formed but wrong type/value      (422)
    │   └── RequestTimeout          the client sent its body too slowly   (408)
    ├── Unauthorized                missing or bad API key / admin token  (401)
    ├── Forbidden                   key may not do this; bad feedback token (403)
    ├── NotFound                    unknown or foreign id                 (404)
    ├── Conflict                    state does not allow it               (409)
    ├── PayloadTooLarge             body or message over the limit        (413)
    ├── RateLimited                 too many requests                     (429)
    ├── StorageError                database full / not writable          (503)
    └── UpstreamError               the model server failed               (502)
        ├── UpstreamRejected        it refused the request as invalid     (502; 4xx when the client's)
        ├── UpstreamUnavailable     could not connect / overloaded        (503)
        └── UpstreamTimeout         no answer in time                     (504)

An :class:`UpstreamError`'s message never holds the model server's address (clients see
messages; an internal URL is not theirs to know); ``where`` keeps it for logs and the CLI.
"""

from __future__ import annotations


class TuneloopError(Exception):
    """Base of every error tuneloop raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code

    def to_dict(self) -> dict:
        """The wire shape: ``{"error": {"code", "message", "field"?}}``."""
        body: dict = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return {"error": body}


class ConfigError(TuneloopError):
    code = "config_error"


class InvalidRequest(TuneloopError):
    status = 400
    code = "invalid_request"


class ValidationFailed(InvalidRequest):
    status = 422
    code = "validation_failed"


class RequestTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"


class Unauthorized(TuneloopError):
    status = 401
    code = "unauthorized"


class Forbidden(TuneloopError):
    status = 403
    code = "forbidden"


class NotFound(TuneloopError):
    status = 404
    code = "not_found"


class Conflict(TuneloopError):
    status = 409
    code = "conflict"


class PayloadTooLarge(TuneloopError):
    status = 413
    code = "payload_too_large"


class RateLimited(TuneloopError):
    status = 429
    code = "rate_limited"


class StorageError(TuneloopError):
    status = 503
    code = "storage_unavailable"


class UpstreamError(TuneloopError):
    status = 502
    code = "upstream_error"
    where: str | None = None  # the model server's URL: for logs and the CLI, never for clients


class UpstreamRejected(UpstreamError):
    """The model server answered 400/413/422: it found the request invalid.

    ``field`` is the parameter it named (``max_tokens``, ``messages``…) and ``upstream_code``
    its error code. The gateway turns this into the client's 4xx when the client set that
    parameter (``server/model_limits.py``); otherwise the gateway itself sent something the
    model cannot take — a configuration problem, so it stays a 502.
    """

    upstream_code: str | None = None


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
