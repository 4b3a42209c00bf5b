"""The review queue's admin pages: auth, listing and search, the approve/edit/reject forms, CSRF, escaping."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from feedback import review
from feedback.db import open_store
from feedback.report.weeks import utc_text
from server.admin import admin_token
from tests.test_admin_auth import HOSTILE, bearer, csrf_of, login
from tests.test_ranking import ask

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

CORRECTION = "배송비는 3,000원이며 30,000원 이상 무료입니다."
BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture
def app(make_gateway):
    return make_gateway()


@pytest.fixture
def store(app):
    db = open_store(app.extensions["tuneloop"].settings)
    yield db
    db.close()


@pytest.fixture
def token(app, store):
    return admin_token(app.extensions["tuneloop"].settings, store)


@pytest.fixture
def item(store):
    """A pending item whose question is hostile markup, with a suggested correction as evidence."""
    return review.create_item(
        store,
        question=HOSTILE,
        origin="ranking",
        evidence={
            "votes": 6,
            "down": 5,
            "up": 1,
            "reasons": {"outdated": 4},
            "answers": [{"answer": "<img src=x onerror=alert(2)>", "up": 1, "down": 5}],
            "corrections": [{"correction": CORRECTION, "count": 2}],
            "comments": [{"comment": "<b>rude</b>", "reason": "outdated", "question": HOSTILE}],
        },
    )


@pytest.fixture
def browser(app, token):
    client = app.test_client()
    login(client, token, "/admin/review")
    return client


def test_pages_need_the_admin_token(app, item):
    client = app.test_client()
    assert client.get("/admin/review", headers=BROWSER).status_code == 302
    assert client.get(f"/admin/review/{item.id}", headers={"Accept": "*/*"}).status_code == 401
    assert client.get("/admin/api/review").status_code == 401
    refused = client.post(f"/admin/review/{item.id}/approve", data={"answer": "x"})
    assert refused.status_code == 401


def test_list_filters_searches_and_escapes(app, token, item, store):
    other = review.create_item(store, question="Do you deliver on Sundays?")
    review.approve(store, other.id, answer="Monday to Saturday.", reviewer="ana")
    client = app.test_client()
    page = client.get("/admin/review", headers=bearer(token))
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "Pending (1)" in text and "Approved (1)" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;배송비는?" in text and "Sundays" not in text
    assert "<script>" not in text and "<img" not in text
    approved = client.get("/admin/review?status=approved&q=saturday", headers=bearer(token)).get_data(as_text=True)
    assert "Do you deliver on Sundays?" in approved and "alert(1)" not in approved
    data = client.get("/admin/api/review?status=all", headers=bearer(token)).get_json()
    assert data["total"] == 2 and {i["id"] for i in data["items"]} == {item.id, other.id}
    assert client.get("/admin/review?status=done", headers=bearer(token)).status_code == 422


def test_item_page_shows_the_evidence_escaped_and_prefills_the_suggestion(browser, item):
    page = browser.get(f"/admin/review/{item.id}")
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert f">{CORRECTION}</textarea>" in text  # prefilled with the best suggested correction
    assert "&lt;img src=x onerror=alert(2)&gt;" in text and "&lt;b&gt;rude&lt;/b&gt;" in text
    assert "<script>" not in text and "<img" not in text and "<b>rude" not in text
    assert "outdated <b>4</b>" in text and "5 of 6 votes down" in text


def test_approve_flow_writes_the_database(browser, item, store):
    page = browser.get(f"/admin/review/{item.id}").get_data(as_text=True)
    stale = browser.post(f"/admin/review/{item.id}/approve", data={"answer": CORRECTION})
    assert stale.status_code == 403 and stale.get_json()["error"]["code"] == "csrf_failed"
    assert review.get_item(store, item.id).status == "pending"
    done = browser.post(
        f"/admin/review/{item.id}/approve", data={"answer": CORRECTION, "reviewer": "min-ji", "csrf": csrf_of(page)}
    )
    assert done.status_code == 302 and done.headers["Location"].startswith("/admin/review?status=pending")
    saved = review.get_item(store, item.id)
    assert (saved.status, saved.answer, saved.answer_source, saved.reviewer) == (
        "approved",
        CORRECTION,
        "user",
        "min-ji",
    )
    assert saved.decided_at is not None


def test_an_empty_answer_is_refused_and_the_form_comes_back(browser, item, store):
    page = browser.get(f"/admin/review/{item.id}").get_data(as_text=True)
    refused = browser.post(f"/admin/review/{item.id}/approve", data={"answer": "   ", "csrf": csrf_of(page)})
    assert refused.status_code == 422 and "answer must not be empty" in refused.get_data(as_text=True)
    assert review.get_item(store, item.id).status == "pending"


def test_edit_and_reject(browser, item, store):
    page = browser.get(f"/admin/review/{item.id}").get_data(as_text=True)
    csrf = csrf_of(page)
    edited = browser.post(f"/admin/review/{item.id}/edit", data={"question": "배송비는 얼마인가요?", "csrf": csrf})
    assert edited.status_code == 302
    assert review.get_item(store, item.id).question == "배송비는 얼마인가요?"
    rejected = browser.post(f"/admin/review/{item.id}/reject", data={"note": "<i>not a question</i>", "csrf": csrf})
    assert rejected.status_code == 302
    saved = review.get_item(store, item.id)
    assert (saved.status, saved.note, saved.reviewer) == ("rejected", "<i>not a question</i>", "admin")
    listed = browser.get("/admin/review?status=rejected").get_data(as_text=True)
    assert "&lt;i&gt;not a question&lt;/i&gt;" in listed and "<i>not" not in listed


def test_collect_button_queues_the_live_models_worst(app, browser, store):
    live = store.execute("SELECT id FROM model_versions WHERE status = 'live'").fetchone()[0]
    yesterday = utc_text(datetime.now(timezone.utc) - timedelta(days=1))
    for _ in range(5):
        ask(store, live, "Where is my parcel?", answer="No idea.", down=1, at=yesterday)
    page = browser.get("/admin/review").get_data(as_text=True)
    done = browser.post("/admin/review/collect", data={"csrf": csrf_of(page)})
    assert done.status_code == 302
    listed = browser.get(done.headers["Location"]).get_data(as_text=True)
    assert "Added 1 questions" in listed and "Where is my parcel?" in listed
    again = browser.post("/admin/review/collect", data={"csrf": csrf_of(page)})
    assert "Added 0 questions" in browser.get(again.headers["Location"]).get_data(as_text=True)
