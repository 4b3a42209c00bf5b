"""Evaluation: the metrics by hand (Korean included), and candidate-versus-live runs over real HTTP.

The upstream is ``table_upstream`` (tests/plugins/evaluation.py): models that answer from a table, so a test
decides exactly how the candidate and the live model differ.
"""

from __future__ import annotations

import pytest

from config.errors import Conflict, ValidationFailed
from config.settings import load_settings
from feedback.knowledge.store import entry_for_question
from feedback.review import create_item
from feedback.text import question_key
from server.app import create_app
from tests.plugins.evaluation import (
    CORRECTIONS,
    GOLDEN,
    KNOWLEDGE_HEADER,
    REWORDED,
    TEST_SPLIT,
    fill,
    make_setup,
)
from trainer.evaluation import metrics
from trainer.evaluation.judge import parse_reply
from trainer.evaluation.run import evaluate, get_evaluation, list_evaluations, read_rows
from trainer.evaluation.suites import reworded_correction_cases

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

# --- metrics, computed by hand ------------------------------------------------------------------


def test_tokens_split_hangul_into_characters_and_keep_latin_words():
    assert metrics.tokens("배송비는 3,000원입니다. Free  SHIPPING!") == [
        "배",
        "송",
        "비",
        "는",
        "3",
        "000",
        "원",
        "입",
        "니",
        "다",
        "free",
        "shipping",
    ]
    assert metrics.tokens("abc가나") == ["abc", "가", "나"]  # a Latin run stops at Hangul


def test_exact_match_ignores_only_invisible_differences():
    assert metrics.exact_match("배송비는  무료입니다\u200b ", "배송비는 무료입니다") == 1.0
    assert metrics.exact_match("ＡＢＣ 1", "ABC 1") == 1.0  # NFKC folds full-width forms
    assert metrics.exact_match("Free shipping", "free shipping") == 0.0
    assert metrics.exact_match("3,000 won", "3000 won") == 0.0


def test_token_f1_by_hand():
    # 배 송 비 는 무 료 vs 배 송 비 는 유 료: 5 of 6 in common both ways → P = R = F1 = 5/6.
    assert metrics.token_f1("배송비는 무료", "배송비는 유료") == pytest.approx(5 / 6)
    # the cat sat / the cat ran: 2 of 3 → 2/3.
    assert metrics.token_f1("the cat sat", "the cat ran") == pytest.approx(2 / 3)
    # a b / a b c d: P = 1, R = 1/2 → F1 = 2/3.
    assert metrics.token_f1("a b", "a b c d") == pytest.approx(2 / 3)
    assert metrics.token_f1("무료 배송", "배송 무료") == 1.0  # a bag of tokens: order does not count


def test_rouge_l_by_hand_keeps_hangul():
    # LCS of a b c d / a c d e is a c d: P = R = 3/4.
    assert metrics.rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    # 무 료 배 송 vs 배 송 무 료: the longest common subsequence has 2 tokens → 2/4.
    assert metrics.rouge_l("무료 배송", "배송 무료") == pytest.approx(0.5)
    # rouge-score's own tokenizer would see no tokens at all in Korean-only text.
    assert metrics.rouge_l("환불은 3일 걸립니다", "교환은 불가합니다") < 0.5


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # Values printed by Google's rouge-score 0.1.2 (RougeScorer(["rougeL"], tokenizer=<metrics.tokens>)),
        # the package this implementation replaced: ours must agree to the last digit.
        ("the cat sat on the mat", "the cat was on the mat", 0.8333333333333334),
        (
            "Standard delivery takes 2-3 business days.",
            "Delivery takes two to three business days, standard.",
            0.5333333333333333,
        ),
        ("배송비는 3,000원입니다", "배송비는 무료입니다 3,000원 이상", 0.5833333333333334),
        ("a b a b a", "b a b", 0.7499999999999999),
        ("환불은 3일 걸립니다", "교환은 불가합니다", 0.47058823529411764),
    ],
)
def test_rouge_l_matches_the_reference_scorer(prediction, reference, expected):
    assert metrics.rouge_l(prediction, reference) == pytest.approx(expected, abs=1e-12)
    assert metrics.lcs_length(metrics.tokens(prediction), metrics.tokens(reference)) == metrics.lcs_length(
        metrics.tokens(reference), metrics.tokens(prediction)
    )


