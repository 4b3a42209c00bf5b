"""Per-app and per-request state: the gateway's services and a database connection per request."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app, g
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


def get_db() -> Database:
    """This request's connection, opened on first use and closed at teardown."""
    if "db" not in g:
        g.db = gateway().pool.acquire()
    return g.db


def close_db(_exc: BaseException | None = None) -> None:
    db = g.pop("db", None)
    if db is not None:
        gateway().pool.release(db)
