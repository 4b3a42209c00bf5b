"""The hosted model being replaced, as a teacher: which version it is, and asking it politely.

Hosted APIs rate-limit. A 429 or 503 is retried after the ``Retry-After`` (or OpenAI's ``retry-after-ms``) the
server sent, else after an exponential backoff (1, 2, 4 … s), at most ``migrate.max_retry_wait_s`` at a time and
``migrate.retries`` times; a 5xx or a broken connection likewise. Any other 4xx (a bad key, a model that is gone)
fails at once: waiting cannot fix it.
"""

from __future__ import annotations

import time
from typing import Callable

from sqlite_utils import Database

from config.errors import NotFound, UpstreamError
from config.settings import Settings
from feedback.versions import ModelVersion, live_version
from modelclient.chat import ChatClient, ClientPolicy, Target, retriable
from trainer.deploy import version_target
from trainer.registry import resolve_version


def teacher_version(db: Database, settings: Settings) -> ModelVersion:
    """``migrate.teacher`` (a version's id or name), else the live version."""
    if settings.migrate.teacher:
        return resolve_version(db, settings.migrate.teacher)
    live = live_version(db)
    if live is None:
        raise NotFound("no version is live and migrate.teacher is not set: name the hosted model to replace")
    return live


def teacher_client(settings: Settings) -> ChatClient:
    """A client that does not retry by itself: :func:`ask` retries, honouring the server's Retry-After."""
    m = settings.model
    return ChatClient(
        ClientPolicy(
            connect_timeout_s=m.connect_timeout_s,
            first_token_timeout_s=m.first_token_timeout_s,
            timeout_s=m.timeout_s,
            retries=0,
        )
    )


def ask(
    client: ChatClient,
    target: Target,
    messages: list[dict],
    settings: Settings,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[float, UpstreamError], None] | None = None,
) -> str:
    """The teacher's answer to ``messages`` at temperature 0 (see the module docstring for retries)."""
    m = settings.migrate
    for attempt in range(m.retries + 1):
        try:
            return client.complete([target], messages, max_tokens=m.max_tokens, temperature=0.0).text
        except UpstreamError as exc:
            if not retriable(exc) or attempt == m.retries:
                raise
            asked = getattr(exc, "retry_after_s", None)
            wait = min(m.max_retry_wait_s, asked if asked is not None else 2.0**attempt)
            if on_wait:
                on_wait(wait, exc)
            sleep(wait)
    raise AssertionError("unreachable")


def teacher_target(settings: Settings, teacher: ModelVersion) -> Target:
    """Where the teacher is asked: its own server and key, else the configured model's."""
    return version_target(settings, teacher)
