"""The per-process index follows the store change by change; ground() builds the prompt within the token budget."""

from __future__ import annotations

import contextlib

import pytest

from config.errors import PayloadTooLarge, StorageError
from config.settings import load_settings
from feedback import review
from feedback.db import open_store_pool
from feedback.knowledge import live, seed, store
from feedback.knowledge.budget import Budget, EstimateCounter, TokenizerCounter, estimate_tokens
from feedback.knowledge.grounding import ground
from feedback.knowledge.live import LiveIndex

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

SHIPPING = "How much is the shipping fee?"
FIXED = "Shipping is 3,500 won per order, free from 50,000 won."


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kb(db, settings):
    seed.ensure_seeded(db, settings.knowledge)
    return db


@pytest.fixture
def worker(settings, kb):
    """Factory: a worker's index on its own connections, with a clock the test moves."""
    pools = []

    def make() -> tuple[LiveIndex, Clock]:
        pool = open_store_pool(settings)
        pools.append(pool)
        clock = Clock()
        index = LiveIndex(settings.knowledge, pool.connection, clock=clock)
        index.load()
        return index, clock

    yield make
    for pool in pools:
        pool.close_all()


def test_a_change_in_the_store_reaches_every_worker_after_refresh_ms(kb, worker):
    a, clock_a = worker()
    b, clock_b = worker()
    assert len(a) == len(b) == store.state_counts(kb)["active"]
    entry = store.entry_for_question(kb, SHIPPING)
    assert a.search("postage cost?")[0].entry_id == entry.id  # a synonym finds it already

    store.update_entry(
        kb, entry.id, actor="ana", answer=FIXED, questions=[SHIPPING, "what do you charge to send my parcel"]
    )
    clock_b.now += 0.2  # within refresh_ms (500): not looked at yet
    assert b.search(SHIPPING)[0].answer != FIXED
    clock_b.now += 0.4
    first = b.search("what do you charge to send my parcel")[0]
    assert (first.entry_id, first.question, first.answer, first.version) == (
        entry.id,
        SHIPPING,
        FIXED,
        entry.version + 1,
    )
    clock_a.now += 0.5
    assert a.refresh() == 1 and a.seq == store.current_seq(kb)  # one changed entry applied, not a rebuild

    store.retire_entry(kb, entry.id, actor="ana")
    added = store.add_entry(kb, questions="Do you ship to Mars?", answer="No.", actor="ana")
    clock_a.now += 0.5
    assert a.refresh() == 2
    assert entry.id not in {s.entry_id for s in a.search(SHIPPING)}
    assert a.search("ship to mars")[0].entry_id == added.id
    assert a.refresh() == 0  # nothing new, nothing read until refresh_ms passes again


def test_an_approved_correction_is_found_in_its_new_wording(kb, worker, db):
    index, clock = worker()
    item = review.create_item(db, question="what does postage cost now", answer=FIXED, reviewer="ana")
    clock.now += 1
    top = index.search("what does postage cost now")[0]
    assert (top.entry_id, top.answer) == (item.kb_entry_id, FIXED)


def test_a_large_batch_of_changes_rebuilds_instead(kb, worker, monkeypatch):
    index, clock = worker()
    monkeypatch.setattr(live, "REBUILD_AT", 3)
    for n in range(5):
        store.add_entry(kb, questions=f"Do you sell item number {n}?", answer=f"Yes, item {n}.", actor="ana")
    clock.now += 1
    assert index.refresh() == 5
    assert index.search("Do you sell item number 4?")[0].answer == "Yes, item 4."
    assert len(index) == store.state_counts(kb)["active"]


def test_a_store_that_cannot_be_read_keeps_the_index_serving(kb, worker):
    index, clock = worker()
    before = index.search(SHIPPING)

    @contextlib.contextmanager
    def failing():
        raise StorageError("disk I/O error")
        yield

    index.connection = failing
    clock.now += 1
    assert index.refresh() == 0 and index.search(SHIPPING) == before


# --- ground() -----------------------------------------------------------------------------------


class Chars:
    """One token per character: easy to reason about in a test."""

    name = "chars"

    def count_messages(self, messages):
        return sum(len(m["content"]) for m in messages)


