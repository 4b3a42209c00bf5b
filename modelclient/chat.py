"""The one OpenAI-protocol generation client, shared by the gateway and evaluation.

It talks to any chat-completions server — vLLM, OpenAI (``ft:`` models), the
built-in model server — through the official ``openai`` SDK. Streaming and
non-streaming answers share one path: upstream is always asked to stream (with
``stream_options.include_usage``), and :class:`Reply` owns timing, usage and
the finish reason, whether the caller iterates chunks or calls ``.collect()``.

Failure policy, decided here once:

- before the first token, connection errors, timeouts, 429 and 5xx are retried
  (``retries`` extra attempts, short backoff) and then the next target in the
  ordered fallback list is tried;
- once a token has been handed to the caller nothing is retried or switched —
  the user has already seen part of an answer — and the failure surfaces as
  :class:`UpstreamError` for the caller to report in-band;
- 404 (the server does not serve that model, e.g. a canary's adapter it lost)
  goes to the next target at once: retrying cannot help, another model can;
- any other 4xx (bad request) fails at once: retrying cannot help; 400/413/422
  become :class:`UpstreamRejected`, naming the parameter the server found wrong,
  so the gateway can tell a client's mistake from a model failure.

Messages name the model, never the server's address (they reach clients); the
address is on the error's ``where``.

Timeouts: ``connect_timeout_s`` for the TCP connection, ``first_token_timeout_s``
as the socket read timeout (so it bounds the wait for the first chunk and every
later gap), and ``timeout_s`` as a deadline for the whole answer.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterator

import httpx2
import openai

from config.errors import UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable


@dataclass(frozen=True)
class Target:
    """A model to try: its name on the server, where the server is, and a tag for the caller."""

    name: str
    base_url: str
    api_key: str = ""
    tag: Any = None


@dataclass(frozen=True)
class ClientPolicy:
    connect_timeout_s: float = 3.0
    first_token_timeout_s: float = 30.0
    timeout_s: float = 120.0
    retries: int = 2
    backoff_s: float = 0.2


class Reply:
    """A model's answer as it arrives. Iterate for its text chunks, or call :meth:`collect`.

    After iteration: ``text``, ``finish_reason``, ``usage`` (``prompt_tokens``,
    ``completion_tokens``), ``latency_ms`` (whole answer), ``first_token_ms`` and
    ``target`` (the model that actually answered, after any fallback); ``attempts``
    lists the failures before it. ``on_done`` is called once the answer is complete.
    """

    def __init__(
        self,
        target: Target,
        chunks: Generator[dict, None, None],
        *,
        started: float,
        timeout_s: float,
        attempts: list[str],
        on_done: Callable[[Reply], None] | None = None,
    ):
        self.target = target
        self.attempts = attempts
        self.text = ""
        self.finish_reason: str | None = None
        self.usage: dict[str, int] = {}
        self.latency_ms: float | None = None
        self.first_token_ms: float | None = None
        self._chunks = chunks  # the upstream's payloads: the buffered first ones, then the rest of the stream
        self._started = started
        self._timeout_s = timeout_s
        self._on_done = on_done

    def elapsed_ms(self) -> float:
        """Milliseconds since the request was first sent (the answer's latency so far)."""
        return (time.perf_counter() - self._started) * 1000

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self._chunks:
                piece = self._absorb(chunk)
                if piece:
                    if self.first_token_ms is None:
                        self.first_token_ms = self.elapsed_ms()
                    self.text += piece
                    yield piece
                if self.elapsed_ms() > self._timeout_s * 1000:
                    raise UpstreamTimeout(f"the answer took longer than {self._timeout_s:g} s")
        except UpstreamError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            err = translate_error(exc, self.target)
            if isinstance(err, UpstreamUnavailable):
                err = UpstreamError(f"model {self.target.name!r} dropped the connection mid-answer")
            broke = type(err)(f"the answer broke off: {err.message}")
            broke.where = self.target.base_url
            raise broke from exc
        if not self.usage:
            self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.latency_ms = self.elapsed_ms()
        if self._on_done:
            self._on_done(self)

    def _absorb(self, chunk: dict) -> str:
        usage = chunk.get("usage")
        if usage:
            self.usage = {
                "prompt_tokens": usage.get("prompt_tokens") or 0,
                "completion_tokens": usage.get("completion_tokens") or 0,
            }
        reason = _chunk_finish(chunk)
        if reason:
            self.finish_reason = reason
        return _chunk_text(chunk)

    def close(self) -> None:
        """Stop reading and release the upstream connection (client went away, or failure)."""
        self._chunks.close()

    def collect(self) -> Reply:
        """Consume the whole answer; returns self for chaining."""
        for _ in self:
            pass
        return self


class ChatClient:
    """Chat completions against an ordered list of targets (the first is preferred)."""

    def __init__(self, policy: ClientPolicy | None = None):
        self.policy = policy or ClientPolicy()
        self._clients: dict[tuple[str, str], openai.OpenAI] = {}
        self._lock = threading.Lock()

    def _client(self, target: Target) -> openai.OpenAI:
        key = (target.base_url, target.api_key)
        with self._lock:
            if key not in self._clients:
                p = self.policy
                self._clients[key] = openai.OpenAI(
                    base_url=target.base_url,
                    # Local servers take any key; the SDK insists on a non-empty one.
                    api_key=target.api_key or "not-needed",
                    max_retries=0,  # retries are ours: only before the first token
                    timeout=httpx2.Timeout(p.first_token_timeout_s, connect=p.connect_timeout_s),
                )
            return self._clients[key]

    def generate(
        self,
        targets: list[Target],
        messages: list[dict[str, str]],
        *,
        on_done: Callable[[Reply], None] | None = None,
        **params: Any,
    ) -> Reply:
        """Start an answer, falling back along ``targets``; returns once the first token is in.

        ``params`` are chat-completion parameters (max_tokens, temperature, top_p,
        stop, seed). Raises :class:`UpstreamError` (or a subclass) when no target
        produced a first token.
        """
        if not targets:
            raise UpstreamUnavailable("no model is configured")
        started = time.perf_counter()
        attempts: list[str] = []
        last_error: UpstreamError | None = None
        for target in targets:
            for attempt in range(self.policy.retries + 1):
                if attempt:
                    time.sleep(self.policy.backoff_s * attempt)
                try:
                    chunks = self._first_token(target, messages, params)
                except UpstreamError as exc:
                    attempts.append(f"{target.name}: {exc.message}")
                    last_error = exc
                    if getattr(exc, "next_target", False):
                        break
                    if not retriable(exc):
                        raise exc
                    continue
                return Reply(
                    target,
                    chunks,
                    started=started,
                    timeout_s=self.policy.timeout_s,
                    attempts=attempts,
                    on_done=on_done,
                )
        assert last_error is not None
        if len(attempts) > 1:
            tried = ", ".join(dict.fromkeys(t.name for t in targets))
            last_error.message = f"{last_error.message} (after {len(attempts)} attempts; models tried: {tried})"
            last_error.args = (last_error.message,)
        raise last_error

    def ping(self, target: Target, timeout_s: float = 2.0) -> list[str]:
        """The model ids the target's server lists; raises :class:`UpstreamError` when it cannot be reached."""
        try:
            page = self._client(target).with_options(timeout=timeout_s).models.list()
            return [m.id for m in page.data]
        except Exception as exc:
            raise translate_error(exc, target) from exc

    def context_window(self, target: Target, timeout_s: float = 2.0) -> int | None:
        """The target's context window in tokens, as its server reports it, or None when it reports none.

        vLLM and the built-in server put ``max_model_len`` on each card of ``GET /v1/models``; a LoRA adapter's
        card may leave it out and name its base as ``parent``, whose window it shares. OpenAI reports none.
        Raises :class:`UpstreamError` when the server cannot be reached.
        """
        try:
            page = self._client(target).with_options(timeout=timeout_s).models.list()
        except Exception as exc:
            raise translate_error(exc, target) from exc
        cards = {m.id: m.model_dump() for m in page.data}
        card = cards.get(target.name) or {}
        window = card.get("max_model_len") or (cards.get(card.get("parent") or "") or {}).get("max_model_len")
        return int(window) if isinstance(window, int) and window > 0 else None

    def complete(self, targets: list[Target], messages: list[dict[str, str]], **params: Any) -> Reply:
        """A whole answer at once (same failure policy as :meth:`generate`)."""
        return self.generate(targets, messages, **params).collect()

    def _first_token(self, target: Target, messages, params) -> Generator[dict, None, None]:
        """Send the request and wait for the first chunk that carries text (or the end).

        Returns the stream with that chunk (and any before it) put back in front. Everything up to here may
        be retried or fall back; nothing after it is.
        """
        stream = self._stream(target, messages, params)
        buffered = []
        try:
            for chunk in stream:
                buffered.append(chunk)
                if _chunk_text(chunk) or _chunk_finish(chunk):
                    break
        except Exception as exc:
            stream.close()
            raise translate_error(exc, target) from exc
        return _replay(buffered, stream)

    def _stream(self, target: Target, messages, params) -> Generator[dict, None, None]:
        """The upstream's chunk payloads; closing the generator closes the response."""
        clean = {k: v for k, v in params.items() if v is not None}
        # The raw streaming response, parsed here rather than by the SDK's Stream: the SDK stops reading at
        # [DONE] and closes the response before the body ends, so every answer cost a new TCP connection
        # (openai-python #3440, measured 1.0 connect per chat); reading to the end lets the pool reuse it
        # (tests/test_model_client.py), and plain dicts skip building pydantic objects per token.
        with self._client(target).chat.completions.with_streaming_response.create(
            model=target.name,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            **clean,
        ) as response:
            yield from _sse_payloads(response.iter_lines(), target)


def _replay(first: list[dict], rest: Generator[dict, None, None]) -> Generator[dict, None, None]:
    """``first``, then ``rest``; closing this closes ``rest`` (and so the upstream response)."""
    try:
        yield from first
        yield from rest
    finally:
        rest.close()


def _sse_payloads(lines: Iterator[str], target: Target) -> Iterator[dict]:
    """The JSON payloads of an SSE chat-completions stream, read to the very end."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            continue  # keep reading: the body must end for the connection to be reused
        payload = json.loads(data)
        if isinstance(payload, dict) and payload.get("error"):
            inner = payload["error"]
            message = inner.get("message") if isinstance(inner, dict) else str(inner)
            raise UpstreamError(f"model {target.name!r} reported an error mid-answer: {message}")
        yield payload


def _chunk_text(chunk: dict) -> str:
    choices = chunk.get("choices")
    if not choices:
        return ""
    delta = choices[0].get("delta") or {}
    return delta.get("content") or ""


def _chunk_finish(chunk: dict) -> str | None:
    choices = chunk.get("choices")
    if not choices:
        return None
    return choices[0].get("finish_reason")


def retriable(exc: UpstreamError) -> bool:
    """Whether trying again can help: connection errors, timeouts, 429, 5xx."""
    return isinstance(exc, (UpstreamUnavailable, UpstreamTimeout)) or getattr(exc, "retriable", False)


def translate_error(exc: Exception, target: Target) -> UpstreamError:
    """The :class:`UpstreamError` for a failed call to ``target``; its address goes in ``where``, not the message."""
    if isinstance(exc, UpstreamError):
        return exc
    err = _translate(exc, f"model {target.name!r}")
    err.where = target.base_url
    return err


def _translate(exc: Exception, model: str) -> UpstreamError:
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeout(f"{model} did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamUnavailable(f"cannot reach {model}")
    if isinstance(exc, openai.APIStatusError):
        detail = _status_detail(exc)
        if exc.status_code in (429, 503):
            busy = UpstreamUnavailable(f"{model} is overloaded or unavailable ({exc.status_code}): {detail}")
            busy.retry_after_s = retry_after_s(exc.response.headers)  # type: ignore[attr-defined]
            return busy
        if exc.status_code in (400, 413, 422):
            field, code = _status_field(exc, detail)
            rejected = UpstreamRejected(f"{model} refused the request ({exc.status_code}): {detail}", field=field)
            rejected.upstream_code = code
            return rejected
        err = UpstreamError(f"{model} answered {exc.status_code}: {detail}")
        err.retriable = exc.status_code >= 500  # type: ignore[attr-defined]
        err.next_target = exc.status_code == 404  # type: ignore[attr-defined]
        return err
    if isinstance(exc, (httpx2.TimeoutException,)):
        return UpstreamTimeout(f"{model} did not answer in time")
    if isinstance(exc, (httpx2.TransportError,)):
        return UpstreamUnavailable(f"the connection to {model} broke: {exc}")
    return UpstreamError(f"{model} failed: {type(exc).__name__}: {exc}")


def retry_after_s(headers: Any) -> float | None:
    """Seconds the server asked to wait: ``retry-after-ms`` (OpenAI's), else ``Retry-After`` in seconds or as
    an HTTP date; None when it said nothing usable."""
    millis = headers.get("retry-after-ms")
    try:
        if millis is not None:
            return max(0.0, float(millis) / 1000)
    except ValueError:
        pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


def _error_object(exc: openai.APIStatusError) -> dict:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner
    return {}


def _status_detail(exc: openai.APIStatusError) -> str:
    inner = _error_object(exc)
    if inner.get("message"):
        return str(inner["message"])[:300]
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"][:300]
    return str(exc.message)[:300]


def _status_field(exc: openai.APIStatusError, detail: str) -> tuple[str | None, str | None]:
    """(the parameter a 4xx names, the server's error code).

    OpenAI names it in ``param``, the built-in server in ``field``; vLLM names none, so its
    message is read: it says "'max_tokens' … is too large" or "maximum context length".
    """
    inner = _error_object(exc)
    code = inner.get("code")
    field = inner.get("field") or inner.get("param")
    if not field:
        if "max_tokens" in detail or "max_completion_tokens" in detail:
            field = "max_tokens"
        elif "context length" in detail.lower() or code == "context_length_exceeded":
            field = "messages"
    return (str(field) if field else None), (str(code) if isinstance(code, str) else None)
