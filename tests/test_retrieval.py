"""The knowledge-base retriever: rewordings found, changes followed, scores on one scale, dense fusion.

Behaviour only; speed is measured in bench/retrieval.py. The dense path runs against a real local HTTP
server (pytest-httpserver) that speaks OpenAI's documented ``/v1/embeddings`` wire format.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from werkzeug import Request, Response

from config.errors import UpstreamError
from config.settings import KnowledgeSettings
from feedback.knowledge.analysis import Analyzer, language_of, stem_english
from feedback.knowledge.retrieval import Entry, Hit, RetrievalConfig, Retriever, retriever_from_settings
from feedback.knowledge.synonyms import Synonyms, SynonymsError
from feedback.text import question_key
from modelclient.chat import Target
from modelclient.embeddings import EmbeddingsClient

DATA = Path(__file__).resolve().parent.parent / "data"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


FAQ = _rows("faq.jsonl")
REWORDINGS = _rows("rewordings.jsonl")


def faq_entries() -> list[Entry]:
    return [Entry(f"faq-{i}", (r["messages"][0]["content"],), r["messages"][1]["content"]) for i, r in enumerate(FAQ)]


@pytest.fixture(scope="module")
def faq_retriever() -> Retriever:
    return Retriever(faq_entries())


def top_id(retriever: Retriever, query: str) -> str | None:
    hits = retriever.search(query, k=1)
    return hits[0].entry_id if hits else None


# --- the rewording set -------------------------------------------------------------------------------


def test_rewordings_are_new_wordings_of_faq_rows_in_both_languages():
    assert len(REWORDINGS) >= 150
    taken = {
        question_key(r["messages"][0]["content"])
        for name in ("faq.jsonl", "golden.jsonl", "paraphrases.jsonl")
        for r in _rows(name)
    }
    keys = [question_key(r["messages"][0]["content"]) for r in REWORDINGS]
    assert [k for k in keys if k in taken] == []
    assert len(set(keys)) == len(keys)
    for row in REWORDINGS:
        source = FAQ[row["rewording_of"]]
        assert row["messages"][1]["content"] == source["messages"][1]["content"]
        assert (
            row["lang"] == language_of(row["messages"][0]["content"]) == language_of(source["messages"][0]["content"])
        )
        assert row["split"] in ("dev", "test")
    by_lang = {lang: sum(r["lang"] == lang for r in REWORDINGS) for lang in ("ko", "en")}
    assert min(by_lang.values()) >= 0.4 * len(REWORDINGS)
    test_share = sum(r["split"] == "test" for r in REWORDINGS) / len(REWORDINGS)
    assert 0.25 <= test_share <= 0.4


# holdout3's writer, who never saw the alternates, wrote one of them word for word ("do I have to pay to be a
# member?", row 154): kept as written, and counted in its figures as the hit it is. holdout4's two writers did the
# same twice (its rows 42 and 357 equal a phrasing of the first release's alternates); the later alternates that
# equalled a question of any evaluation set were dropped before it was used (data/README.md).
@pytest.mark.parametrize(
    ("name", "rows", "split", "coincidences"),
    [("holdout2", 100, "holdout2", []), ("holdout3", 184, "holdout3", [154]), ("holdout4", 368, "holdout4", [42, 357])],
)
def test_the_later_held_out_sets_reword_faq_rows_in_their_language(name, rows, split, coincidences):
    holdout = _rows(f"rewordings-{name}.jsonl")
    assert len(holdout) == rows and {r["split"] for r in holdout} == {split}
    for row in holdout:
        source = FAQ[row["rewording_of"]]
        assert row["messages"][1]["content"] == source["messages"][1]["content"]
        assert (
            row["lang"] == language_of(row["messages"][0]["content"]) == language_of(source["messages"][0]["content"])
        )
    # Nothing the knowledge base is seeded with: the FAQ's alternate questions are not among them.
    seeded = {question_key(q) for r in _rows("faq-alternates.jsonl") for q in r["questions"]}
    found = [n for n, r in enumerate(holdout) if question_key(r["messages"][0]["content"]) in seeded]
    assert found == coincidences


# --- finding entries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "line"),
    [
        ("택배비 얼마에요", 42),  # synonym (택배비 = 배송비), no spacing, casual ending
        ("비번 까먹었어요", 126),  # slang for 비밀번호 and 잊어버리다
        ("후기 작성하면 적립금 있나요", 162),  # 후기 = 리뷰, 적립금 = 포인트
        ("회원가입 안하고 구매 가능?", 15),  # a phrase for 비회원
        ("shipping cost?", 28),
        ("cant remember my pasword, help", 112),  # typo and dropped apostrophe
        ("can you send to the US?", 34),
        ("the package came broken", 60),  # broken = damaged, package = item
    ],
)
def test_customer_rewordings_find_their_entry(faq_retriever, query, line):
    assert top_id(faq_retriever, query) == f"faq-{line}"


def test_most_dev_rewordings_rank_their_entry_in_the_top_three(faq_retriever):
    # A quality floor below the measured figures (docs/benchmarks.md): a broken analyzer or index falls far below it.
    dev = [r for r in REWORDINGS if r["split"] == "dev"]
    for lang in ("ko", "en"):
        rows = [r for r in dev if r["lang"] == lang]
        found = sum(
            f"faq-{r['rewording_of']}" in [h.entry_id for h in faq_retriever.search(r["messages"][0]["content"], k=3)]
            for r in rows
        )
        assert found / len(rows) >= 0.75, lang


def test_exact_question_scores_one_and_hits_come_best_first(faq_retriever):
    hits = faq_retriever.search("배송비는 얼마인가요?", k=5)
    assert hits[0] == Hit("faq-42", "배송비는 얼마인가요?", pytest.approx(1.0, abs=1e-3))
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert len({h.entry_id for h in hits}) == len(hits)


def test_min_score_drops_weak_hits_and_unrelated_questions_find_nothing(faq_retriever):
    all_hits = faq_retriever.search("how long is shipping", k=10)
    assert len(all_hits) == 10
    threshold = all_hits[4].score
    kept = faq_retriever.search("how long is shipping", k=10, min_score=threshold)
    assert [h.entry_id for h in kept] == [h.entry_id for h in all_hits if h.score >= threshold]
    assert faq_retriever.search("quantum chromodynamics lecture notes", k=3, min_score=0.15) == []
    assert faq_retriever.search("   ", k=3) == []
    assert faq_retriever.search("배송비", k=0) == []


def test_score_does_not_depend_on_the_size_of_the_base():
    small = Retriever(faq_entries()[:60])
    large = Retriever(faq_entries())
    exact_small, exact_large = (
        small.search("배송은 보통 며칠 걸리나요?", k=1),
        large.search("배송은 보통 며칠 걸리나요?", k=1),
    )
    assert exact_small[0].score == exact_large[0].score == pytest.approx(1.0, abs=1e-3)


def test_query_language_is_preferred_for_mixed_words(faq_retriever):
    # "VIP" alone is in Korean and English entries; a Korean question gets the Korean one.
    assert top_id(faq_retriever, "VIP 혜택이 뭐예요") == "faq-170"
    assert top_id(faq_retriever, "VIP perks") == "faq-153"


def test_an_entrys_own_question_ranks_it_first_even_among_many_phrasings():
    # With the bundled alternates, "can I cancel once the order has been dispatched" (an alternate of the
    # shipped-orders entry) and its answer score this question as high as its own entry's question does.
    alternates = {r["alternates_of"]: r["questions"] for r in _rows("faq-alternates.jsonl")}
    retriever = Retriever(
        Entry(f"faq-{i}", (r["messages"][0]["content"], *alternates[i]), r["messages"][1]["content"])
        for i, r in enumerate(FAQ)
    )
    for query in ("I want to cancel my order before it ships.", "i want to CANCEL my order before it ships"):
        first, second = retriever.search(query, k=2)
        assert (first.entry_id, first.score) == ("faq-3", 1.0) and second.score < 1.0
    # Once the entry loses that question, it is no longer an exact match.
    entry = retriever.get("faq-3")
    retriever.upsert(Entry("faq-3", entry.questions[1:], entry.answer, entry.lang))
    assert retriever.search("I want to cancel my order before it ships.", k=1)[0].score < 1.0


def test_an_entrys_questions_together_find_words_spread_over_two_of_them():
    entry = Entry("kb-jeju", ("how long does delivery take", "do you ship to jeju island"), "2-3 days, Jeju too.")
    other = Entry("kb-other", ("refund to my card",), "3-5 days.")
    both = "how long does delivery take to jeju island"
    alone = RetrievalConfig(answer_weight=0.0, pooled_weight=0.0)
    pooled = RetrievalConfig(answer_weight=0.0, pooled_weight=1.0)
    best_one = Retriever([entry, other], config=alone).search(both, k=1)[0]
    together = Retriever([entry, other], config=pooled).search(both, k=1)[0]
    assert best_one.entry_id == together.entry_id == "kb-jeju"
    assert best_one.score < 0.85 < together.score  # each phrasing holds half the words; both hold them all


# --- following changes -------------------------------------------------------------------------------


def test_a_new_entry_is_found_after_upsert_and_gone_after_remove(faq_retriever):
    retriever = Retriever(faq_entries())
    question = "Do you sell gift cards?"
    assert top_id(retriever, "gift card for sale?") != "kb-gift-cards"
    retriever.upsert(
        Entry("kb-gift-cards", (question,), "Yes, gift cards of 10,000 to 100,000 won are sold in the app.", "en")
    )
    assert len(retriever) == len(FAQ) + 1
    hits = retriever.search("gift card for sale?", k=3)
    assert hits[0].entry_id == "kb-gift-cards" and hits[0].question == question
    assert retriever.remove("kb-gift-cards") is True
    assert "kb-gift-cards" not in [h.entry_id for h in retriever.search("gift card for sale?", k=10)]
    assert retriever.remove("kb-gift-cards") is False
    assert len(retriever) == len(FAQ)


def test_a_phrasing_added_to_an_entry_is_found_and_shown_as_the_match():
    retriever = Retriever(faq_entries())
    query = "입금을 깜빡했더니 주문이 없어졌어요"
    entry = retriever.get("faq-21")
    retriever.upsert(
        Entry(entry.entry_id, entry.questions + ("입금 안 해서 주문이 사라졌어요",), entry.answer, entry.lang)
    )
    hit = retriever.search(query, k=1)[0]
    assert hit.entry_id == "faq-21"
    assert hit.question == "입금 안 해서 주문이 사라졌어요"
    # The entry is indexed once, not twice: its other question still finds it, and no duplicate hit appears.
    hits = retriever.search("제 주문이 저절로 취소되었어요. 왜 그런가요?", k=5)
    assert hits[0].question == "제 주문이 저절로 취소되었어요. 왜 그런가요?"
    assert [h.entry_id for h in hits].count("faq-21") == 1


def test_a_corrected_answer_replaces_the_old_one():
    retriever = Retriever(faq_entries())
    retriever.upsert(Entry("faq-28", ("How much is the shipping fee?",), "Shipping is now free on every order.", "en"))
    assert retriever.get("faq-28").answer == "Shipping is now free on every order."
    # The answer is indexed: its new words find it, the old answer's distinctive words no longer help.
    assert top_id(retriever, "is shipping free on every order") == "faq-28"


def test_many_changes_keep_the_index_exact():
    # Enough removals to trigger compaction of the postings and norm refreshes along the way.
    entries = [Entry(f"n-{i}", (f"question number {i} about topic{i % 50}",), f"answer {i}", "en") for i in range(1500)]
    retriever = Retriever(entries)
    for entry in entries[:1400]:
        retriever.remove(entry.entry_id)
    retriever.upsert(Entry("n-7", ("where is the topic7 shop",), "answer seven", "en"))
    assert len(retriever) == 101
    assert top_id(retriever, "where is the topic7 shop") == "n-7"
    hit = retriever.search("question number 1450 about topic0", k=1)[0]
    # Norms are refreshed every 5 % of change, so an exact match may have drifted by about a percent.
    assert hit == Hit("n-1450", "question number 1450 about topic0", pytest.approx(1.0, abs=0.02))
    assert all(
        h.entry_id in {"n-7"} | {f"n-{i}" for i in range(1400, 1500)} for h in retriever.search("question topic", k=50)
    )


def test_an_entry_edited_over_and_over_stays_findable_through_compactions():
    # Each replacement of a three-question entry leaves three dead question slots; past 1,000 dead (more than the
    # live ones) the postings are compacted and the slots renumbered, in the middle of removing an entry's slots.
    questions = ("how do I return an item", "send it back", "refund please")
    retriever = Retriever([Entry("a", questions, "return within 30 days"), Entry("b", ("shipping cost",), "3,000")])
    for i in range(600):
        retriever.upsert(Entry("a", questions, f"return within 30 days (edit {i})"))
    assert len(retriever) == 2
    assert retriever.search("send it back", k=2)[0] == Hit("a", "send it back", 1.0)
    assert top_id(retriever, "shipping cost") == "b"
    assert retriever.search("edit 599", k=1)[0].entry_id == "a"
    retriever.refresh_norms()
    assert retriever.search("shipping cost", k=1)[0].score == pytest.approx(1.0)


def test_bad_entries_and_settings_are_refused():
    with pytest.raises(ValueError, match="question"):
        Entry("x", (), "answer")
    with pytest.raises(ValueError, match="entry_id"):
        Entry("", ("q",), "answer")
    with pytest.raises(ValueError, match="answer_weight"):
        RetrievalConfig(answer_weight=1.5)
    assert Entry("x", "한 문장 질문", "답").questions == ("한 문장 질문",)
    assert Entry("x", ("한 문장 질문",), "답").lang == "ko"


# --- text analysis -----------------------------------------------------------------------------------


def test_synonyms_rewrite_korean_inside_words_and_english_phrases():
    synonyms = Synonyms.parse("배송비, 택배비\n이메일, 메일\nshipping fee, postage, delivery fee\nforgot => forget")
    assert synonyms.rewrite(["택배비가", "얼마"]) == ["배송비가", "얼마"]
    assert synonyms.rewrite(["이메일", "메일로"]) == ["이메일", "이메일로"]  # the canonical form is left alone
    assert synonyms.rewrite(["what", "delivery", "fee"]) == ["what", "shipping", "fee"]
    assert synonyms.rewrite(["i", "forgot"]) == ["i", "forget"]


def test_a_bad_synonyms_line_names_its_line(tmp_path):
    path = tmp_path / "syn.txt"
    path.write_text("# ok\n배송비, 택배비\nlonely\n", encoding="utf-8")
    with pytest.raises(SynonymsError, match=r"syn\.txt:3"):
        Synonyms.load(path)


def test_the_bundled_synonyms_load_and_change_rankings():
    analyzer = Analyzer(Synonyms.load())
    assert analyzer.terms("적립금") == analyzer.terms("포인트")
    plain = Retriever(faq_entries(), analyzer=Analyzer())
    assert top_id(plain, "후기 작성하면 적립금 있나요") != "faq-162"


def test_english_stemming_folds_inflections():
    assert {stem_english(w) for w in ("ship", "shipped", "shipping", "ships")} == {"ship"}
    assert {stem_english(w) for w in ("change", "changed", "changes")} == {"chang"}
    assert stem_english("deliveries") == "delivery"


def test_retriever_from_settings_uses_the_configured_synonyms(tmp_path):
    path = tmp_path / "syn.txt"
    path.write_text("zorp, shipping fee\n", encoding="utf-8")
    retriever = retriever_from_settings(KnowledgeSettings(synonyms=str(path)), faq_entries())
    assert top_id(retriever, "how much is the zorp") == "faq-28"


# --- dense retrieval through a real /v1/embeddings server ----------------------------------------------

# The fake embeddings model: each text is a vector over three "meanings"; words the lexical index cannot
# connect (no shared characters) share a meaning here, as a real embeddings model would make them.
MEANINGS = {
    "refund": ("refund", "돈", "money", "환불"),
    "gift": ("gift", "present", "선물"),
    "hours": ("hours", "open", "시간"),
}


def meaning_vector(text: str) -> list[float]:
    text = text.lower()
    return [float(sum(text.count(word) for word in words)) + 0.01 for words in MEANINGS.values()]


def embeddings_handler(calls: list):
    def handler(request: Request) -> Response:
        body = json.loads(request.data)
        calls.append(body)
        if request.headers.get("Authorization") != "Bearer sk-test":
            return Response(json.dumps({"error": {"message": "bad key", "type": "invalid_request_error"}}), 401)
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": meaning_vector(t)} for i, t in enumerate(texts)]
        payload = {
            "object": "list",
            "data": list(reversed(data)),  # out of order on purpose: the client must sort by index
            "model": body["model"],
            "usage": {"prompt_tokens": 3 * len(texts), "total_tokens": 3 * len(texts)},
        }
        return Response(json.dumps(payload), 200, content_type="application/json")

    return handler


@pytest.fixture
def embeddings_server(httpserver):
    calls: list = []
    httpserver.expect_request("/v1/embeddings", method="POST").respond_with_handler(embeddings_handler(calls))
    client = EmbeddingsClient(
        Target("embed-test", httpserver.url_for("/v1"), "sk-test"), batch_size=2, retries=1, backoff_s=0
    )
    return client, calls


def test_embeddings_client_speaks_openai_wire_format_in_batches(embeddings_server):
    client, calls = embeddings_server
    texts = ["refund please", "a gift", "open hours", "nothing", "환불"]
    vectors = client(texts)
    assert vectors == [meaning_vector(t) for t in texts]
    assert [len(c["input"]) for c in calls] == [2, 2, 1]
    assert all(c["model"] == "embed-test" and c["encoding_format"] == "float" for c in calls)


def test_embeddings_client_errors_are_upstream_errors(httpserver):
    httpserver.expect_request("/v1/embeddings").respond_with_json({"error": {"message": "no such model"}}, status=404)
    client = EmbeddingsClient(Target("missing", httpserver.url_for("/v1")), retries=2, backoff_s=0)
    with pytest.raises(UpstreamError, match="404: no such model"):
        client(["hello"])
    assert len(httpserver.log) == 1  # a 4xx is not retried
    httpserver.clear()
    httpserver.expect_request("/v1/embeddings").respond_with_json({"error": {"message": "busy"}}, status=503)
    with pytest.raises(UpstreamError, match="503"):
        client(["hello"])
    assert len(httpserver.log) == 3  # 5xx: the first try and two retries


def test_dense_fusion_finds_what_lexical_cannot(embeddings_server):
    client, calls = embeddings_server
    entries = [
        Entry("refunds", ("When is my refund paid?",), "Within 3 business days.", "en"),
        Entry("gifts", ("Can I send a gift?",), "Yes, at checkout.", "en"),
        Entry("hours", ("When are you open?",), "Weekdays 9 to 6.", "en"),
    ]
    # No synonyms: the bundled list would connect "money back" to "refund" lexically.
    lexical = Retriever(entries, analyzer=Analyzer())
    fused = Retriever(entries, analyzer=Analyzer(), embed=client)
    query = "I want my money back"  # shares no word with the refund entry
    assert lexical.search(query, k=1) == [] or lexical.search(query, k=1)[0].entry_id != "refunds"
    hit = fused.search(query, k=1)[0]
    assert hit.entry_id == "refunds" and hit.question == "When is my refund paid?"
    assert 0 < hit.score <= 1
    # An added phrasing gets its own vector at upsert, and is the one shown when it matches best.
    fused.upsert(Entry("gifts", ("Can I send a gift?", "present for a friend"), "Yes, at checkout.", "en"))
    assert fused.search("present for a friend", k=1)[0].question == "present for a friend"
    assert fused.remove("refunds")
    assert "refunds" not in [h.entry_id for h in fused.search(query, k=3)]


def test_dense_fusion_falls_back_to_lexical_when_the_endpoint_fails(httpserver):
    calls: list = []
    httpserver.expect_request("/v1/embeddings").respond_with_handler(embeddings_handler(calls))
    good = EmbeddingsClient(Target("embed-test", httpserver.url_for("/v1"), "sk-test"), retries=0)
    retriever = Retriever(faq_entries()[:40], embed=good)
    httpserver.clear()
    httpserver.expect_request("/v1/embeddings").respond_with_json({"error": {"message": "down"}}, status=500)
    down = Retriever(faq_entries()[:40])
    retriever.embed = EmbeddingsClient(Target("embed-test", httpserver.url_for("/v1"), "sk-test"), retries=0)
    query = "how long does standard delivery take"
    assert retriever.search(query, k=3) == down.search(query, k=3)
    # A change while the endpoint is down is still indexed (lexically).
    retriever.upsert(Entry("new", ("Do you sell gift cards?",), "Yes.", "en"))
    assert retriever.search("sell gift cards", k=1)[0].entry_id == "new"


def test_an_embeddings_model_of_another_dimension_degrades_to_lexical():
    dims = {"n": 3}
    retriever = Retriever(faq_entries()[:30], embed=lambda texts: [[1.0] * dims["n"] for _ in texts])
    query = "how long does standard delivery take"
    before = retriever.search(query, k=1)
    dims["n"] = 4  # the endpoint was switched to another model
    assert retriever.search(query, k=1)[0].entry_id == before[0].entry_id == "faq-27"
    retriever.upsert(Entry("new", ("Do you sell gift cards?",), "Yes.", "en"))
    assert retriever.search("sell gift cards", k=1)[0].entry_id == "new"
    assert len(retriever) == 31
