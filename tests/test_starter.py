"""The starter model: trained from scratch, memorizes its rows, deterministic, rebuilt only when needed."""

from __future__ import annotations

import json
import time

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from cli.main import cli
from config.errors import InvalidRequest
from config.profile import PROFILE_FILE, read_profile
from config.settings import load_settings
from tests.plugins.model import TINY_PARAMS, build_tiny_model, qa, tiny_rows
from trainer.starter import (
    StarterBuildFailed,
    build_from_settings,
    build_starter,
    built_fingerprint,
    fingerprint,
    rows_to_pairs,
)
from trainer.starter.chat import encode_conversation
from trainer.starter.profile import PROFILE as STARTER_PROFILE
from trainer.starter.train import deterministic, make_model
from trainer.starter.verify import greedy_answers


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


def test_training_changed_the_weights_from_their_initialisation(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with deterministic(TINY_PARAMS.seed, TINY_PARAMS.threads):
        untrained = make_model(TINY_PARAMS, tokenizer)
    trained = weights(tiny_model_dir)
    for name, tensor in untrained.state_dict().items():
        if name in trained:
            assert not torch.equal(trained[name], tensor), f"{name} did not change"


def test_chat_template_renders_what_training_encodes(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    turns = [("배송비는 얼마인가요?", "3,000원입니다."), ("And returns?", "Within 7 days.")]
    for system in ("", "Be brief."):
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


def test_fingerprint_follows_data_and_hyperparameters_only():
    pairs = rows_to_pairs(tiny_rows())
    base = fingerprint(pairs, TINY_PARAMS)
    assert fingerprint(pairs, TINY_PARAMS) == base
    assert fingerprint(pairs[:-1], TINY_PARAMS) != base
    assert fingerprint([(q, a + "!") for q, a in pairs], TINY_PARAMS) != base
    assert fingerprint(pairs, TINY_PARAMS.__class__(**{**TINY_PARAMS.__dict__, "seed": 1})) != base
    # Settings that cannot change the weights do not force a rebuild.
    assert fingerprint(pairs, TINY_PARAMS.__class__(**{**TINY_PARAMS.__dict__, "time_limit_s": 5})) == base


def test_a_build_that_cannot_memorize_fails_loudly_and_keeps_the_old_model(tmp_path, tiny_model_rows):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("previous build")
    with pytest.raises(StarterBuildFailed, match="answers .*/8 FAQ questions exactly"):
        build_tiny_model(out, tiny_model_rows, epochs=1)
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


@pytest.mark.slow
def test_full_starter_build_answers_every_faq_question(tmp_path, capsys):
    """The product promise: the default starter model answers every bundled FAQ question word for word."""
    settings = load_settings(env={}, overrides={"paths.data_dir": str(tmp_path / "var")})
    started = time.perf_counter()
    result = build_from_settings(settings, progress=False)
    seconds = time.perf_counter() - started
    assert result.built and result.total >= 100
    assert result.single_ok == result.total
    assert result.history_ok >= result.total * 0.95
    with capsys.disabled():
        print(
            f"\nfull starter build: {seconds:.1f} s, {result.single_ok}/{result.total} exact, "
            f"{result.history_ok}/{result.total} with history"
        )
