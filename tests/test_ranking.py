"""Worst-answered ranking: Wilson scores worked by hand, grouping, windows, versions, evidence."""

from __future__ import annotations

import sqlite3

import pytest
import sqlite_utils

from feedback import ratings, turns, versions
from feedback.db import new_id, open_db, write_transaction
from feedback.migrations import MIGRATIONS
from feedback.ranking import RankingOptions, cluster_keys, rank_worst, wilson_lower_bound
from feedback.text import question_key, similarity

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

WEEK = ("2026-11-15T15:00:00.000Z", "2026-11-22T15:00:00.000Z")  # 2026-W47 in Asia/Seoul
INSIDE = "2026-11-18T03:00:00.000Z"
BEFORE = "2026-11-10T03:00:00.000Z"


def make_version(db, name: str, status: str = "retired") -> str:
    version_id = new_id("mv")
    with write_transaction(db):
        db.execute(
            """INSERT INTO model_versions (id, name, provider, base_model, status, created_at)
               VALUES (?, ?, 'builtin', 'starter', ?, '2026-01-01T00:00:00.000Z')""",
            [version_id, name, status],
        )
    return version_id


def ask(
    db,
    version_id,
    question,
    *,
    at=INSIDE,
    answer="an answer",
    down=0,
    up=0,
    reason="wrong",
    comment=None,
    correction=None,
) -> str:
    """Record one answered question through record_turn, dated ``at``, and its votes through record_rating."""
    turn = turns.Turn(
        conversation_id=turns.new_conversation_id(),
        question=question,
        answer=answer,
        model_version_id=version_id,
        latency_ms=100.0,
    )
    turns.record_turn(db, turn)
    for i in range(down + up):
        is_down = i < down
        ratings.record_rating(
            db,
            message_id=turn.assistant_message_id,
            voter_ref=f"voter-{i}",
            rating="down" if is_down else "up",
            reason=reason if is_down else None,
            comment=comment if is_down else None,
            correction=correction if is_down else None,
        )
    with write_transaction(db):
        # record_turn stamps "now"; tests need answers (and their votes) in a known week.
        db.execute("UPDATE messages SET created_at = ? WHERE conversation_id = ?", [at, turn.conversation_id])
        db.execute(
            "UPDATE feedback SET created_at = ?, updated_at = ?, answered_at = ? WHERE message_id = ?",
            [at.replace("03:00", "03:05"), at.replace("03:00", "03:05"), at, turn.assistant_message_id],
        )
    return turn.assistant_message_id


def ask_many(db, version_id, question, *, answers, down, **kwargs) -> None:
    """``answers`` answers to ``question``, each rated once; ``down`` of them thumbs-down."""
    for i in range(answers):
        ask(db, version_id, question, down=1 if i < down else 0, up=0 if i < down else 1, **kwargs)


def test_wilson_lower_bound_matches_hand_computation():
    # z = 1.96, z² = 3.8416.
    # 2 of 2: p = 1 → (1 + 3.8416/4 − 1.96·√(3.8416/16)) / (1 + 3.8416/2) = (1.9604 − 0.9604) / 2.9208 = 0.34238
    assert wilson_lower_bound(2, 2) == pytest.approx(0.34238, abs=1e-4)
    # 40 of 100: p = 0.4 → (0.4 + 0.019208 − 1.96·√(0.0024 + 0.00009604)) / 1.038416
    #          = (0.419208 − 0.097923) / 1.038416 = 0.30940
    assert wilson_lower_bound(40, 100) == pytest.approx(0.30940, abs=1e-4)
    assert wilson_lower_bound(0, 0) == 0.0
    assert wilson_lower_bound(0, 10) == 0.0
    # At 99 % (z = 2.5758) the small sample is trusted even less: 2/2 → 1/(1 + 6.6349/2) = 0.23163.
    z99 = RankingOptions(confidence=0.99).z
    assert wilson_lower_bound(2, 2, z99) == pytest.approx(0.23163, abs=1e-4)
    assert wilson_lower_bound(40, 100, z99) > wilson_lower_bound(2, 2, z99)


