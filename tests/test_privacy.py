"""Erasure and export on request through the gateway's real routes (a real SQLite file, the scripted upstream over
HTTP, which answers "echo: <message>" so answers carry the user's words too): who is found under which API key,
what counts as someone's own words, what happens to a review item and its knowledge-base entry, the dry run, the
erasure log, the widget's ``DELETE /api/conversations/<id>``, and the admin page and API."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli.main import cli
from feedback import apikeys, audit, review
from feedback.audit import Actor
from feedback.db import column_names, open_store, write_transaction
from feedback.knowledge import store
from feedback.privacy.erase import erase, masker
from feedback.privacy.export import export
from feedback.privacy.knowledge_base import ERASED
from feedback.privacy.subjects import Subject, find_rows, reference_secret
from feedback.privacy.texts import Texts, own_texts
from feedback.report import generate_report
from feedback.report.weeks import last_complete_week, shift_week
from feedback.versions import create_candidate, live_version
from server.admin import admin_token
from server.routes.api import CONVERSATION_OWNER
from tests.plugins.accounts import csrf_field
from tests.plugins.gateway import write_config
from trainer.dataset.build import build_dataset
from trainer.providers.runs import create_run
from trainer.providers.runs import log as log_event

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

OPS = Actor("ops@example.com", via="cli")
FOREVER = {"since": "2000-01-01T00:00:00.000Z", "until": "2100-01-01T00:00:00.000Z"}


@pytest.fixture
def app(make_gateway):
    return make_gateway()


@pytest.fixture
def c(app):
    return app.test_client()


@pytest.fixture
def db(app):
    database = open_store(app.extensions["tuneloop"].settings)
    yield database
    database.close()


@pytest.fixture
def settings(app):
    return app.extensions["tuneloop"].settings


def say(c, user: str | None, message: str, key: str | None = None) -> dict:
    body = {"message": message, **({"user": user} if user else {})}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = c.post("/api/chat", json=body, headers=headers)
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


def vote(c, user: str, answer: dict, rating: str = "down", key: str | None = None, **details) -> None:
    body = {"message_id": answer["message_id"], "feedback_token": answer["feedback_token"], "rating": rating}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = c.post("/api/feedback", json={**body, "user": user, **details}, headers=headers)
    assert r.status_code == 200, r.get_data(as_text=True)


def marker_rows(db, marker: str) -> int:
    """Rows of any table holding ``marker`` in any column, in any letter case."""
    found = 0
    for table in db.table_names():
        columns = column_names(db, table)
        if not columns:
            continue
        where = " OR ".join(f"lower(CAST({col} AS TEXT)) LIKE ?" for col in columns)
        found += db.execute(
            f"SELECT COUNT(*) FROM {table} WHERE {where}", [f"%{marker.lower()}%"] * len(columns)
        ).fetchone()[0]
    return found


def parcel(marker: str, n: int) -> str:
    return f"Where is my parcel? Order code {marker}, try {n}"


def asks_five_times(c, user: str, marker: str, comment: bool = True) -> None:
    for n in range(5):
        details = {"comment": f"late again {marker}", "correction": f"It ships today {marker}"} if comment else {}
        vote(c, user, say(c, user, parcel(marker, n)), **details)


def collect(db) -> review.ReviewItem:
    result = review.collect_worst(db, model_version_id=live_version(db).id, **FOREVER)
    (item,) = result.added
    return item


def test_a_user_is_found_under_every_api_key_or_the_one_named(c, db, settings):
    _, k1 = apikeys.create_key(db, "shop", actor="t")
    _, k2 = apikeys.create_key(db, "app", actor="t")
    say(c, "u-7", "first, on the shop Qmark1", key=k1)
    say(c, "u-7", "second, on the app Qmark2", key=k2)
    say(c, "u-7", "third, without a key Qmark3")
    say(c, "u-8", "someone else Qmark4", key=k1)
    shop = next(k for k in apikeys.list_keys(db) if k.name == "shop")
    narrowed = erase(db, settings, Subject.of(user="u-7", key=shop.prefix), requested_by="ticket 1", actor=OPS)
    assert narrowed.counts["conversations"] == 1 and narrowed.subject == f"a user under API key {shop.prefix}"
    assert marker_rows(db, "Qmark1") == 0 and marker_rows(db, "Qmark2") and marker_rows(db, "Qmark3")
    everywhere = erase(db, settings, Subject.of(user="u-7"), requested_by="ticket 1", actor=OPS)
    assert everywhere.counts["conversations"] == 2 and everywhere.counts["messages"] == 4
    assert marker_rows(db, "Qmark2") == marker_rows(db, "Qmark3") == 0 and marker_rows(db, "Qmark4") == 2


def test_own_words_leave_out_what_someone_else_or_the_company_wrote_too(c, db, settings):
    faq_question = store.all_entries(db)[0].question
    for user in ("alice", "bob"):
        say(c, user, "What is the shipping fee?")
    say(c, "alice", faq_question)
    say(c, "alice", "My number is 010-2345-6789, call me")
    rows = find_rows(db, reference_secret(db, settings), Subject.of(user="alice"))
    texts = own_texts(db, rows.conversation_ids, rows.vote_ids)
    assert "My number is 010-2345-6789, call me" in texts
    assert "What is the shipping fee?" not in texts and "echo: What is the shipping fee?" not in texts
    assert faq_question not in texts
    recogniser = Texts.of(texts, masker(settings))
    assert recogniser.matches("my number is [PHONE], call me")  # the masked copy a dataset or report holds
    assert recogniser.matches("Quoted: my NUMBER is 010-2345-6789,  call me!")
    assert not recogniser.matches("call me")  # too short to be recognised inside something else


def test_an_item_only_the_erased_user_supports_goes_and_so_do_its_phrasings_and_quotes(c, db, settings):
    asks_five_times(c, "alice", "Zmark5")
    item = collect(db)
    approved = review.approve(db, item.id, answer="Parcels ship within two days.", reviewer="ana", kb_entry="new")
    entry = store.get_entry(db, approved.kb_entry_id)
    assert "Zmark5" in json.dumps(entry.questions)
    result = erase(db, settings, Subject.of(user="alice"), requested_by="the customer", actor=OPS)
    assert result.counts["review_items_deleted"] == 1 and result.counts["kb_entries_retired"] == 1
    with pytest.raises(Exception, match="no review item"):
        review.get_item(db, item.id)
    retired = store.get_entry(db, entry.id)
    assert retired.state == "retired" and retired.questions == (ERASED,)
    assert retired.answer == "Parcels ship within two days."  # the reviewer's words are not the user's
    assert all(ERASED in row.questions for row in store.history(db, entry.id))
    quotes = [e.details.get("question") for e in audit.entries(db, audit.Filters(target=item.id))]
    assert quotes and set(quotes) == {ERASED}
    assert marker_rows(db, "Zmark5") == 0


def test_an_item_another_user_supports_keeps_the_reviewers_answer_under_their_phrasing(c, db, settings):
    asks_five_times(c, "alice", "Amark6")
    asks_five_times(c, "bob", "Bmark6")
    item = collect(db)
    assert "Amark6" in item.question  # ties go to the first key: Alice's phrasing leads the group
    review.approve(db, item.id, answer="Parcels ship within two days.", reviewer="ana", kb_entry="new")
    result = erase(db, settings, Subject.of(user="alice"), requested_by="the customer", actor=OPS)
    assert result.counts["review_items_changed"] == 1 and result.counts["review_items_unapproved"] == 0
    kept = review.get_item(db, item.id)
    assert kept.status == "approved" and kept.answer == "Parcels ship within two days." and "Bmark6" in kept.question
    assert len(kept.evidence["comments"]) >= 1 and all("Bmark6" in x["comment"] for x in kept.evidence["comments"])
    entry = store.get_entry(db, kept.kb_entry_id)
    assert entry.active and "Bmark6" in json.dumps(entry.questions) and "Amark6" not in json.dumps(entry.questions)
    assert store.entry_for_question(db, kept.question).id == entry.id  # still served for Bob's words
    assert marker_rows(db, "Amark6") == 0 and marker_rows(db, "Bmark6") > 0


def test_a_dry_run_counts_exactly_what_the_erasure_then_does_and_changes_nothing(c, db, settings):
    asks_five_times(c, "alice", "Dmark7")
    asks_five_times(c, "bob", "Emark7")
    item = collect(db)
    review.approve(db, item.id, answer="It ships today Dmark7", reviewer="ana")  # Alice's correction, as is
    before = marker_rows(db, "Dmark7")
    preview = erase(db, settings, Subject.of(user="alice"), requested_by="", actor=OPS, dry_run=True)
    assert marker_rows(db, "Dmark7") == before and preview.id is None
    assert db.execute("SELECT COUNT(*) FROM erasures").fetchone()[0] == 0
    done = erase(db, settings, Subject.of(user="alice"), requested_by="the customer", actor=OPS)
    assert done.counts == preview.counts and done.counts["review_items_unapproved"] == 1
    assert review.get_item(db, item.id).status == "pending"  # the answer was her words; Bob's question waits
    assert marker_rows(db, "Dmark7") == 0


def test_the_erasure_log_and_the_audit_log_keep_counts_never_content(c, db, settings):
    asks_five_times(c, "alice", "Lmark8")
    with pytest.raises(Exception, match="who asked"):
        erase(db, settings, Subject.of(user="alice"), requested_by=" ", actor=OPS)
    result = erase(db, settings, Subject.of(user="alice"), requested_by="alice, 010-2345-6789", actor=OPS)
    row = db.execute("SELECT * FROM erasures WHERE id = ?", [result.id]).fetchone()
    text = json.dumps(row)
    assert "Lmark8".lower() not in text.lower() and "010-2345-6789" not in text and "[PHONE]" in text
    assert "alice" not in json.dumps(row[2:3])  # the subject column is a keyed hash
    (entry,) = audit.entries(db, audit.Filters(action="privacy.erase"))
    assert entry.actor == "ops@example.com" and entry.details["conversations"] == 5 and entry.target == result.id
    again = erase(db, settings, Subject.of(user="alice"), requested_by="alice asked twice", actor=OPS)
    assert again.counts["conversations"] == 0
    subjects = {r[0] for r in db.execute("SELECT subject FROM erasures")}
    assert len(subjects) == 1, "a repeated request is recognisable by its hash"


def test_export_holds_the_subjects_data_and_where_it_was_copied_but_no_one_elses(c, db, settings):
    asks_five_times(c, "alice", "Xmark9")
    asks_five_times(c, "bob", "Ymark9", comment=False)
    answer = say(c, "bob", "Another question Ymark9")
    vote(c, "bob", answer, "up", reason=None)
    via_responses = c.post(
        "/v1/responses",
        json={
            "model": "starter",
            "input": "Ymark9 once more",
            "user": "bob",
            "instructions": "Be kind to Ymark9",
            "metadata": {"ticket": "Ymark9-T1"},
        },
    )
    assert via_responses.status_code == 200, via_responses.get_data(as_text=True)
    item = collect(db)
    data = export(db, settings, Subject.of(user="bob"), actor=OPS)
    text = json.dumps(data)
    assert "xmark9" not in text.lower()
    assert len(data["conversations"]) == 7 and sum(len(c["ratings"]) for c in data["conversations"]) == 6
    (sent,) = [r for conv in data["conversations"] for r in conv["responses"]]
    assert sent["id"] == via_responses.get_json()["id"]
    assert (sent["instructions"], sent["metadata"]) == ("Be kind to Ymark9", {"ticket": "Ymark9-T1"})
    assert data["conversations"][0]["messages"][0]["content"].startswith("Where is my parcel?")
    (copied,) = data["copies"]["review_items"]
    assert copied["id"] == item.id and "evidence.variants" in copied["fields"]
    assert audit.entries(db, audit.Filters(action="privacy.export"))[0].details == {"kind": "user", "conversations": 7}


def test_the_widget_deletes_its_conversation_with_an_answers_token_and_nothing_else(c, db):
    _, publishable = apikeys.create_key(db, "site", kind="publishable", actor="t")
    widget = {"Authorization": f"Bearer {publishable}", "X-Tuneloop-Client": "widget"}
    first = c.post("/api/chat", json={"message": "hello Wmark10"}, headers=widget).get_json()
    second = c.post(
        "/api/chat", json={"message": "again Wmark10", "conversation_id": first["conversation_id"]}, headers=widget
    ).get_json()
    other = c.post("/api/chat", json={"message": "someone else Omark10"}, headers=widget).get_json()
    url = f"/api/conversations/{first['conversation_id']}"
    proof = {"message_id": second["message_id"], "feedback_token": second["feedback_token"]}
    wrong = c.delete(url, json={**proof, "feedback_token": other["feedback_token"]}, headers=widget)
    assert wrong.status_code == 403 and wrong.get_json()["error"]["code"] == "bad_feedback_token"
    foreign = c.delete(
        url, json={"message_id": other["message_id"], "feedback_token": other["feedback_token"]}, headers=widget
    )
    assert foreign.status_code == 404 and foreign.get_json()["error"]["field"] == "message_id"
    assert c.delete(url, json=proof).status_code == 404  # another caller (no key) cannot see it
    assert c.delete(url, json={"message_id": second["message_id"]}, headers=widget).status_code == 422
    done = c.delete(url, json=proof, headers=widget)
    assert done.status_code == 200, done.get_data(as_text=True)
    assert done.get_json() == {
        "conversation_id": first["conversation_id"],
        "deleted": True,
        "erased": done.get_json()["erased"],
    }
    assert done.get_json()["erased"]["messages"] == 4
    assert marker_rows(db, "Wmark10") == 0 and marker_rows(db, "Omark10") == 2
    assert c.delete(url, json=proof, headers=widget).status_code == 404
    (run,) = db.execute("SELECT kind, requested_by, run_by, via FROM erasures").fetchall()
    assert run == ("conversation", CONVERSATION_OWNER, CONVERSATION_OWNER, "api")


def test_the_admin_page_shows_what_would_go_before_it_erases(app, c, db, signed_in):
    asks_five_times(c, "alice", "Pmark11")
    admin, _ = signed_in(app, "admin")
    page = admin.get("/admin/privacy")
    assert page.status_code == 200 and "Erase on request" in page.get_data(as_text=True)
    csrf = csrf_field(page.get_data(as_text=True))
    form = {"csrf": csrf, "kind": "user", "value": "alice", "key": "", "requested_by": "ticket <b>9</b>"}
    preview = admin.post("/admin/privacy/erase", data=form)
    html = preview.get_data(as_text=True)
    assert preview.status_code == 200 and "Erase all of this" in html and 'name="confirm" value="yes"' in html
    assert "ticket &lt;b&gt;9&lt;/b&gt;" in html and marker_rows(db, "Pmark11") > 0
    done = admin.post("/admin/privacy/erase", data={**form, "confirm": "yes"})
    html = done.get_data(as_text=True)
    assert done.status_code == 200 and 'id="erased"' in html and "pmark11" not in html.lower()
    assert marker_rows(db, "Pmark11") == 0
    (run,) = db.execute("SELECT run_by, via, requested_by FROM erasures").fetchall()
    assert run == ("admin@example.com", "web", "ticket <b>9</b>")
    missing = admin.post("/admin/privacy/erase", data={**form, "kind": "conversation", "value": "conv_nope"})
    assert missing.status_code == 404 and "no conversation" in missing.get_data(as_text=True)


def test_the_admin_export_is_a_download_and_the_api_does_the_same_as_the_page(app, c, db, settings, signed_in):
    asks_five_times(c, "bob", "Kmark12")
    admin, _ = signed_in(app, "admin")
    csrf = csrf_field(admin.get("/admin/privacy").get_data(as_text=True))
    download = admin.post("/admin/privacy/export", data={"csrf": csrf, "kind": "user", "value": "bob"})
    assert download.status_code == 200 and download.mimetype == "application/json"
    assert "attachment" in download.headers["Content-Disposition"]
    assert len(json.loads(download.get_data())["conversations"]) == 5
    token = {"Authorization": f"Bearer {admin_token(settings, db)}"}
    body = {"user": "bob", "actor": "script"}
    assert len(c.post("/admin/api/privacy/export", json=body, headers=token).get_json()["conversations"]) == 5
    preview = c.post("/admin/api/privacy/erase", json={**body, "dry_run": True}, headers=token).get_json()
    assert preview["dry_run"] and preview["counts"]["conversations"] == 5
    refused = c.post("/admin/api/privacy/erase", json={"actor": "script"}, headers=token)
    assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "user"
    for wrong, field in (
        ({**body, "dry_run": "yes"}, "dry_run"),  # a string is not a yes: nothing is erased by accident
        ({**body, "user": 7}, "user"),
        ({**body, "users": "bob"}, "users"),
        ({"user": ""}, "user"),
    ):
        answer = c.post("/admin/api/privacy/erase", json=wrong, headers=token)
        assert answer.status_code == 422 and answer.get_json()["error"]["field"] == field, (wrong, answer.get_json())
    assert c.post("/admin/api/privacy/export", data="[", headers=token).status_code == 400
    assert c.post("/admin/api/privacy/purge", json={"allow": 1}, headers=token).status_code == 422
    assert marker_rows(db, "Kmark12") > 0, "no refused request erased anything"
    done = c.post("/admin/api/privacy/erase", json={**body, "requested_by": "ticket 12"}, headers=token).get_json()
    assert done["counts"] == {**preview["counts"]} and marker_rows(db, "Kmark12") == 0
    (run,) = c.get("/admin/api/privacy/log", headers=token).get_json()["runs"]
    assert run["id"] == done["id"] and run["run_by_name"] == "script (admin token)" and run["state"] == "done"


def test_the_erasure_lists_what_already_left_the_machine(make_gateway, tmp_path):
    app = make_gateway(**{"dataset.include_upvoted_min": 1, "report.webhook_url": "https://hooks.example.com/t"})
    c, settings = app.test_client(), app.extensions["tuneloop"].settings
    db = open_store(settings)
    vote(c, "alice", say(c, "alice", "Can I pay with points at the Lmark14 branch?"), "up", reason=None)
    built = build_dataset(db, settings)
    week = shift_week(last_complete_week(settings.report.timezone), 1)  # this week, where the chat is
    generate_report(db, settings, week=week)
    hosted = create_run(
        db, dataset_id=built.dataset_id, provider="openai", base_model="gpt-x", hyperparameters={}, work_root=tmp_path
    )
    log_event(db, hosted.id, "uploaded train.jsonl as file-abc123", file_id="file-abc123")
    local = create_run(
        db, dataset_id=built.dataset_id, provider="local", base_model="tiny", hyperparameters={}, work_root=tmp_path
    )
    candidate = create_candidate(db, name="tiny-ft-1", provider="builtin", base_model="tiny")
    sent = {"step": "report", "state": "succeeded", "delivered": ["webhook"], "finished_at": "2026-12-01T09:00:00Z"}
    with write_transaction(db):  # commits on either engine (a psycopg connection closes on exit)
        db.execute("UPDATE training_runs SET state = 'succeeded', output = 'ft:gpt-x:acme' WHERE id = ?", [hosted.id])
        db.execute("UPDATE training_runs SET candidate_version_id = ? WHERE id = ?", [candidate.id, local.id])
        db.execute(
            "INSERT INTO pipeline_runs (id, kind, step, state, started_at, context, steps) VALUES "
            "('pipe_1', 'weekly', 'report', 'succeeded', '2026-12-01T09:00:00Z', ?, ?)",
            [json.dumps({"report": {"week": week, "paths": {}}}), json.dumps([sent])],
        )

    result = erase(db, settings, Subject.of(user="alice"), requested_by="ticket 14", actor=OPS)
    assert result.counts["dataset_rows"] == 1 and result.reports == [week]
    left = {copy["kind"]: copy for copy in result.left_machine}
    assert set(left) == {"report", "training_file", "hosted_model", "model", "backups"}
    assert left["report"]["where"] == "webhook" and week in left["report"]["what"]
    assert "file-abc123" in left["training_file"]["what"] and "file-abc123" in left["training_file"]["action"]
    assert "ft:gpt-x:acme" in left["hosted_model"]["what"] and "tiny-ft-1" in left["model"]["what"]
    (logged,) = db.execute("SELECT left_machine FROM erasures WHERE id = ?", [result.id]).fetchone()
    assert json.loads(logged) == result.left_machine and "lmark14" not in logged.lower()
    db.close()


def test_the_cli_erases_only_when_told_who_asked_and_logs_counts_never_content(c, db, settings, tmp_path):
    asks_five_times(c, "alice", "Cmark15")
    asks_five_times(c, "bob", "Dmark15", comment=False)
    store = {"database": {"url": settings.database.url}} if settings.database.url else {}
    config = write_config(tmp_path / "t.toml", {"paths": {"data_dir": str(settings.data_dir)}, **store})
    run = lambda *args: CliRunner().invoke(cli, ["--config", str(config), "privacy", *args], env={"USER": "lee"})  # noqa: E731

    status = run("status")
    assert status.exit_code == 0 and "retention: 180 days" in status.output and "purge: allowed" in status.output
    unasked = run("erase", "--user", "alice", "--yes")
    assert unasked.exit_code != 0 and "--requested-by" in unasked.output and marker_rows(db, "Cmark15") > 0
    dry = run("erase", "--user", "alice", "--dry-run")
    assert dry.exit_code == 0 and "would erase" in dry.output and "conversations: 5" in dry.output
    assert marker_rows(db, "Cmark15") > 0, "a dry run erases nothing"
    out = tmp_path / "alice.json"
    exported = run("export", "--user", "alice", "-o", str(out))
    assert exported.exit_code == 0 and len(json.loads(out.read_text())["conversations"]) == 5
    assert "dmark15" not in out.read_text().lower()

    done = run("erase", "--user", "alice", "--requested-by", "the customer, ticket 15", "--yes")
    assert done.exit_code == 0, done.output
    assert "erased" in done.output and "already outside this machine" in done.output
    assert marker_rows(db, "Cmark15") == 0 and marker_rows(db, "Dmark15") > 0
    logged = run("log")
    assert logged.exit_code == 0 and "user" in logged.output and "the customer, ticket 15" in logged.output
    assert "cmark15" not in logged.output.lower() and "alice" not in logged.output
    (entry,) = json.loads(run("log", "--json").output)
    assert entry["run_by_name"] == "lee" and entry["counts"]["conversations"] == 5 and entry["state"] == "done"
    gone = run("export", "--user", "alice")
    assert gone.exit_code == 0 and json.loads(gone.output)["conversations"] == []
