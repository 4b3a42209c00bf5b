"""The starter model: trained from scratch, memorizes its rows, reads its context, deterministic, rebuilt only
when needed."""

from __future__ import annotations

import dataclasses
import json
import random
import re

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from cli.main import cli
from config.errors import InvalidRequest
from config.profile import PROFILE_FILE, read_profile
from config.settings import KnowledgeSettings, StarterSettings, load_settings
from feedback.knowledge.prompt import Snippet, grounded_messages
from tests.plugins.model import TINY_PARAMS, build_tiny_model, qa, tiny_rows
from trainer.starter import (
    StarterBuildFailed,
    build_starter,
    built_fingerprint,
    fingerprint,
    rows_to_pairs,
)
from trainer.starter.build import FINGERPRINT_FILE
from trainer.starter.chat import SPECIAL_TOKENS, chat_template, encode_conversation, mark_answers
from trainer.starter.lookup import NgramRanker, top_entries
from trainer.starter.mutations import change_numbers, mutate, swap_named, word_pool
from trainer.starter.profile import PROFILE as STARTER_PROFILE
from trainer.starter.reading import ReadingExamples
from trainer.starter.rewording import reword
from trainer.starter.tokenizer import train_tokenizer
from trainer.starter.train import deterministic, make_model
from trainer.starter.verify import greedy_answers

KNOWLEDGE = KnowledgeSettings()


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_tiny_model_answers_every_row_exactly(tiny_model_dir, tiny_model_rows):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs = [qa(r) for r in tiny_model_rows]
    with deterministic(0, threads=1):  # one thread: two were up to 25x slower on a busy machine
        answers = greedy_answers(
            model, tokenizer, [[{"role": "user", "content": q}] for q, _ in pairs], max_new_tokens=200
        )
    assert answers == [a for _, a in pairs]
    manifest = json.loads((tiny_model_dir / "starter.json").read_text())
    assert manifest["answered_exactly"] == manifest["questions"] == len(pairs)


