"""Which knowledge-base entries a question retrieves, for the starter's training and checks.

The starter learns to read the context block the gateway sends, so its training examples need the entries
a real retriever would put there: the right one usually first, sometimes second or third behind near
misses, and lexically close distractors. Until the knowledge base's own retriever can be called from here,
:class:`NgramRanker` stands in for it: TF-IDF over character 2- and 3-grams of the questions (spaces and
punctuation dropped, lower-cased), cosine similarity — what a lexical retriever over short bilingual
questions does, with no model to download. Everything goes through :func:`top_entries`, the one place to
point at the real retriever.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

_NOT_WORD = re.compile(r"[\W_]+")
NGRAM_SIZES = (2, 3)


def _ngrams(text: str) -> Counter[str]:
    squashed = _NOT_WORD.sub("", text.lower())
    grams: Counter[str] = Counter()
    for n in NGRAM_SIZES:
        grams.update(squashed[i : i + n] for i in range(max(0, len(squashed) - n + 1)))
    return grams or Counter([squashed])


class NgramRanker:
    """Ranks ``questions`` (one per entry) by character n-gram TF-IDF cosine similarity to a query."""

    def __init__(self, questions: Sequence[str]):
        counts = [_ngrams(q) for q in questions]
        documents = Counter(gram for c in counts for gram in c)
        self._idf = {gram: math.log((1 + len(counts)) / (1 + df)) + 1 for gram, df in documents.items()}
        self._vectors = [self._weigh(c) for c in counts]

    def _weigh(self, counts: Counter[str]) -> dict[str, float]:
        weights = {g: (1 + math.log(c)) * self._idf.get(g, 0.0) for g, c in counts.items()}
        norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        return {g: w / norm for g, w in weights.items()}

    def scores(self, query: str) -> list[float]:
        """Cosine similarity of ``query`` to every question, in entry order."""
        q = self._weigh(_ngrams(query))
        return [sum(w * vector.get(g, 0.0) for g, w in q.items()) for vector in self._vectors]

    def rank(self, query: str, k: int, *, exclude: Sequence[int] = ()) -> list[int]:
        """The ``k`` best entries for ``query``, best first (ties: lower index first)."""
        scores, skip = self.scores(query), set(exclude)
        return sorted((i for i in range(len(scores)) if i not in skip), key=lambda i: (-scores[i], i))[:k]


def top_entries(ranker: NgramRanker, query: str, k: int, *, exclude: Sequence[int] = ()) -> list[int]:
    """The entries retrieval puts in the context block for ``query``, best first."""
    return ranker.rank(query, k, exclude=exclude)
