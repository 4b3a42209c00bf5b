"""The knowledge base end to end, over real HTTP: real gunicorn (2 gevent workers), the real built-in model server
running a tiny model trained here, a real SQLite file.

- answers carry their sources, and every stored answer records them;
- a reviewer approves a correction on the admin page and the next questions — the same words and other words —
  are grounded on the corrected entry in every worker within a second, with the entry as their source;
- a knowledge-base change made in one worker is served by the other;
- a long chat never gets a 502: history is trimmed to the model's window (512 tokens for the tiny model, read from
  the model server's ``GET /v1/models``), and a message that cannot fit alone is a 413 naming the field.

The tiny model does not read its context (the starter model trained to is measured in bench/knowledge.py), so
these tests check what the gateway gave it, recorded per answer in ``message_sources``, not the answer's words.
"""

from __future__ import annotations

import re
import time

import httpx2
import pytest

from feedback import review
from feedback.db import open_db
from feedback.knowledge import store
from server.admin.auth import SECRET_NAME
from tests.plugins.gateway import start_gunicorn_gateway, stop_gateway

SHIPPING = "How much is the shipping fee?"
FIXED = "Shipping is 3,500 won per order and free from 50,000 won."
REFRESH_S = 0.5


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, model_server, tiny_model_dir):
    folder = tmp_path_factory.mktemp("kb-gateway")
    gw = start_gunicorn_gateway(
        folder,
        model_server.base_url,
        extra={
            "model_server": {"model_dir": str(tiny_model_dir)},  # where the gateway finds the tokenizer
            "model": {"first_token_timeout_s": 30.0, "timeout_s": 60.0},
            "knowledge": {"refresh_ms": int(REFRESH_S * 1000)},
        },
        timeout_s=60,
    )
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="module")
def db(gateway):
    database = open_db(gateway.data_dir / "tuneloop.db")
    yield database
    database.close()


@pytest.fixture(scope="module")
def admin(db):
    token = db.execute("SELECT value FROM instance_secrets WHERE name = ?", [SECRET_NAME]).fetchone()[0]
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


