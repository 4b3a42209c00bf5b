"""Rate limits: who a request counts against, and where the counts live.

- **Who** (:func:`rate_limit_key`): a secret key is one caller; a *publishable* key is shared by every visitor
  of the site that embeds it, so it counts per key *and* client address — one bucket per site let one visitor
  (or 60 ordinary ones) use up the whole site's minute (issue 14). Without a key, the client address. The
  address is the one :mod:`server.proxies` resolved: behind a load balancer, the client's, not the balancer's.
- **Where** (``limits.storage_uri``): ``database://``, the default, keeps the counts in the gateway's own
  database (:mod:`feedback.rate_counters`), so every gunicorn worker and every gateway on that database counts
  against one limit. ``memory://`` counts per worker (N workers allow N times the limit); ``redis://HOST:6379``
  works too (flask-limiter's own storage).

flask-limiter does the rest: the limits per route (``[limits]``), 429 with ``Retry-After``, and the
``X-RateLimit-*`` headers.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Callable, ContextManager

from flask import Flask, g, request
from flask_limiter import Limiter
from limits.storage import Storage
from sqlite_utils import Database

from config.settings import Settings
from feedback import rate_counters
from feedback.sql import storage_errors

DATABASE_SCHEME = "database"
PURGE_EVERY_S = 60.0  # how often a worker deletes the counters of ended windows


def rate_limit_key() -> str:
    """What a request counts against (see the module docstring)."""
    key = getattr(g, "api_key", None)
    if key is None:
        return f"ip:{request.remote_addr}"
    if key.kind == "publishable":
        return f"key:{key.id}:ip:{request.remote_addr}"
    return f"key:{key.id}"


class DatabaseStorage(Storage):
    """A limits storage (``database://``) on the gateway's own database, through :mod:`feedback.rate_counters`."""

    STORAGE_SCHEME = [DATABASE_SCHEME]

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        *,
        connection: Callable[[], ContextManager[Database]],
        **options,
    ):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.connection = connection
        self._next_purge = 0.0
        # One counter write at a time per process: the others wait here, woken the moment it is done, instead
        # of all polling SQLite's write lock (feedback.db.begin_immediate sleeps up to 100 ms between tries).
        # Under gevent's patching this lock is a greenlet lock.
        self._writing = threading.Lock()

    @property
    def base_exceptions(self) -> tuple[type[Exception], ...]:
        return storage_errors()  # read when an error is raised: psycopg's classes count once it is loaded

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        with self._writing, self.connection() as db:
            hits, _ = rate_counters.hit(db, key, expiry, amount)
            if time.monotonic() >= self._next_purge:
                self._next_purge = time.monotonic() + PURGE_EVERY_S
                rate_counters.purge_ended(db)
        return hits

    def get(self, key: str) -> int:
        with self.connection() as db:
            return rate_counters.current(db, key)[0]

    def get_expiry(self, key: str) -> float:
        with self.connection() as db:
            ends = rate_counters.current(db, key)[1]
        return datetime.fromisoformat(ends.replace("Z", "+00:00")).timestamp() if ends else time.time()

    def check(self) -> bool:
        try:
            with self.connection() as db:
                db.execute("SELECT 1 FROM rate_limit_counters LIMIT 1").fetchall()
            return True
        except storage_errors():
            return False

    def reset(self) -> int | None:
        with self.connection() as db:
            return rate_counters.clear(db)

    def clear(self, key: str) -> None:
        with self.connection() as db:
            rate_counters.clear(db, key)


def install_limits(app: Flask, settings: Settings, connection: Callable[[], ContextManager[Database]]) -> Limiter:
    """Put the ``[limits]`` on the chat, rating and conversation-delete routes of ``app``."""
    limits = settings.limits
    uses_database = limits.storage_uri.startswith(f"{DATABASE_SCHEME}://")
    limiter = Limiter(
        rate_limit_key,
        app=app,
        storage_uri=limits.storage_uri,
        storage_options={"connection": connection} if uses_database else {},
        headers_enabled=True,
        enabled=limits.enabled,
        key_prefix="tuneloop",
    )
    per_endpoint = {
        "api.chat": limits.chat,
        "openai.chat_completions": limits.chat,
        "responses.create_response": limits.chat,
        "api.feedback": limits.feedback,
        "api.delete_conversation": limits.feedback,
    }
    for endpoint, limit in per_endpoint.items():
        app.view_functions[endpoint] = limiter.limit(limit)(app.view_functions[endpoint])
    app.extensions["tuneloop_limiter"] = limiter
    return limiter
