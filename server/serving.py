"""Chat logic between the HTTP routes and the model: route, generate, record.

``ChatService.start()`` does everything up to the first token — checks the
conversation, picks the model version, builds the prompt with
:func:`~feedback.knowledge.grounding.ground` (system prompt + the knowledge-base
entries for the question + as many recent turns as fit the model's context
window + the new message), and asks the model, with retries and fallbacks — so a
failure there still becomes a proper 413/502/503/504 response. It returns a
:class:`PendingAnswer`, which the route either collects (JSON) or streams (SSE);
both paths end in the same ``finish()``, which records the turn in one
transaction. A failed turn is recorded on purpose, with its error.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator

from sqlite_utils import Database

from config.errors import TuneloopError, UpstreamError
from config.settings import Settings, env_secret
from feedback import turns, versions
from feedback.access import check_visible
from feedback.knowledge.grounding import Index, ground
from feedback.tokens import feedback_token, pseudonym
from modelclient.chat import ChatClient, ClientPolicy, Reply, Target
from server import metrics
from server.model_limits import check_answer_room, client_fault
from server.prompt_budget import PromptBudgets

log = logging.getLogger("tuneloop.gateway")


class ModelRouter:
    """Which model version answers a conversation.

    Reads the live and canary rows from the database at most every
    ``gateway.model_cache_s`` seconds, so a promotion reaches every gateway
    process without a restart. A canary takes the conversations whose id hashes
    below its traffic weight: the same conversation always lands on the same
    version (sticky). A canary conversation lists the live version right after the
    canary, so when the canary's model fails before its first token (an adapter
    that broke at request time) the live model answers that request.
    """

    def __init__(self, settings: Settings, connection: Callable[[], ContextManager[Database]]):
        self.settings = settings
        self.connection = connection
        self._cached_at = -1e9
        self._live: versions.ModelVersion | None = None
        self._canaries: list[versions.ModelVersion] = []
        self._fallbacks: list[Target] = []
        self._kept: list[versions.ModelVersion] = []

    def prime(self, db: Database) -> None:
        """Register the configured model and fallbacks (first start), then load the cache."""
        model = self.settings.model
        versions.ensure_live_version(db, name=model.name, provider=model.provider, base_url=None)
        self._fallbacks = []
        for fb in model.fallbacks:
            row = versions.ensure_standby_version(
                db, name=fb.name, provider=model.provider, base_url=fb.base_url or None
            )
            key = env_secret(fb.api_key_env) if fb.api_key_env else model.api_key()
            self._fallbacks.append(Target(fb.name, fb.base_url or model.base_url, key, row.id))
        self._refresh(db)

    def _refresh(self, db: Database) -> None:
        self._live = versions.live_version(db)
        self._canaries = versions.canary_versions(db)
        # A hosted model replaced before its shutdown (`tuneloop migrate switch`) answers when the live one
        # cannot, until the last day it was kept for; configured fallbacks come after it.
        today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
        self._kept = versions.fallback_versions(db, today)
        self._cached_at = time.monotonic()

    def _current(self) -> tuple[versions.ModelVersion | None, list[versions.ModelVersion]]:
        if time.monotonic() - self._cached_at > self.settings.gateway.model_cache_s:
            with self.connection() as db:
                self._refresh(db)
        return self._live, self._canaries

    def fallbacks(self) -> list[Target]:
        """What answers when the conversation's version cannot: kept hosted versions, then configured ones."""
        self._current()
        kept = [self.target(v) for v in self._kept]
        return kept + [t for t in self._fallbacks if t.tag not in {k.tag for k in kept}]

    def live_name(self) -> str:
        live, _ = self._current()
        return live.name if live else self.settings.model.name

    def served_names(self) -> list[str]:
        return [v.name for v in self.serving()]

    def serving(self) -> list[versions.ModelVersion]:
        """The versions taking traffic now: the live one first, then the canaries."""
        live, canaries = self._current()
        return ([live] if live else []) + canaries

    def targets(self, conversation_id: str) -> list[Target]:
        """The version for this conversation first (for a canary: then the live one), then the fallbacks."""
        live, canaries = self._current()
        chosen = live
        bucket = int(hashlib.sha256(conversation_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        edge = 0.0
        for canary in canaries:
            edge += canary.traffic_weight
            if bucket < edge:
                chosen = canary
                break
        primary = [self.target(v) for v in dict.fromkeys([chosen, live]) if v is not None]
        return primary + [t for t in self.fallbacks() if t.tag not in {p.tag for p in primary}]

    def target(self, version: versions.ModelVersion) -> Target:
        """Where and as what ``version`` is asked."""
        model = self.settings.model
        return Target(version.name, version.base_url or model.base_url, version.api_key(model.api_key()), version.id)


@dataclass
class Caller:
    """Who is asking: the API key (if any) and their end-user id, already pseudonymised."""

    api_key_id: str | None
    user_ref: str | None


@dataclass
class PendingAnswer:
    """An answer whose first token has arrived; iterate it, then call :meth:`finish`."""

    service: "ChatService"
    reply: Reply
    turn: turns.Turn
    feedback_token: str
    _finished: bool = False

    @property
    def model(self) -> str:
        return self.reply.target.name

    def collect(self) -> turns.Turn:
        """The whole answer, recorded; a failure mid-way is recorded, then re-raised."""
        try:
            for _ in self.reply:
                pass
        except Exception as exc:
            self.finish(error=_message(exc))
            self.reply.close()
            raise
        return self.finish()

    def events(self) -> Iterator[tuple[str, Any]]:
        """``("delta", text)`` for each chunk, then ``("done", turn)`` or ``("error", error_body)``.

        The turn is recorded in every case — also when the client goes away
        mid-stream (the generator is closed), then with the text so far and
        ``error = "client disconnected"``, and the upstream stream is closed. If
        recording itself fails (a full disk), that arrives as the error event.
        """
        try:
            for text in self.reply:
                yield "delta", text
        except GeneratorExit:
            self._finish_quietly("client disconnected")
            raise
        except Exception as exc:  # noqa: BLE001 - logged by _in_band; after the first byte, errors travel in-band
            body = _in_band(exc, "stream failed")
            self._finish_quietly(_message(exc))
            yield "error", body
            return
        try:
            turn = self.finish()
        except Exception as exc:  # noqa: BLE001 - logged by _in_band; the stream still ends with an event
            yield "error", _in_band(exc, "could not record a streamed turn")
            return
        yield "done", turn

    def _finish_quietly(self, error: str) -> None:
        """Record a failed or abandoned turn; a storage failure here is logged, not raised over the first error."""
        self.reply.close()
        try:
            self.finish(error=error)
        except Exception:
            log.exception("could not record a failed turn")

    def finish(self, error: str | None = None) -> turns.Turn:
        """Record the turn (once), with whatever text was produced and the error, if any."""
        if self._finished:
            return self.turn
        self._finished = True
        reply = self.reply
        t = self.turn
        t.answer = reply.text
        t.model_version_id = reply.target.tag
        t.latency_ms = reply.latency_ms if reply.latency_ms is not None else reply.elapsed_ms()
        t.tokens_in = reply.usage.get("prompt_tokens")
        t.tokens_out = reply.usage.get("completion_tokens")
        t.finish_reason = reply.finish_reason if error is None else "error"
        t.error = error
        self.service.record(t)
        metrics.observe_answer(reply, error)
        return t


def _in_band(exc: Exception, what: str) -> dict:
    """The error event's body: a domain error as it is, anything else logged and told as an internal error."""
    if isinstance(exc, TuneloopError):
        return exc.to_dict()
    log.exception(what)
    return {"error": {"code": "internal_error", "message": "internal error; the event was logged"}}


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, TuneloopError) else f"{type(exc).__name__}: {exc}"


@dataclass
class ChatService:
    """Answers chat messages and records every turn."""

    settings: Settings
    router: ModelRouter
    secret: str
    connection: Callable[[], ContextManager[Database]]
    knowledge: Index | None = None  # the worker's live index; None: answers are closed book
    client: ChatClient = field(default=None)  # type: ignore[assignment]
    budgets: PromptBudgets = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.client is None:
            m = self.settings.model
            self.client = ChatClient(
                ClientPolicy(
                    connect_timeout_s=m.connect_timeout_s,
                    first_token_timeout_s=m.first_token_timeout_s,
                    timeout_s=m.timeout_s,
                    retries=m.retries,
                )
            )
        if self.budgets is None:
            self.budgets = PromptBudgets(self.settings, self.client)

    def user_ref(self, api_key_id: str | None, user: str | None) -> str | None:
        return pseudonym(self.secret, "user", f"{api_key_id}:{user}") if user else None

    def start(
        self,
        db: Database,
        caller: Caller,
        *,
        message: str,
        conversation_id: str | None = None,
        prior: list[dict[str, str]] | None = None,
        metadata: dict[str, Any] | None = None,
        source: str = "api",
        params: dict[str, Any] | None = None,
        use_knowledge: bool = True,
        message_field: str = "message",
    ) -> PendingAnswer:
        """Everything up to the first token. Raises :class:`UpstreamError` if no model answered.

        ``prior`` replaces the stored history (the OpenAI-compatible route, where
        the client sends the whole conversation). ``use_knowledge=False`` is a
        request's opt-out of the knowledge base (closed book). A message that cannot
        fit the model's context window even alone is :class:`PayloadTooLarge` naming
        ``message_field``. A model's refusal of what the client sent is the client's
        4xx (naming ``message_field`` or the parameter) and is not recorded: it is not
        a model failure.
        """
        if conversation_id:
            check_visible(db, caller.api_key_id, conversation_id=conversation_id)
            earlier = turns.history(db, conversation_id, self.settings.chat.history_turns)
        else:
            conversation_id = turns.new_conversation_id()
            earlier = []
        if prior is not None:
            earlier = prior
        chat = self.settings.chat
        targets = self.router.targets(conversation_id)
        call = {"max_tokens": chat.max_tokens, "temperature": chat.temperature}
        call.update({k: v for k, v in (params or {}).items() if v is not None})
        if targets:
            client_set = (params or {}).get("max_tokens") is not None
            window = self.budgets.window(targets[0])
            check_answer_room(call["max_tokens"], window, model=targets[0].name, client_set=client_set)
        grounded = ground(
            self.knowledge,
            self.settings,
            message,
            earlier,
            use_knowledge=use_knowledge,
            budget=self.budgets.budget(targets[0], call["max_tokens"]) if targets else None,
            field=message_field,
        )
        metrics.observe_grounding(grounded)
        turn = turns.Turn(
            conversation_id=conversation_id,
            question=message,
            answer="",
            model_version_id=targets[0].tag if targets else None,
            api_key_id=caller.api_key_id,
            user_ref=caller.user_ref,
            source=source,
            metadata=metadata or {},
            sources=grounded.sources,
        )
        try:
            reply = self.client.generate(targets, grounded.messages, **call)
        except UpstreamError as exc:
            fault = client_fault(exc, params=params, message_field=message_field)
            if fault is not None:
                log.info("model refused a client's request: %s (%s)", exc.message, exc.where)
                raise fault from exc
            turn.error = exc.message
            turn.finish_reason = "error"
            self.record(turn)
            metrics.observe_upstream_failure(exc)
            raise
        return PendingAnswer(self, reply, turn, feedback_token(self.secret, turn.assistant_message_id))

    def record(self, turn: turns.Turn) -> None:
        """Write a turn on a pooled connection of its own (streams outlive the request's)."""
        with self.connection() as db:
            turns.record_turn(db, turn)
