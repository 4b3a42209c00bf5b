"""The retriever's query path scores only the postings of the query's terms; these tests hold it to the
dense scorer it replaced — a mat-vec over every slot of every index, every entry combined — query by query:
the same top-k entries, the same phrasing, the same scores.

The reference below is that scorer as it was (``SparseIndex.scores`` and ``Retriever._search`` before the
change), reading the same index. It is compared on the bundled FAQ as the gateway seeds it (with its
alternate questions, however many the data file holds) and on a synthetic base of a few thousand entries
that has been changed since it was built (dead slots, norms not refreshed), and with dense ranking on.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.retrieval import DEFAULT, UNANSWERABLE, faq_entries, load, load_alternates, query_sets, synthesize
from feedback.knowledge.analysis import language_of
from feedback.knowledge.retrieval import Entry, Retriever
from feedback.knowledge.sparse import SparseIndex
from feedback.text import question_key

# --- the reference: the dense scorer as it was ------------------------------------------------------------


def reference_scores(index: SparseIndex, terms: dict[str, float]) -> np.ndarray:
    n = index._owner.size
    tids, qw = [], []
    total = 0.0
    for term, w in terms.items():
        tid = index._term_ids.get(term)
        df = index._df[tid] if tid is not None else 0
        weight = w * index._idf(df)
        total += weight * weight
        if df:
            tids.append(tid)
            qw.append(weight)
    if not tids or total == 0:
        return np.zeros(n)
    slots = np.concatenate([np.frombuffer(index._post_slots[t], dtype=np.int32) for t in tids])
    weights = np.concatenate(
        [
            np.frombuffer(index._post_weights[t], dtype=np.float32) * (w * index._idf(index._df[t]))
            for t, w in zip(tids, qw, strict=True)
        ]
    )
    dots = np.bincount(slots, weights=weights, minlength=n)
    return dots / (index._norm.view * math.sqrt(total))


def _best_by_owner(scores: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:
    best = np.zeros(n)
    hit = np.flatnonzero(scores)
    np.maximum.at(best, owners[hit], scores[hit])
    return best


def reference_search(r: Retriever, query: str, k: int = 3, min_score: float = 0.0) -> list[tuple[str, str, float]]:
    """(entry id, phrasing, unrounded score) of the top ``k``, best first, scored over every entry."""
    if not query.strip():
        return []
    terms, query_lang, config, n = r.analyzer.terms(query), int(language_of(query) == "ko"), r.config, len(r._stored)
    q_scores = reference_scores(r._questions, terms)
    best_q = _best_by_owner(q_scores, r._questions.owners(), n)
    best_a = _best_by_owner(reference_scores(r._answers, terms), r._answers.owners(), n)
    pooled = _best_by_owner(reference_scores(r._pooled, terms), r._pooled.owners(), n)
    question = (1.0 - config.pooled_weight) * best_q + config.pooled_weight * pooled
    lexical = 1.0 - (1.0 - question) * (1.0 - config.answer_weight * best_a)
    if config.other_language < 1.0:
        lexical = np.where(r._lang[:n] == query_lang, lexical, lexical * config.other_language)
    score, cosines = lexical, None
    if r._dense is not None and len(r._dense):
        cosines = r._dense.cosines(r.embed([query])[0])
        score = (1.0 - config.dense_weight) * lexical + config.dense_weight * r._dense.best_by_owner(cosines, n)
    exact = r._exact.get(question_key(query))
    if exact is not None:
        score = np.minimum(score, 0.9999)
        score[exact] = 1.0
    candidates = np.flatnonzero(score >= max(min_score, 1e-9))
    if len(candidates) > k:
        candidates = candidates[np.argpartition(-score[candidates], k - 1)[:k]]
    hits = []
    for ordinal in candidates[np.argsort(-score[candidates], kind="stable")].tolist():
        stored = r._stored[ordinal]
        per_question = q_scores[r._questions.slots_of(ordinal)]
        if cosines is not None:
            dense = r._dense.owner_cosines(ordinal, cosines, len(per_question))
            per_question = (1.0 - config.dense_weight) * per_question + config.dense_weight * dense
        hits.append((stored.entry.entry_id, stored.questions[int(np.argmax(per_question))], float(score[ordinal])))
    return hits


# --- the comparisons --------------------------------------------------------------------------------------


def all_queries() -> list[str]:
    queries = [q for rows in query_sets().values() for q, _, _ in rows] + UNANSWERABLE
    # Edge cases: only stop words (no term at all), one character, an entry's own question differently spelt.
    return queries + ["hello?", "?", "a", "배송", "HOW LONG does standard delivery take", "환불  해주세요!!"]


def assert_same_rankings(r: Retriever, queries: list[str], k: int = 3, min_score: float = 0.0) -> int:
    """Every query's hits equal the reference's; returns how many hits were compared."""
    compared = 0
    for query in queries:
        expected = reference_search(r, query, k, min_score)
        got = r.search(query, k=k, min_score=min_score)
        assert [(h.entry_id, h.question) for h in got] == [(i, q) for i, q, _ in expected], query
        assert [h.score for h in got] == pytest.approx([round(s, 4) for _, _, s in expected], abs=1e-9), query
        compared += len(got)
    return compared


def assert_same_cosines(index: SparseIndex, terms: dict[str, float]) -> None:
    # Below the rankings: every slot's cosine, the ones the query path skips being exactly the zeros.
    dense = reference_scores(index, terms)
    matches = index.match(terms)
    assert np.array_equal(matches.slots, np.flatnonzero(dense > 0))
    np.testing.assert_allclose(matches.cosines, dense[matches.slots], rtol=0, atol=1e-12)
    assert np.array_equal(matches.owners, index.owners()[matches.slots])
    probe = list(range(0, index.owners().size, 7))
    np.testing.assert_allclose(matches.cosines_of(probe), dense[probe], rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def faq() -> list[dict]:
    return load("faq.jsonl")


def test_bundled_faq_rankings_are_unchanged(faq):
    retriever = DEFAULT.faq_retriever(faq)
    queries = all_queries()
    assert assert_same_rankings(retriever, queries) > 2 * len(queries)
    assert assert_same_rankings(retriever, queries, k=1, min_score=0.2) > len(queries) / 2
    assert assert_same_rankings(retriever, queries[:100], k=10) > 500


def test_bundled_faq_cosines_are_unchanged_slot_by_slot(faq):
    retriever = DEFAULT.faq_retriever(faq)
    for query in all_queries():
        terms = retriever.analyzer.terms(query)
        for index in (retriever._questions, retriever._answers, retriever._pooled):
            assert_same_cosines(index, terms)


def test_a_changed_synthetic_base_of_thousands_ranks_as_before(faq):
    retriever = DEFAULT.retriever(synthesize(faq, 3000))
    queries = all_queries()
    assert assert_same_rankings(retriever, queries) > 2 * len(queries)
    # Changes since the build: entries removed (dead slots kept until compaction), replaced with another
    # phrasing, added; fewer than 5 % of the base, so the norms are not refreshed — both scorers read them.
    for i in range(0, 120, 2):
        retriever.remove(f"syn-{i}")
    for i in range(1, 60, 2):
        old = retriever.get(f"syn-{i}")
        retriever.upsert(Entry(old.entry_id, old.questions + ("배송 언제 와요?",), old.answer + " 수정됨.", old.lang))
    for entry in synthesize(faq, 3040, seed=3)[-40:]:
        retriever.upsert(Entry("new-" + entry.entry_id, entry.questions, entry.answer, entry.lang))
    assert assert_same_rankings(retriever, queries) > 2 * len(queries)
    for query in queries[::5]:
        terms = retriever.analyzer.terms(query)
        for index in (retriever._questions, retriever._answers, retriever._pooled):
            assert_same_cosines(index, terms)


def test_dense_fusion_ranks_as_before(faq):
    def embed(texts: list[str]) -> list[list[float]]:
        # Deterministic vectors that share meaning across languages for a few words (as in test_retrieval.py).
        meanings = (("refund", "환불", "돈"), ("deliver", "shipping", "배송", "택배"), ("point", "포인트", "적립"))
        return [[float(sum(t.lower().count(w) for w in words)) + 0.01 for words in meanings] for t in texts]

    retriever = Retriever(faq_entries(faq, load_alternates()), analyzer=DEFAULT.retriever([]).analyzer, embed=embed)
    queries = all_queries()[::3]
    assert assert_same_rankings(retriever, queries) == 3 * len([q for q in queries if q.strip()])


def test_a_query_asked_again_sees_the_changes_made_since(faq):
    # The analysed form of a query is kept between searches; the index it is scored against is not.
    retriever = DEFAULT.faq_retriever(faq)
    query = "do you ship to Jeju island by drone?"
    before = retriever.search(query, k=1)
    retriever.upsert(Entry("drone", ("Do you deliver to Jeju island by drone?",), "Not yet: by boat only.", "en"))
    assert before[0].entry_id != "drone" and retriever.search(query, k=1)[0].entry_id == "drone"
    retriever.remove("drone")
    assert [h.entry_id for h in retriever.search(query, k=1)] == [h.entry_id for h in before]
    assert assert_same_rankings(retriever, [query]) == 3
