"""Per-app and per-request state: the gateway's services and a database connection per request."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

from flask import Flask, current_app, g, has_request_context
from sqlite_utils import Database

from config.settings import Settings
from feedback.db import ConnectionPool, open_store
from feedback.knowledge.live import LiveIndex
from server.serving import ChatService, ModelRouter

EXTENSION = "tuneloop"  # the key of the Gateway in ``app.extensions``


@dataclass
class Gateway:
    """What ``create_app`` builds once and every request shares."""

    settings: Settings
    secret: str
    pool: ConnectionPool  # or feedback.db_postgres.PgPool: the same interface
    router: ModelRouter
    chat: ChatService
    knowledge: LiveIndex  # this worker's index of the knowledge base, kept current (feedback/knowledge/live.py)

    def connect(self) -> Database:
        """A new connection of the caller's own (tools, tests); requests use :attr:`pool`."""
        return open_store(self.settings, migrate=False)


def gateway(app: Flask | None = None) -> Gateway:
    """The gateway's shared services: of the app handling this request, or of ``app`` (while it is set up)."""
    return (app or current_app).extensions[EXTENSION]


def connection_for(pool: ConnectionPool) -> Callable[[], ContextManager[Database]]:
    """What services take as ``connection``: ``with connection() as db:`` — the request's own connection when the
    request already has one, else one from ``pool`` for the block.

    A request then holds one connection at a time, never two: on PostgreSQL, where a worker's pool is bounded
    (database.pool_size), N requests each holding one connection and waiting for a second (to record a turn,
    count a rate limit) would wait each other out. A stream, which gives its request's connection back when it
    starts (server/app.py), takes one from the pool for the moment it records.
    """

    @contextlib.contextmanager
    def connection() -> Iterator[Database]:
        if has_request_context() and "db" in g:
            yield g.db
            return
        with pool.connection() as db:
            yield db

    return connection


def get_db() -> Database:
    """This request's connection, opened on first use and closed at teardown."""
    if "db" not in g:
        g.db = gateway().pool.acquire()
    return g.db


def close_db(_exc: BaseException | None = None) -> None:
    db = g.pop("db", None)
    if db is not None:
        gateway().pool.release(db)
