"""``ground()`` counts a prompt that fits whole once, and fits every other prompt exactly as it did before.

The reference is the fitting as it was before the one-count shortcut: count the prompt without history, drop
entries while it does not fit, then bisect the history, always counting the whole prompt. Every window from
"the question alone does not fit" to "everything fits" is compared, with and without a client's system message.
"""

from __future__ import annotations

import pytest

from config.errors import PayloadTooLarge
from config.settings import load_settings
from feedback.knowledge.budget import Budget, EstimateCounter
from feedback.knowledge.grounding import ground
from feedback.knowledge.prompt import Snippet, grounded_messages

SNIPPETS = [
    Snippet("faq-1", "How much is the shipping fee?", "Shipping is 3,000 won, free from 50,000 won.", 0.8, 2),
    Snippet("faq-2", "배송은 며칠 걸리나요?", "일반 배송은 2~3영업일 걸립니다.", 0.5, 1),
    Snippet("faq-3", "Can I change my address?", "Yes, until the order ships: My page > Orders.", 0.3, 4),
]
HISTORY = [
    {"role": "user" if i % 2 == 0 else "assistant", "content": f"earlier message {i} " + "말" * (i * 3)}
    for i in range(9)
]


class Counting(EstimateCounter):
    """The estimate, counting how many times a prompt was counted."""

    def __init__(self):
        self.calls = 0

    def count_messages(self, messages):
        self.calls += 1
        return super().count_messages(messages)


class Fixed:
    def search(self, question, k=None, min_score=None):
        return list(SNIPPETS)


def reference_fit(settings, question, history, budget):
    """(messages, sources, tokens) as ground() fitted them before the shortcut; PayloadTooLarge as it did."""
    snippets = list(SNIPPETS)
    systems = [m for m in history if m.get("role") == "system"]
    earlier = [m for m in history if m.get("role") != "system"]

    def build(kept_snippets, kept_turns):
        turns = earlier[len(earlier) - kept_turns :] if kept_turns else []
        while turns and turns[0].get("role") == "assistant":
            turns = turns[1:]
        return grounded_messages(
            settings.chat.system_prompt, systems + turns, question, kept_snippets, settings.knowledge
        )

    tokens = budget.count(build(snippets, 0))
    while tokens > budget.limit and snippets:
        snippets = snippets[:-1]
        tokens = budget.count(build(snippets, 0))
    if tokens > budget.limit:
        raise PayloadTooLarge("does not fit", field="message")
    low, high = 0, len(earlier)
    while low < high:
        middle = (low + high + 1) // 2
        count = budget.count(build(snippets, middle))
        if count <= budget.limit:
            low, tokens = middle, count
        else:
            high = middle - 1
    return build(snippets, low), snippets, tokens


@pytest.mark.parametrize("history", [[], HISTORY, [{"role": "system", "content": "Be brief."}] + HISTORY])
def test_every_window_fits_the_prompt_as_before(history):
    settings = load_settings(env={})
    question = "택배비 얼마에요?"
    whole = EstimateCounter().count_messages(
        grounded_messages(settings.chat.system_prompt, history, question, SNIPPETS, settings.knowledge)
    )
    outcomes = set()
    for limit in range(1, whole + 3):
        budget = Budget(window=limit + 50, reserve=50, counter=EstimateCounter())
        try:
            expected = reference_fit(settings, question, history, budget)
        except PayloadTooLarge:
            with pytest.raises(PayloadTooLarge):
                ground(Fixed(), settings, question, history, budget=budget)
            outcomes.add("413")
            continue
        got = ground(Fixed(), settings, question, history, budget=budget)
        assert (got.messages, got.sources, got.prompt_tokens) == expected, limit
        earlier = [m for m in history if m.get("role") != "system"]
        assert got.history_sent + got.history_dropped == len(earlier)
        outcomes.add((len(got.sources), got.history_sent))
    assert "413" in outcomes and (3, len([m for m in history if m.get("role") != "system"])) in outcomes
    assert len(outcomes) >= (4 if not history else 8)  # entries dropped one by one, then history trimmed


def test_a_prompt_that_fits_whole_is_counted_once():
    settings = load_settings(env={})
    counter = Counting()
    grounded = ground(Fixed(), settings, "택배비 얼마에요?", HISTORY, budget=Budget(4096, 256, counter))
    assert counter.calls == 1 and grounded.history_sent == len(HISTORY) and len(grounded.sources) == 3
    tight = Counting()
    ground(Fixed(), settings, "택배비 얼마에요?", HISTORY, budget=Budget(grounded.prompt_tokens + 40, 50, tight))
    assert tight.calls > 2  # too long whole: the history is bisected, as before
