"""Embeddings from any OpenAI-protocol ``/v1/embeddings`` endpoint (vLLM, OpenAI, others that copy it).

The knowledge-base retriever (``feedback.knowledge.retrieval``) takes an ``embed(texts)`` callable and
knows nothing of HTTP; an :class:`EmbeddingsClient` is that callable:

    embed = EmbeddingsClient(Target("text-embedding-3-small", "https://.../v1", api_key))
    Retriever(entries, embed=embed)

Requests follow OpenAI's documented wire format: ``POST {base_url}/embeddings`` with
``{"model", "input": [texts], "encoding_format": "float"}``, answered by
``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...]}], "model", "usage"}``.
Vectors are returned in input order (by ``index``, whatever order ``data`` comes in). Long lists are sent
in batches of ``batch_size`` (OpenAI accepts up to 2,048 inputs a request). Failures are the same
:class:`~config.errors.UpstreamError` tree as chat: connection errors, timeouts, 429 and 5xx are retried
``retries`` times with a short backoff, other 4xx fail at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import httpx2
import openai

from config.errors import UpstreamError
from config.settings import KnowledgeSettings
from modelclient.chat import Target, retriable, translate_error


class EmbeddingsClient:
    """``client(texts) -> list[list[float]]`` against one embeddings model."""

    def __init__(
        self,
        target: Target,
        *,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 3.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        batch_size: int = 256,
        dimensions: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.target = target
        self.retries = retries
        self.backoff_s = backoff_s
        self.batch_size = batch_size
        self.dimensions = dimensions
        self._lock = threading.Lock()
        self._client = openai.OpenAI(
            base_url=target.base_url,
            api_key=target.api_key or "not-needed",  # local servers take any key; the SDK wants one
            max_retries=0,  # retries are ours, with our error tree
            timeout=httpx2.Timeout(timeout_s, connect=connect_timeout_s),
        )

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed(texts)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order. Raises :class:`UpstreamError` (or a subclass) on failure."""
        texts = list(texts)
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            vectors.extend(self._batch(texts[start : start + self.batch_size]))
        return vectors

    def _batch(self, texts: list[str]) -> list[list[float]]:
        extra = {"dimensions": self.dimensions} if self.dimensions else {}
        last: UpstreamError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * attempt)
            try:
                response = self._client.embeddings.create(
                    model=self.target.name, input=texts, encoding_format="float", **extra
                )
            except Exception as exc:  # noqa: BLE001 - translated into our error tree
                last = translate_error(exc, self.target)
                if not retriable(last):
                    raise last from exc
                continue
            return _in_order(response.data, len(texts), self.target)
        assert last is not None
        raise last


def _in_order(data, expected: int, target: Target) -> list[list[float]]:
    by_index = {item.index: item.embedding for item in data}
    if sorted(by_index) != list(range(expected)):
        raise UpstreamError(
            f"model {target.name!r} at {target.base_url} returned {len(data)} embeddings for {expected} inputs"
        )
    vectors = [list(by_index[i]) for i in range(expected)]
    if any(not isinstance(v, list) or not v for v in vectors):
        raise UpstreamError(f"model {target.name!r} returned an empty or non-float embedding")
    return vectors


def embeddings_from_settings(knowledge: KnowledgeSettings) -> EmbeddingsClient | None:
    """The ``[knowledge] embeddings_*`` endpoint as the retriever's ``embed`` callable.

    None when dense retrieval is off (``embeddings_model`` empty).
    """
    if not knowledge.embeddings_model:
        return None
    target = Target(knowledge.embeddings_model, knowledge.embeddings_base_url, knowledge.embeddings_api_key())
    return EmbeddingsClient(target)
