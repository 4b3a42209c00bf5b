"""Training rows as served: each row once more, with the knowledge block the gateway would send for its question.

Users are answered with the knowledge-base entries retrieval finds in front of the question (the context block,
``feedback/knowledge/prompt.py``). A model fine-tuned only on bare question/answer rows learns nothing about that
prompt, and a small one unlearns how to read it: a LoRA trained on closed-book rows alone answered the corrected
and golden questions with garbage once the block was in front (measured on the starter model). So each training
row also comes *as served*: the same conversation through :func:`feedback.knowledge.grounding.ground` over the
current knowledge base — the very function the gateway calls, so the block is the one users' questions get —
with the row's answer as the target. Fine-tuning then consolidates corrections into the model (the closed-book
rows) without unlearning how to answer from the entries it is given (these).

A twin is written only when its block is consistent with its answer: an entry in the block holds the row's
question and says the same answer. Otherwise the block would teach the model to ignore it, so no twin is made
and the reason is counted: the question is not in the knowledge base (an up-voted answer, an empty knowledge
base), retrieval did not find its entry, or its entry now says something else (edited since the base file).
Twins are masked like every other row, and carry their row's lineage plus ``view`` and the ``entries`` given.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from config.settings import Settings
from feedback.knowledge.grounding import Index, ground
from feedback.pii import PiiMasker
from feedback.text import question_key
from trainer.dataset.clean import clean_text
from trainer.dataset.sources import Example

# Why a row got no twin, as the manifest counts it.
NOT_IN_KNOWLEDGE = "its question is in no knowledge-base entry"
NOT_RETRIEVED = "retrieval did not put its entry in the block"
ANSWERS_DIFFER = "its knowledge-base entry gives another answer"


@dataclass
class Twins:
    """The as-served twin of each row of one split (None where it got none), and why the others got none."""

    of: list[Example | None] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    @property
    def rows(self) -> list[Example]:
        return [twin for twin in self.of if twin is not None]


def served_twins(
    examples: list[Example], index: Index, settings: Settings, masker: PiiMasker, known: set[str]
) -> Twins:
    """The as-served twin of each row of ``examples`` whose block is consistent with its answer (see above).

    ``index`` is the knowledge base as the gateway searches it (it also gives each entry's questions: ``get``);
    ``known`` the question keys its active entries hold.
    """
    twins = Twins()
    for example in examples:
        reason, twin = _twin(example, index, settings, masker, known)
        twins.of.append(twin)
        if twin is None:
            twins.skipped[reason] += 1
    return twins


def _twin(
    example: Example, index: Index, settings: Settings, masker: PiiMasker, known: set[str]
) -> tuple[str, Example | None]:
    messages = example.messages
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    asked = max(i for i, m in enumerate(messages[:last]) if m["role"] == "user")
    question, answer = messages[asked]["content"], messages[last]["content"]
    grounded = ground(index, settings, question, messages[:asked])
    key = question_key(question)
    holders = [s for s in grounded.sources if _holds(index, s.entry_id, key)]
    if not holders:
        return (NOT_RETRIEVED if key in known else NOT_IN_KNOWLEDGE), None
    if not any(_same_answer(s.answer, answer, masker) for s in holders):
        return ANSWERS_DIFFER, None
    served, counts = masker.mask_messages([*grounded.messages, messages[last], *messages[last + 1 :]])
    lineage = {**example.lineage, "view": "as_served", "entries": [s.entry_id for s in grounded.sources]}
    return "", Example(messages=served, lineage=lineage, masked=example.masked + counts)


def _holds(index: Index, entry_id: str, key: str) -> bool:
    entry = index.get(entry_id)
    return entry is not None and any(question_key(q) == key for q in entry.questions)


def _same_answer(entry_answer: str, answer: str, masker: PiiMasker) -> bool:
    # The row was cleaned and masked before it got here; the entry's answer is compared the same way.
    return masker.mask(clean_text(entry_answer)).text == answer
