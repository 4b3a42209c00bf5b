"""Answers the starter model cannot have memorized: the FAQ's answers with their facts changed.

A model trained only on real entries learns question → answer by heart and ignores the context block
(measured: 0/30 entries it had not seen were copied, see docs/model-server.md). It learns to *read* only
when memory cannot produce the target, so most reading examples show an entry whose answer was changed
the way a correction changes it — other numbers, days or words, sentences swapped, a sentence from
another answer spliced in — or an entry made up from pieces of other entries. Every function here takes
its ``random.Random`` so a seed fixes the data.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

_NUMBER = re.compile(r"\d[\d,]*\d|\d")
# Sentence ends: ". " in English, "다. " / "요. " in Korean; the separator stays with the left sentence.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\S+")
# Words a correction typically swaps for one another (days, channels, tiers, payment methods).
SWAPS: tuple[tuple[str, ...], ...] = (
    ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    ("월요일", "화요일", "수요일", "목요일", "금요일", "토요일", "일요일"),
    ("email", "KakaoTalk", "text", "the app"),
    ("이메일", "카카오톡", "문자", "앱"),
    ("Basic", "Silver", "Gold", "VIP"),
    ("실버", "골드", "VIP", "일반"),
    ("KakaoPay", "Naver Pay", "bank transfer", "card"),
    ("카카오페이", "네이버페이", "계좌이체", "카드"),
    ("days", "weeks", "hours", "months"),
    ("일", "주", "시간", "개월"),
)


def change_numbers(text: str, rng: random.Random) -> str:
    """Every number replaced by another of the same shape (digits and thousands separators kept)."""

    def other(match: re.Match) -> str:
        digits = match.group().replace(",", "")
        first = rng.choice("123456789") if len(digits) > 1 else rng.choice("0123456789")
        new = first + "".join(rng.choice("0123456789") for _ in digits[1:])
        if new == digits:
            new = str((int(digits) + 1) % (10 ** len(digits)))
        return f"{int(new):,}" if "," in match.group() else new

    return _NUMBER.sub(other, text)


def swap_named(text: str, rng: random.Random) -> str:
    """One known word (a day, channel, tier, payment method…) replaced by another of its kind; else ``text``."""
    found = [(group, word) for group in SWAPS for word in group if _whole(word).search(text)]
    if not found:
        return text
    group, word = rng.choice(found)
    return _whole(word).sub(rng.choice([w for w in group if w != word]), text, count=1)


def _whole(word: str) -> re.Pattern:
    """``word`` not inside a longer Latin word ("days" but not "holidays"); Korean words attach particles."""
    return re.compile(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])")


def swap_words(text: str, pool: Sequence[str], rng: random.Random, count: int = 2) -> str:
    """``count`` words of ``text`` replaced by words drawn from ``pool``."""
    words = text.split(" ")
    for _ in range(min(count, len(words))):
        words[rng.randrange(len(words))] = rng.choice(pool)
    return " ".join(words)


def sentences(text: str) -> list[str]:
    """``text`` cut after each sentence end."""
    return [s for s in _SENTENCE_END.split(text) if s]


def reorder_sentences(text: str, rng: random.Random) -> str:
    """The sentences of ``text`` in another order (``text`` itself when it has one sentence)."""
    parts = sentences(text)
    if len(parts) < 2:
        return text
    rng.shuffle(parts)
    return " ".join(parts)


def splice(text: str, donors: Sequence[str], rng: random.Random) -> str:
    """One sentence of ``text`` replaced by (or, for one sentence, followed by) a sentence of a donor answer."""
    parts = sentences(text)
    donor = rng.choice(sentences(rng.choice(donors)) or [rng.choice(donors)])
    if len(parts) < 2:
        return f"{text} {donor}"
    parts[rng.randrange(len(parts))] = donor
    return " ".join(parts)


def word_pool(texts: Sequence[str]) -> list[str]:
    """Every distinct word of ``texts``, in first-seen order (deterministic)."""
    return list(dict.fromkeys(w for text in texts for w in _WORD.findall(text)))


def made_up(texts: Sequence[str], pool: Sequence[str], rng: random.Random, *, sentences_: int = 2) -> str:
    """A new text in the style of ``texts``: up to ``sentences_`` sentences of random texts, with some words swapped."""
    parts = [rng.choice(sentences(rng.choice(texts)) or [rng.choice(texts)]) for _ in range(rng.randint(1, sentences_))]
    return swap_words(" ".join(parts), pool, rng, count=rng.randint(1, 3))


def mutate(answer: str, donors: Sequence[str], pool: Sequence[str], rng: random.Random) -> str:
    """``answer`` changed the way a correction changes it (one to three edits, never the same text)."""
    edits = [change_numbers, swap_named, reorder_sentences]
    changed = answer
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(5)
        if kind < 3:
            changed = edits[kind](changed, rng)
        elif kind == 3:
            changed = splice(changed, donors, rng)
        else:
            changed = swap_words(changed, pool, rng, count=rng.randint(1, 3))
    while changed == answer:
        changed = swap_words(changed, pool, rng, count=1)
    return changed
