"""Whose data: a person named by the API's ``user`` field, or one conversation — and where their rows are.

A conversation stores ``user_ref``, a keyed hash of ``<api key id>:<user>`` (``feedback/tokens.py``), and a
vote stores ``voter_ref``, the same kind of hash of ``<api key id>:<user or client address>``. So the person
"user REF" is found by hashing REF once per API key (and once for calls without a key), unless one key is
named; the hashes are recomputed here, never stored. A widget visitor who gave no ``user`` is found by the one
thing they hold: the conversation id (``--conversation``), which is how the widget's "delete this
conversation" reaches them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlite_utils import Database

from config.errors import NotFound, ValidationFailed
from config.settings import Settings
from feedback.secrets import instance_secret
from feedback.sql import in_list
from feedback.tokens import pseudonym

KINDS = ("user", "conversation")
MAX_REF_CHARS = 256  # the API's `user` field is at most this long


@dataclass(frozen=True)
class Subject:
    """The person an erasure or export is about: ``kind`` user (``value`` is REF, optionally under one key) or
    conversation (``value`` is its id)."""

    kind: str
    value: str
    key: str | None = None  # an API key id or prefix narrowing a user to that key's calls

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValidationFailed(f"name a user or a conversation, not {self.kind!r}", field="kind")
        value = (self.value or "").strip()
        if not value:
            raise ValidationFailed(f"the {self.kind} to look for must not be empty", field=self.kind)
        if len(value) > MAX_REF_CHARS:
            raise ValidationFailed(f"the {self.kind} is longer than {MAX_REF_CHARS} characters", field=self.kind)
        if self.key and self.kind != "user":
            raise ValidationFailed("an API key narrows a user, not a conversation", field="key")
        object.__setattr__(self, "value", value)

    @classmethod
    def of(cls, *, user: str | None = None, conversation: str | None = None, key: str | None = None) -> "Subject":
        """Exactly one of ``user`` and ``conversation``; :class:`ValidationFailed` otherwise."""
        if bool(user and user.strip()) == bool(conversation and conversation.strip()):
            raise ValidationFailed("name exactly one: a user (the API's user field) or a conversation id", field="user")
        if user and user.strip():
            return cls("user", user, (key or "").strip() or None)
        return cls("conversation", conversation or "", (key or "").strip() or None)

    def describe(self) -> str:
        """What kind of subject this is, without the person's identifier (for logs and the audit log)."""
        if self.kind == "conversation":
            return "one conversation"
        return f"a user under API key {self.key}" if self.key else "a user under every API key"


@dataclass
class Rows:
    """The rows that hold a subject's data: their conversations and the votes they cast elsewhere."""

    conversation_ids: list[str] = field(default_factory=list)
    vote_ids: list[str] = field(default_factory=list)  # votes cast by the user on conversations not theirs
    scope: str = ""  # "all API keys", "API key key_…", or "" for a conversation
    voter_refs: list[str] = field(default_factory=list)  # a user's votes anywhere carry one of these

    @property
    def empty(self) -> bool:
        return not self.conversation_ids and not self.vote_ids


def reference_secret(db: Database, settings: Settings) -> str:
    """The key user and voter references are hashed with: ``gateway.secret_key``, else the stored one."""
    return settings.gateway.secret_key or instance_secret(db, "feedback_token")


def subject_hash(secret: str, subject: Subject) -> str:
    """A keyed hash standing for the subject in the erasure log: a repeated request is recognisable, the
    person is not."""
    return pseudonym(secret, f"erasure-{subject.kind}", subject.value)


def _key_ids(db: Database, key: str | None) -> tuple[list[str | None], str]:
    if key:
        row = db.execute("SELECT id FROM api_keys WHERE id = ? OR prefix = ?", [key, key]).fetchone()
        if row is None:
            raise NotFound(f"no API key {key!r}", field="key")
        return [row[0]], f"API key {row[0]}"
    ids: list[str | None] = [None]  # calls without a key (loopback)
    ids += [row[0] for row in db.execute("SELECT id FROM api_keys ORDER BY created_at")]
    return ids, "all API keys"


def find_rows(db: Database, secret: str, subject: Subject) -> Rows:
    """Every conversation of the subject, and (for a user) the votes they cast on other conversations.

    :class:`NotFound` for a conversation id that does not exist; a user with no rows is an empty result.
    """
    if subject.kind == "conversation":
        if db.execute("SELECT 1 FROM conversations WHERE id = ?", [subject.value]).fetchone() is None:
            raise NotFound(f"no conversation {subject.value!r}", field="conversation")
        return Rows([subject.value])
    key_ids, scope = _key_ids(db, subject.key)
    user_refs = [pseudonym(secret, "user", f"{key_id}:{subject.value}") for key_id in key_ids]
    voter_refs = [pseudonym(secret, "voter", f"{key_id}:{subject.value}") for key_id in key_ids]
    in_users, params = in_list(db, "user_ref", user_refs)
    conversations = [
        row[0] for row in db.execute(f"SELECT id FROM conversations WHERE {in_users} ORDER BY created_at, id", params)
    ]
    in_voters, voters = in_list(db, "f.voter_ref", voter_refs)
    other_conversation, others = in_list(db, "m.conversation_id", conversations, negate=True)
    votes = [
        row[0]
        for row in db.execute(
            f"""SELECT f.id FROM feedback f JOIN messages m ON m.id = f.message_id
               WHERE {in_voters} AND {other_conversation}
               ORDER BY f.created_at, f.id""",
            [*voters, *others],
        )
    ]
    return Rows(conversations, votes, scope, voter_refs)