@pytest.mark.parametrize("name", metrics.METRICS)
def test_identical_is_the_maximum_and_disjoint_is_zero(name):
    fn = getattr(metrics, name)
    for text in ("배송비는 3,000원입니다.", "Orders ship the same day.", ""):
        assert fn(text, text) == 1.0
    assert fn("가나다라", "마바사아") == 0.0
    assert fn("spot on", "black mud") == 0.0  # no word and no character in common
    assert fn("", "배송") == 0.0


def test_chrf_gives_partial_credit_for_a_particle_and_ignores_spacing():
    close = metrics.chrf("배송비가 3,000원입니다", "배송비는 3,000원입니다")
    far = metrics.chrf("환불은 영업일 3일 이내입니다", "배송비는 3,000원입니다")
    assert 0 < far < close < 1
    assert metrics.chrf("배송비 는 무료", "배송비는 무료") == 1.0  # Korean spacing varies; chrF drops whitespace


def test_the_paired_bootstrap_interval_says_when_a_difference_may_be_noise():
    # Every question better by the same amount: no doubt at all.
    assert metrics.paired_interval([1.0, 1.0, 1.0], [0.5, 0.5, 0.5], 0.95) == (0.5, 0.5)
    # +0.02 on average over three questions that moved both ways: the interval spans zero.
    low, high = metrics.paired_interval([0.66, 0.59, 0.61], [0.60, 0.60, 0.60], 0.95)
    assert low < 0 < 0.02 < high
    # The same spread over many questions narrows the interval around the mean.
    many = metrics.paired_interval([0.66, 0.59, 0.61] * 40, [0.60, 0.60, 0.60] * 40, 0.95)
    assert low < many[0] < 0.02 < many[1] < high
    assert many == metrics.paired_interval([0.66, 0.59, 0.61] * 40, [0.60] * 120, 0.95)  # seeded: reproducible
    assert metrics.paired_interval([1, 0], [0, 0], 0.5)[1] <= metrics.paired_interval([1, 0], [0, 0], 0.99)[1]


def test_mean_scores_and_score_agree():
    rows = [metrics.score("a b", "a b"), metrics.score("a", "b")]
    assert metrics.mean_scores(rows) == {"exact_match": 0.5, "token_f1": 0.5, "rouge_l": 0.5, "chrf": 0.5}


def test_judge_replies_are_read_strictly():
    assert parse_reply('Both fine. {"a": 5, "b": 2}') == (5, 2)
    assert parse_reply('{"A": 3.0, "B": 4}') == (3, 4)
    assert parse_reply('{"a": 7, "b": 2}') is None
    assert parse_reply("A is better") is None


# --- evaluate() end to end ----------------------------------------------------------------------


