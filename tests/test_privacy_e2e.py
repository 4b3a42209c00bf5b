"""Erasure on request, end to end, over real HTTP: real gunicorn (2 gevent workers) on the real built-in model
server running a tiny model, a real SQLite file, the real CLI.

Two users, each with a unique marker in everything they type, chat and rate through ``/api/chat`` and
``/api/feedback`` (thumbs-down with comments and corrections, and a thumbs-up that makes a training row). Their
questions are near-duplicates, so the weekly collect puts both in one review item, which a reviewer approves
with Alice's own correction — her words become a knowledge-base answer. A dataset is built (the correction and
both up-voted answers are rows), the week's report is written and an evaluation stores its rows. Then Alice is
erased with ``tuneloop privacy erase`` while the gateway still holds its connections open, and:

- not one byte of her marker is left in any file under ``paths.data_dir`` — the database, its write-ahead log,
  the dataset files, the reports, the evaluation rows — in any letter case (keys are stored lowercased);
- Bob's export does not mention her, and everything of Bob's is intact: his turns, ratings, comments and
  corrections, his phrasing (now the review item's question) in the review queue and the knowledge base, his
  row in the rewritten dataset, his comment in the rebuilt report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from config.settings import load_settings
from feedback.db import open_db
from feedback.knowledge import store
from feedback.report import generate_report
from feedback.report.weeks import last_complete_week, shift_week
from feedback.review import get_item
from feedback.versions import create_candidate
from server.admin.auth import SECRET_NAME
from tests.plugins.gateway import start_gunicorn_gateway, stop_gateway
from trainer.dataset.build import build_dataset
from trainer.evaluation.run import evaluate

pytestmark = pytest.mark.slow

ALICE, BOB = "ZqxAlice7731", "ZqxBob4412"


def question(marker: str, day: int) -> str:
    return f"Where is my parcel? My order code is {marker} and it has not arrived, day {day}"


def correction(marker: str) -> str:
    return f"Parcels for {marker} ship on Monday from the Incheon hub."


def files_holding(folder: Path, marker: str) -> list[str]:
    """Every file under ``folder`` whose bytes hold ``marker`` in any letter case (ASCII)."""
    needle = marker.lower().encode()
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes().lower()
    )


@pytest.fixture(scope="module")
def platform(tmp_path_factory, model_server, tiny_model_dir):
    folder = tmp_path_factory.mktemp("privacy-e2e")
    gw = start_gunicorn_gateway(
        folder,
        model_server.base_url,
        extra={
            "model_server": {"model_dir": str(tiny_model_dir)},
            "model": {"first_token_timeout_s": 30.0, "timeout_s": 60.0},
            "dataset": {"include_upvoted_min": 1},
            "chat": {"max_tokens": 24},
            "evaluation": {"max_tokens": 16},
        },
        timeout_s=60,
    )
    yield gw, folder / "gateway.toml"
    stop_gateway(gw)


def chat(gw, user: str, message: str) -> dict:
    r = httpx2.post(f"{gw.url}/api/chat", json={"message": message, "user": user}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def rate(gw, user: str, answer: dict, rating: str, **details) -> None:
    body = {"message_id": answer["message_id"], "feedback_token": answer["feedback_token"], "rating": rating}
    r = httpx2.post(f"{gw.url}/api/feedback", json={**body, "user": user, **details}, timeout=30)
    assert r.status_code == 200, r.text


def tuneloop(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    command = [str(Path(sys.executable).with_name("tuneloop")), "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_erasing_one_user_leaves_no_byte_of_them_and_all_of_the_other(platform, model_server):
    gw, config = platform
    settings = load_settings(config, env={})
    for user, marker in ((ALICE.lower(), ALICE), (BOB.lower(), BOB)):
        for day in range(1, 4):
            answer = chat(gw, user, question(marker, day))
            rate(
                gw,
                user,
                answer,
                "down",
                reason="wrong",
                comment=f"still waiting, {marker}",
                correction=correction(marker),
            )
        kept = chat(gw, user, f"Can I pay with points at the {marker} branch?")
        rate(gw, user, kept, "up")

    db = open_db(settings.db_path)
    token = db.execute("SELECT value FROM instance_secrets WHERE name = ?", [SECRET_NAME]).fetchone()[0]
    admin = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    r = httpx2.post(f"{gw.url}/admin/review/collect", headers=admin, follow_redirects=False, timeout=60)
    assert r.status_code == 302, r.text
    items = httpx2.get(f"{gw.url}/admin/api/review?status=pending", headers=admin, timeout=30).json()["items"]
    (item,) = [i for i in items if ALICE in json.dumps(i) and BOB in json.dumps(i)]
    assert ALICE in item["question"], "the collect put both users' phrasings in one item, led by Alice's"
    r = httpx2.post(
        f"{gw.url}/admin/api/review/{item['id']}/approve",
        json={"answer": correction(ALICE), "reviewer": "ana"},
        headers=admin,
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["answer_source"] == "user", r.text
    entry_id = r.json()["kb_entry_id"]

    built = build_dataset(db, settings)
    dataset_text = "".join((built.path / f).read_text() for f in ("train.jsonl", "val.jsonl", "test.jsonl"))
    assert ALICE in dataset_text and BOB in dataset_text
    week = shift_week(last_complete_week(settings.report.timezone), 1)  # this week, where the chats are
    _, report_paths = generate_report(db, settings, week=week)
    assert ALICE in report_paths["json"].read_text() and BOB in report_paths["json"].read_text()
    candidate = create_candidate(db, name=model_server.name, provider="builtin", base_model=model_server.name)
    evaluation = evaluate(db, settings, candidate.id, suites=["corrections", "test"])
    assert ALICE in Path(evaluation.rows_path).read_text()
    before = {
        table: db.execute(sql, [f"%{BOB}%"]).fetchone()[0]
        for table, sql in {
            "messages": "SELECT COUNT(*) FROM messages WHERE content LIKE ?",
            "comments": "SELECT COUNT(*) FROM feedback WHERE comment LIKE ?",
            "corrections": "SELECT COUNT(*) FROM feedback WHERE correction LIKE ?",
        }.items()
    }
    assert files_holding(settings.data_dir, ALICE), "the marker is on disk before the erasure"
    db.close()

    erased = tuneloop(
        config, "privacy", "erase", "--user", ALICE.lower(), "--requested-by", "the customer, ticket 4411", "--yes"
    )
    assert erased.returncode == 0, erased.stderr + erased.stdout
    assert "WAL truncated" in erased.stdout, erased.stdout

    assert files_holding(settings.data_dir, ALICE) == []
    exported = tuneloop(config, "privacy", "export", "--user", BOB.lower())
    assert exported.returncode == 0, exported.stderr
    assert ALICE.lower() not in exported.stdout.lower()
    export = json.loads(exported.stdout)
    assert len(export["conversations"]) == 4
    assert sum(len(c["ratings"]) for c in export["conversations"]) == 4

    db = open_db(settings.db_path)
    after = {
        table: db.execute(sql, [f"%{BOB}%"]).fetchone()[0]
        for table, sql in {
            "messages": "SELECT COUNT(*) FROM messages WHERE content LIKE ?",
            "comments": "SELECT COUNT(*) FROM feedback WHERE comment LIKE ?",
            "corrections": "SELECT COUNT(*) FROM feedback WHERE correction LIKE ?",
        }.items()
    }
    assert after == before and after["corrections"] == 3
    kept = get_item(db, item["id"])
    assert BOB in kept.question and kept.status == "pending", "Bob's phrasing stands for the item; Alice's answer left"
    assert any(BOB in c["comment"] for c in kept.evidence["comments"])
    assert BOB in json.dumps(store.get_entry(db, entry_id).questions)
    assert BOB in "".join((built.path / f).read_text() for f in ("train.jsonl", "val.jsonl", "test.jsonl"))
    manifest = json.loads((built.path / "manifest.json").read_text())
    assert manifest["erasures"][-1]["why"] == "erasure on request" and manifest["erasures"][-1]["rows_removed"]
    assert BOB in report_paths["json"].read_text()
    (run,) = db.execute("SELECT requested_by, state, counts, left_machine FROM erasures WHERE kind = 'user'").fetchall()
    assert run[:2] == ("the customer, ticket 4411", "done")
    counts = json.loads(run[2])
    assert counts["conversations"] == 4 and counts["comments"] == 3 and counts["dataset_rows"] >= 2
    assert counts["evaluation_rows"] >= 1 and counts["reports_rebuilt"] == 1 and counts["kb_entries_changed"] == 1
    assert any(copy["kind"] == "backups" for copy in json.loads(run[3]))
    db.close()
