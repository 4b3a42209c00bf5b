"""Noisy versions of a question: how users type what the FAQ asks (case, punctuation, spacing, word order).

These are surface variants, not paraphrases — a tiny model trained for two minutes cannot learn what
words mean. They keep the model from keying on the exact token sequence of the entry's question, so it
answers from the context block for whatever question sits under it. Every function takes its
``random.Random`` so a seed fixes the data.
"""

from __future__ import annotations

import random
import re

_PUNCTUATION = re.compile(r"[?.!,]+")


def reword(question: str, rng: random.Random) -> str:
    """``question`` with one to three random surface edits (another text, unless no edit can change it)."""
    for _ in range(10):
        text = question
        for _ in range(rng.randint(1, 3)):
            text = rng.choice(_EDITS)(text, rng)
        text = text.strip()
        if text and text != question:
            return text
    return question


def _lower(text: str, rng: random.Random) -> str:
    return text.lower()


def _no_punctuation(text: str, rng: random.Random) -> str:
    return _PUNCTUATION.sub("", text)


def _drop_word(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) > 2:
        del words[rng.randrange(len(words))]
    return " ".join(words)


def _swap_neighbours(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) > 2:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def _spacing(text: str, rng: random.Random) -> str:
    """Korean users drop or add spaces freely: join two words, or split one."""
    words = text.split()
    if len(words) > 1 and rng.random() < 0.5:
        i = rng.randrange(len(words) - 1)
        words[i : i + 2] = [words[i] + words[i + 1]]
    else:
        i = rng.randrange(len(words))
        word = words[i]
        if len(word) > 2:
            cut = rng.randrange(1, len(word) - 1)
            words[i : i + 1] = [word[:cut], word[cut:]]
    return " ".join(words)


def _prefix(text: str, rng: random.Random) -> str:
    korean = any("\uac00" <= ch <= "\ud7a3" for ch in text)
    lead = rng.choice(("혹시 ", "저기요 ", "궁금한데 ", "") if korean else ("Hi, ", "Quick question: ", "hello ", ""))
    return lead + text


_EDITS = (_lower, _no_punctuation, _drop_word, _swap_neighbours, _spacing, _prefix)
