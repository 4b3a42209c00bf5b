"""An in-memory inverted index scored by TF-IDF cosine, cheap to change one document at a time.

Each document (a slot) belongs to an *owner* (a small int the caller chooses: the retriever uses one per
knowledge-base entry, so an entry's several questions are several slots of one owner). A query scores
every slot that shares a term with it and keeps each owner's best slot.

Scores are cosines between TF-IDF vectors — the caller's term weight (the analyzer's sublinear
``kind weight · (1 + ln tf)``) times the smoothed ``idf = ln((N + 1) / (df + 1)) + 1`` — so they lie in
[0, 1]: 1.0 for the same terms, 0 for none shared, whatever the query's length. That is what lets one
threshold mean the same thing for every query.

Changes are incremental, which is the point of this module (a gateway worker follows a knowledge-base
edit without a rebuild):

- ``add`` appends the slot to each of its terms' postings (``array`` of int32 / float32) and bumps the
  document frequencies: O(terms of the document);
- ``remove`` marks the slot dead and lowers the document frequencies; its postings stay until enough of
  the index is dead, then one compaction rewrites them;
- idf is applied at query time, so a change of document frequency is seen by the next query; a
  document's norm is computed with the idf of the moment it is added and all norms are recomputed when
  the collection has changed by more than ``norm_refresh`` (5 %) since the last time. Between two
  refreshes a score can drift by about a percent (measured: an exact match scored 0.99 after 1,400 of
  1,500 documents were removed), never more than the collection's change allows.

Not thread-safe on its own: the retriever serialises access.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


class _Growable:
    """A numpy vector that grows by doubling (appending one value is amortised O(1))."""

    def __init__(self, dtype, fill=0):
        self._data = np.full(64, fill, dtype=dtype)
        self._fill = fill
        self.size = 0

    def append(self, value) -> int:
        if self.size == len(self._data):
            grown = np.full(len(self._data) * 2, self._fill, dtype=self._data.dtype)
            grown[: self.size] = self._data
            self._data = grown
        self._data[self.size] = value
        self.size += 1
        return self.size - 1

    @property
    def view(self) -> np.ndarray:
        return self._data[: self.size]


@dataclass(frozen=True)
class Matches:
    """What one query scored in one index: the slots sharing a term with it (ascending), their cosines (all > 0)
    and their owners; :meth:`cosines_of` gives any other slot's (0 for the ones not here)."""

    slots: np.ndarray
    cosines: np.ndarray
    owners: np.ndarray
    dots: np.ndarray | None  # the query's dot product with every slot; None when it shares no term
    norms: np.ndarray  # the slots' norms as they were at the query
    query_norm: float

    def cosines_of(self, slots: list[int]) -> np.ndarray:
        """The cosines of ``slots``, computed as :meth:`SparseIndex.match` computes its own."""
        if self.dots is None:
            return np.zeros(len(slots))
        return self.dots[slots] / (self.norms[slots] * self.query_norm)


