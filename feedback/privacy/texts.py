"""The subject's own words, and how they are recognised wherever the loop copied them.

An erasure starts by reading what the person wrote and was answered — their messages, the answers to them, the
comments and corrections on those answers and their own votes' comments and corrections — before a row is
deleted, because review evidence, knowledge-base phrasings, dataset rows, evaluation rows, reports and audit
quotes hold copies, not references. A text also written by someone else (another conversation's message,
another vote's comment, a question or answer the company itself put in the knowledge base) is not the
subject's alone and is left where it is: "How long does delivery take?" asked by thousands is nobody's
personal data.

:class:`Texts` recognises a copy by :func:`feedback.text.question_key` (case, width, punctuation and spacing
folded), of the text as written and as :mod:`feedback.pii` masks it (training files and reports hold masked
copies): a string is a copy when its key equals one of them, or — for texts of :data:`MIN_QUOTE` characters or
more — contains one (a quote inside a longer text, a prompt, a report line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from sqlite_utils import Database

from feedback.pii import PiiMasker
from feedback.sql import in_list
from feedback.text import question_key

MIN_QUOTE = 12  # a key at least this long also matches inside longer strings; shorter ones only whole


@dataclass
class Texts:
    """Recogniser of the subject's own texts (see the module docstring); empty recognises nothing."""

    keys: set[str] = field(default_factory=set)
    _long: tuple[str, ...] = ()

    @classmethod
    def of(cls, texts: Iterable[str], masker: PiiMasker) -> "Texts":
        keys: set[str] = set()
        for text in texts:
            for form in (text, masker.mask(text).text):
                key = question_key(form)
                if key:
                    keys.add(key)
        return cls(keys, tuple(sorted((k for k in keys if len(k) >= MIN_QUOTE), key=len, reverse=True)))

    def __bool__(self) -> bool:
        return bool(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def matches(self, text: str | None) -> bool:
        """True when ``text`` is (or, for long texts, quotes) one of the subject's texts."""
        if not text or not self.keys:
            return False
        key = question_key(text)
        if not key:
            return False
        return key in self.keys or any(k in key for k in self._long if len(k) <= len(key))

    def starts(self, text: str | None) -> bool:
        """True when ``text`` is the beginning of one of the subject's longer texts (a quote cut short)."""
        key = question_key(text or "")
        return len(key) >= MIN_QUOTE and any(k.startswith(key) for k in self._long)

    def in_value(self, value) -> bool:
        """True when any string inside a JSON-like ``value`` (dicts, lists, strings) matches."""
        return any(self.matches(text) for text in strings_in(value))


def strings_in(value) -> Iterator[str]:
    """Every string inside a JSON-like value, depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings_in(item)


def own_texts(db: Database, conversation_ids: list[str], vote_ids: list[str]) -> list[str]:
    """What the subject wrote and was answered, less what someone else wrote too (module docstring)."""
    in_conversations, conversations = in_list(db, "m.conversation_id", conversation_ids, name="c")
    in_votes, votes = in_list(db, "f.id", vote_ids, name="v")
    in_scope = f"({in_conversations} OR {in_votes})"
    written = {
        row[0] for row in db.execute(f"SELECT m.content FROM messages m WHERE {in_conversations}", conversations)
    }
    for comment, correction in db.execute(
        f"SELECT f.comment, f.correction FROM feedback f JOIN messages m ON m.id = f.message_id WHERE {in_scope}",
        {**conversations, **votes},
    ):
        written.update((comment, correction))
    written = {text.strip() for text in written if text and text.strip()}
    if not written:
        return []
    in_texts, texts = in_list(db, "trim(m.content)", sorted(written), name="t")
    out_of_scope, _ = in_list(db, "m.conversation_id", conversation_ids, negate=True, name="c")
    shared = {
        row[0]
        for row in db.execute(
            f"SELECT trim(m.content) FROM messages m WHERE {in_texts} AND {out_of_scope}", {**texts, **conversations}
        )
    }
    for column in ("comment", "correction"):
        in_texts, texts = in_list(db, f"trim(f.{column})", sorted(written), name="t")
        shared.update(
            row[0]
            for row in db.execute(
                f"""SELECT trim(f.{column}) FROM feedback f JOIN messages m ON m.id = f.message_id
                    WHERE {in_texts} AND NOT {in_scope}""",
                {**texts, **conversations, **votes},
            )
        )
    company = _company_keys(db)
    return sorted(t for t in written - shared if question_key(t) not in company)


def _company_keys(db: Database) -> set[str]:
    """Keys of the questions and answers the company itself put in the knowledge base (the first version of
    every base or imported entry): never a user's personal data, whoever typed them too."""
    keys = set()
    for questions, answer in db.execute(
        """SELECT h.questions, h.answer FROM kb_history h JOIN kb_entries e ON e.id = h.entry_id
           WHERE h.version = 1 AND e.source_kind IN ('base', 'import')"""
    ):
        keys.update(question_key(q) for q in json.loads(questions))
        keys.add(question_key(answer))
    return keys