def test_forty_of_a_hundred_outranks_two_angry_votes(db):
    live = make_version(db, "live", "live")
    ask_many(db, live, "How much is the shipping fee?", answers=100, down=40)
    ask(db, live, "Do you deliver on Sundays?", down=2)
    ranking = rank_worst(db, model_version_id=live, since=WEEK[0], until=WEEK[1])
    assert [g.question for g in ranking.groups] == ["How much is the shipping fee?"]
    top = ranking.groups[0]
    assert (top.votes, top.down, top.asked) == (100, 40, 100)
    assert top.score == pytest.approx(0.30940, abs=1e-4)
    assert ranking.rated_questions == 2 and ranking.candidate_groups == 1


def test_minimum_votes_keeps_small_samples_out(db):
    live = make_version(db, "live", "live")
    ask(db, live, "Can I pay with KakaoPay?", down=4)  # 4 votes, all down
    ask_many(db, live, "How long does delivery take?", answers=10, down=3)
    ranked = rank_worst(db, model_version_id=live, since=WEEK[0], until=WEEK[1], options=RankingOptions(min_votes=5))
    assert [g.question for g in ranked.groups] == ["How long does delivery take?"]
    ranked = rank_worst(db, model_version_id=live, since=WEEK[0], until=WEEK[1], options=RankingOptions(min_votes=4))
    # 4 of 4: (1 + 0.4802 − 1.96·√(3.8416/64)) / (1 + 0.9604) = (1.4802 − 0.4802) / 1.9604 = 0.51010
    # 3 of 10: (0.3 + 0.19208 − 1.96·√(0.021 + 0.009604)) / 1.38416 = (0.49208 − 0.34290) / 1.38416 = 0.10778
    assert [g.question for g in ranked.groups] == ["Can I pay with KakaoPay?", "How long does delivery take?"]
    assert ranked.groups[0].score == pytest.approx(0.51010, abs=1e-4)
    assert ranked.groups[1].score == pytest.approx(0.10778, abs=1e-4)


def test_ties_go_to_the_question_asked_more_often(db):
    live = make_version(db, "live", "live")
    ask_many(db, live, "Is there a welcome coupon?", answers=5, down=5)
    ask_many(db, live, "Do points expire?", answers=5, down=5)
    for _ in range(3):
        ask(db, live, "Do points expire?")  # asked, not rated
    ranking = rank_worst(db, model_version_id=live, since=WEEK[0], until=WEEK[1])
    assert [(g.question, g.asked) for g in ranking.groups] == [
        ("Do points expire?", 8),
        ("Is there a welcome coupon?", 5),
    ]
    assert ranking.groups[0].score == ranking.groups[1].score


def test_korean_paraphrases_are_grouped_and_so_are_english_ones(db):
    live = make_version(db, "live", "live")
    # Korean: a different ending (인가요 / 예요) and different spacing; similarity 0.50 ≥ 0.45.
    ask_many(db, live, "배송비는 얼마인가요?", answers=3, down=3)
    ask_many(db, live, "배송비는 얼마예요?", answers=3, down=2)
    # English: case, punctuation and a split word; similarity 0.83.
    ask_many(db, live, "Can I pay with KakaoPay?", answers=3, down=3)
    ask_many(db, live, "can i pay with kakao pay", answers=3, down=1)
    # Different questions that share words stay apart (0.38).
    ask_many(db, live, "What are your customer service hours?", answers=5, down=1)
    ask_many(db, live, "What number do I call for customer service?", answers=5, down=1)
    ranking = rank_worst(db, model_version_id=live, since=WEEK[0], until=WEEK[1])
    groups = {frozenset(g.keys): (g.votes, g.down) for g in ranking.groups}
    assert groups[frozenset({question_key("배송비는 얼마인가요?"), question_key("배송비는 얼마예요?")})] == (6, 5)
    assert groups[frozenset({question_key("Can I pay with KakaoPay?"), question_key("can i pay with kakao pay")})] == (
        6,
        4,
    )
    assert groups[frozenset({question_key("What are your customer service hours?")})] == (5, 1)
    assert len(groups) == 4


def test_questions_that_differ_only_in_numbers_are_one_question(db):
    live = make_version(db, "live", "live")
    for order in (48213, 1002, 77):
        ask_many(db, live, f"Where is my order {order}?", answers=2, down=2)
    ranking = rank_worst(db, model_version_id=live, since=WEEK[0], until=WEEK[1])
    assert len(ranking.groups) == 1 and ranking.groups[0].votes == 6


