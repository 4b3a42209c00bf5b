"""A table-driven OpenAI-protocol server and the evaluation set-up built on it.

``table_upstream`` is an OpenAI-protocol server whose models answer from a table
(question → answer per model name), so a test can decide exactly how the
candidate and the live model differ — and, with ``served``, how a model answers when the prompt carries the
knowledge block (as served) rather than the question alone (closed book); its ``judge`` model scores an answer 5
when it equals the reference and 1 otherwise. ``tests/test_evaluation.py`` and
``tests/test_gate.py`` use it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from config.settings import load_settings
from feedback.db import open_db, utc_now, write_transaction
from feedback.knowledge.seed import ensure_seeded
from feedback.review import create_item
from feedback.versions import create_candidate, ensure_live_version
from tests.plugins.common import serve_in_thread


@dataclass
class TableUpstream:
    base_url: str
    answers: dict[str, dict[str, str]]  # model -> question -> answer
    requests: list[dict] = field(default_factory=list)
    default: str = "I do not know."
    # model -> question -> answer when the prompt carries the knowledge block (else ``answers`` holds)
    served: dict[str, dict[str, str]] = field(default_factory=dict)

    def answer(self, model: str, messages: list[dict]) -> str:
        question = messages[-1]["content"]
        grounded = any(m["role"] == "system" and KNOWLEDGE_HEADER in m["content"] for m in messages)
        if grounded and question in self.served.get(model, {}):
            return self.served[model][question]
        return self.answers[model].get(question, self.default)


def _judge_reply(payload: dict) -> str:
    text = payload["messages"][-1]["content"]
    parts = re.split(r"\n\n(?:Reference answer|Answer A|Answer B):\n", text)
    reference, a, b = parts[1], parts[2], parts[3]
    return json.dumps({"a": 5 if a == reference else 1, "b": 5 if b == reference else 1})


def _table_app(table: TableUpstream):
    def app(environ, start_response):
        req = Request(environ)
        if req.path.endswith("/models"):
            names = [*table.answers, "judge"]
            body = {
                "object": "list",
                "data": [{"id": n, "object": "model", "created": 0, "owned_by": "t"} for n in names],
            }
            return Response(json.dumps(body), mimetype="application/json")(environ, start_response)
        payload = json.loads(req.get_data())
        table.requests.append(payload)
        model = payload["model"]
        if model == "judge":
            text = _judge_reply(payload)
        elif model in table.answers:
            text = table.answer(model, payload["messages"])
        else:
            body = {"error": {"message": f"The model `{model}` does not exist.", "type": "NotFoundError"}}
            return Response(json.dumps(body), status=404, mimetype="application/json")(environ, start_response)

        def stream():
            for delta, finish in (
                ({"role": "assistant", "content": ""}, None),
                ({"content": text}, None),
                ({}, "stop"),
            ):
                chunk = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return Response(stream(), mimetype="text/event-stream")(environ, start_response)

    return app


@pytest.fixture
def table_upstream():
    """Models answering from ``.answers[model][question]``; fill the table in the test."""
    table = TableUpstream(base_url="", answers={})
    server = make_server("127.0.0.1", 0, _table_app(table), threaded=True)
    serve_in_thread(server)
    table.base_url = f"http://127.0.0.1:{server.server_port}/v1"
    yield table
    server.shutdown()


GOLDEN = [
    ("How long does delivery take?", "Standard delivery takes 2-3 business days."),
    ("배송비는 얼마인가요?", "배송비는 3,000원이며 30,000원 이상 무료입니다."),
    ("Can I pay with KakaoPay?", "Yes, KakaoPay and Naver Pay are accepted."),
    ("비밀번호를 잊어버렸어요.", "로그인 화면의 비밀번호 찾기에서 재설정할 수 있습니다."),
]
CORRECTIONS = [
    ("Do you ship to Jeju?", "Yes; Jeju and remote islands pay an extra 3,000 won."),
    ("포인트는 언제 적립되나요?", "구매 확정 시 또는 배송 7일 후 자동으로 적립됩니다."),
]
TEST_SPLIT = [
    ("What are your hours?", "Weekdays 9 a.m. to 6 p.m. KST."),
    ("쿠폰은 몇 장 쓸 수 있나요?", "주문당 쿠폰은 한 장만 사용할 수 있습니다."),
]
# Golden questions in users' words, with the golden answers.
REWORDED = [
    ("delivery takes how many days?", GOLDEN[0][1]),
    ("택배비 얼마예요", GOLDEN[1][1]),
]
KNOWLEDGE_HEADER = "Knowledge:"  # [knowledge] header's default


def write_chat_jsonl(path, pairs) -> None:
    path.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}, ensure_ascii=False
            )
            + "\n"
            for q, a in pairs
        ),
        encoding="utf-8",
    )


def add_dataset(db, folder, pairs, *, version: int = 1) -> str:
    """A built dataset with ``pairs`` as its test split (and a manifest carrying their lineage)."""
    folder.mkdir(parents=True)
    write_chat_jsonl(folder / "test.jsonl", pairs)
    manifest = {"rows": {"test": [{"source": "base", "file": "faq.jsonl", "line": i + 1} for i in range(len(pairs))]}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    dataset_id = f"ds_test{version}"
    with write_transaction(db):
        db.execute(
            "INSERT INTO datasets (id, version, path, sha256, manifest_path, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            [dataset_id, version, str(folder), "0" * 64, str(folder / "manifest.json"), utc_now()],
        )
    return dataset_id


@dataclass
class Setup:
    settings: object
    db: object
    live: object
    candidate: object
    upstream: TableUpstream
    dataset_id: str


def make_setup(tmp_path, upstream: TableUpstream, **overrides) -> Setup:
    """Settings, database, a live ``starter`` and a ``tuned`` candidate, corrections, golden set, reworded set and a
    dataset; the knowledge base holds the golden and test-split rows, and the corrections once approved."""
    golden, reworded, knowledge = tmp_path / "golden.jsonl", tmp_path / "reworded.jsonl", tmp_path / "kb.jsonl"
    write_chat_jsonl(golden, GOLDEN)
    write_chat_jsonl(reworded, REWORDED)
    write_chat_jsonl(knowledge, GOLDEN + TEST_SPLIT)
    values = {
        "paths.data_dir": str(tmp_path / "var"),
        "model.base_url": upstream.base_url,
        "model.retries": 0,
        "evaluation.golden_file": str(golden),
        "evaluation.reworded_file": str(reworded),
        "evaluation.concurrency": 2,
        "knowledge.base_file": str(knowledge),
    }
    values.update(overrides)
    settings = load_settings(env={}, overrides=values)
    db = open_db(settings.db_path)
    ensure_seeded(db, settings.knowledge)
    live = ensure_live_version(db, name="starter", provider="builtin")
    candidate = create_candidate(db, name="tuned", provider="local", base_model="starter")
    for question, answer in CORRECTIONS:
        create_item(db, question=question, answer=answer, reviewer="tester")
    dataset_id = add_dataset(db, tmp_path / "var" / "datasets" / "v1", TEST_SPLIT)
    return Setup(settings, db, live, candidate, upstream, dataset_id)


def fill(upstream: TableUpstream, model: str, pairs, *, wrong: set[str] = frozenset(), served: bool = False) -> None:
    """Let ``model`` answer each question correctly, except those in ``wrong``; with ``served``, only when the
    knowledge block is in the prompt (closed book it answers from ``answers``)."""
    table = (upstream.served if served else upstream.answers).setdefault(model, {})
    for q, a in pairs:
        table[q] = "Sorry, I cannot help with that." if q in wrong else a


@pytest.fixture
def better_candidate(tmp_path, table_upstream):
    """The candidate learned both corrections; the live model answers them only as served, from their corrected
    knowledge-base entries; both know the golden set, its rewordings and the test split."""
    s = make_setup(tmp_path, table_upstream)
    fill(table_upstream, "starter", GOLDEN + REWORDED + TEST_SPLIT + CORRECTIONS, wrong={q for q, _ in CORRECTIONS})
    fill(table_upstream, "starter", CORRECTIONS, served=True)
    fill(table_upstream, "tuned", GOLDEN + REWORDED + TEST_SPLIT + CORRECTIONS)
    yield s
    s.db.close()
