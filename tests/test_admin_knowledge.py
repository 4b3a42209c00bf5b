"""The knowledge base's admin pages: auth, list and search, try a question, add, edit, retire, history, escaping."""

from __future__ import annotations

import re

import pytest

from feedback import review
from feedback.db import open_store, write_transaction
from feedback.knowledge import lineage, store
from feedback.knowledge.prompt import Snippet
from server.admin import admin_token
from tests.test_admin_auth import HOSTILE, bearer, csrf_of, login
from tests.test_ranking import ask, make_version

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
SHIPPING = "How much is the shipping fee?"


@pytest.fixture
def app(make_gateway):
    return make_gateway()


@pytest.fixture
def db(app):
    database = open_store(app.extensions["tuneloop"].settings)
    yield database
    database.close()


@pytest.fixture
def token(app, db):
    return admin_token(app.extensions["tuneloop"].settings, db)


@pytest.fixture
def browser(app, token):
    client = app.test_client()
    login(client, token, "/admin/knowledge")
    return client


def test_pages_need_the_admin_token(app, db):
    entry = store.entry_for_question(db, SHIPPING)
    client = app.test_client()
    assert client.get("/admin/knowledge", headers=BROWSER).status_code == 302
    assert client.get(f"/admin/knowledge/{entry.id}", headers={"Accept": "*/*"}).status_code == 401
    assert client.get("/admin/api/knowledge").status_code == 401
    assert client.post(f"/admin/knowledge/{entry.id}/retire", data={"reason": "x"}).status_code == 401
    assert store.get_entry(db, entry.id).state == "active"


def test_the_list_searches_tries_a_question_and_shows_ratings(app, token, db):
    entry = store.entry_for_question(db, SHIPPING)
    version = make_version(db, "older", "retired")
    message_id = ask(db, version, "postage?", down=1)
    with write_transaction(db):  # commits on either engine (a psycopg connection closes on exit)
        lineage.record_sources(db, message_id, [Snippet(entry.id, SHIPPING, entry.answer, 0.7, 1)])
    client = app.test_client()
    page = client.get("/admin/knowledge?q=30,000 won", headers=bearer(token)).get_data(as_text=True)
    assert "Active (184)" in page and SHIPPING in page and "👎 1" in page
    tried = client.get("/admin/knowledge?try=postage cost?", headers=bearer(token)).get_data(as_text=True)
    section = tried[tried.index("What the model would be given for “postage cost?”") :]
    body = section.index("<tbody>")
    first_row = section[body : section.index("</tr>", body)]
    assert SHIPPING in first_row  # the best entry for the question, as the gateway ranks it
    api = client.get("/admin/api/knowledge?state=all&q=" + entry.id, headers=bearer(token)).get_json()
    assert api["total"] == 1 and api["entries"][0]["id"] == entry.id


def test_add_edit_retire_restore_from_the_browser_with_history(browser, db):
    form = browser.get("/admin/knowledge/new").get_data(as_text=True)
    created = browser.post(
        "/admin/knowledge",
        data={
            "csrf": csrf_of(form),
            "questions": "Do you ship abroad?\nintl shipping?",
            "answer": "No.",
            "actor": "ana",
        },
    )
    assert created.status_code == 302
    entry = store.entry_for_question(db, "intl shipping?")
    assert entry.questions == ("Do you ship abroad?", "intl shipping?") and entry.created_by == "ana"
    page = browser.get(created.headers["Location"]).get_data(as_text=True)
    assert "Added; served within a second." in page
    saved = browser.post(
        f"/admin/knowledge/{entry.id}/edit",
        data={
            "csrf": csrf_of(page),
            "questions": "Do you ship abroad?",
            "answer": "Yes, to Japan.",
            "actor": "bo",
            "reason": "new courier",
        },
    )
    assert saved.status_code == 302 and store.get_entry(db, entry.id).answer == "Yes, to Japan."
    browser.post(
        f"/admin/knowledge/{entry.id}/retire", data={"csrf": csrf_of(page), "actor": "bo", "reason": "withdrawn"}
    )
    assert store.get_entry(db, entry.id).state == "retired"
    browser.post(f"/admin/knowledge/{entry.id}/restore", data={"csrf": csrf_of(page), "actor": "cy", "version": "1"})
    restored = store.get_entry(db, entry.id)
    assert (restored.answer, restored.state, restored.version) == ("No.", "active", 4)
    history = browser.get(f"/admin/knowledge/{entry.id}").get_data(as_text=True)
    for text in ("new courier", "withdrawn", "restored version 1", "bo", "cy"):
        assert text in history
    # Without the form's CSRF field a cookie session cannot change anything.
    refused = browser.post(f"/admin/knowledge/{entry.id}/retire", data={"actor": "eve"})
    assert refused.status_code == 403 and store.get_entry(db, entry.id).state == "active"


def test_a_refused_change_keeps_what_was_typed(browser, db):
    entry = store.entry_for_question(db, "Can I order without creating an account?")
    page = browser.get(f"/admin/knowledge/{entry.id}").get_data(as_text=True)
    refused = browser.post(
        f"/admin/knowledge/{entry.id}/edit",
        data={"csrf": csrf_of(page), "questions": f"{entry.question}\n{SHIPPING}", "answer": "My careful new answer."},
    )
    text = refused.get_data(as_text=True)
    assert refused.status_code == 409 and "already belongs to entry" in text and "My careful new answer." in text
    assert store.get_entry(db, entry.id) == entry  # nothing written


def test_user_text_is_escaped_everywhere(browser, db, token, app):
    hostile = store.add_entry(db, questions=HOSTILE, answer="<img src=x onerror=alert(2)>", actor="<b>eve</b>")
    for path in ("/admin/knowledge", f"/admin/knowledge/{hostile.id}", "/admin/knowledge?try=" + HOSTILE):
        text = browser.get(path).get_data(as_text=True)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, path
        assert "<script>" not in text and "<img" not in text and "<b>eve" not in text
    assert not re.search(
        r"<script",
        app.test_client().get(f"/admin/knowledge/{hostile.id}", headers=bearer(token)).get_data(as_text=True),
    )


def test_the_review_page_says_which_entry_an_approval_updates(browser, db):
    item = review.create_item(db, question="how much is the shipping fee")
    page = browser.get(f"/admin/review/{item.id}").get_data(as_text=True)
    entry = store.entry_for_question(db, SHIPPING)
    assert f'replaces the answer of entry <a href="/admin/knowledge/{entry.id}">{SHIPPING}</a>' in page
    done = browser.post(
        f"/admin/review/{item.id}/approve", data={"csrf": csrf_of(page), "answer": "3,500 won.", "reviewer": "ana"}
    )
    assert done.status_code == 302 and "live now in entry" in browser.get(done.headers["Location"]).get_data(
        as_text=True
    )
    assert store.get_entry(db, entry.id).answer == "3,500 won."
