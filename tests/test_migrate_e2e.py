"""Off a hosted ``ft:`` model, end to end, with the commands docs/migrate-from-openai.md shows.

A company's chatbot runs on an OpenAI fine-tuned model (the fake of ``tests/plugins/openai_teacher.py``, real
HTTP in OpenAI's wire format) that knows the FAQ, the policy changes reviewers approved and the rewordings it
was trained on. Users ask it questions through the gateway. Then, as the guide says: ``migrate plan`` →
``migrate harvest`` → ``migrate train`` (a LoRA on the real starter model, standing in for the open base, in a
training worker process) → ``migrate evaluate --switch``. The open base alone, which never learned the approved
corrections, is rejected against the ``ft:`` model; the distilled candidate is promoted; the same gateway then
answers from the open model server, and falls back to the ``ft:`` model when that server is down. A rollback
puts the ``ft:`` model back.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import cli
from config.settings import PROJECT_ROOT, load_settings
from feedback.db import open_db
from feedback.review import approve, create_item
from feedback.versions import create_candidate, get_version, live_version
from server.app import create_app
from tests.plugins.gateway import write_config
from tests.plugins.model import start_model_server, stop_model_server
from tests.plugins.openai_teacher import FT_MODEL, TEACHER_KEY
from tests.test_loop_cli_e2e import CORRECTIONS
from trainer.migration import serving
from trainer.starter import load_pairs

# Training and two evaluations on two shared cores take longer than the default 300 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

KEY_ENV = "TUNELOOP_TEST_TEACHER_KEY"
FAQ = load_pairs(PROJECT_ROOT / "data" / "faq.jsonl")
REWORDINGS = PROJECT_ROOT / "data" / "rewordings.jsonl"


def run(config, *args: str, expect: int = 0) -> str:
    """``tuneloop --config CONFIG ARGS…`` in process; its exit code asserted; its output printed and returned."""
    result = CliRunner().invoke(cli, ["--config", str(config), *args], env={"TUNELOOP_CONFIG": None, "USER": "ops"})
    print(f"$ tuneloop {' '.join(args)}\n{result.output}")
    assert result.exit_code == expect, f"{args} → {result.exit_code}:\n{result.output}\n{result.exception!r}"
    return result.output


def taught_rewordings() -> list[tuple[str, str]]:
    """The rewordings outside the held-out test split, with the FAQ answer: what the ft: model was trained on."""
    import json

    rows = [json.loads(line) for line in REWORDINGS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows if r.get("split") != "test"]


@pytest.fixture
def open_server(tmp_path, starter_model_dir):
    server = start_model_server(starter_model_dir, tmp_path / "open-server", name="starter")
    yield server
    stop_model_server(server, quick=True)


def test_off_an_ft_model_onto_the_open_base(
    tmp_path, fake_teacher, httpserver, monkeypatch, open_server, starter_model_dir
):
    monkeypatch.setenv(KEY_ENV, TEACHER_KEY)
    fake_teacher.teach(FAQ)
    fake_teacher.teach(load_pairs(PROJECT_ROOT / "data" / "golden-rewordings.jsonl"))
    fake_teacher.teach(taught_rewordings())
    fake_teacher.teach(CORRECTIONS.items())  # the team fine-tuned the approved corrections into it
    config = write_config(
        tmp_path / "tuneloop.toml",
        {
            "paths": {"data_dir": str(tmp_path / "var")},
            "model": {
                "provider": "openai",
                "base_url": httpserver.url_for("/v1"),
                "name": FT_MODEL,
                "api_key_env": KEY_ENV,
                "retries": 0,
                "first_token_timeout_s": 30.0,
            },
            "model_server": {"model_dir": str(starter_model_dir)},
            "migrate": {"open_base_url": open_server.base_url, "concurrency": 4},
            "evaluation": {"suites": ["corrections", "golden", "reworded"]},
            "gateway": {"model_cache_s": 0.0},
            "limits": {"enabled": False},
        },
    )
    settings = load_settings(config, env={})
    app = create_app(settings=settings)
    client = app.test_client()
    db = open_db(settings.db_path)
    for question, answer in CORRECTIONS.items():  # the loop's history: corrections approved long ago
        approve(db, create_item(db, question=question).id, answer=answer, reviewer="reviewer@test")
    asked = [q for q, _ in FAQ[:12]] + ["do you ship abroad", *CORRECTIONS]
    for n, question in enumerate(asked):
        reply = client.post("/api/chat", json={"message": question, "user": f"customer-{n}"})
        assert reply.status_code == 200 and reply.get_json()["model"] == FT_MODEL, reply.get_json()
    hosted = live_version(db)
    assert hosted.name == FT_MODEL

    out = run(config, "migrate", "plan")
    assert "shuts down 2027-01-14" in out and f"{len(asked)} distinct questions answered" in out

    fake_teacher.rate_limited = {"do you ship abroad": 1}  # one 429 with Retry-After: 0 on the way
    out = run(config, "migrate", "harvest")
    assert f"{len(CORRECTIONS)} kept as approved corrections" in out and "1 waits on rate limits" in out
    assert f"{len(CORRECTIONS)} kept" in out
    assert "teacher" in out.split("rows by source:")[1]
    assert not set(CORRECTIONS) & set(fake_teacher.closed_book_asks())

    out = run(config, "migrate", "train")
    candidate_name = out.split("candidate ")[-1].split(" ")[0]
    candidate = get_version(db, out.split(f"candidate {candidate_name} (")[1].split(")")[0])
    assert candidate.base_url == open_server.base_url and candidate.adapter_path and candidate.api_key_env is None

    # The open base alone never learned the approved corrections: worse than the ft: model, rejected.
    base = create_candidate(db, name="starter", provider="builtin", base_model="starter")
    base = serving.pin(db, base, open_server.base_url, "", actor="test")
    out = run(config, "migrate", "evaluate", "starter", "--switch", "--suite", "corrections", expect=1)
    assert "verdict: FAILED" in out and "corrections (closed book)" in out
    assert get_version(db, base.id).status == "rejected" and live_version(db).id == hosted.id

    out = run(config, "migrate", "evaluate", candidate.name, "--switch")
    assert "verdict: PASSED" in out and f"switched: {candidate.name} is live" in out
    assert f"{FT_MODEL} answers as a fallback through 2027-01-13" in out
    assert live_version(db).id == candidate.id and get_version(db, hosted.id).fallback_until == "2027-01-13"

    # The same gateway, no restart: the open model answers; the ft: model only when it cannot.
    reply = client.post("/api/chat", json={"message": FAQ[0][0], "user": "after"}).get_json()
    assert reply["model"] == candidate.name, reply
    fake_teacher.answered.clear()
    stop_model_server(open_server)
    reply = client.post("/api/chat", json={"message": FAQ[1][0], "user": "after"}).get_json()
    assert reply["model"] == FT_MODEL and reply["answer"] == FAQ[1][1], reply
    assert sum(fake_teacher.answered.values()) == 1

    out = run(config, "models", "rollback")
    assert live_version(db).id == hosted.id
    db.close()