def test_evaluate_asks_both_models_scores_each_suite_and_view_and_stores_it(better_candidate):
    s = better_candidate
    ev = evaluate(s.db, s.settings, "tuned")
    assert (ev.candidate_id, ev.incumbent_id, ev.dataset_id) == (s.candidate.id, s.live.id, s.dataset_id)
    assert ev.suites == ["test", "corrections", "corrections_reworded", "golden", "reworded"]
    assert ev.params["views"] == ["closed_book", "as_served"]
    closed, served = ev.metrics["corrections"]["closed_book"], ev.metrics["corrections"]["as_served"]
    assert closed["rows"] == served["rows"] == 2
    assert closed["candidate"] == {"exact_match": 1.0, "token_f1": 1.0, "rouge_l": 1.0, "chrf": 1.0}
    assert closed["incumbent"]["exact_match"] == 0.0 and closed["delta"]["exact_match"] == 1.0
    assert closed["interval"]["exact_match"] == [1.0, 1.0] and closed["confidence"] == 0.95
    # As served the live model already answers the corrections: their entries were corrected on approval.
    assert served["incumbent"]["exact_match"] == 1.0 and served["delta"]["exact_match"] == 0.0
    for suite in ("golden", "test", "reworded"):
        for view in ("closed_book", "as_served"):
            entry = ev.metrics[suite][view]
            assert entry["candidate"] == entry["incumbent"]
            assert entry["errors"] == {"candidate": 0, "incumbent": 0}
    assert ev.metrics["corrections_reworded"] == {"closed_book": {"rows": 0}, "as_served": {"rows": 0}}
    assert [ev.metrics[s_]["closed_book"]["rows"] for s_ in ("golden", "test", "reworded")] == [4, 2, 2]
    assert ev.passed is True and ev.reasons == [] and ev.gate["outcome"] == "passed"
    assert ev.judge is None  # no judge configured
    # Every question went to both models twice, closed book (no knowledge block) and as served; greedy, with
    # evaluation.max_tokens.
    questions = [q for q, _ in TEST_SPLIT + CORRECTIONS + GOLDEN + REWORDED]
    asked = [(r["model"], r["messages"][-1]["content"], _grounded(r["messages"])) for r in s.upstream.requests]
    assert sorted(asked) == sorted((m, q, g) for m in ("starter", "tuned") for q in questions for g in (False, True))
    assert {(r["temperature"], r["max_tokens"]) for r in s.upstream.requests} == {(0.0, 256)}
    # Stored: the row, and the answers with per-row scores in the JSONL file.
    stored = get_evaluation(s.db, ev.id)
    assert (stored.metrics, stored.passed, stored.params["dataset_source"]) == (ev.metrics, True, "newest dataset")
    assert [e.id for e in list_evaluations(s.db, s.candidate.id)] == [ev.id]
    rows = read_rows(stored)
    assert len(rows) == 2 * len(questions)
    jeju = {r["view"]: r for r in rows if r["reference"] == CORRECTIONS[0][1]}
    assert jeju["closed_book"]["suite"] == "corrections" and jeju["closed_book"]["source"]["source"] == "review"
    assert jeju["closed_book"]["incumbent"]["answer"] == "Sorry, I cannot help with that."
    assert jeju["closed_book"]["candidate"]["scores"]["exact_match"] == 1.0
    assert jeju["closed_book"]["sources"] == [] and jeju["as_served"]["sources"]
    entry = entry_for_question(s.db, CORRECTIONS[0][0])
    assert jeju["as_served"]["sources"][0] == entry.id and entry.answer == CORRECTIONS[0][1]
    assert next(r for r in rows if r["suite"] == "test")["source"] == {
        "dataset_version": 1,
        "source": "base",
        "file": "faq.jsonl",
        "line": 1,
    }


def _grounded(messages: list[dict]) -> bool:
    return any(m["role"] == "system" and KNOWLEDGE_HEADER in m["content"] for m in messages)


def test_as_served_is_the_prompt_the_gateway_sends(better_candidate):
    s = better_candidate
    ev = evaluate(s.db, s.settings, s.candidate, suites=["golden"], views=["as_served"])
    evaluated = {r["question"]: r["messages"] for r in read_rows(ev)}
    s.upstream.requests.clear()
    client = create_app(settings=s.settings).test_client()
    for question, messages in evaluated.items():
        reply = client.post("/api/chat", json={"message": question})
        assert reply.status_code == 200, reply.get_json()
        assert s.upstream.requests[-1]["messages"] == messages
        sources = [x["id"] for x in reply.get_json()["sources"]]
        assert sources == next(r["sources"] for r in read_rows(ev) if r["question"] == question)


def test_with_the_knowledge_base_off_both_views_are_one_prompt_asked_once(better_candidate):
    s = better_candidate
    off = load_settings(
        env={},
        overrides={
            "paths.data_dir": s.settings.paths.data_dir,
            "model.base_url": s.settings.model.base_url,
            "model.retries": 0,
            "evaluation.golden_file": s.settings.evaluation.golden_file,
            "knowledge.enabled": False,
        },
    )
    ev = evaluate(s.db, off, s.candidate, suites=["golden"])
    assert len(s.upstream.requests) == 2 * len(GOLDEN)  # each question once per model
    assert not any(_grounded(r["messages"]) for r in s.upstream.requests)
    assert ev.metrics["golden"]["closed_book"] == ev.metrics["golden"]["as_served"]
    assert ev.params["knowledge_seq"] is None