def probe(gateway, question: str, tag: str) -> dict:
    """A one-token answer on a new connection (so either worker may take it), tagged in the access log."""
    r = httpx2.post(
        f"{gateway.url}/v1/chat/completions?probe={tag}",
        json={"messages": [{"role": "user", "content": question}], "max_tokens": 1},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["tuneloop"]


def worker_of(gateway, tag: str) -> str:
    """The pid of the worker that served the request tagged ``tag``."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = re.search(rf"\?probe={re.escape(tag)} HTTP/1.1\" \d+ \S+ \S+ <(\d+)>", gateway.log())
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise AssertionError(f"request {tag} is not in the access log")


def given_version(db, message_id: str) -> tuple[str, int]:
    return db.execute(
        "SELECT entry_id, entry_version FROM message_sources WHERE message_id = ? AND rank = 1", [message_id]
    ).fetchone()


def probes_after(gateway, db, change_done: float, questions: list[str], entry_id: str, seconds: float = 2.5):
    """Ask ``questions`` in turn for ``seconds``; returns (started after change, worker pid, entry, version) each."""
    seen, n = [], 0
    while time.monotonic() - change_done < seconds:
        tag = f"{time.time_ns()}-{n}"
        started = time.monotonic() - change_done
        ids = probe(gateway, questions[n % len(questions)], tag)
        entry, version = given_version(db, ids["message_id"]) or (None, None)
        seen.append((started, worker_of(gateway, tag), entry, version, ids["sources"]))
        n += 1
    return seen


def test_answers_carry_their_sources_and_store_them(gateway, db):
    r = httpx2.post(f"{gateway.url}/api/chat", json={"message": "배송비 얼마에요?"}, timeout=60)
    body = r.json()
    assert r.status_code == 200 and body["answer"] and body["sources"]
    top = store.get_entry(db, body["sources"][0]["id"])
    assert top.question == body["sources"][0]["question"] and "배송" in top.question
    stored = db.execute("SELECT entry_id FROM message_sources WHERE message_id = ? ORDER BY rank", [body["message_id"]])
    assert [row[0] for row in stored] == [s["id"] for s in body["sources"]]
    # The prompt fitted the model's window as its server reports it, counted with the model's own tokenizer.
    assert body["usage"]["prompt_tokens"] + 256 <= 512


def test_an_approved_correction_is_served_by_every_worker_within_a_second(gateway, db, admin):
    entry = store.entry_for_question(db, SHIPPING)
    item = review.create_item(db, question="how much is the shipping fee")
    r = httpx2.post(
        f"{gateway.url}/admin/review/{item.id}/approve?probe=approve",
        data={"answer": FIXED, "reviewer": "ana"},
        headers=admin,
        follow_redirects=False,
    )
    done = time.monotonic()
    assert r.status_code == 302, r.text
    approver = worker_of(gateway, "approve")
    corrected = entry.version + 1
    assert store.get_entry(db, entry.id).version == corrected  # the approval wrote the entry, in its own transaction
    seen = probes_after(gateway, db, done, [SHIPPING, "postage cost?", "what do you charge for shipping"], entry.id)
    late = [s for s in seen if s[0] >= 1.0]
    assert late, "no question was asked a second after the approval"
    for started, pid, given, version, sources in late:
        assert (given, version) == (entry.id, corrected), f"asked {started:.2f} s after the approval, worker {pid}"
        assert sources[0] == {"id": entry.id, "question": SHIPPING, "score": sources[0]["score"]}
    assert {pid for _, pid, *_ in late} - {approver}, "the other worker never answered"


def test_a_new_entry_added_in_one_worker_is_found_in_other_words_by_the_other(gateway, db, admin):
    page = httpx2.post(
        f"{gateway.url}/admin/knowledge?probe=add",
        data={"questions": "Do you gift-wrap orders?", "answer": "Yes, for 2,000 won.", "actor": "ana"},
        headers=admin,
        follow_redirects=False,
    )
    done = time.monotonic()
    assert page.status_code == 302, page.text
    writer = worker_of(gateway, "add")
    added = store.entry_for_question(db, "Do you gift-wrap orders?")
    seen = probes_after(gateway, db, done, ["can you gift wrap my order?"], added.id)
    late = [s for s in seen if s[0] >= 1.0]
    assert late and all(given == added.id for _, _, given, _, _ in late)
    assert {pid for _, pid, *_ in late} - {writer}, "the other worker never answered"


def test_a_long_chat_never_gets_a_502(gateway, db):
    conversation = None
    for n in range(8):
        message = f"질문 {n}: 배송 일정과 배송비, 반품 기간과 교환 방법을 알려 주세요."
        body = {"message": message} | ({"conversation_id": conversation} if conversation else {})
        r = httpx2.post(f"{gateway.url}/api/chat", json=body, timeout=60)
        assert r.status_code == 200, r.text
        conversation = r.json()["conversation_id"]
        assert r.json()["usage"]["prompt_tokens"] + 256 <= 512
    metrics = httpx2.get(f"{gateway.url}/metrics", timeout=10).text
    trimmed = re.search(r"^tuneloop_history_trimmed_messages_total (\S+)$", metrics, re.M)
    assert trimmed and float(trimmed.group(1)) > 0  # the history did not fit whole: older turns made way
    too_long = httpx2.post(
        f"{gateway.url}/api/chat", json={"message": "배송 " * 600, "conversation_id": conversation}, timeout=60
    )
    assert too_long.status_code == 413
    assert too_long.json()["error"]["field"] == "message"
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    v1 = httpx2.post(
        f"{gateway.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "배송 " * 600}]},
        timeout=60,
    )
    assert v1.status_code == 413 and v1.json()["error"]["param"] == "messages"
    assert " 502 " not in gateway.log()
