"""A per-process index of the knowledge base that follows the store, change by change.

Every gateway worker holds one :class:`LiveIndex`: a :class:`~feedback.knowledge.retrieval.Retriever` over the
active entries, and the store's change counter (``kb_state.seq``) it reflects. Before a search it reads that
counter — at most once per ``[knowledge] refresh_ms`` (500 ms by default), one indexed ``SELECT`` — and when
it moved, applies only the entries changed since (``changed_seq >`` what it has): an active entry is upserted,
a retired one removed, each in well under a millisecond (docs/retrieval.md). So an approved correction made
in any process — the admin page in another worker, the CLI, a scheduler job — is served by every worker
within ``refresh_ms`` plus one request, with no restart and no rebuild. A very large batch of changes (an
import) rebuilds the index instead, which is cheaper past :data:`REBUILD_AT` entries.

The counter is read before the changed rows, so a change committed between the two reads is applied now and
again next time (an upsert is idempotent) rather than missed. While one request applies changes, others search
the index as it was (they do not wait).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, ContextManager

from sqlite_utils import Database

from config.settings import KnowledgeSettings
from feedback.knowledge import store
from feedback.knowledge.prompt import Snippet
from feedback.knowledge.retrieval import Embed, Entry, Retriever, retriever_from_settings
from feedback.knowledge.store import KBEntry
from feedback.sql import storage_errors

log = logging.getLogger(__name__)

REBUILD_AT = 2000  # changed entries above which a fresh index is built and swapped in


class LiveIndex:
    """The knowledge base's active entries, searchable, kept current by :meth:`refresh` (see the module docstring)."""

    def __init__(
        self,
        settings: KnowledgeSettings,
        connection: Callable[[], ContextManager[Database]],
        *,
        embed: Embed | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.connection = connection
        self.embed = embed
        self.clock = clock
        self.seq = -1  # the change counter the index reflects; -1: not loaded
        self._retriever: Retriever = retriever_from_settings(settings, embed=embed)
        self._entries: dict[str, KBEntry] = {}
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    @classmethod
    def over(cls, db: Database, settings: KnowledgeSettings, *, embed: Embed | None = None) -> "LiveIndex":
        """An index of ``db``'s active entries, loaded now, following it on that connection (CLI, evaluation)."""
        index = cls(settings, lambda: contextlib.nullcontext(db), embed=embed)
        index.load()
        return index

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, entry_id: str) -> KBEntry | None:
        """The indexed (active) entry, as of the last refresh."""
        return self._entries.get(entry_id)

    def load(self) -> int:
        """Build the index from every active entry now; returns how many."""
        with self._lock, self.connection() as db:
            self._rebuild(db, store.current_seq(db))
            self._checked_at = self.clock()
        return len(self._entries)

    def refresh(self, *, force: bool = False) -> int:
        """Apply the changes since the last refresh; returns how many.

        At most once per ``refresh_ms`` unless ``force``.
        """
        now = self.clock()
        if not force and now - self._checked_at < self.settings.refresh_ms / 1000:
            return 0
        if not self._lock.acquire(blocking=False):
            return 0  # another request is applying the changes; this one searches the index as it is
        try:
            self._checked_at = now
            return self._catch_up()
        except storage_errors() as exc:  # a busy or failing store must not fail the chat
            log.warning("knowledge index not refreshed (still at seq %d): %s", self.seq, exc)
            return 0
        finally:
            self._lock.release()

    def _catch_up(self) -> int:
        with self.connection() as db:
            seq = store.current_seq(db)
            if seq == self.seq:
                return 0
            if self.seq < 0:
                self._rebuild(db, seq)
                return len(self._entries)
            changed = store.changed_since(db, self.seq)
            if len(changed) > REBUILD_AT:
                self._rebuild(db, seq)
                return len(changed)
        for entry in changed:
            self._apply(entry)
        self.seq = seq
        log.debug("knowledge index at seq %d: %d change(s) applied", seq, len(changed))
        return len(changed)

    def _rebuild(self, db: Database, seq: int) -> None:
        entries = store.all_entries(db, state="active")
        retriever = retriever_from_settings(self.settings, [_indexed(e) for e in entries], embed=self.embed)
        self._retriever, self._entries, self.seq = retriever, {e.id: e for e in entries}, seq

    def _apply(self, entry: KBEntry) -> None:
        if entry.active:
            self._retriever.upsert(_indexed(entry))
            self._entries[entry.id] = entry
        else:
            self._retriever.remove(entry.id)
            self._entries.pop(entry.id, None)

    def search(self, question: str, k: int | None = None, min_score: float | None = None) -> list[Snippet]:
        """The best entries for ``question``, best first, as the model is shown them (after a refresh check).

        Each snippet carries the entry's first question — the one users see as the source — whichever of its
        phrasings matched, and the entry's version, for the answer's lineage.
        """
        self.refresh()
        k = self.settings.top_k if k is None else k
        min_score = self.settings.min_score if min_score is None else min_score
        snippets = []
        for hit in self._retriever.search(question, k=k, min_score=min_score):
            entry = self._entries.get(hit.entry_id)
            if entry is not None:
                snippets.append(Snippet(entry.id, entry.question, entry.answer, hit.score, entry.version))
        return snippets


def _indexed(entry: KBEntry) -> Entry:
    return Entry(entry.id, entry.questions, entry.answer, entry.lang)