def test_corrections_are_also_asked_in_the_words_users_sent(tmp_path, table_upstream):
    s = make_setup(tmp_path, table_upstream)
    question, answer = "When do my points arrive?", "Points are added on purchase confirmation."
    variants = [
        {"question": question, "key": question_key(question), "votes": 4},
        {"question": "points not showing up yet??", "key": question_key("points not showing up yet"), "votes": 2},
        {"question": "call me at 010-1234-5678 about points", "key": "call me", "votes": 1},  # personal data: left out
    ]
    create_item(s.db, question=question, answer=answer, reviewer="tester", evidence={"variants": variants})
    cases = reworded_correction_cases(s.db, s.settings)
    assert [(c.question, c.reference, c.source["rewording_of"]) for c in cases] == [
        ("points not showing up yet??", answer, question)
    ]
    s.db.close()


def test_the_system_prompt_goes_first_as_in_the_gateway(tmp_path, table_upstream):
    s = make_setup(tmp_path, table_upstream, **{"chat.system_prompt": "You are Haneul Mart's assistant."})
    fill(table_upstream, "starter", GOLDEN)
    fill(table_upstream, "tuned", GOLDEN)
    evaluate(s.db, s.settings, s.candidate, suites=["golden"])
    systems = [r["messages"][0] for r in table_upstream.requests]
    assert {m["role"] for m in systems} == {"system"}
    closed = [m["content"] for m in systems if KNOWLEDGE_HEADER not in m["content"]]
    served = [m["content"] for m in systems if KNOWLEDGE_HEADER in m["content"]]
    assert len(closed) == len(served) == 2 * len(GOLDEN)
    assert set(closed) == {"You are Haneul Mart's assistant."}
    assert all(c.startswith(f"You are Haneul Mart's assistant.\n\n{KNOWLEDGE_HEADER}\n") for c in served)
    s.db.close()


def test_the_judge_scores_each_pair_whichever_side_it_is_shown_on(tmp_path, table_upstream):
    s = make_setup(
        tmp_path,
        table_upstream,
        **{"evaluation.judge_name": "judge", "evaluation.judge_base_url": table_upstream.base_url},
    )
    fill(table_upstream, "starter", GOLDEN + TEST_SPLIT + CORRECTIONS, wrong={q for q, _ in CORRECTIONS})
    fill(table_upstream, "tuned", GOLDEN + TEST_SPLIT + CORRECTIONS)
    ev = evaluate(s.db, s.settings, s.candidate, suites=["test", "corrections", "golden"])
    assert ev.judge["model"] == "judge"
    assert ev.judge["suites"]["corrections"]["closed_book"] == {
        "rows": 2,
        "scored": 2,
        "candidate_mean": 5.0,
        "incumbent_mean": 1.0,
        "wins": 2,
        "ties": 0,
        "losses": 0,
    }
    assert ev.judge["suites"]["corrections"]["as_served"]["wins"] == 2
    assert ev.judge["suites"]["golden"]["as_served"]["ties"] == 4
    judged = [r for r in table_upstream.requests if r["model"] == "judge"]
    assert len(judged) == 16  # 8 questions, each view judged
    # The candidate (the one answering with the reference) is shown as A for one correction and as B for the
    # other (in both views), and every time its score came back as the candidate's: the swap is undone correctly.
    sides = sorted(
        "Sorry, I cannot help with that." in r["messages"][-1]["content"].split("Answer B:")[1]
        for r in judged
        if "Sorry, I cannot" in r["messages"][-1]["content"]
    )
    assert sides == [False, False, True, True]
    assert ev.passed  # the judge never decides the gate
    s.db.close()


def test_failed_answers_score_zero_and_are_counted(tmp_path, table_upstream):
    s = make_setup(tmp_path, table_upstream)
    fill(table_upstream, "starter", GOLDEN)
    fill(table_upstream, "tuned", GOLDEN)
    ev = evaluate(s.db, s.settings, s.candidate, suites=["golden", "corrections"])
    assert ev.metrics["corrections"]["closed_book"]["candidate"]["exact_match"] == 0.0  # both say "I do not know."
    assert ev.passed is False
    assert ev.reasons[0].startswith("corrections (closed book): candidate chrF 0.")


def test_a_candidate_the_server_does_not_serve_is_refused_before_asking_anything(tmp_path, table_upstream):
    s = make_setup(tmp_path, table_upstream)
    fill(table_upstream, "starter", GOLDEN)
    with pytest.raises(Conflict, match="does not serve 'tuned'"):
        evaluate(s.db, s.settings, s.candidate)
    assert table_upstream.requests == []
    with pytest.raises(ValidationFailed, match="against itself"):
        evaluate(s.db, s.settings, s.live)
    s.db.close()
