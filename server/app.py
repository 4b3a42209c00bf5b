"""The gateway's Flask application: ``create_app(test_config=None)`` and ``init_app(app)``.

Configuration is read when the app is created, never at import time: defaults →
file → ``TUNELOOP_*`` environment → ``test_config`` overrides. Creating the app
migrates the database and registers the configured model, once per process, so
request handlers never migrate.
"""

from __future__ import annotations

import logging
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Mapping

from flask import Flask, g, request
from flask_cors import CORS

from config.settings import Settings, load_settings
from feedback.db import open_store, open_store_pool
from feedback.knowledge.live import LiveIndex
from feedback.knowledge.seed import ensure_seeded
from feedback.secrets import instance_secret
from modelclient.embeddings import embeddings_from_settings
from server import admin, metrics
from server.auth import authenticate
from server.context import EXTENSION, Gateway, close_db, connection_for, get_db
from server.errors import register_error_handlers
from server.proxies import TrustedProxies
from server.rate_limits import install_limits
from server.routes import api, openai_compat, ops, pages, responses
from server.serving import ChatService, ModelRouter

API_PREFIXES = ("/api/", "/v1/")


def create_app(test_config: Mapping[str, Any] | None = None, *, settings: Settings | None = None) -> Flask:
    """Build the gateway. ``test_config`` are setting overrides (``{"gateway.port": 9000}``)."""
    settings = settings or load_settings(overrides=test_config)
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.gateway.max_body_bytes,
        TUNELOOP_VERSION=_version(),
    )
    app.json.ensure_ascii = False  # Korean answers stay readable on the wire
    app.json.sort_keys = False
    init_app(app, settings)
    return app


def init_app(app: Flask, settings: Settings) -> None:
    """Wire the store, the model router, auth, limits, CORS, metrics and routes onto ``app``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per upstream call is noise
    db = open_store(settings)
    # The pool is made here, in the worker after gunicorn's fork: a PostgreSQL pool's connections and
    # threads would not survive the fork.
    pool = open_store_pool(settings)
    secret = settings.gateway.secret_key or instance_secret(db, "feedback_token")
    ensure_seeded(db, settings.knowledge)  # first start only: the base file becomes the knowledge base
    connection = connection_for(pool)
    router = ModelRouter(settings, connection)
    router.prime(db)
    pool.release(db)  # the start-up connection stays open in the pool for the worker's life
    knowledge = LiveIndex(settings.knowledge, connection, embed=embeddings_from_settings(settings.knowledge))
    knowledge.load()
    chat = ChatService(settings=settings, router=router, secret=secret, connection=connection, knowledge=knowledge)
    gw = Gateway(settings=settings, secret=secret, pool=pool, router=router, chat=chat, knowledge=knowledge)
    app.extensions[EXTENSION] = gw
    app.teardown_appcontext(close_db)
    register_error_handlers(app)

    @app.before_request
    def _start_and_authenticate():
        g.started = time.perf_counter()
        if request.method != "OPTIONS" and request.path.startswith(API_PREFIXES):
            authenticate(get_db(), settings.gateway.api_key_required)

    @app.after_request
    def _count(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        if "started" in g:
            metrics.REQUEST_SECONDS.labels(route).observe(time.perf_counter() - g.started)
        return response

    CORS(
        app,
        resources={
            r"/api/*": {"origins": settings.gateway.cors_origins},
            r"/v1/*": {"origins": settings.gateway.cors_origins},
        },
        allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Tuneloop-Client"],
        expose_headers=["Retry-After", "X-Tuneloop-Message-Id", "X-Tuneloop-Conversation-Id"],
        max_age=600,
    )
    for blueprint in (api.bp, openai_compat.bp, responses.bp, ops.bp, pages.bp, admin.bp):
        app.register_blueprint(blueprint)
    install_limits(app, settings, connection)
    # Outermost, so every layer below (limits, votes, sign-in throttling) sees the client's address.
    app.wsgi_app = TrustedProxies(app.wsgi_app, settings.gateway.trusted_proxies)


def _version() -> str:
    try:
        return version("tuneloop")
    except PackageNotFoundError:
        return "0+unknown"
