"""``tuneloop kb``: the first command seeds the FAQ; list, search, add, edit, retire, restore, import, export."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cli.main import cli
from feedback import review
from feedback.db import open_db
from feedback.knowledge import store

SHIPPING = "How much is the shipping fee?"


def run(tmp_path, *args, code: int = 0):
    env = {"TUNELOOP_PATHS__DATA_DIR": str(tmp_path / "var"), "USER": "ana"}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_the_first_command_seeds_and_search_ranks_like_the_gateway(tmp_path):
    assert run(tmp_path, "kb", "list", "--limit", "3").startswith("184 active, 0 retired")
    found = json.loads(run(tmp_path, "kb", "search", "postage cost?", "--json"))
    assert found[0]["question"] == SHIPPING and found[0]["given"] is True
    assert "below knowledge.min_score" in run(tmp_path, "kb", "search", "do you like pizza", "-k", "2")


def test_add_edit_retire_restore_with_history(tmp_path):
    added = run(
        tmp_path, "kb", "add", "--question", "Do you ship abroad?", "--question", "intl shipping?", "--answer", "No."
    )
    entry_id = added.split()[1].rstrip(":")
    run(
        tmp_path,
        "kb",
        "edit",
        entry_id,
        "--answer",
        "Yes, to Japan.",
        "--add-question",
        "ship to japan?",
        "--reason",
        "new policy",
    )
    shown = json.loads(run(tmp_path, "kb", "show", entry_id, "--json"))
    assert shown["answer"] == "Yes, to Japan." and shown["questions"] == [
        "Do you ship abroad?",
        "intl shipping?",
        "ship to japan?",
    ]
    assert [(h["version"], h["actor"], h["reason"]) for h in shown["history"]] == [
        (2, "ana", "new policy"),
        (1, "ana", "added"),
    ]
    run(tmp_path, "kb", "retire", entry_id, "--reason", "withdrawn")
    assert json.loads(run(tmp_path, "kb", "search", "ship to japan?", "--json"))[0]["id"] != entry_id
    run(tmp_path, "kb", "restore", entry_id, "--version", "1")
    db = open_db(tmp_path / "var" / "tuneloop.db")
    restored = store.get_entry(db, entry_id)
    assert (restored.answer, restored.state, restored.version) == ("No.", "active", 4)
    out = run(tmp_path, "kb", "add", "--question", SHIPPING, "--answer", "x", code=1)
    assert "already belongs to entry" in out


def test_export_import_round_trip_and_a_bad_file(tmp_path):
    path = tmp_path / "kb.jsonl"
    run(tmp_path, "kb", "export", "-o", str(path))
    assert len(path.read_text(encoding="utf-8").splitlines()) == 184
    assert "0 new, 0 updated, 0 retired, 184 unchanged" in run(tmp_path, "kb", "import", str(path))
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nGift wrap?,Yes.\nOpen Sundays?,\n", encoding="utf-8")
    out = run(tmp_path, "kb", "import", str(bad), code=2)
    assert "line 3, answer: must not be empty" in out and "nothing was imported" in out
    good = tmp_path / "good.csv"
    good.write_text("question,answer\nGift wrap?,Yes.\n", encoding="utf-8")
    assert "would import: 1 new" in run(tmp_path, "kb", "import", str(good), "--dry-run")
    assert run(tmp_path, "kb", "list", "--search", "Gift wrap").count("Gift wrap") == 0
    assert "imported: 1 new" in run(tmp_path, "kb", "import", str(good))
    assert "Gift wrap?" in run(tmp_path, "kb", "export")


def test_approving_a_review_item_says_where_it_went_live(tmp_path):
    run(tmp_path, "review", "list")
    db = open_db(tmp_path / "var" / "tuneloop.db")
    item = review.create_item(db, question="how much is the shipping fee")
    out = run(tmp_path, "review", "approve", item.id, "--answer", "3,500 won.")
    entry = store.entry_for_question(db, SHIPPING)
    assert f"live now in knowledge-base entry {entry.id}" in out and entry.answer == "3,500 won."
