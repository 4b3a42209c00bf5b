"""Finding the knowledge-base entries that answer a question, in Korean or English, in other words.

The retriever is in memory, one per gateway worker, and follows the knowledge base change by change:

    retriever = Retriever([Entry("faq-41", ("배송은 보통 며칠 걸리나요?",), "일반 배송은 2~3영업일...", "ko"), ...])
    retriever.search("택배 언제 와요", k=3)   # -> [Hit(entry_id="faq-41", question="배송은 ...", score=0.41), ...]
    retriever.upsert(Entry("faq-41", ("배송은 보통 며칠 걸리나요?", "택배 언제 와요"), "...", "ko"))
    retriever.remove("faq-41")

**Entries.** An :class:`Entry` has one or more questions (phrasings), an answer and a language. Every
question is indexed on its own, so a reviewed or up-voted rewording added to an entry's questions is
found the next time anyone asks it that way: that is how retrieval learns phrasings from the loop. The
answer is indexed too, with less weight (``answer_weight``): it often carries the user's word
("deliver" → "delivered by our partner courier"). So are all the entry's questions together, as one document
(``pooled_weight``): with several phrasings per entry (the bundled FAQ ships 5–6 per entry,
``data/faq-alternates.jsonl``), a question whose words are spread over two phrasings still finds the entry.

**Lexical ranking** (always on): :class:`~feedback.knowledge.analysis.Analyzer` terms (synonyms folded,
English words stemmed, Korean particles stripped, character n-grams for spacing and typos) in three
:class:`~feedback.knowledge.sparse.SparseIndex` — each question, the questions pooled, the answer — scored by
TF-IDF cosine. An entry's question score mixes its best question's cosine ``q`` with its pooled questions'
cosine ``p``, and its lexical score is a noisy-OR of that with its answer's cosine ``a``::

    question = (1 - pooled_weight) · q + pooled_weight · p
    lexical  = 1 - (1 - question) · (1 - answer_weight · a)

so the answer can only add and the result stays in [0, 1]. A query that is one of an entry's questions
(same ``question_key``: case, spacing and punctuation aside) scores 1.0 and ranks first, whatever the other
entries score.
Entries in the other language than the query's are multiplied by ``other_language``.

**Dense ranking** (optional): given ``embed(texts) -> list[list[float]]`` (e.g.
:class:`modelclient.embeddings.EmbeddingsClient`, any OpenAI-protocol ``/v1/embeddings`` endpoint), every
question is embedded once at upsert and the query at search; an entry's dense score is its best
question's cosine (clipped at 0). Fused by a weighted mean::

    score = (1 - dense_weight) · lexical + dense_weight · dense

If the endpoint fails at search time the query is ranked lexically alone (score = lexical) and a warning
is logged; an entry whose embedding failed at upsert is indexed lexically and retried at the next upsert.

**Scores and the threshold.** Every score is in [0, 1], 1.0 meaning the query's terms are exactly an
entry question's, and does not depend on the query's length or the size of the base, so one
``[knowledge] min_score`` means the same for every query. What a score means in practice on the bundled
FAQ (docs/benchmarks.md, "Retrieval"): the right entry's score for customer rewordings, the best wrong
entry's score for questions the base cannot answer. With dense retrieval on, the scale is the fused one:
measure ``min_score`` again with your embedding model.

**Changes.** :meth:`Retriever.upsert` and :meth:`Retriever.remove` change one entry in well under a
millisecond at 20,000 entries (lexical; an embedding call is added when dense is on), so a worker
can apply each knowledge-base change as it sees it instead of rebuilding. Safe to call from several
threads or greenlets: one lock serialises changes and searches.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from config.settings import KnowledgeSettings
from feedback.knowledge.analysis import Analyzer, language_of
from feedback.knowledge.dense import DenseIndex
from feedback.knowledge.sparse import Matches, SparseIndex
from feedback.knowledge.synonyms import Synonyms
from feedback.text import question_key

log = logging.getLogger(__name__)

Embed = Callable[[list[str]], list[list[float]]]

QUERY_CACHE = 1024  # analysed queries kept per retriever (about 3 KB each: 3 MB at most)


@dataclass(frozen=True)
class Entry:
    """A knowledge-base entry as the retriever sees it: its id, its phrasings, its answer, its language.

    ``lang`` is ``"ko"`` or ``"en"``; empty means detect it from the first question.
    """

    entry_id: str
    questions: tuple[str, ...]
    answer: str
    lang: str = ""

    def __post_init__(self):
        questions = (self.questions,) if isinstance(self.questions, str) else tuple(self.questions)
        questions = tuple(q for q in questions if q and q.strip())
        if not self.entry_id:
            raise ValueError("an entry needs an entry_id")
        if not questions:
            raise ValueError(f"entry {self.entry_id!r} needs at least one question")
        object.__setattr__(self, "questions", questions)
        object.__setattr__(self, "lang", self.lang or language_of(questions[0]))


@dataclass(frozen=True)
class Hit:
    """One search result: the entry, the phrasing of it that matched best, and the score (0..1)."""

    entry_id: str
    question: str
    score: float


@dataclass(frozen=True)
class RetrievalConfig:
    """How the rankings are combined (defaults measured on the dev rewordings, docs/benchmarks.md)."""

    answer_weight: float = 0.5
    pooled_weight: float = 0.5
    other_language: float = 0.5
    dense_weight: float = 0.5

    def __post_init__(self):
        for name in ("answer_weight", "pooled_weight", "other_language", "dense_weight"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value}")


@dataclass
class _Stored:
    entry: Entry
    questions: tuple[str, ...]  # distinct by question_key, in the entry's order
    has_vectors: bool = False
    lang_code: int = 0


class Retriever:
    """Lexical (and optionally dense) retrieval over knowledge-base entries; see the module docstring."""

    def __init__(
        self,
        entries: Iterable[Entry] = (),
        *,
        analyzer: Analyzer | None = None,
        config: RetrievalConfig | None = None,
        embed: Embed | None = None,
    ):
        self.analyzer = analyzer or Analyzer(Synonyms.load())
        self.config = config or RetrievalConfig()
        self.embed = embed
        self._lock = threading.RLock()
        self._questions = SparseIndex()
        self._answers = SparseIndex()
        self._pooled = SparseIndex()
        self._exact: dict[str, int] = {}  # question_key -> ordinal of the entry that has that question
        self._dense = DenseIndex() if embed else None
        self._ordinal: dict[str, int] = {}
        self._stored: list[_Stored | None] = []
        self._count = 0
        self._lang = np.zeros(0, dtype=np.int8)
        # Cached per query string: customers ask the same questions in the same words all day, and the analyzer
        # is a tenth of a search at 20,000 entries. On the analyzer, not on self: no cycle keeps an old index alive.
        self._analyzed = functools.lru_cache(maxsize=QUERY_CACHE)(functools.partial(_analyze_query, self.analyzer))
        self.add_all(entries)

    # --- reading ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    def __contains__(self, entry_id: str) -> bool:
        return self.get(entry_id) is not None

    def get(self, entry_id: str) -> Entry | None:
        """The entry as indexed, or None."""
        ordinal = self._ordinal.get(entry_id)
        stored = self._stored[ordinal] if ordinal is not None else None
        return stored.entry if stored else None

    # --- changing -----------------------------------------------------------------------------------

    def add_all(self, entries: Iterable[Entry]) -> None:
        """Index many entries at once (one embedding call per batch, norms computed once)."""
        entries = list(entries)
        if not entries:
            return
        fresh = [e for e in entries if e.entry_id not in self._ordinal]
        if len(fresh) < len(entries) or len({e.entry_id for e in entries}) < len(entries):
            for entry in entries:
                self.upsert(entry)
            return
        prepared = [(entry, _distinct(entry.questions)) for entry in entries]
        vectors = self._embed_questions([q for _, qs in prepared for q in qs])
        with self._lock:
            ordinals = [self._new_ordinal(entry, questions) for entry, questions in prepared]
            # Generators: each text's terms live only until the index has turned them into ids (holding
            # them all at 20,000 entries took 500 MB at the peak).
            analyze, pooled = self.analyzer.terms, self.analyzer.pooled_terms
            self._questions.add_many(
                (o, analyze(q)) for o, (_, questions) in zip(ordinals, prepared, strict=True) for q in questions
            )
            self._answers.add_many((o, analyze(e.answer)) for o, (e, _) in zip(ordinals, prepared, strict=True))
            self._pooled.add_many((o, pooled(qs)) for o, (_, qs) in zip(ordinals, prepared, strict=True))
            if vectors is not None:
                offset = 0
                for entry, questions in prepared:
                    self._add_vectors(self._ordinal[entry.entry_id], vectors[offset : offset + len(questions)])
                    offset += len(questions)

    def upsert(self, entry: Entry) -> None:
        """Add ``entry``, or replace the entry with its id (questions, answer and language)."""
        questions = _distinct(entry.questions)
        vectors = self._embed_questions(list(questions))
        q_terms = [self.analyzer.terms(q) for q in questions]
        a_terms = self.analyzer.terms(entry.answer)
        p_terms = self.analyzer.pooled_terms(questions)
        with self._lock:
            ordinal = self._ordinal.get(entry.entry_id)
            if ordinal is not None and self._stored[ordinal] is not None:
                self._unindex(ordinal)
            ordinal = self._new_ordinal(entry, questions, ordinal)
            for terms in q_terms:
                self._questions.add(ordinal, terms)
            self._answers.add(ordinal, a_terms)
            self._pooled.add(ordinal, p_terms)
            if vectors is not None:
                self._add_vectors(ordinal, vectors)

    def remove(self, entry_id: str) -> bool:
        """Forget the entry; False when there was none with that id."""
        with self._lock:
            ordinal = self._ordinal.get(entry_id)
            if ordinal is None or self._stored[ordinal] is None:
                return False
            self._unindex(ordinal)
            self._stored[ordinal] = None
            self._count -= 1
            return True

    def refresh_norms(self) -> None:
        """Recompute every indexed text's norm with today's document frequencies, so scores are exactly those of
        an index built afresh (changes refresh them only after 5 % of the base changed; see ``sparse.py``)."""
        with self._lock:
            for index in (self._questions, self._answers, self._pooled):
                index.refresh_norms()

    def _new_ordinal(self, entry: Entry, questions: tuple[str, ...], ordinal: int | None = None) -> int:
        if ordinal is None:
            ordinal = self._ordinal[entry.entry_id] = len(self._stored)
            self._stored.append(None)
            if ordinal >= len(self._lang):
                self._lang = np.concatenate([self._lang, np.zeros(max(64, len(self._lang)), dtype=np.int8)])
        if self._stored[ordinal] is None:
            self._count += 1
        self._stored[ordinal] = _Stored(entry, questions)
        for question in questions:
            self._exact[question_key(question)] = ordinal
        self._lang[ordinal] = 1 if entry.lang == "ko" else 0
        return ordinal

    def _unindex(self, ordinal: int) -> None:
        for index in (self._questions, self._answers, self._pooled):
            index.remove_owner(ordinal)
        for question in self._stored[ordinal].questions:
            if self._exact.get(question_key(question)) == ordinal:
                del self._exact[question_key(question)]
        if self._dense is not None:
            self._dense.remove(ordinal)

    def _add_vectors(self, ordinal: int, vectors: list[list[float]]) -> None:
        try:
            self._dense.add(ordinal, vectors)
        except ValueError as exc:  # a model switched to another dimension: keep the entry, lexically
            log.warning("entry %r indexed lexically only: %s", self._stored[ordinal].entry.entry_id, exc)
            return
        self._stored[ordinal].has_vectors = True

    def _embed_questions(self, questions: list[str]) -> list[list[float]] | None:
        if self.embed is None or not questions:
            return None
        try:
            return _checked_vectors(self.embed(questions), len(questions))
        except Exception as exc:  # noqa: BLE001 - an embeddings outage must not stop a knowledge-base change
            log.warning("embedding %d question(s) failed, indexed lexically only: %s", len(questions), exc)
            return None

    # --- searching ----------------------------------------------------------------------------------

    def search(self, query: str, k: int = 3, min_score: float = 0.0) -> list[Hit]:
        """The ``k`` best entries for ``query`` scoring ``min_score`` or more, best first (see the scale above)."""
        if k < 1 or not query or not query.strip():
            return []
        query_vector = None
        if self._dense is not None:
            try:
                query_vector = _checked_vectors(self.embed([query]), 1)[0]
            except Exception as exc:  # noqa: BLE001 - fall back to lexical ranking, the chat goes on
                log.warning("embedding the query failed, ranking lexically: %s", exc)
        terms, query_lang, key = self._analyzed(query)
        with self._lock:
            return self._search(terms, query_lang, query_vector, k, min_score, key)

    def _search(self, terms, query_lang: int, query_vector, k: int, min_score: float, key: str) -> list[Hit]:
        # Only the entries sharing a term with the query are scored (the others' lexical score is 0), unless
        # dense ranking is on, where every entry has a dense score. The arithmetic is the same, element by
        # element, as scoring every entry (tests/test_retrieval_equivalence.py holds it to that).
        n = len(self._stored)
        if n == 0:
            return []
        config = self.config
        questions = self._questions.match(terms)
        answers = self._answers.match(terms)
        pooled_matches = self._pooled.match(terms)
        cosines = None
        if query_vector is not None and len(self._dense):
            try:
                cosines = self._dense.cosines(query_vector)
            except ValueError as exc:  # the endpoint now answers in another dimension than the index
                log.warning("query embedding not usable, ranking lexically: %s", exc)
        exact = self._exact.get(key)
        best_q, best_a, pooled = (_best_by_owner(m, n) for m in (questions, answers, pooled_matches))
        if cosines is not None:
            candidates = np.arange(n)
        else:
            touched = (best_q + best_a + pooled) > 0
            if exact is not None:
                touched[exact] = True
            candidates = np.flatnonzero(touched)
            best_q, best_a, pooled = best_q[candidates], best_a[candidates], pooled[candidates]
        question = (1.0 - config.pooled_weight) * best_q + config.pooled_weight * pooled
        lexical = 1.0 - (1.0 - question) * (1.0 - config.answer_weight * best_a)
        if config.other_language < 1.0:
            lexical = np.where(self._lang[candidates] == query_lang, lexical, lexical * config.other_language)
        score = lexical
        if cosines is not None:
            dense = self._dense.best_by_owner(cosines, n)
            score = (1.0 - config.dense_weight) * lexical + config.dense_weight * dense
        if exact is not None:  # one of the entry's own questions: first, and the only 1.0
            score = np.minimum(score, 0.9999)
            score[np.searchsorted(candidates, exact)] = 1.0
        kept = np.flatnonzero(score >= max(min_score, 1e-9))
        if not len(kept):
            return []
        candidates, score = candidates[kept], score[kept]
        if len(candidates) > k:
            top = np.argpartition(-score, k - 1)[:k]
            candidates, score = candidates[top], score[top]
        order = np.argsort(-score, kind="stable")
        hits = []
        for ordinal, value in zip(candidates[order].tolist(), score[order].tolist(), strict=True):
            stored = self._stored[ordinal]
            question = self._best_question(ordinal, stored, questions, cosines)
            hits.append(Hit(stored.entry.entry_id, question, round(value, 4)))
        return hits

    def _best_question(self, ordinal: int, stored: _Stored, questions: Matches, cosines) -> str:
        # The phrasing that matched best by the same fusion as the ranking (slots are in question order).
        per_question = questions.cosines_of(self._questions.slots_of(ordinal))
        if cosines is not None:
            dense = self._dense.owner_cosines(ordinal, cosines, len(per_question))
            per_question = (1.0 - self.config.dense_weight) * per_question + self.config.dense_weight * dense
        return stored.questions[int(np.argmax(per_question))]


def retriever_from_settings(
    settings: KnowledgeSettings, entries: Iterable[Entry] = (), embed: Embed | None = None
) -> Retriever:
    """A retriever as ``[knowledge]`` describes it: its synonyms file and dense weight. ``embed`` is built
    by the caller from ``embeddings_*`` (``modelclient.embeddings.EmbeddingsClient``; feedback/ does not
    talk HTTP) and is None when ``embeddings_model`` is empty."""
    analyzer = Analyzer(Synonyms.load(settings.synonyms or None))
    return Retriever(
        entries, analyzer=analyzer, config=RetrievalConfig(dense_weight=settings.dense_weight), embed=embed
    )


def _analyze_query(analyzer: Analyzer, query: str) -> tuple[dict[str, float], int, str]:
    # The terms are shared by every search of the same query string: read, never changed.
    return analyzer.terms(query), 1 if language_of(query) == "ko" else 0, question_key(query)


def _best_by_owner(matches: Matches, n: int) -> np.ndarray:
    # An entry's best slot: the question index holds several slots per entry.
    best = np.zeros(n)
    np.maximum.at(best, matches.owners, matches.cosines)
    return best


def _distinct(questions: Sequence[str]) -> tuple[str, ...]:
    seen, kept = set(), []
    for question in questions:
        key = question_key(question)
        if key not in seen:
            seen.add(key)
            kept.append(question)
    return tuple(kept)


def _checked_vectors(vectors, expected: int) -> list[list[float]]:
    vectors = list(vectors)
    if len(vectors) != expected:
        raise ValueError(f"the embeddings endpoint returned {len(vectors)} vectors for {expected} texts")
    return vectors
