"""Exact and near-duplicate examples: which to drop, and which must share a split.

Questions are compared the way the worst-answered ranking compares them
(``feedback.text``): ``question_key`` folds case, punctuation, spacing and
Unicode forms; ``similarity`` is the Jaccard overlap of character n-grams
(Hangul syllable bigrams, otherwise trigrams), so Korean and English both work
without a tokenizer. An example's prompt key is the key of its user messages.

- **Dropped**: an example whose prompt is a near-duplicate (similarity at least
  ``dataset.near_duplicate_threshold``) of an earlier example's *and* whose answer
  is the same after folding (or itself near-identical). Earlier wins, and callers
  order examples by trust: approved corrections, then the base file, then
  up-voted answers. Near-duplicate prompts with *different* answers are kept —
  dropping one would silently pick a winner — and reported as conflicts.
- **Grouped for splitting** (:func:`connected_groups`): every pair of examples
  whose prompts are near-duplicates, or whose answers are identical after
  folding, ends up in one group, transitively, so no near-duplicate pair can
  straddle train and test. That needs all pairs, not the ranking's
  leader clustering (A≈B and B≈C but A≉C would put A and C apart, and B
  next to only one of them).

All pairs above a threshold are found with prefix filtering (Bayardo et al.,
2007, as in ``feedback.ranking``): two n-gram sets with Jaccard ≥ t share at
least one of their ``|x| − ⌈t·|x|⌉ + 1`` rarest n-grams, so only those are indexed
and probed. The bundled FAQ's 184 rows take a few milliseconds.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from feedback.text import ngrams, question_key, similarity


def prompt_key(messages: list[dict]) -> str:
    """The folded key of an example's user messages (what near-duplicates are judged on)."""
    return question_key(" ".join(m.get("content", "") for m in messages if m.get("role") == "user"))


def answer_key(messages: list[dict]) -> str:
    """The folded key of an example's assistant messages."""
    return question_key(" ".join(m.get("content", "") for m in messages if m.get("role") == "assistant"))


def similar_pairs(keys: list[str], threshold: float) -> list[tuple[int, int]]:
    """Every index pair ``(i, j)``, ``i < j``, whose keys' similarity is at least ``threshold``."""
    grams = [ngrams(key) for key in keys]
    pairs = []
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        by_key[key].append(i)
    for same in by_key.values():  # identical keys (empty ones included) are always pairs
        pairs.extend((a, b) for n, a in enumerate(same) for b in same[n + 1 :])
    frequency = Counter(g for gs in grams for g in gs)
    rank = {g: r for r, (g, _) in enumerate(sorted(frequency.items(), key=lambda kv: (kv[1], kv[0])))}
    index: dict[str, list[int]] = defaultdict(list)
    for i, key_grams in enumerate(grams):
        size = len(key_grams)
        if not size:
            continue
        prefix = sorted(key_grams, key=rank.__getitem__)[: size - math.ceil(threshold * size) + 1]
        candidates = {j for gram in prefix for j in index[gram]}
        for j in sorted(candidates):
            if keys[j] != keys[i] and similarity(keys[j], keys[i]) >= threshold:
                pairs.append((j, i))
        for gram in prefix:
            index[gram].append(i)
    return sorted(set(pairs))


def find_duplicates(
    examples: list[list[dict]], threshold: float
) -> tuple[dict[int, tuple[int, str]], list[tuple[int, int]]]:
    """Which examples to drop and why, and which near-duplicate pairs disagree.

    ``examples`` are message lists in trust order. Returns ``({dropped index:
    (kept index, "exact" | "near")}, [(i, j) conflicting pairs])``.
    """
    prompts = [prompt_key(m) for m in examples]
    answers = [answer_key(m) for m in examples]
    dropped: dict[int, tuple[int, str]] = {}
    conflicts = []
    for i, j in similar_pairs(prompts, threshold):
        if i in dropped or j in dropped:
            continue
        if answers[i] == answers[j] or similarity(answers[i], answers[j]) >= max(threshold, 0.9):
            dropped[j] = (i, "exact" if prompts[i] == prompts[j] and answers[i] == answers[j] else "near")
        else:
            conflicts.append((i, j))
    return dropped, conflicts


def connected_groups(examples: list[list[dict]], threshold: float) -> list[int]:
    """A group number per example: near-duplicate prompts or identical answers share a group, transitively."""
    parent = list(range(len(examples)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for i, j in similar_pairs([prompt_key(m) for m in examples], threshold):
        join(i, j)
    first_with_answer: dict[str, int] = {}
    for i, messages in enumerate(examples):
        key = answer_key(messages)
        if key in first_with_answer:
            join(first_with_answer[key], i)
        else:
            first_with_answer[key] = i
    return [root(i) for i in range(len(examples))]