def test_training_moved_every_free_weight_and_no_weight_of_the_copy_circuit(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with deterministic(TINY_PARAMS.seed, TINY_PARAMS.threads):
        untrained, frozen = make_model(TINY_PARAMS, tokenizer)
    trained = weights(tiny_model_dir)
    names = {id(param): name for name, param in untrained.named_parameters()}
    masks: dict[str, torch.Tensor] = {}
    for param, mask in frozen:
        name = names[id(param)]
        masks[name] = masks.get(name, torch.zeros_like(mask)) | mask
    assert masks, "the copy circuit owns no weights"
    for name, tensor in untrained.state_dict().items():
        if name not in trained:
            continue  # the tied output layer is the embedding
        mask = masks.get(name, torch.zeros_like(tensor, dtype=torch.bool))
        assert torch.equal(trained[name][mask], tensor[mask]), f"{name}: the copy circuit's entries moved"
        if not mask.all():
            assert not torch.equal(trained[name][~mask], tensor[~mask]), f"{name} did not change"


def test_chat_template_renders_what_training_encodes(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    turns = [("배송비는 얼마인가요?", "3,000원입니다."), ("And returns?", "Within 7 days.")]
    block = grounded_messages(
        "Be brief.", [], "q", [Snippet("a", "Q1?", "A one.", 1), Snippet("b", "Q2?", "A two.", 1)], KNOWLEDGE
    )
    for system in ("", "Be brief.", block[0]["content"]):
        messages = [{"role": "system", "content": system}] if system else []
        for q, a in turns:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        ids, labels = encode_conversation(tokenizer, turns, system=system)
        assert tokenizer.apply_chat_template(messages, return_dict=False) == ids
        answer_ids = [i for i, label in zip(ids, labels, strict=False) if label != -100]
        assert tokenizer.decode(answer_ids, skip_special_tokens=True) == "3,000원입니다.Within 7 days."
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|user|>hi<|end|><|assistant|>"
    # Each answer of a context block sits between <|answer|> and <|end|>, tokenized as an answer is.
    rendered = tokenizer.apply_chat_template(block, tokenize=False)
    assert "\nA:<|answer|>A one.<|end|>\n[2] Q: Q2?\nA:<|answer|>A two.<|end|><|user|>q<|end|>" in rendered
    ids = tokenizer.apply_chat_template(block, return_dict=False)
    one = tokenizer.encode("A one.", add_special_tokens=False)
    start = ids.index(tokenizer.convert_tokens_to_ids("<|answer|>")) + 1
    assert ids[start : start + len(one)] == one


def test_the_template_marks_answers_for_any_entry_format():
    custom = KnowledgeSettings(entry_format="#{n} {question} => {answer}")
    text = "Knowledge:\n#1 Q1 => one\n#2 Q2 => two"
    assert mark_answers(text, custom.entry_format) == "Knowledge:\n#1 Q1 =><|answer|>one<|end|>\n#2 Q2 =><|answer|>two"
    # A format whose entries cannot be told apart from their text is left alone.
    assert mark_answers(text, "{question}\n{answer}") == text
    tokenizer = train_tokenizer(["Q1 one", "Q2 two"], 300, template=chat_template(custom.entry_format))
    messages = grounded_messages("", [], "q", [Snippet("a", "Q1", "one", 1), Snippet("b", "Q2", "two", 1)], custom)
    ids, _ = encode_conversation(
        tokenizer, [("q", "one")], system=messages[0]["content"], entry_format=custom.entry_format
    )
    assert tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": "one"}], return_dict=False) == ids


def test_same_seed_and_data_give_identical_weights(tmp_path, tiny_model_dir, tiny_model_rows):
    again = build_tiny_model(tmp_path / "again", tiny_model_rows)
    first, second = weights(tiny_model_dir), weights(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (tiny_model_dir / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()


def test_an_up_to_date_build_is_a_no_op(tiny_model_dir, tiny_model_rows):
    before = (tiny_model_dir / "model.safetensors").stat().st_mtime_ns
    messages = []
    result = build_starter(tiny_model_rows, tiny_model_dir, TINY_PARAMS, progress=False, echo=messages.append)
    assert result.built is False
    assert "up to date" in messages[0]
    assert (tiny_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_the_build_writes_the_starter_fine_tuning_profile_that_settings_then_use(tiny_model_dir, tiny_model_rows):
    profile = tiny_model_dir / PROFILE_FILE
    assert read_profile(tiny_model_dir).values == STARTER_PROFILE
    profile.unlink()  # a model built before profiles existed: an up-to-date build adds it, training nothing
    build_starter(tiny_model_rows, tiny_model_dir, TINY_PARAMS, progress=False, echo=lambda _m: None)
    assert read_profile(tiny_model_dir).values == STARTER_PROFILE
    settings = load_settings(env={}, overrides={"model_server.model_dir": str(tiny_model_dir)})
    for section, values in STARTER_PROFILE.items():
        for key, value in values.items():
            assert getattr(getattr(settings, section), key) == value
            assert settings.origin(f"{section}.{key}") == f"model folder {profile}"


def test_fingerprint_follows_data_hyperparameters_and_block_format_only():
    pairs = rows_to_pairs(tiny_rows())
    base = fingerprint(pairs, TINY_PARAMS)
    assert fingerprint(pairs, TINY_PARAMS) == base
    assert fingerprint(pairs[:-1], TINY_PARAMS) != base
    assert fingerprint([(q, a + "!") for q, a in pairs], TINY_PARAMS) != base
    assert fingerprint(pairs, dataclasses.replace(TINY_PARAMS, seed=1)) != base
    # The model learns to read the block in the configured format: another format is another model.
    assert fingerprint(pairs, TINY_PARAMS, KnowledgeSettings(entry_format="- {question}: {answer}")) != base
    assert fingerprint(pairs, TINY_PARAMS, KnowledgeSettings(min_score=0.5)) == base
    # Settings that cannot change the weights do not force a rebuild.
    for change in ({"time_limit_s": 5}, {"min_read_rate": 0.5}, {"min_unknown_rate": 0.5}):
        assert fingerprint(pairs, dataclasses.replace(TINY_PARAMS, **change)) == base


def test_a_build_that_cannot_memorize_fails_loudly_and_keeps_the_old_model(tmp_path, tiny_model_rows):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("previous build")
    with pytest.raises(StarterBuildFailed, match="answers .*/8 FAQ questions exactly"):
        build_tiny_model(out, tiny_model_rows, steps=1, finish_steps=0)
    assert (out / "keep.txt").read_text() == "previous build"
    assert not [p.name for p in tmp_path.iterdir() if "build" in p.name]  # no half-written build left behind
    assert built_fingerprint(out) is None


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [{"messages": [{"role": "user", "content": "q"}]}],
        [{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}],
        [("q", "a"), ("q", "b")],
        [("q", "  ")],
    ],
)
def test_rows_that_are_not_question_answer_pairs_are_refused(rows):
    with pytest.raises(InvalidRequest):
        rows_to_pairs(rows)


def test_cli_builds_then_says_up_to_date(tmp_path, tiny_model_rows):
    data = tmp_path / "faq.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in tiny_model_rows[:4]), encoding="utf-8")
    settings_lines = [f'data_dir = "{tmp_path / "var"}"', "", "[starter]", f'data_file = "{data}"']
    for key, value in TINY_PARAMS.__dict__.items():
        if key != "data_file":
            settings_lines.append(f"{key} = {json.dumps(value)}")
    config = tmp_path / "tuneloop.toml"
    config.write_text("[paths]\n" + "\n".join(settings_lines) + "\n")
    runner = CliRunner()
    first = runner.invoke(cli, ["--config", str(config), "starter", "build", "--quiet"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "4/4 FAQ questions answered exactly" in first.output
    settings = load_settings(config, env={})
    assert built_fingerprint(settings.model_dir) is not None
    second = runner.invoke(cli, ["--config", str(config), "starter", "build"], catch_exceptions=False)
    assert second.exit_code == 0 and "up to date" in second.output


# It may be the test that builds the session's starter (minutes on 2 busy cores): the loop tests' budget.
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_full_starter_build_answers_every_faq_question(starter_model_dir, capsys):
    """The product promise: the default starter model answers every bundled FAQ question word for word.

    The model is the session's real starter build (tests/plugins/starter_model.py: exactly what ``make run``
    builds, once per session); its build wrote what it checked into ``starter.json``, read back here.
    """
    settings = load_settings(env={})
    built = json.loads((starter_model_dir / FINGERPRINT_FILE).read_text())
    total = built["questions"]
    assert total >= 100 and built["answered_exactly"] == total
    assert built["answered_exactly_with_history"] >= total * 0.95
    # It reads its context: the build checked each set against the floors (and failed below them).
    floors = settings.starter
    reading = {name: (r["right"], r["total"]) for name, r in built["reading_checks"].items()}
    assert set(reading) == {"reworded", "corrections", "new_entries", "unknown"}
    for name, (right, count) in reading.items():
        assert right >= count * (floors.min_unknown_rate if name == "unknown" else floors.min_read_rate), name
    with capsys.disabled():
        figures = ", ".join(f"{name} {right}/{count}" for name, (right, count) in reading.items())
        print(
            f"\nfull starter build: {built['build_seconds']:.1f} s, {built['answered_exactly']}/{total} exact, "
            f"{built['answered_exactly_with_history']}/{total} with history; reading: {figures}"
        )


# --- Reading the context block -------------------------------------------------------------------------


def test_a_wired_model_copies_the_first_entry_of_a_block_before_any_training():
    """The copy circuit works from the first step: a fresh model answers with the first entry's answer.

    Random tokens, so that only the circuit can produce them (training then learns the rest around it:
    real text repeats words, see the reading_model tests). Default shape, as the real starter is built.
    """
    params = StarterSettings()
    texts = [text for row in tiny_rows(400) for text in qa(row)]
    tokenizer = train_tokenizer(texts, params.vocab_size)
    with deterministic(params.seed, params.threads):
        model, _ = make_model(params, tokenizer)
    model.eval()
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|system|>", "<|answer|>", "<|end|>", "<|user|>")}
    rng = random.Random(0)

    def words(n):
        return [rng.randrange(len(SPECIAL_TOKENS), len(tokenizer)) for _ in range(n)]

    rows, answers = [], []
    for _ in range(32):
        ids, entry_answers = [special["<|system|>"]] + words(3), []
        for entry in range(3):
            answer = words(rng.randint(5, 25))
            ids += words(rng.randint(3, 10)) + [special["<|answer|>"]] + answer
            ids += [special["<|end|>"]] if entry < 2 else []
            entry_answers.append(answer)
        ids += [special["<|end|>"], special["<|user|>"]] + words(6) + [special["<|end|>"]]
        rows.append(ids + [tokenizer.convert_tokens_to_ids("<|assistant|>")])
        answers.append(entry_answers[0] + [special["<|end|>"]])
    # Teacher-forced: greedy decoding reproduces an answer iff every next token is the argmax given the rest.
    width = max(len(ids) + len(answer) for ids, answer in zip(rows, answers, strict=True))
    batch = torch.full((len(rows), width), tokenizer.pad_token_id)
    for row, (ids, answer) in enumerate(zip(rows, answers, strict=True)):
        batch[row, : len(ids) + len(answer)] = torch.tensor(ids + answer)
    with torch.no_grad():
        predicted = model(input_ids=batch).logits.argmax(-1)
    copied = sum(
        predicted[row, len(ids) - 1 : len(ids) - 1 + len(answer)].tolist() == answer
        for row, (ids, answer) in enumerate(zip(rows, answers, strict=True))
    )
    assert copied >= 28, f"{copied}/32 first-entry answers copied exactly"


READING_ROWS = 10  # English FAQ rows: a byte-level tokenizer trained on a few Korean rows spells Korean byte by byte


@pytest.fixture(scope="module")
def reading_model(tmp_path_factory):
    """A small starter that reads its context (about 20-30 s on one busy core), and the pairs it learned."""
    rows = [row for row in tiny_rows(60) if not _korean(qa(row)[0])][:READING_ROWS]
    params = dataclasses.replace(
        TINY_PARAMS,
        vocab_size=600,
        reading_batch=3,
        history_turns=1,
        steps=200,
        min_read_rate=0.5,
        min_unknown_rate=0.5,
    )
    knowledge = KnowledgeSettings(top_k=2)
    out = tmp_path_factory.mktemp("reading-model") / "starter"
    build_starter(rows, out, params, knowledge=knowledge, progress=False, echo=lambda _msg: None)
    return out, [qa(row) for row in rows], params, knowledge


def _answers(folder, conversations):
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with deterministic(0, threads=1):
        return greedy_answers(model, tokenizer, conversations, max_new_tokens=120)


def test_the_block_wins_over_what_the_model_learned_by_heart(reading_model):
    """An approved correction reaches the next answer with no retraining: the block's answer comes out."""
    folder, pairs, _params, knowledge = reading_model
    question, learned = pairs[4]
    corrected = learned.replace("7 days", "14 days")
    assert corrected != learned
    block = [Snippet("kb_4", question, corrected, 1.0), Snippet("kb_1", *pairs[1], 0.4)]
    grounded, closed_book = _answers(
        folder,
        [grounded_messages("", [], question, block, knowledge), grounded_messages("", [], question, None, knowledge)],
    )
    assert grounded == corrected
    assert closed_book == learned  # with no block it still answers from memory, word for word


def test_an_empty_block_gets_i_do_not_know_and_a_pointer_to_customer_service(reading_model):
    folder, _pairs, params, knowledge = reading_model
    [answer] = _answers(folder, [grounded_messages("", [], "Is there a store in Busan?", [], knowledge)])
    assert answer == params.unknown_answer
    assert "1588-0000" in answer and "help@haneulmart.example" in answer


def test_the_build_checked_reading_through_the_saved_files(reading_model):
    folder, pairs, params, _knowledge = reading_model
    manifest = json.loads((folder / "starter.json").read_text())
    checks = manifest["reading_checks"]
    assert set(checks) == {"reworded", "corrections", "new_entries", "unknown"}
    for name, result in checks.items():
        floor = params.min_unknown_rate if name == "unknown" else params.min_read_rate
        assert result["total"] > 0 and result["right"] >= floor * result["total"], name
    assert manifest["answered_exactly"] == len(pairs)


def test_a_build_that_reads_too_poorly_fails_loudly_and_keeps_the_old_model(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("previous build")
    # Closed book only (no reading examples): it memorizes the rows but cannot read a block.
    with pytest.raises(StarterBuildFailed, match="does not read its context well enough: .*corrections"):
        build_tiny_model(out, tiny_rows(2), min_read_rate=0.9)
    assert (out / "keep.txt").read_text() == "previous build"
    assert built_fingerprint(out) is None


def _korean(text: str) -> bool:
    return any("\uac00" <= ch <= "\ud7a3" for ch in text)


# --- What the reading examples are made of ---------------------------------------------------------------


def test_simulated_retrieval_ranks_the_asked_entry_first_and_near_misses_next():
    pairs = [qa(row) for row in tiny_rows(400)]
    ranker = NgramRanker([f"{q} {a}" for q, a in pairs])
    for i in (0, 5, 100, 150):
        assert top_entries(ranker, pairs[i][0], 3)[0] == i
    delivery = top_entries(ranker, "how long does delivery take", 3)
    assert all("deliver" in (pairs[i][0] + pairs[i][1]).lower() for i in delivery)
    assert i not in top_entries(ranker, pairs[i][0], 3, exclude=[i])


def test_a_changed_answer_is_never_the_original_and_keeps_the_shape_of_numbers():
    answers = [qa(row)[1] for row in tiny_rows(400)]
    pool = word_pool(answers)
    rng = random.Random(0)
    for answer in answers:
        assert mutate(answer, answers, pool, rng) != answer
    changed = change_numbers("Shipping is 3,000 won, free from 30,000 won, within 7 days.", rng)
    assert re.fullmatch(r"Shipping is \d,\d{3} won, free from \d{2},\d{3} won, within \d days\.", changed)
    assert changed != "Shipping is 3,000 won, free from 30,000 won, within 7 days."
    assert swap_named("Open weekdays. Closed on holidays.", random.Random(1)) == "Open weekdays. Closed on holidays."


def test_reading_examples_are_rendered_exactly_as_the_gateway_renders_them():
    pairs = [qa(row) for row in tiny_rows(40)]
    reading = ReadingExamples(pairs, KNOWLEDGE, ("unknown", "모름"))
    rng = random.Random(3)
    for kind in ("real", "changed", "made_up"):
        example = reading.read(rng, entries=3, kind=kind)
        question, answer = example.turns[-1]
        assert example.system.startswith("Knowledge:\n[1] Q: ") and "\n[3] Q: " in example.system
        first = example.system.split("\n[2] Q: ")[0]
        assert first.endswith(f"\nA: {answer}")  # the answer to give is the first entry's, as the block shows it
        entry_question = first.removeprefix("Knowledge:\n[1] Q: ").split("\nA: ")[0]
        snippets = [Snippet("x", entry_question, answer, 1.0)]
        rest = example.system.split("\n[2] Q: ", 1)[1]
        for chunk in ("[2] Q: " + rest).split("\n[3] Q: "):
            q, a = chunk.removeprefix("[2] Q: ").split("\nA: ")
            snippets.append(Snippet("x", q, a, 1.0))
        assert grounded_messages("", [], question, snippets, KNOWLEDGE)[0]["content"] == example.system
        if kind == "real":
            assert (entry_question, answer) in pairs
        else:
            assert answer not in [a for _, a in pairs]
    empty = reading.empty_for("배송비는 얼마인가요?")
    assert empty.system == "Knowledge:\n(no matching entry)" and empty.turns[-1][1] == "모름"
    assert reading.empty_for("How much is shipping?").turns[-1][1] == "unknown"


def test_questions_are_reworded_on_the_surface_only():
    rng = random.Random(0)
    question = "How long does standard delivery take?"
    variants = {reword(question, rng) for _ in range(40)}
    assert len(variants) > 10 and question not in variants
    for variant in variants:
        assert {w.strip("?,.:!").lower() for w in variant.split()} & {"long", "standard", "delivery", "take"}
