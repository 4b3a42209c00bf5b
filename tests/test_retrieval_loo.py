"""The leave-one-out tuning figure of bench/retrieval.py: each alternate question is asked of a base without it."""

from __future__ import annotations

from bench.retrieval import DEFAULT, faq_entries, leave_one_out, load, load_alternates, loo_queries, without_question
from feedback.knowledge.retrieval import Entry


def _faq_row(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


FAQ = [
    _faq_row("How much is shipping?", "Shipping costs 3,000 won per order."),
    _faq_row("How do I return an item?", "Returns are accepted within 30 days."),
]


def test_the_question_asked_is_left_out_of_the_index():
    # "zebra pattern sofa" shares no word with anything else in the base: it would find its entry (first, as an
    # entry's own question) only if it were still indexed when asked.
    alternates = {0: ["zebra pattern sofa"], 1: ["return an item i bought"]}
    assert DEFAULT.retriever(faq_entries(FAQ, alternates)).search("zebra pattern sofa", k=1)[0].score == 1.0
    figures = leave_one_out(DEFAULT, FAQ, alternates)
    assert (figures["all"]["n"], figures["en"]["n"]) == (2, 2)
    # "return an item i bought" finds its entry through its FAQ question; "zebra pattern sofa" finds nothing.
    assert (figures["all"]["at1"], figures["all"]["at3"]) == (1, 1)


def test_without_question_drops_every_spelling_of_it_and_keeps_the_rest():
    entry = Entry("faq-0", ("How much is shipping?", "delivery fee please", "Delivery fee, please!"), "3,000 won")
    reduced = without_question(entry, "delivery fee please")
    assert reduced.questions == ("How much is shipping?",)
    assert (reduced.entry_id, reduced.answer, reduced.lang) == (entry.entry_id, entry.answer, entry.lang)


def test_every_bundled_alternate_is_one_query_of_its_own_entry():
    alternates = load_alternates()
    queries = loo_queries(alternates)
    assert len(queries) == sum(len(qs) for qs in alternates.values()) > 900
    entries = faq_entries(load("faq.jsonl"), alternates)
    assert all(query in entries[line].questions for query, line in queries)
