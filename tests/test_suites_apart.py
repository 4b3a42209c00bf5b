"""The suites the gate reads hold no training data: what they measure is what users ask, not what was memorized.

The golden rewordings (``data/golden-rewordings.jsonl``) and the reworded test split (``data/rewordings.jsonl``,
``"split": "test"``) must be questions no FAQ row, no golden row, no paraphrase and no other rewording holds —
ignoring case, spacing and punctuation (``feedback.text.question_key``, the key the ranking groups questions by) —
so neither the starter model (trained on ``data/faq.jsonl``), the knowledge base (seeded from it and from
``data/faq-alternates.jsonl``) nor a dataset the builder writes (the FAQ plus corrections) has seen them. Each is
a rewording of a real FAQ row, in that row's language, with its answer as the reference.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from feedback.knowledge.analysis import language_of
from feedback.text import question_key
from trainer.evaluation.suites import BUNDLED_GOLDEN

DATA = Path(__file__).resolve().parent.parent / "data"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def question(row: dict) -> str:
    return row["messages"][0]["content"]


def answer(row: dict) -> str:
    return row["messages"][1]["content"]


FAQ = rows("faq.jsonl")
GOLDEN = rows("golden.jsonl")
GOLDEN_REWORDINGS = rows("golden-rewordings.jsonl")
REWORDED_TEST = [r for r in rows("rewordings.jsonl") if r["split"] == "test"]


def test_the_bundled_golden_suite_is_the_faq_rows_and_their_rewordings():
    assert [p.name for p in BUNDLED_GOLDEN] == ["golden.jsonl", "golden-rewordings.jsonl"]
    assert all(row in FAQ for row in GOLDEN)  # word for word: known answers a retrain must keep


def test_golden_rewordings_reword_each_golden_row_once_in_its_language():
    golden_lines = sorted(FAQ.index(row) for row in GOLDEN)
    assert sorted(r["rewording_of"] for r in GOLDEN_REWORDINGS) == golden_lines
    for row in GOLDEN_REWORDINGS:
        source = FAQ[row["rewording_of"]]
        assert answer(row) == answer(source), question(row)
        assert row["lang"] == language_of(question(row)) == language_of(question(source)), question(row)
    assert Counter(r["lang"] for r in GOLDEN_REWORDINGS) == {"ko": 20, "en": 20}


def test_no_question_the_gate_reads_reworded_is_in_any_other_set():
    trained_or_seen = {
        question_key(question(r)) for name in ("faq.jsonl", "golden.jsonl", "paraphrases.jsonl") for r in rows(name)
    }
    all_rewordings = [question_key(question(r)) for r in rows("rewordings.jsonl")]
    golden_reworded = [question_key(question(r)) for r in GOLDEN_REWORDINGS]
    reworded_test = [question_key(question(r)) for r in REWORDED_TEST]

    # The knowledge base is seeded with the FAQ's alternate questions too (data/faq-alternates.jsonl).
    trained_or_seen |= {question_key(q) for r in rows("faq-alternates.jsonl") for q in r["questions"]}
    assert [k for k in golden_reworded if k in trained_or_seen] == []
    assert [k for k in golden_reworded if k in all_rewordings] == []  # nor a retrieval dev or test rewording
    assert [k for k in reworded_test if k in trained_or_seen] == []
    assert len(set(golden_reworded)) == len(golden_reworded)
    assert len(REWORDED_TEST) == 61 and Counter(r["lang"] for r in REWORDED_TEST).keys() == {"ko", "en"}