def test_answers_of_an_older_version_are_not_charged_to_the_live_one(db):
    old, live = make_version(db, "old"), make_version(db, "new", "live")
    ask_many(db, old, "How do I reset my password?", answers=10, down=10, answer="old wrong answer")
    ask_many(db, live, "How do I reset my password?", answers=10, down=1, answer="right answer")
    ranking = rank_worst(db, model_version_id=live, since=WEEK[0], until=WEEK[1])
    (group,) = ranking.groups
    assert (group.votes, group.down, group.asked) == (10, 1, 10)
    assert [a["answer"] for a in group.evidence.answers] == ["right answer"]
    old_ranking = rank_worst(db, model_version_id=old, since=WEEK[0], until=WEEK[1])
    assert old_ranking.groups[0].down == 10


def test_window_is_by_the_answers_time(db):
    live = make_version(db, "live", "live")
    ask_many(db, live, "Old question", answers=6, down=6, at=BEFORE)
    ask_many(db, live, "New question", answers=6, down=3)
    ranking = rank_worst(db, model_version_id=live, since=WEEK[0], until=WEEK[1])
    assert [g.question for g in ranking.groups] == ["New question"]
    assert ranking.distinct_questions == 1


def test_evidence_carries_answers_comments_reasons_and_corrections(db):
    live = make_version(db, "live", "live")
    ids = [
        ask(
            db,
            live,
            "배송비는 얼마인가요?",
            answer="배송비는 2,500원입니다.",
            down=1,
            reason="outdated",
            comment="홈페이지랑 금액이 달라요.",
            correction="배송비는 3,000원입니다.",
        )
        for _ in range(4)
    ]
    ask(db, live, "배송비는 얼마예요?", answer="배송비는 3,000원입니다.", up=2)
    ask(db, live, "배송비는 얼마예요", answer="배송비는 2,500원입니다.", down=1, reason=None)
    (group,) = rank_worst(db, model_version_id=live, since=WEEK[0], until=WEEK[1]).groups
    ev = group.evidence
    assert group.question == "배송비는 얼마인가요?"  # the most voted phrasing of the leading key
    assert ev.answers[0] == {"answer": "배송비는 2,500원입니다.", "up": 0, "down": 5}
    assert ev.answers[1] == {"answer": "배송비는 3,000원입니다.", "up": 2, "down": 0}
    assert ev.reasons == {"outdated": 4, "no reason given": 1}
    assert ev.corrections == [{"correction": "배송비는 3,000원입니다.", "count": 4}]
    assert [c["comment"] for c in ev.comments] == ["홈페이지랑 금액이 달라요."]  # repeated comments shown once
    assert set(ids) <= set(ev.message_ids) and len(ev.message_ids) == 5
    assert [v["key"] for v in ev.variants] == [question_key("배송비는 얼마인가요?"), question_key("배송비는 얼마예요?")]


def test_question_key_normalizes_what_users_vary():
    assert question_key("  ＨＯＷ much is   the Shipping-fee?? ") == "how much is the shipping fee"
    assert question_key("배송비는 3,000원인가요?!") == "배송비는 3000원인가요"
    assert question_key("ﾃｽﾄ") == "テスト"  # NFKC: half-width katakana
    assert question_key("") == ""
    assert similarity(question_key("비회원도 주문할 수 있나요?"), question_key("비회원도 주문 할 수 있나요")) == 1.0


def test_leaders_do_not_chain():
    # b is close to a (0.74) and to c (0.51), but c is not close to a (0.41): with a leading,
    # b joins a and c stays apart; single-linkage would have chained c in through b.
    a, b, c = "how do i change my delivery address", "how do i change my address", "how do i change my password"
    assert similarity(a, b) > 0.7 and 0.45 < similarity(b, c) < similarity(a, b) and similarity(a, c) < 0.45
    assert cluster_keys([a, b, c], 0.45) == {a: [a, b], c: [c]}
    assert cluster_keys([a, b], 1.0) == {a: [a], b: [b]}


