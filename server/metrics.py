"""Prometheus metrics of the gateway (``GET /metrics``).

Under gunicorn every worker is its own process, so when
``PROMETHEUS_MULTIPROC_DIR`` is set (``config/gunicorn.conf.py`` sets it) the
values are written to files there and ``/metrics`` aggregates all workers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from config.errors import UpstreamError
from feedback.knowledge.grounding import Grounded
from modelclient.chat import Reply

REQUESTS = Counter("tuneloop_requests_total", "HTTP requests by route and status.", ["route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "tuneloop_request_seconds",
    "Time to answer an HTTP request (for streams: until the headers).",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ANSWER_SECONDS = Histogram(
    "tuneloop_answer_seconds",
    "Time to a whole answer from the model.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)
FIRST_TOKEN_SECONDS = Histogram(
    "tuneloop_first_token_seconds",
    "Time to the first token from the model.",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8),
)
TOKENS = Counter("tuneloop_tokens_total", "Tokens in prompts and answers.", ["model", "direction"])
UPSTREAM_ERRORS = Counter("tuneloop_upstream_errors_total", "Model server failures by kind.", ["code"])
RATINGS = Counter("tuneloop_ratings_total", "Ratings received (a changed vote counts again).", ["rating"])
GROUNDED = Counter(
    "tuneloop_grounded_answers_total",
    "Answers by how the knowledge base took part: sources (entries given), no_match (none scored min_score), "
    "closed_book (off, or the request opted out).",
    ["kind"],
)
TRIMMED_MESSAGES = Counter(
    "tuneloop_history_trimmed_messages_total", "Earlier messages left out so a prompt fits the model's window."
)


def observe_answer(reply: Reply, error: str | None) -> None:
    """Count one finished (or failed mid-way) answer."""
    model = reply.target.name
    if reply.latency_ms is not None:
        ANSWER_SECONDS.labels(model).observe(reply.latency_ms / 1000)
    if reply.first_token_ms is not None:
        FIRST_TOKEN_SECONDS.labels(model).observe(reply.first_token_ms / 1000)
    TOKENS.labels(model, "in").inc(reply.usage.get("prompt_tokens", 0))
    TOKENS.labels(model, "out").inc(reply.usage.get("completion_tokens", 0))
    if error:
        UPSTREAM_ERRORS.labels("mid_stream").inc()


def observe_grounding(grounded: Grounded) -> None:
    """Count how one prompt was grounded, and the history it had to leave out."""
    kind = "closed_book" if grounded.closed_book else ("sources" if grounded.sources else "no_match")
    GROUNDED.labels(kind).inc()
    if grounded.history_dropped:
        TRIMMED_MESSAGES.inc(grounded.history_dropped)


def observe_upstream_failure(exc: UpstreamError) -> None:
    UPSTREAM_ERRORS.labels(exc.code).inc()


def observe_rating(rating: str) -> None:
    RATINGS.labels(rating).inc()


def render(loop: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The exposition text for every worker (or this process alone), plus ``loop``'s gauges (read from the
    database, so the same in every worker: added once, never summed across workers)."""
    extra = generate_latest(loop) if loop is not None else b""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry) + extra, CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY) + extra, CONTENT_TYPE_LATEST
