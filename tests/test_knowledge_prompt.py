"""The context block: one rendering for the gateway, the evaluation and the starter's training data."""

from __future__ import annotations

from config.settings import load_settings
from feedback.knowledge.prompt import Snippet, grounded_messages, render_knowledge

KNOWLEDGE = load_settings(env={}).knowledge
DELIVERY = Snippet("kb_1", "How long does delivery take?", "2-3 business days.", 0.9)
FEE = Snippet("kb_2", "배송비는 얼마인가요?", "3,000원입니다.", 0.4)


def test_entries_are_numbered_best_first_under_the_header():
    assert render_knowledge([DELIVERY, FEE], KNOWLEDGE) == (
        "Knowledge:\n[1] Q: How long does delivery take?\nA: 2-3 business days.\n"
        "[2] Q: 배송비는 얼마인가요?\nA: 3,000원입니다."
    )


def test_nothing_found_says_so_and_closed_book_has_no_block():
    found_nothing = grounded_messages("", [], "hello?", [], KNOWLEDGE)
    assert found_nothing == [
        {"role": "system", "content": "Knowledge:\n(no matching entry)"},
        {"role": "user", "content": "hello?"},
    ]
    assert grounded_messages("", [], "hello?", None, KNOWLEDGE) == [{"role": "user", "content": "hello?"}]


def test_the_block_follows_the_system_prompt_and_precedes_the_history():
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    messages = grounded_messages("Be brief.", history, "How long?", [DELIVERY], KNOWLEDGE)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Be brief.\n\nKnowledge:\n[1] Q: How long does delivery take?")
    # A client's own system message (OpenAI protocol) replaces the configured prompt; the block still follows.
    own = grounded_messages(
        "Be brief.", [{"role": "system", "content": "Be formal."}], "How long?", [DELIVERY], KNOWLEDGE
    )
    assert own[0]["content"].startswith("Be formal.\n\nKnowledge:") and len(own) == 2


def test_the_format_is_configurable():
    custom = load_settings(
        env={}, overrides={"knowledge.header": "Docs", "knowledge.entry_format": "- {question} => {answer}"}
    )
    assert (
        render_knowledge([DELIVERY], custom.knowledge) == "Docs\n- How long does delivery take? => 2-3 business days."
    )
