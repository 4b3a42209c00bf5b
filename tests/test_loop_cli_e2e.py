"""The whole loop, end to end, on the real starter model with the shipped defaults: the README's steps.

A fresh data folder and no configuration beyond where things are — the data folder, the model server, the model
folder, a free port (test plumbing; rate limits off, since one client here asks hundreds of questions; the pipeline
polling its training run every half second instead of every 10 s). Users ask a real gunicorn gateway (``tuneloop
serve``) over HTTP, get the FAQ's old answers to three questions whose policy has changed, and rate them down with
the new answer. Then, exactly as in README "From thumbs-down to a better
model": ``tuneloop review collect`` → ``review approve ID --use-suggestion`` (live at once in the knowledge base)
→ ``train start --dry-run`` (the settings come from the starter's fine-tuning profile, in its model folder) →
``pipeline run`` (build closed book and as served, train, evaluate both views, gate, deploy). The same gateway,
never restarted, then:

- answers the corrected questions with the new answers, closed book and as served;
- answers every golden FAQ question as before (closed book: word for word);
- answers rewordings (the golden rewordings and the reworded test split) as served as well as before or better,
  by the gate's own measure on the answers the gateway gave: chrF not lower by more than ``gate.tolerance``.

The weekly report says what the retrain changed. A candidate trained on a base file whose answers were shifted
across questions is rejected by the gate, naming the golden suite as served, with the live model and its answers
untouched.

Real parts only: the starter model as ``make run`` builds it, a ``tuneloop model-server`` process, gunicorn with
gevent workers on a real SQLite file, the training worker process.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx2
import pytest
from click.testing import CliRunner

from cli.main import cli
from config.profile import PROFILE_FILE
from config.settings import PROJECT_ROOT, Settings, load_settings
from feedback.db import open_db
from feedback.versions import ModelVersion, live_version
from tests.plugins.gateway import start_gunicorn_gateway, stop_gateway
from trainer.evaluation.metrics import chrf
from trainer.starter import load_pairs

# The whole loop — hundreds of generations, a training run, two evaluations — on 2 shared cores takes minutes; the
# suite's 300 s per test is for single features.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

FAQ = dict(load_pairs(PROJECT_ROOT / "data" / "faq.jsonl"))
GOLDEN = load_pairs(PROJECT_ROOT / "data" / "golden.jsonl")
# Questions in users' own words that no training set holds: the golden rewordings and the reworded test split.
REWORDINGS = load_pairs(PROJECT_ROOT / "data" / "golden-rewordings.jsonl") + [
    (row["messages"][0]["content"], row["messages"][1]["content"])
    for row in map(json.loads, (PROJECT_ROOT / "data" / "rewordings.jsonl").read_text(encoding="utf-8").splitlines())
    if row["split"] == "test"
]

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


@dataclass
class Platform:
    """The running gateway, and the config file every ``tuneloop`` command of the test is given."""

    config: Path
    settings: Settings
    url: str
    before: dict[str, str] = field(default_factory=dict)  # rewordings → the starter's answers, as served

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

    def post(self, path: str, body: dict) -> dict:
        response = httpx2.post(self.url + path, json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def ask(self, question: str, user: str = "checker", knowledge: bool = True) -> dict:
        """One question in a new conversation, as an app would send it."""
        return self.post("/api/chat", {"message": question, "user": user, "knowledge": knowledge})

    def answers(self, questions, *, knowledge: bool) -> dict[str, dict]:
        """Each question in a new conversation, four at a time (as the evaluation asks; the model server batches
        them, and a batched answer is the answer alone: tests/test_model_server_batching.py)."""
        questions = list(questions)
        with ThreadPoolExecutor(max_workers=4) as pool:
            replies = pool.map(lambda q: self.ask(q, knowledge=knowledge), questions)
            return dict(zip(questions, replies, strict=True))

    def live(self) -> ModelVersion:
        """The live version, as the registry says now."""
        db = open_db(self.settings.db_path)
        try:
            return live_version(db)
        finally:
            db.close()

    def wait_until_serving(self, version: ModelVersion, timeout_s: float = 30.0) -> None:
        """Until the gateway answers with ``version`` (it reads the registry every ``gateway.model_cache_s``)."""
        deadline = time.monotonic() + timeout_s
        while self.ask(GOLDEN[0][0])["model"] != version.name:
            assert time.monotonic() < deadline, f"the gateway does not answer with {version.name}"
            time.sleep(0.5)


def mean_chrf(answers: dict[str, str], references: list[tuple[str, str]]) -> float:
    return sum(chrf(answers[q], a) for q, a in references) / len(references)


def assert_serves_the_loop(platform: Platform, version: ModelVersion) -> dict:
    """Through the gateway, ``version`` answers every corrected question with its new answer, closed book and as
    served, every golden FAQ question word for word closed book, and rewordings as served no worse than the
    starter did (chrF within gate.tolerance). Returns the figures (README, the report)."""
    closed = platform.answers([*CORRECTIONS, *(q for q, _ in GOLDEN)], knowledge=False)
    served = platform.answers([*CORRECTIONS, *(q for q, _ in REWORDINGS)], knowledge=True)
    assert {r["model"] for r in [*closed.values(), *served.values()]} == {version.name}
    unlearned = {q: closed[q]["answer"] for q, a in CORRECTIONS.items() if closed[q]["answer"] != a}
    unserved = {q: served[q]["answer"] for q, a in CORRECTIONS.items() if served[q]["answer"] != a}
    forgotten = {q: closed[q]["answer"] for q, a in GOLDEN if closed[q]["answer"] != a}
    after = {q: served[q]["answer"] for q, _ in REWORDINGS}
    figures = {
        "corrections closed book": len(CORRECTIONS) - len(unlearned),
        "corrections as served": len(CORRECTIONS) - len(unserved),
        "golden closed book": len(GOLDEN) - len(forgotten),
        "rewordings right before": sum(platform.before[q] == a for q, a in REWORDINGS),
        "rewordings right after": sum(after[q] == a for q, a in REWORDINGS),
        "rewordings chrF before": round(mean_chrf(platform.before, REWORDINGS), 3),
        "rewordings chrF after": round(mean_chrf(after, REWORDINGS), 3),
    }
    print(f"{version.name}: {figures}")
    assert unlearned == {}, "corrections not learned closed book"
    assert unserved == {}, "corrections not answered as served"
    assert forgotten == {}, "golden answers lost"
    tolerance = platform.settings.gate.tolerance
    assert figures["rewordings chrF after"] >= figures["rewordings chrF before"] - tolerance, (
        "rewordings answered worse"
    )
    return figures


@pytest.fixture(scope="module")
def platform(tmp_path_factory, starter_model_server, starter_model_dir) -> Platform:
    folder = tmp_path_factory.mktemp("loop")
    gateway = start_gunicorn_gateway(
        folder,
        starter_model_server.base_url,
        extra={
            "paths": {"data_dir": str(folder / "var")},
            "model_server": {"model_dir": str(starter_model_dir)},
            "model": {"first_token_timeout_s": 30.0},  # the shipped default (the fixture's is 5 s)
            # The pipeline sees its training run end within half a second, not 10 s (as tests/test_loop_e2e.py).
            "scheduler": {"poll_interval_s": 0.5},
        },
        timeout_s=60,
    )
    config = folder / "gateway.toml"
    running = Platform(config=config, settings=load_settings(config, env={}), url=gateway.url)
    yield running
    stop_gateway(gateway)


def test_thumbs_down_to_a_promoted_better_model_on_the_shipped_defaults(platform):
    assert not set(CORRECTIONS) & {q for q, _ in GOLDEN}, "a corrected question must not be a golden one"
    starter = platform.live()
    platform.before = {q: r["answer"] for q, r in platform.answers([q for q, _ in REWORDINGS], knowledge=True).items()}

    # Users ask, get the old FAQ answer, and say what the answer is now.
    for question, new_answer in CORRECTIONS.items():
        for voter in VOTERS:
            answer = platform.ask(question, user=voter)
            assert answer["answer"] == FAQ[question] != new_answer
            platform.post(
                "/api/feedback",
                {
                    "message_id": answer["message_id"],
                    "feedback_token": answer["feedback_token"],
                    "user": voter,
                    "rating": "down",
                    "reason": "outdated",
                    "correction": new_answer,
                },
            )

    out = platform.tuneloop("review", "collect")
    assert f"added {len(CORRECTIONS)}, skipped 0" in out
    queued = {
        m["question"]: m
        for m in re.finditer(
            r"^  \+ (?P<id>ri_\S+)\s+(?P<down>\d+)/(?P<votes>\d+)\s+down\s+(?P<question>.+)$", out, re.M
        )
    }
    assert set(queued) == set(CORRECTIONS)
    for question, new_answer in CORRECTIONS.items():
        item = queued[question]
        assert int(item["down"]) == int(item["votes"]) == len(VOTERS)
        out = platform.tuneloop("review", "approve", item["id"], "--use-suggestion")
        assert out.startswith(f"approved {item['id']} (user): {new_answer[:60]}")  # the users' own correction
        assert "live now in knowledge-base entry" in out
        # Served at once, long before the retrain: the corrected entry is the answer's first source.
        entry_id = re.search(r"knowledge-base entry (kb_\S+)", out).group(1)
        assert platform.ask(question)["sources"][0]["id"] == entry_id

    # No setting was typed: the retrain's come from the starter's fine-tuning profile, in its model folder.
    out = platform.tuneloop("train", "start", "--dry-run")
    profile = f"model folder {platform.settings.model_dir / PROFILE_FILE}"
    for key in ("training.learning_rate", "training.epochs", "dataset.val_fraction", "dataset.test_fraction"):
        assert re.search(rf"^  {re.escape(key)}\s+\S+\s+{re.escape(profile)}$", out, re.M), key
    assert re.search(r"^  training\.lora_r\s+16\s+default$", out, re.M)

    started = time.monotonic()
    out = platform.tuneloop("pipeline", "run")
    print(f"pipeline run: {time.monotonic() - started:.0f} s")  # the README quotes it
    for step in ("build", "train", "evaluate", "gate", "deploy", "report"):
        assert re.search(rf"^  {step}\s+succeeded ", out, re.M), step
    assert re.search(r"^  gate\s+succeeded candidate (mv_\S+) promoted to live$", out, re.M), out
    assert "verdict: PASSED the gate (chrF)" in out
    live = platform.live()
    assert live.id != starter.id and live.name.startswith("starter-ft-")
    platform.wait_until_serving(live)

    # The same gateway, no restart: the corrections closed book and as served, the FAQ kept, rewordings no worse.
    assert_serves_the_loop(platform, live)

    # The weekly report of this week says what the retrain changed.
    week = datetime.now(timezone.utc).astimezone(ZoneInfo(platform.settings.report.timezone)).strftime("%G-W%V")
    platform.tuneloop("report", "--week", week)
    report = (platform.settings.reports_dir / f"report-{week}.md").read_text(encoding="utf-8")
    print(report[report.find("**What ") :].split("\n## ")[0])  # the README quotes it
    assert "| corrections | closed book | 0/3 → 3/3 |" in report
    # As served the starter may already answer them from their corrected entries (a model that reads its context).
    assert re.search(r"^\| corrections \| as served \| [0-3]/3 → 3/3 \|", report, re.M)
    assert f"{live.name} promoted, replacing starter" in report


def test_a_candidate_trained_on_shuffled_answers_is_rejected(platform):
    good = platform.live()
    # The same builder, fed a base file whose answers are shifted by one row: every question in it gets
    # another question's answer (the approved corrections still replace their rows).
    pairs = list(FAQ.items())
    shuffled = platform.config.parent / "shuffled-faq.jsonl"
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
    assert any(line.startswith("  - golden (as served): ") for line in reasons), out

    listing = platform.tuneloop("models", "list")
    assert re.search(rf"^{sabotaged}\s+rejected", listing, re.M) and re.search(rf"^{good.id}\s+live", listing, re.M)
    assert platform.live() == good
    assert_serves_the_loop(platform, good)
