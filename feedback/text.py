"""Question text: the normalized key that groups exact repeats, and a similarity for near-duplicates.

``question_key`` is what ranking groups by and what ``record_turn`` stores on
each answer (``messages.question_key``), so the heavy grouping happens once per
message at write time instead of once per report. It folds what users vary
without changing the question: Unicode compatibility forms (NFKC: full-width
letters, composed Hangul), case, punctuation and symbols, and runs of
whitespace. Commas inside numbers go too, so ``3,000원`` and ``3000원`` agree.
Changing this function changes every stored key: do it only together with a
new migration that recomputes ``messages.question_key``.

``similarity`` compares two keys by the Jaccard overlap of character n-grams,
which needs no tokenizer and so works for Korean as well as English:

- text with Hangul: syllable bigrams with the spaces removed, because Korean
  spacing varies freely (``주문 할 수`` / ``주문할 수``) and a syllable carries
  about as much as an English trigram;
- other text: character trigrams with word boundaries kept.

On the bundled FAQ the threshold 0.45 (``report.similarity_threshold``) groups
every surface variant in ``data/paraphrases.jsonl`` (the lowest scores 0.50:
``배송비는 얼마예요?`` / ``배송비는 얼마인가요?``) while the closest pair of
different FAQ questions scores 0.40. Genuinely reworded questions (different
words) score far lower; grouping those, or a Korean question with its English
translation, needs a semantic model, not n-grams.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

_DIGIT_SEPARATOR = re.compile(r"(?<=\d)[,.](?=\d)")
# Unicode general categories folded to a space: punctuation, symbols, separators, controls.
_FOLDED_CATEGORIES = frozenset("PSZC")


def question_key(text: str) -> str:
    """The normalized form of a question: NFKC, case-folded, punctuation-free, single-spaced."""
    text = unicodedata.normalize("NFKC", text or "").casefold()
    text = _DIGIT_SEPARATOR.sub("", text)
    text = "".join(" " if unicodedata.category(ch)[0] in _FOLDED_CATEGORIES else ch for ch in text)
    return " ".join(text.split())


_HANGUL = re.compile("[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
_DIGITS = re.compile(r"\d+")


def has_hangul(text: str) -> bool:
    """True when ``text`` holds at least one Hangul syllable or jamo."""
    return _HANGUL.search(text) is not None


def fold_numbers(key: str) -> str:
    """``key`` with every run of digits replaced by ``0``.

    Ranking treats questions that differ only in a number — an order number, an
    amount, a date — as one question ("where is my order 48213").
    """
    return _DIGITS.sub("0", key)


@lru_cache(maxsize=65536)
def ngrams(key: str) -> frozenset[str]:
    """The character n-grams :func:`similarity` compares (see the module docstring)."""
    if _HANGUL.search(key):
        text, n = key.replace(" ", ""), 2
    else:
        text, n = f" {key} ", 3
    if len(text) <= n:
        return frozenset([text]) if text.strip() else frozenset()
    return frozenset({text[i : i + n] for i in range(len(text) - n + 1)})


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of two question keys' n-grams, 0.0 (nothing shared) to 1.0."""
    if a == b:
        return 1.0
    grams_a, grams_b = ngrams(a), ngrams(b)
    if not grams_a or not grams_b:
        return 0.0
    shared = len(grams_a & grams_b)
    return shared / (len(grams_a) + len(grams_b) - shared)