def test_record_turn_stores_the_key_and_the_migration_backfills_old_rows(tmp_path):
    path = tmp_path / "old.db"
    raw = sqlite_utils.Database(sqlite3.connect(path))
    MIGRATIONS.apply(raw, stop_before="m002_question_keys")
    raw.execute(
        "INSERT INTO model_versions (id, name, provider, base_model, status, created_at) "
        "VALUES ('mv1', 'm', 'builtin', 'm', 'live', 't')"
    )
    raw.execute("INSERT INTO conversations (id, created_at) VALUES ('c1', 't')")
    raw.execute(
        "INSERT INTO messages (id, conversation_id, seq, role, content, created_at) "
        "VALUES ('u1', 'c1', 1, 'user', 'Where is MY order??', 't')"
    )
    raw.execute(
        "INSERT INTO messages (id, conversation_id, seq, role, content, model_version_id, created_at) "
        "VALUES ('a1', 'c1', 2, 'assistant', 'here', 'mv1', 't')"
    )
    raw.execute(
        "INSERT INTO feedback (id, message_id, voter_ref, rating, created_at, updated_at) "
        "VALUES ('f1', 'a1', 'v', -1, 't2', 't2')"
    )
    raw.conn.commit()
    raw.close()
    db = open_db(path)
    assert db.execute("SELECT question_key FROM messages WHERE id = 'a1'").fetchone()[0] == "where is my order"
    assert db.execute("SELECT question_key FROM messages WHERE id = 'u1'").fetchone()[0] is None
    copied = db.execute("SELECT model_version_id, answered_at, question_key FROM feedback WHERE id = 'f1'").fetchone()
    assert copied == ("mv1", "t", "where is my order")
    live = versions.live_version(db)
    turn = turns.Turn(conversation_id="c1", question="Ｗhere is my order?", answer="x", model_version_id=live.id)
    turns.record_turn(db, turn)
    key = db.execute("SELECT question_key FROM messages WHERE id = ?", [turn.assistant_message_id]).fetchone()[0]
    assert key == "where is my order"
    ratings.record_rating(db, message_id=turn.assistant_message_id, voter_ref="v", rating="up")
    copied = db.execute(
        "SELECT model_version_id, answered_at, question_key FROM feedback WHERE message_id = ?",
        [turn.assistant_message_id],
    ).fetchone()
    assert copied == (
        live.id,
        db.execute("SELECT created_at FROM messages WHERE id = ?", [turn.assistant_message_id]).fetchone()[0],
        "where is my order",
    )


def test_rows_without_a_key_are_keyed_from_their_question(db):
    live = make_version(db, "live", "live")
    ask_many(db, live, "Do you ship abroad?", answers=3, down=3)
    ask_many(db, live, "do you ship abroad", answers=3, down=2)
    with write_transaction(db):
        # As a bulk import that bypassed record_turn would leave them (the vote copies the NULL).
        db.execute("UPDATE messages SET question_key = NULL WHERE content = 'an answer' AND rowid % 2 = 0")
        db.execute(
            "UPDATE feedback SET question_key = NULL WHERE message_id IN "
            "(SELECT id FROM messages WHERE role = 'assistant' AND question_key IS NULL)"
        )
    (group,) = rank_worst(db, model_version_id=live, since=WEEK[0], until=WEEK[1]).groups
    assert (group.votes, group.down, group.asked) == (6, 5, 6)


def test_ranking_counts_read_indexes_only(tmp_path):
    db = open_db(tmp_path / "plan.db")  # SQLite's query planner is the subject: PostgreSQL's plans differ in kind
    for sql, index in (
        (
            """SELECT question_key, COUNT(*) FROM messages WHERE model_version_id = ? AND created_at >= ?
            AND created_at < ? AND error IS NULL GROUP BY question_key""",
            "messages_version_time_question",
        ),
        (
            """SELECT question_key, COUNT(*), SUM(CAST((rating < 0) AS INTEGER)) FROM feedback
            WHERE model_version_id = ? AND answered_at >= ? AND answered_at < ? GROUP BY question_key""",
            "feedback_version_answered",
        ),
    ):
        plan = " ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, ["v", *WEEK]).fetchall())
        assert f"COVERING INDEX {index}" in plan
