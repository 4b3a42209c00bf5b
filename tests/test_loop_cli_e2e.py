"""The whole loop, end to end, on the real starter model and the CLI sequence the README documents.

Users ask the gateway FAQ questions whose answers the company has since changed, and rate them
thumbs-down with the new answer; then, exactly as in README "From thumbs-down to a better model":
``tuneloop review collect`` → ``review approve`` → ``dataset build`` → ``train start`` →
``eval CANDIDATE --gate``. The same gateway, never restarted, must then answer the corrected
questions with the new answers and every golden question as before. A candidate trained on a
dataset whose answers were shuffled across questions must be rejected by the gate, naming the
golden suite, with the live model untouched.

Real parts only: the starter model as ``make run`` builds it, a ``tuneloop model-server``
process, the gateway app on a real SQLite file, the training worker process.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from config.settings import PROJECT_ROOT, Settings, load_settings
from feedback.db import open_db
from feedback.versions import ModelVersion, live_version
from server.app import create_app
from tests.plugins.gateway import write_config
from trainer.starter import load_pairs

pytestmark = pytest.mark.slow

FAQ = dict(load_pairs(PROJECT_ROOT / "data" / "faq.jsonl"))
GOLDEN = load_pairs(PROJECT_ROOT / "data" / "golden.jsonl")

# The company changed two policies (Sunday delivery, review points); users keep getting the old answers
# and say so. The new answers use characters the FAQ already has: a correction naming "Japan"/"일본" came out
# of the fine-tuned starter model with a few wrong bytes in that word (measured, 15 and 20 epochs).
CORRECTIONS = {
    "Do couriers deliver on Saturdays and Sundays?": (
        "Couriers deliver every day, Sundays included. Orders placed on public holidays ship on the next business day."
    ),
    "주말에도 배송되나요?": "택배는 일요일을 포함해 매일 배송됩니다. 공휴일 주문은 다음 영업일에 출고됩니다.",
    "Do product reviews give me any points?": (
        "Yes. A text review earns 200 points and a photo review earns 1,000 points."
    ),
}
# report.min_votes is 5: a question needs five votes before it is ranked among the worst answered.
VOTERS = [f"customer-{n}" for n in range(5)]
# Settings for the starter model, documented in the README section. It memorizes and does not generalize,
# so held-out rows teach nothing: train on every row (no val/test split; with no validation rows every epoch
# runs and the last one is kept, instead of the epoch whose loss on already-known rows moved least), with
# twice the default learning rate and more epochs than the [training] defaults (lr 0.005, 10 epochs, which
# learned 3 of 5 corrections in bench/finetune.py).
SETTINGS = {
    "dataset": {"val_fraction": 0.0, "test_fraction": 0.0},
    # LoRA on the feed-forward layers only: the starter's attention holds the copy circuit it reads its context
    # block with (trainer/starter/circuit.py); LoRA on every linear layer at this learning rate broke it (golden
    # chrF 1.00 → 0.03, measured), on the MLPs alone it learned 3/3 corrections and kept every FAQ answer.
    "training": {
        "learning_rate": 0.01,
        "epochs": 20,
        "lora_dropout": 0.0,
        "target_modules": ["gate_proj", "up_proj", "down_proj"],
    },
}


@dataclass
class Platform:
    """The gateway app and the config file every ``tuneloop`` command of the test is given."""

    config: Path
    settings: Settings
    client: object
    folder: Path

    def tuneloop(self, *args: str, env: dict | None = None, expect: int = 0) -> str:
        """Run ``tuneloop --config CONFIG ARGS…`` in process; assert its exit code; return its output."""
        result = CliRunner().invoke(
            cli, ["--config", str(self.config), *args], env={"TUNELOOP_CONFIG": None, "USER": "reviewer", **(env or {})}
        )
        assert result.exit_code == expect, f"tuneloop {' '.join(args)} → {result.exit_code}:\n{result.output}" + (
            "" if result.exception is None or isinstance(result.exception, SystemExit) else f"\n{result.exception!r}"
        )
        print(f"$ tuneloop {' '.join(args)}\n{result.output}")  # shown when a test fails
        return result.output

    def ask(self, question: str, user: str = "checker", knowledge: bool = True) -> dict:
        """One question in a new conversation, as an app would send it."""
        response = self.client.post("/api/chat", json={"message": question, "user": user, "knowledge": knowledge})
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def live(self) -> ModelVersion:
        """The live version, as the registry says now."""
        db = open_db(self.settings.db_path)
        try:
            return live_version(db)
        finally:
            db.close()


def assert_live_answers(platform: Platform, version: ModelVersion) -> None:
    """Through the gateway, ``version`` answers every corrected question with its new answer and every
    golden question exactly as the golden set says — closed book (``knowledge: false``): what the retrain
    consolidated into the model itself. (With the context block in front, a LoRA trained on today's closed-book
    dataset rows does not answer them; training rows as served is issue 13. The served side — the corrected
    entry is the source — is checked in the test.)"""
    got = {q: platform.ask(q, knowledge=False) for q in [*CORRECTIONS, *(q for q, _ in GOLDEN)]}
    served = {reply["model"] for reply in got.values()}
    unlearned = {q: got[q]["answer"] for q, a in CORRECTIONS.items() if got[q]["answer"] != a}
    forgotten = {q: got[q]["answer"] for q, a in GOLDEN if got[q]["answer"] != a}
    assert served == {version.name}
    print(
        f"{version.name}: corrections {len(CORRECTIONS) - len(unlearned)}/{len(CORRECTIONS)}, "
        f"golden {len(GOLDEN) - len(forgotten)}/{len(GOLDEN)}"
    )
    assert unlearned == {}, "corrections not learned"
    assert forgotten == {}, "golden answers lost"


@pytest.fixture(scope="module")
def platform(tmp_path_factory, starter_model_server, starter_model_dir) -> Platform:
    folder = tmp_path_factory.mktemp("loop")
    config = write_config(
        folder / "tuneloop.toml",
        {
            "paths": {"data_dir": str(folder / "var")},
            "model": {"base_url": starter_model_server.base_url},
            "model_server": {"model_dir": str(starter_model_dir)},
            # A promotion shows up in the very next request; make run's default caches it for 2 s.
            "gateway": {"model_cache_s": 0.0},
            "limits": {"enabled": False},
            **SETTINGS,
        },
    )
    settings = load_settings(config, env={})
    app = create_app(settings=settings)
    return Platform(config=config, settings=settings, client=app.test_client(), folder=folder)


def test_thumbs_down_to_a_promoted_better_model(platform):
    assert not set(CORRECTIONS) & {q for q, _ in GOLDEN}, "a corrected question must not be a golden one"
    starter = platform.live()

    # Users ask, get the old FAQ answer, and say what the answer is now.
    for question, new_answer in CORRECTIONS.items():
        for voter in VOTERS:
            answer = platform.ask(question, user=voter)
            assert answer["answer"] == FAQ[question] != new_answer
            vote = platform.client.post(
                "/api/feedback",
                json={
                    "message_id": answer["message_id"],
                    "feedback_token": answer["feedback_token"],
                    "user": voter,
                    "rating": "down",
                    "reason": "outdated",
                    "correction": new_answer,
                },
            )
            assert vote.status_code == 200, vote.get_json()

    out = platform.tuneloop("review", "collect")
    assert f"added {len(CORRECTIONS)}, skipped 0" in out
    queued = {
        m["question"]: m
        for m in re.finditer(
            r"^  \+ (?P<id>ri_\S+)\s+(?P<down>\d+)/(?P<votes>\d+)\s+down\s+"
            r"(?P<question>.+)$",
            out,
            re.M,
        )
    }
    assert set(queued) == set(CORRECTIONS)
    for question, new_answer in CORRECTIONS.items():
        item = queued[question]
        assert int(item["down"]) == int(item["votes"]) == len(VOTERS)
        out = platform.tuneloop("review", "approve", item["id"], "--answer", new_answer)
        assert out.startswith(f"approved {item['id']}") and "live now in knowledge-base entry" in out
        # Served at once, long before the retrain: the corrected entry is the answer's first source.
        entry_id = re.search(r"knowledge-base entry (kb_\S+)", out).group(1)
        assert platform.ask(question)["sources"][0]["id"] == entry_id

    out = platform.tuneloop("dataset", "build")
    assert "wrote v1" in out and f"replaced {len(CORRECTIONS)} base rows with corrections" in out

    out = platform.tuneloop("train", "start")
    assert "succeeded" in out
    candidate = re.search(r"evaluate it with `tuneloop eval (\S+)`", out).group(1)

    out = platform.tuneloop("eval", candidate, "--gate")
    assert "verdict: PASSED the gate" in out and f"({candidate}) is live now" in out
    live = platform.live()
    assert live.id == candidate != starter.id

    # The same gateway, no restart: the corrected questions get the new answers, the golden ones the old.
    assert_live_answers(platform, live)


def test_a_candidate_trained_on_shuffled_answers_is_rejected(platform):
    good = platform.live()
    # The same builder, fed a base file whose answers are shifted by one row: every question in it gets
    # another question's answer (the approved corrections still replace their rows).
    pairs = list(FAQ.items())
    shuffled = platform.folder / "shuffled-faq.jsonl"
    shuffled.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": pairs[(i + 1) % len(pairs)][1]},
                    ]
                },
                ensure_ascii=False,
            )
            + "\n"
            for i, (q, _) in enumerate(pairs)
        ),
        encoding="utf-8",
    )
    out = platform.tuneloop("dataset", "build", env={"TUNELOOP_DATASET__BASE_FILE": str(shuffled)})
    assert "wrote v2" in out

    out = platform.tuneloop("train", "start")
    sabotaged = re.search(r"evaluate it with `tuneloop eval (\S+)`", out).group(1)

    out = platform.tuneloop("eval", sabotaged, "--gate", expect=1)
    assert "verdict: FAILED the gate" in out and "is marked rejected; the live model is unchanged" in out
    reasons = [line for line in out.splitlines() if line.startswith("  - ")]
    assert any(line.startswith("  - golden:") for line in reasons), out

    listing = platform.tuneloop("models", "list")
    assert re.search(rf"^{sabotaged}\s+rejected", listing, re.M) and re.search(rf"^{good.id}\s+live", listing, re.M)
    assert platform.live() == good
    assert_live_answers(platform, good)
