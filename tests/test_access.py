"""Who may see a conversation or a message (feedback/access.py), on a real database file; the gateway's
routes that ask it (continue, read back, rate) are exercised through HTTP in tests/test_gateway_api.py."""

from __future__ import annotations

import pytest

from config.errors import NotFound
from feedback import apikeys, turns, versions
from feedback.access import check_visible


def _turn(db, api_key_id: str | None) -> turns.Turn:
    live = versions.ensure_live_version(db, name="m", provider="builtin")
    turn = turns.Turn(
        conversation_id=turns.new_conversation_id(),
        question="Where is my parcel?",
        answer="On its way.",
        model_version_id=live.id,
        api_key_id=api_key_id,
    )
    turns.record_turn(db, turn)
    return turn


@pytest.fixture
def tenants(db):
    """Two keys and three conversations: one per key and one started without a key."""
    a, _ = apikeys.create_key(db, "tenant-a")
    b, _ = apikeys.create_key(db, "tenant-b")
    return {"a": (a.id, _turn(db, a.id)), "b": (b.id, _turn(db, b.id)), "keyless": (None, _turn(db, None))}


def _visible(db, key_id, turn) -> dict[str, bool]:
    seen = {}
    for name, ids in {
        "conversation": {"conversation_id": turn.conversation_id},
        "question": {"message_id": turn.user_message_id},
        "answer": {"message_id": turn.assistant_message_id},
    }.items():
        try:
            assert check_visible(db, key_id, **ids) == turn.conversation_id
            seen[name] = True
        except NotFound:
            seen[name] = False
    return seen


def test_a_caller_sees_only_what_its_own_key_started(db, tenants):
    everything = {"conversation": True, "question": True, "answer": True}
    nothing = {"conversation": False, "question": False, "answer": False}
    for owner, (_, turn) in tenants.items():
        for caller, (key_id, _) in tenants.items():
            assert _visible(db, key_id, turn) == (everything if caller == owner else nothing), (caller, owner)


def test_a_foreign_id_answers_exactly_like_an_unknown_one(db, tenants):
    key_a, _ = tenants["a"]
    _, theirs = tenants["b"]
    for field, foreign, unknown in (
        ("conversation_id", theirs.conversation_id, "conv_doesnotexist"),
        ("message_id", theirs.assistant_message_id, "msg_doesnotexist"),
    ):
        answers = []
        for wanted in (foreign, unknown):
            with pytest.raises(NotFound) as caught:
                check_visible(db, key_a, **{field: wanted})
            error = caught.value
            answers.append((error.status, error.code, error.field, error.message.replace(repr(wanted), "<id>")))
        assert answers[0] == answers[1] and answers[0][:3] == (404, "not_found", field)


@pytest.mark.parametrize("ids", [{}, {"conversation_id": "conv_x", "message_id": "msg_x"}])
def test_exactly_one_id_is_asked_about(db, ids):
    with pytest.raises(ValueError, match="exactly one"):
        check_visible(db, None, **ids)


def test_reading_a_conversation_back_asks_the_same_rule(db, tenants):
    key_a, mine = tenants["a"]
    key_b, _ = tenants["b"]
    assert turns.get_conversation(db, mine.conversation_id, api_key_id=key_a)["id"] == mine.conversation_id
    with pytest.raises(NotFound):
        turns.get_conversation(db, mine.conversation_id, api_key_id=key_b)
    assert turns.get_conversation(db, mine.conversation_id, any_key=True)["id"] == mine.conversation_id
    with pytest.raises(NotFound):
        turns.get_conversation(db, "conv_doesnotexist", any_key=True)


def test_conversation_of_another_key_is_not_found(db):  # moved here from tests/test_store.py
    key, _ = apikeys.create_key(db, "tenant-a")
    t = _turn(db, key.id)
    assert turns.get_conversation(db, t.conversation_id, api_key_id=key.id)["id"] == t.conversation_id
    with pytest.raises(NotFound):
        turns.get_conversation(db, t.conversation_id, api_key_id=None)
