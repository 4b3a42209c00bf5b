"""``tuneloop migrate`` without training: shutdown dates, the teacher's rate limits, the harvest (masked,
resumable — also after a kill), the dataset's lineage, the plan, and the gateway's fallback to the replaced
model until its shutdown. The hosted ``ft:`` model is the fake of ``tests/plugins/openai_teacher.py``
(OpenAI's wire format over real HTTP); everything else is real: SQLite, the gateway app, the CLI process.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import sqlite_utils
from click.testing import CliRunner

from cli.main import cli
from config.errors import UpstreamError
from config.settings import PROJECT_ROOT, load_settings
from feedback.db import open_db, open_store
from feedback.migrations import MIGRATIONS
from feedback.review import approve, create_item
from feedback.shutdown import shutdown_date
from feedback.text import question_key
from feedback.versions import create_candidate, fallback_versions, get_version, live_version
from server.app import create_app
from tests.plugins.gateway import gateway_settings, write_config
from tests.plugins.model import tuneloop_exe
from tests.plugins.openai_teacher import FT_MODEL, TEACHER_KEY, UNSURE
from trainer.evaluation.suites import reworded_cases
from trainer.migration import harvest as harvesting
from trainer.migration import serving
from trainer.migration import teacher as teaching
from trainer.starter import load_pairs

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

KEY_ENV = "TUNELOOP_TEST_TEACHER_KEY"
FAQ = load_pairs(PROJECT_ROOT / "data" / "faq.jsonl")
# Questions users asked the hosted model (one with an e-mail address and a phone number in it).
ASKED = [q for q, _ in FAQ[:6]] + [
    "my email is kim.minji@example.com and phone 010-1234-5678, where is my order?",
    "how long does shipping take",
]
CORRECTED = FAQ[2][0]  # rated down, and a reviewer approved a new answer
NEW_ANSWER = "Couriers deliver every day, Sundays included."


@pytest.fixture
def platform(tmp_path, fake_teacher, httpserver, monkeypatch, database_url):
    """A gateway serving the fake ft: model, users' questions answered, one correction approved (on the test's
    engine: the config file the CLI reads names the same store)."""
    monkeypatch.setenv(KEY_ENV, TEACHER_KEY)
    fake_teacher.teach(FAQ)
    values = {
        "model.provider": "openai",
        "model.name": FT_MODEL,
        "model.api_key_env": KEY_ENV,
        "model.retries": 0,
        "migrate.concurrency": 2,
        "migrate.harvest_reworded": False,
        "dataset.val_fraction": 0.0,
        "dataset.test_fraction": 0.0,
        **({"database.url": database_url} if database_url else {}),
    }
    settings = gateway_settings(tmp_path / "var", httpserver.url_for("/v1"), **values)
    app = create_app(settings=settings)
    client = app.test_client()
    for n, question in enumerate(ASKED * 2):  # each asked twice: asked of the teacher once
        reply = client.post("/api/chat", json={"message": question, "user": f"u{n}"})
        assert reply.status_code == 200, reply.get_json()
    db = open_store(settings)
    item = create_item(db, question=CORRECTED, origin="manual")
    approve(db, item.id, answer=NEW_ANSWER, reviewer="reviewer@test")
    fake_teacher.answered.clear()
    config = write_config(
        tmp_path / "tuneloop.toml",
        nested({**values, "paths.data_dir": str(tmp_path / "var"), "model.base_url": httpserver.url_for("/v1")}),
    )
    yield settings, db, config
    db.close()


def nested(dotted: dict) -> dict:
    """``{"a.b": 1}`` → ``{"a": {"b": 1}}``, what ``write_config`` takes."""
    out: dict = {}
    for key, value in dotted.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def test_shutdown_dates_cover_openai_fine_tuned_models_by_base():
    dates = load_settings(env={}).report.shutdown_dates
    assert shutdown_date(FT_MODEL, dates) == datetime.date(2027, 1, 14)
    assert shutdown_date("ft:gpt-4.1-2025-04-14:org::x1", dates) == datetime.date(2027, 1, 14)
    assert shutdown_date("ft:gpt-4.1-mini-2025-04-14:org::x1", dates) == datetime.date(2027, 1, 14)
    assert shutdown_date("gpt-4o-mini", dates) is None  # the base model itself is not announced
    assert shutdown_date("ft:gpt-3.5-turbo-0125:org::x1", dates) is None
    mine = load_settings(env={}, overrides={"report.shutdown_dates": {FT_MODEL: "2026-12-31"}}).report
    assert shutdown_date(FT_MODEL, mine.shutdown_dates) == datetime.date(2026, 12, 31)  # the exact name wins
    assert shutdown_date("ft:gpt-4o-2024-08-06:o::y", mine.shutdown_dates) == datetime.date(2027, 1, 14)


def test_the_teacher_is_asked_again_after_the_retry_after_it_sent(platform, fake_teacher, monkeypatch):
    settings, db, _ = platform
    fake_teacher.rate_limited = {"hello": 2}
    fake_teacher.retry_after = "7"
    waited = []
    target = teaching.teacher_target(settings, teaching.teacher_version(db, settings))
    client = teaching.teacher_client(settings)
    answer = teaching.ask(client, target, [{"role": "user", "content": "hello"}], settings, sleep=waited.append)
    assert answer == UNSURE and waited == [7.0, 7.0]
    assert fake_teacher.throttled["hello"] == 2 and fake_teacher.answered[("hello", True)] == 1
    # A bad key is not retried: waiting cannot fix it.
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    target = teaching.teacher_target(settings, teaching.teacher_version(db, settings))
    with pytest.raises(UpstreamError, match="401"):
        teaching.ask(client, target, [{"role": "user", "content": "hi"}], settings, sleep=waited.append)
    assert waited == [7.0, 7.0]


def test_harvest_masks_skips_corrections_and_never_asks_twice(platform, fake_teacher):
    settings, db, _ = platform
    fake_teacher.rate_limited = {"how long does shipping take": 1}
    waited = []
    result = harvesting.harvest(db, settings, sleep=waited.append)
    asked = fake_teacher.closed_book_asks()
    golden = {q for q, _ in load_pairs(PROJECT_ROOT / "data" / "golden.jsonl")}
    assert result.failed == [] and result.corrected == 1 and result.masked == 1 and waited == [0.0]
    assert CORRECTED not in asked  # its approved correction is the training row
    sent = [q for q, _ in fake_teacher.answered]  # both views
    assert not [q for q in sent if "kim.minji" in q or "1234" in q]  # nothing personal left the platform
    assert "my email is [EMAIL] and phone [PHONE], where is my order?" in asked
    assert golden <= set(asked) and max(asked.values()) == 1
    assert len(asked) == sum(result.by_origin.values()) and result.asked == 2 * len(asked)  # closed book, as served
    assert max(fake_teacher.answered.values()) == 1
    assert result.by_origin["user"] == len(ASKED) - 1
    # Again: everything is in the journal, nothing is asked.
    again = harvesting.harvest(db, settings)
    assert again.asked == 0 and again.resumed == result.asked and max(fake_teacher.answered.values()) == 1

    built = harvesting.build(db, settings, teaching.teacher_version(db, settings))
    manifest = built.manifest
    assert manifest["counts"]["teacher_answers"] == len(asked)
    assert manifest["as_served"]["teacher_rows"] > 0  # questions with no knowledge-base entry of their own
    teacher_rows = [r for r in manifest["rows"]["train"] if r["source"] == "teacher"]
    assert teacher_rows and {r["model"] for r in teacher_rows} == {FT_MODEL}
    assert {r["asked"] for r in teacher_rows} >= {"user", "golden"}
    assert {r["view"] for r in teacher_rows} == {"closed_book", "as_served"}
    train = [json.loads(line) for line in (Path(built.path) / "train.jsonl").read_text().splitlines()]
    answers = {r["messages"][-2]["content"]: r["messages"][-1]["content"] for r in train}
    assert answers[CORRECTED] == NEW_ANSWER  # the correction, not the teacher's (never asked) answer


def test_the_reworded_suite_is_never_harvested(platform, fake_teacher):
    settings, db, _ = platform
    settings = load_settings(env={}, overrides={**_flat(settings), "migrate.harvest_reworded": True})
    todo, _, _ = harvesting.questions(db, settings, teaching.teacher_version(db, settings))
    held_out = {c.question for c in reworded_cases(settings)}
    assert held_out and not held_out & {q.text for q in todo}
    assert any(q.asked == "reworded" for q in todo)


def _flat(settings) -> dict:
    return {
        "paths.data_dir": str(settings.data_dir),
        "database.url": settings.database.url,  # the same store, on either engine
        "model.base_url": settings.model.base_url,
        "model.provider": "openai",
        "model.name": FT_MODEL,
        "model.api_key_env": KEY_ENV,
    }


def test_a_killed_harvest_resumes_without_asking_twice(platform, fake_teacher, tmp_path):
    settings, db, config = platform
    fake_teacher.delay_s = 0.05
    journal = harvesting.journal_path(settings, live_version(db))
    env = {k: v for k, v in os.environ.items() if k != "TUNELOOP_CONFIG"}
    with open(tmp_path / "harvest.log", "wb") as log:
        process = subprocess.Popen(
            [tuneloop_exe(), "--config", str(config), "migrate", "harvest", "--no-build", "--quiet"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if journal.is_file() and journal.read_text().count("\n") >= 10:
            break
        time.sleep(0.05)
    assert process.poll() is None, (tmp_path / "harvest.log").read_text()
    process.send_signal(signal.SIGKILL)  # no chance to clean up
    process.wait()
    before = len(harvesting.read_journal(journal))
    assert before >= 10
    fake_teacher.delay_s = 0.0
    result = CliRunner().invoke(cli, ["--config", str(config), "migrate", "harvest"], env={"TUNELOOP_CONFIG": None})
    assert result.exit_code == 0, result.output
    asked = fake_teacher.answered
    # Each prompt answered once over both processes; whatever was in flight at the kill may be asked again,
    # at most concurrency (2) of them.
    assert f"{before} already in the journal" in result.output
    assert sum(asked.values()) - len(asked) <= 2
    assert len(harvesting.read_journal(journal)) == len(asked)
    assert "rows by source:" in result.output and "teacher" in result.output


def test_the_plan_shows_the_shutdown_the_data_and_the_costs(platform, fake_teacher):
    settings, db, config = platform
    result = CliRunner().invoke(
        cli, ["--config", str(config), "migrate", "plan"], env={"TUNELOOP_CONFIG": None}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    out = result.output
    left = (datetime.date(2027, 1, 14) - datetime.datetime.now(datetime.timezone.utc).date()).days
    assert f"{FT_MODEL} (live" in out and f"shuts down 2027-01-14 ({left} days left)" in out
    assert f"{len(ASKED)} distinct questions answered" in out and "1 approved corrections" in out
    golden = {question_key(q) for q, _ in load_pairs(PROJECT_ROOT / "data" / "golden.jsonl")}
    golden |= {question_key(q) for q, _ in load_pairs(PROJECT_ROOT / "data" / "golden-rewordings.jsonl")}
    also_asked = len(golden & {question_key(q) for q in ASKED})  # asked once, as the users' question
    assert f"{len(ASKED) - 1} user questions, {len(golden) - also_asked} golden" in out
    assert "closed book and as served" in out and "1 kept as their approved correction; 1 masked" in out
    assert "harvest" in out and "$" in out and "train" in out and "evaluate" in out
    plan = json.loads(
        CliRunner()
        .invoke(cli, ["--config", str(config), "migrate", "plan", "--json"], env={"TUNELOOP_CONFIG": None})
        .output
    )
    harvest_step = plan["steps"][0]
    assert harvest_step["step"] == "harvest" and harvest_step["cost_usd"] > 0
    assert fake_teacher.closed_book_asks() == {}  # planning asks nothing


def test_the_gateway_falls_back_to_the_replaced_model_until_its_shutdown(platform, fake_teacher, httpserver):
    settings, db, config = platform
    teacher = serving.pin_teacher(db, settings, live_version(db), actor="test")
    assert teacher.base_url == httpserver.url_for("/v1") and teacher.api_key_env == KEY_ENV
    # The open model's server is down (nothing listens on port 9), and it holds no key of the teacher's.
    candidate = create_candidate(db, name="starter-ft-x", provider="builtin", base_model="starter")
    candidate = serving.pin(db, candidate, "http://127.0.0.1:9/v1", "", actor="test")
    db.execute("UPDATE model_versions SET status = 'retired' WHERE id = ?", [teacher.id])
    db.execute("UPDATE model_versions SET status = 'live' WHERE id = ?", [candidate.id])
    db.conn.commit()
    today = datetime.datetime.now(datetime.timezone.utc).date()
    serving.keep_as_fallback(
        db, get_version(db, teacher.id), (today + datetime.timedelta(days=3)).isoformat(), actor="t"
    )
    listed = CliRunner().invoke(cli, ["--config", str(config), "models", "list"], env={"TUNELOOP_CONFIG": None})
    assert f"{FT_MODEL}  (fallback through {today + datetime.timedelta(days=3)})" in listed.output
    app = create_app(settings=load_settings(env={}, overrides={**_flat(settings), "gateway.model_cache_s": 0.0}))
    question = FAQ[0][0]
    reply = app.test_client().post("/api/chat", json={"message": question, "user": "x"})
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["model"] == FT_MODEL and reply.get_json()["answer"] == FAQ[0][1]
    assert set(fake_teacher.auth) == {f"Bearer {TEACHER_KEY}"}
    # Past its last day it is no fallback any more: the request fails instead.
    serving.keep_as_fallback(
        db, get_version(db, teacher.id), (today - datetime.timedelta(days=1)).isoformat(), actor="t"
    )
    reply = app.test_client().post("/api/chat", json={"message": question, "user": "x"})
    assert reply.status_code in (502, 503) and reply.get_json()["error"]["code"]


def test_m013_keeps_every_version_and_makes_none_a_fallback(tmp_path):
    path = tmp_path / "old.db"
    raw = sqlite_utils.Database(sqlite3.connect(path))
    MIGRATIONS.apply(raw, stop_before="m013_model_version_server_key_and_fallback")
    raw.execute(
        "INSERT INTO model_versions (id, name, provider, base_model, status, traffic_weight, created_at) "
        "VALUES ('mv_old', ?, 'openai', ?, 'live', 1.0, '2026-01-01T00:00:00Z')",
        [FT_MODEL, FT_MODEL],
    )
    raw.conn.commit()
    raw.close()
    db = open_db(path)
    try:
        live = live_version(db)
        assert (live.id, live.api_key_env, live.fallback_until) == ("mv_old", None, None)
        assert live.api_key("the configured key") == "the configured key"
        assert fallback_versions(db, "2000-01-01") == []
    finally:
        db.close()