def test_closed_book_and_opted_out_prompts_have_no_block(kb, worker, settings):
    index, _ = worker()
    grounded = ground(index, settings, SHIPPING)
    assert grounded.sources and grounded.sources[0].question == SHIPPING and not grounded.closed_book
    assert (
        grounded.messages[0]["role"] == "system" and "Knowledge:\n[1] Q: " + SHIPPING in grounded.messages[0]["content"]
    )
    opted_out = ground(index, settings, SHIPPING, use_knowledge=False)
    assert opted_out.messages == [{"role": "user", "content": SHIPPING}] and opted_out.sources == []
    off = load_settings(env={}, overrides={"knowledge.enabled": False})
    assert ground(index, off, SHIPPING).closed_book
    nothing = ground(index, settings, "qwzx vbnm")
    assert nothing.sources == [] and nothing.messages[0]["content"].endswith("(no matching entry)")


def test_the_budget_keeps_the_newest_turns_that_fit(settings):
    history = []
    for n in range(6):
        history += [
            {"role": "user", "content": f"question {n} " + "x" * 80},
            {"role": "assistant", "content": "y" * 100},
        ]
    everything = ground(None, settings, "latest?", history)
    assert everything.history_sent == 12 and everything.prompt_tokens is None
    budget = Budget(window=600, reserve=100, counter=Chars())
    fitted = ground(None, settings, "latest?", history, budget=budget)
    assert fitted.prompt_tokens <= 500 and fitted.history_sent + fitted.history_dropped == 12
    kept = fitted.messages[:-1]
    assert kept[0]["role"] == "user" and kept == history[-len(kept) :]  # the newest, starting with a question
    assert fitted.history_sent == 4  # two whole turns of 190 characters fit in 500 with the question
    # A client's system message always goes.
    with_system = ground(
        None, settings, "latest?", [{"role": "system", "content": "Be brief."}] + history, budget=budget
    )
    assert with_system.messages[0] == {"role": "system", "content": "Be brief."}


def test_entries_make_way_before_the_question_and_a_message_too_long_is_a_413(kb, worker, settings):
    index, _ = worker()
    full = ground(index, settings, SHIPPING)
    block = full.messages[0]["content"]
    tight = Budget(window=len(block) - 10 + len(SHIPPING) + 50, reserve=50, counter=Chars())
    fitted = ground(index, settings, SHIPPING, budget=tight)
    assert 0 < len(fitted.sources) < len(full.sources) and fitted.sources == full.sources[: len(fitted.sources)]
    with pytest.raises(PayloadTooLarge) as info:
        ground(index, settings, "x" * 400, budget=Budget(window=300, reserve=100, counter=Chars()), field="messages")
    assert (info.value.field, info.value.code, info.value.status) == ("messages", "context_length_exceeded", 413)


def test_the_tokenizer_count_is_what_the_model_server_counts(tiny_model_dir):
    from transformers import AutoTokenizer

    counter = TokenizerCounter.from_path(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "system", "content": "Knowledge:\n[1] Q: 배송비는 얼마인가요?\nA: 3,000원입니다."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! 무엇을 도와드릴까요?"},
        {"role": "user", "content": "택배비 얼마에요?"},
    ]
    expected = len(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    )
    assert counter.count_messages(messages) == expected
    assert counter.count_messages(messages) > counter.count_messages(messages[-1:])
    assert TokenizerCounter.from_path(tiny_model_dir / "tokenizer.json").count_messages(messages) == expected


def test_the_estimate_counts_every_message_and_korean_higher():
    assert estimate_tokens("How long does delivery take?") == 10  # 28 ASCII characters / 3
    assert estimate_tokens("배송은 며칠 걸리나요?") == 15  # 9 Hangul x 1.5, then 2 spaces and a "?" / 3, rounded up
    one = EstimateCounter().count_messages([{"role": "user", "content": "hi"}])
    two = EstimateCounter().count_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"}])
    assert two - one == 8 + 1


def test_an_index_over_one_connection_serves_the_evaluation_and_follows_changes(kb, settings):
    index = LiveIndex.over(kb, settings.knowledge)
    as_served = ground(index, settings, "postage cost?")
    assert as_served.sources[0].question == SHIPPING
    entry = store.entry_for_question(kb, SHIPPING)
    store.update_entry(kb, entry.id, actor="ana", answer=FIXED)
    assert index.refresh(force=True) == 1
    assert ground(index, settings, "postage cost?").sources[0].answer == FIXED