class SparseIndex:
    """Documents as weighted terms; ``query`` returns owners ranked by their best slot's cosine."""

    def __init__(self, norm_refresh: float = 0.05):
        self.norm_refresh = norm_refresh
        self._term_ids: dict[str, int] = {}
        self._post_slots: list[array] = []
        self._post_weights: list[array] = []
        self._df: list[int] = []
        self._slot_terms: list[tuple[np.ndarray, np.ndarray] | None] = []
        self._owner_slots: dict[int, list[int]] = {}  # live slots by owner, ascending
        self._owner = _Growable(np.int32)
        self._norm = _Growable(np.float64, fill=np.inf)
        self._alive = 0
        self._dead = 0
        self._alive_at_refresh = 0

    def __len__(self) -> int:
        return self._alive

    # --- building -----------------------------------------------------------------------------------

    def _idf(self, df: int) -> float:
        return math.log((self._alive + 1) / (df + 1)) + 1.0

    def _term_id(self, term: str) -> int:
        tid = self._term_ids.get(term)
        if tid is None:
            tid = self._term_ids[term] = len(self._df)
            self._post_slots.append(array("i"))
            self._post_weights.append(array("f"))
            self._df.append(0)
        return tid

    def _append(self, owner: int, terms: Mapping[str, float]) -> int:
        ids = np.fromiter((self._term_id(t) for t in terms), dtype=np.int32, count=len(terms))
        return self._append_ids(owner, ids, np.fromiter(terms.values(), np.float32, len(terms)))

    def _append_ids(self, owner: int, ids: np.ndarray, tfs: np.ndarray) -> int:
        slot = self._owner.append(owner)
        self._owner_slots.setdefault(owner, []).append(slot)
        self._norm.append(np.inf)
        self._slot_terms.append((ids, tfs))
        for tid, tf in zip(ids.tolist(), tfs.tolist(), strict=True):
            self._post_slots[tid].append(slot)
            self._post_weights[tid].append(tf)
            self._df[tid] += 1
        self._alive += 1
        return slot

    def _set_norm(self, slot: int) -> None:
        ids, tfs = self._slot_terms[slot]
        df = np.fromiter((self._df[t] for t in ids.tolist()), np.float64, len(ids))
        idf = np.log((self._alive + 1) / (df + 1)) + 1.0
        norm = float(np.sqrt(np.sum((tfs * idf) ** 2)))
        self._norm.view[slot] = norm if norm > 0 else np.inf

    def add(self, owner: int, terms: Mapping[str, float]) -> int:
        """Index one document for ``owner``; returns its slot. ``terms``: term → tf weight (before idf)."""
        slot = self._append(owner, terms)
        self._maybe_refresh()
        if np.isinf(self._norm.view[slot]):
            self._set_norm(slot)
        return slot

    def add_many(self, documents: Iterable[tuple[int, Mapping[str, float]]]) -> list[int]:
        """Index many documents at once (norms computed once, at the end, with the final idf)."""
        slots = [self._append(owner, terms) for owner, terms in documents]
        self.refresh_norms()
        return slots

    def remove(self, slot: int) -> None:
        """Forget one slot (its postings are dropped at the next compaction, which renumbers the slots)."""
        self._forget(slot)
        self._after_removal()

    def remove_owner(self, owner: int) -> int:
        """Forget every slot of ``owner`` (at most one compaction, after the last); returns how many."""
        slots = self.slots_of(owner)
        for slot in slots:  # all forgotten before any compaction: it renumbers the slots
            self._forget(slot)
        if slots:
            self._after_removal()
        return len(slots)

    def _forget(self, slot: int) -> None:
        if self._slot_terms[slot] is None:
            return
        ids, _ = self._slot_terms[slot]
        for tid in ids.tolist():
            self._df[tid] -= 1
        owner = int(self._owner.view[slot])
        held = self._owner_slots[owner]
        held.remove(slot)
        if not held:
            del self._owner_slots[owner]
        self._slot_terms[slot] = None
        self._norm.view[slot] = np.inf
        self._alive -= 1
        self._dead += 1

    def _after_removal(self) -> None:
        if self._dead > 1000 and self._dead > self._alive:
            self._compact()
        else:
            self._maybe_refresh()

    def _maybe_refresh(self) -> None:
        if abs(self._alive - self._alive_at_refresh) > self.norm_refresh * max(self._alive_at_refresh, 100):
            self.refresh_norms()

    def refresh_norms(self) -> None:
        """Recompute every live slot's norm with today's idf: one vectorised pass over the index."""
        live = [(slot, item) for slot, item in enumerate(self._slot_terms) if item is not None]
        self._alive_at_refresh = self._alive
        if not live:
            return
        slots = np.concatenate([np.full(len(ids), slot) for slot, (ids, _) in live])
        ids = np.concatenate([ids for _, (ids, _) in live])
        tfs = np.concatenate([tfs for _, (_, tfs) in live]).astype(np.float64)
        idf = np.log((self._alive + 1) / (np.asarray(self._df, dtype=np.float64) + 1)) + 1.0
        norms = np.sqrt(np.bincount(slots, weights=(tfs * idf[ids]) ** 2, minlength=self._owner.size))
        live_slots = np.fromiter((slot for slot, _ in live), np.int64, len(live))
        self._norm.view[live_slots] = np.where(norms[live_slots] > 0, norms[live_slots], np.inf)

    def _compact(self) -> None:
        # Slots are renumbered: callers keep (owner, slot) pairs only through `slots_of`, never across calls.
        live = [(int(self._owner.view[s]), item) for s, item in enumerate(self._slot_terms) if item is not None]
        names = {tid: term for term, tid in self._term_ids.items()}
        self.__init__(self.norm_refresh)
        for owner, (ids, tfs) in live:
            new_ids = np.fromiter((self._term_id(names[t]) for t in ids.tolist()), np.int32, len(ids))
            self._append_ids(owner, new_ids, tfs)
        self.refresh_norms()

    def slots_of(self, owner: int) -> list[int]:
        """The live slots of ``owner``, ascending (in the order they were added)."""
        return list(self._owner_slots.get(owner, ()))

    # --- querying -----------------------------------------------------------------------------------

    def _query(self, terms: Mapping[str, float]) -> tuple[list[int], list[float], float]:
        # The query's indexed terms, each one's weight on a posting (query tf · idf · idf: the posting holds
        # the document's tf, both sides take the idf), and the query vector's squared norm (all its terms).
        tids, scales = [], []
        total = 0.0
        for term, w in terms.items():
            tid = self._term_ids.get(term)
            df = self._df[tid] if tid is not None else 0
            idf = self._idf(df)
            weight = w * idf
            total += weight * weight
            if df:
                tids.append(tid)
                scales.append(weight * idf)
        return tids, scales, total

    def _dots(self, tids: list[int], scales: list[float]) -> np.ndarray:
        # Accumulates the query's posting lists only (term-at-a-time, as an inverted index does): the work is
        # the postings of the query's terms, never the whole collection's. The products are float32, posting
        # weight times the term's weight rounded to float32 (what ``float32 array * float`` gives), summed in
        # float64 by ``bincount`` in term order — the same numbers whichever way the postings are gathered.
        # Views on the postings (no copy) die with this frame, so the arrays can grow again on the next add.
        slot_parts = [np.frombuffer(self._post_slots[t], dtype=np.int32) for t in tids]
        weight_parts = [np.frombuffer(self._post_weights[t], dtype=np.float32) for t in tids]
        lengths = [len(part) for part in slot_parts]
        slots = np.concatenate(slot_parts)
        products = np.concatenate(weight_parts) * np.repeat(np.array(scales, dtype=np.float32), lengths)
        del slot_parts, weight_parts
        return np.bincount(slots, weights=products, minlength=self._owner.size)

    def match(self, terms: Mapping[str, float]) -> Matches:
        """The slots sharing a term with the query and their cosines (those > 0), without scoring the others."""
        tids, scales, total = self._query(terms)
        norms = self._norm.view
        if not tids or total == 0:
            empty = np.zeros(0, dtype=np.int64)
            return Matches(empty, np.zeros(0), self._owner.view[empty], None, norms, 1.0)
        dots = self._dots(tids, scales)
        query_norm = math.sqrt(total)
        slots = np.flatnonzero(dots > 0)
        cosines = dots[slots] / (norms[slots] * query_norm)
        live = cosines > 0  # a dead slot keeps its postings until compaction; its norm is inf
        if not live.all():
            slots, cosines = slots[live], cosines[live]
        return Matches(slots, cosines, self._owner.view[slots], dots, norms, query_norm)

    def owners(self) -> np.ndarray:
        """The owner of every slot, by slot (dead slots included; their score is always 0)."""
        return self._owner.view
