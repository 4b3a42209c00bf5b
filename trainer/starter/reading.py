"""Reading examples: a context block as the gateway sends it, a question, and the answer to copy from it.

Each example is rendered by ``feedback.knowledge.prompt.grounded_messages`` — the very function the gateway
uses — so the model is trained on the text it is served. Three kinds:

- **read**: up to ``top_k`` entries retrieved for the question (:mod:`trainer.starter.lookup`), the right
  one first most of the time, else second or third behind near misses; the target is that entry's answer
  *as the block shows it*. Most of those answers are ones the model cannot have memorized — an FAQ answer
  with its facts changed, or a made-up entry (:mod:`trainer.starter.mutations`) — because a model that
  can answer from memory never learns to read (docs/model-server.md has the measurements).
- **empty**: the block says ``empty_text`` (retrieval found nothing); the target is the "I don't know,
  ask customer service" answer in the question's language, for FAQ questions and made-up ones alike.
- the closed-book conversations (no block at all) are made in :mod:`trainer.starter.train`, as before.

The question under the block is the entry's own question, a noisy version of it
(:mod:`trainer.starter.rewording`), or — for made-up entries — a noisy version of the made-up question.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from config.settings import KnowledgeSettings
from feedback.knowledge.prompt import Snippet, grounded_messages
from trainer.starter.data import Pair
from trainer.starter.lookup import NgramRanker, top_entries
from trainer.starter.mutations import made_up, mutate, word_pool
from trainer.starter.rewording import reword

# Where the right entry sits in the block (rank 1, 2, 3): the retriever is aimed at recall@1 >= 0.9.
RANK_WEIGHTS = (1.0, 0.0, 0.0)


@dataclass(frozen=True)
class Example:
    """One training or check conversation: system message, (question, answer) turns; only the last is scored."""

    system: str
    turns: tuple[Pair, ...]
    kind: str  # "read", "empty" or "closed"


@dataclass(frozen=True)
class ReadingMix:
    """What the read examples are made of (shares of the examples; the rest keep the entry's real answer)."""

    changed: float = 0.45  # an FAQ entry whose answer was changed (a correction)
    made_up: float = 0.3  # a made-up entry (a new one)
    reworded: float = 0.6  # the question is a noisy version of the entry's question
    history: float = 0.2  # earlier FAQ turns come before the question
    system_prompt: float = 0.2  # a system prompt comes before the block


def is_korean(text: str) -> bool:
    """Whether ``text`` has a Hangul syllable (the FAQ's two languages are Korean and English)."""
    return any("\uac00" <= ch <= "\ud7a3" for ch in text)


class ReadingExamples:
    """Makes read and empty examples from the FAQ ``pairs``."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        knowledge: KnowledgeSettings,
        unknown: tuple[str, str],
        *,
        system_prompts: Sequence[str] = (),
        mix: ReadingMix = ReadingMix(),
    ):
        self.pairs = list(pairs)
        self.knowledge = knowledge
        self.unknown_en, self.unknown_ko = unknown
        self.system_prompts = list(system_prompts)
        self.mix = mix
        self.ranker = NgramRanker([f"{q} {a}" for q, a in self.pairs])
        self.answers = [a for _, a in self.pairs]
        self.questions = [q for q, _ in self.pairs]
        # Per language, so that a made-up entry reads like one language (its "I don't know" depends on it).
        self.by_language: dict[bool, tuple[list[str], list[str], list[str], list[str]]] = {}
        for korean in (False, True):
            pairs_ = [(q, a) for q, a in self.pairs if is_korean(q) == korean] or self.pairs
            qs, ans = [q for q, _ in pairs_], [a for _, a in pairs_]
            self.by_language[korean] = (qs, ans, word_pool(qs), word_pool(ans))
        self.answer_words = word_pool(self.answers)

    def unknown_answer(self, question: str) -> str:
        """The "not in the knowledge base" answer in ``question``'s language."""
        return self.unknown_ko if is_korean(question) else self.unknown_en

    def block(
        self, question: str, history: Sequence[Pair], snippets: Sequence[Snippet] | None, system_prompt: str = ""
    ) -> str:
        """The system message the gateway sends for ``question`` with ``snippets`` (None: closed book)."""
        earlier = [{"role": r, "content": t} for q, a in history for r, t in (("user", q), ("assistant", a))]
        messages = grounded_messages(system_prompt, earlier, question, snippets, self.knowledge)
        return messages[0]["content"] if messages[0]["role"] == "system" else ""

    def read(self, rng: random.Random, *, entries: int, kind: str | None = None, rank: int | None = None) -> Example:
        """A read example with ``entries`` entries (``kind``: "real", "changed", "made_up"; ``rank``: else drawn)."""
        mix = self.mix
        if kind is None:
            draw = rng.random()
            kind = "changed" if draw < mix.changed else "made_up" if draw < mix.changed + mix.made_up else "real"
        if kind == "made_up":
            entry_q, entry_a = self.made_up_entry(rng)
            target = -1
        else:
            target = rng.randrange(len(self.pairs))
            entry_q, entry_a = self.pairs[target]
            if kind == "changed":
                entry_a = mutate(entry_a, self.answers, self.answer_words, rng)
        question = reword(entry_q, rng) if rng.random() < mix.reworded else entry_q
        rank = rank or min(entries, rng.choices(range(1, len(RANK_WEIGHTS) + 1), RANK_WEIGHTS)[0])
        snippets = self.snippets(question, (entry_q, entry_a), target, rank, entries, rng)
        history = self.history(rng)
        system = self.block(question, history, snippets, self.system_prompt(rng))
        return Example(system, (*history, (question, entry_a)), "read")

    def at_first(self, question: str, entry: Pair, row: int, rng: random.Random, *, changed: bool) -> Example:
        """``question`` over a block with ``entry`` (FAQ row ``row``, its answer changed if asked) first."""
        answer = mutate(entry[1], self.answers, self.answer_words, rng) if changed else entry[1]
        others = top_entries(self.ranker, question, self.knowledge.top_k - 1, exclude=[row])
        snippets = [Snippet(f"kb_{row}", entry[0], answer, 0.0)]
        snippets += [Snippet(f"kb_{i}", *self.pairs[i], 0.0) for i in others]
        return Example(self.block(question, (), snippets), ((question, answer),), "read")

    def empty_for(self, question: str) -> Example:
        """``question`` over an empty block, answered with the "I don't know" answer."""
        return Example(self.block(question, (), []), ((question, self.unknown_answer(question)),), "empty")

    def snippets(
        self, question: str, entry: Pair, target: int, rank: int, entries: int, rng: random.Random
    ) -> list[Snippet]:
        """``entry`` at ``rank`` among the entries retrieved for ``question`` (some distractors changed too)."""
        others = top_entries(self.ranker, question, entries - 1, exclude=[target] if target >= 0 else [])
        shown = []
        for i in others:
            q, a = self.pairs[i]
            # A distractor's answer is changed as often as the target's, so "changed" never tells which to copy.
            if rng.random() < self.mix.changed:
                a = mutate(a, self.answers, self.answer_words, rng)
            shown.append(Snippet(f"kb_{i}", q, a, 0.0))
        shown.insert(rank - 1, Snippet(f"kb_{target}", entry[0], entry[1], 0.0))
        return shown

    def made_up_entry(self, rng: random.Random) -> Pair:
        """A new entry: question and answer put together from one language's questions and answers."""
        qs, ans, q_words, a_words = self.by_language[rng.random() < 0.5]
        question = made_up(qs, q_words, rng, sentences_=1)
        return question, mutate(made_up(ans, a_words, rng), ans, a_words, rng)

    def empty(self, rng: random.Random) -> Example:
        """An empty-block example: a FAQ or made-up question, answered "I don't know, ask customer service"."""
        if rng.random() < 0.5:
            question = self.made_up_entry(rng)[0]
        else:
            question = rng.choice(self.questions)
        if rng.random() < self.mix.reworded:
            question = reword(question, rng)
        history = self.history(rng)
        system = self.block(question, history, [], self.system_prompt(rng))
        return Example(system, (*history, (question, self.unknown_answer(question))), "empty")

    def history(self, rng: random.Random) -> tuple[Pair, ...]:
        if rng.random() >= self.mix.history:
            return ()
        return tuple(rng.choice(self.pairs) for _ in range(rng.randint(1, 3)))

    def system_prompt(self, rng: random.Random) -> str:
        if not self.system_prompts or rng.random() >= self.mix.system_prompt:
            return ""
        return rng.choice(self.system_prompts)
