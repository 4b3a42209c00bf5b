"""Benchmark: the knowledge base in the serving loop — how soon an approved correction is served, what retrieval
adds to a chat, and how many reworded questions the starter model answers right through ``/api/chat``.

    .venv/bin/python bench/knowledge.py                      # all three sections (about 8 minutes on 2 cores)
    .venv/bin/python bench/knowledge.py --quick              # smoke run (small counts, 200 entries only)
    .venv/bin/python bench/knowledge.py --only answers --model-dir var/models/starter --split test
    .venv/bin/python bench/knowledge.py --json out.json      # also every figure as JSON

Every section runs the gateway as in production — ``tuneloop serve`` (gunicorn, 2 gevent workers) on its own
SQLite file — and compares with a baseline taken in the same run, because a shared 2-core machine drifts:

1. **freshness** — a reviewer approves a corrected answer on the admin page (``POST /admin/review/ID/approve``);
   right after, two clients ask ``/api/chat`` over and over, each request on a new connection (so both workers
   answer), the FAQ question in its own words and the customer's rewording (``data/rewordings.jsonl``).
   Figure: seconds from the approval's response until an answer carrying the corrected text, per worker and
   question; "everywhere" is the slowest of them. The upstream is :mod:`bench.upstream` ``--read-context``,
   which answers with the first entry of its context block — a perfect reader, so the figure is the gateway's
   and not a model's (a model adds its own answer time). Target: 5 s; bound by ``knowledge.refresh_ms``.
2. **latency** — retrieval's added latency per chat: ``POST /api/chat`` (non-streaming, one client) with the
   knowledge base on and off (the request's own ``knowledge: false``), alternating request by request on the
   same gateway, at 200 and at 20,000 entries (past the FAQ's 184, synthesised as in ``bench/retrieval.py``). The
   upstream is :mod:`bench.upstream`, which answers at once. Added = p50 on − p50 off. Target: ≤ 2 ms at 20,000.
3. **answers** — every rewording (or one split: ``dev`` / ``test`` of ``data/rewordings.jsonl``, or a held-out
   file: ``holdout2`` = ``data/rewordings-holdout2.jsonl``, likewise ``holdout3``, ``holdout4``) asked through
   ``/api/chat`` of the gateway on the built-in
   model server running the starter model (``--model-dir``, default ``var/models/starter``; build it with
   ``tuneloop starter build``; one gateway worker, questions asked one after another: the figure is right
   answers, not speed), with the
   knowledge base and, as the baseline, without (``knowledge: false``).
   Right = the answer equals the FAQ answer after ``question_key`` normalisation (case, punctuation,
   spacing). Also: how often the right entry was the first source. The model folder's ``starter.json`` says
   which model the figure is for.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402

from bench.gateway import Upstream, closed_spec, pct, run_load  # noqa: E402
from bench.report import table  # noqa: E402
from bench.retrieval import synthesize  # noqa: E402
from config.settings import load_settings  # noqa: E402
from feedback import review  # noqa: E402
from feedback.db import open_db  # noqa: E402
from feedback.knowledge import seed, store  # noqa: E402
from feedback.text import has_hangul, question_key  # noqa: E402
from tests.plugins.gateway import start_gunicorn_gateway, stop_gateway  # noqa: E402
from tests.plugins.model import start_model_server, stop_model_server  # noqa: E402

DATA = ROOT / "data"
SECTIONS = ("freshness", "latency", "answers")


@dataclass(frozen=True)
class Plan:
    corrections: int  # approvals timed in "freshness"
    probe_s: float  # how long each approval is probed for
    sizes: tuple[int, ...]  # knowledge-base sizes of "latency"
    per_condition: int  # requests with the knowledge base on, and as many off, per size


FULL = Plan(corrections=10, probe_s=2.5, sizes=(200, 20_000), per_condition=1000)
QUICK = Plan(corrections=2, probe_s=2.0, sizes=(200,), per_condition=30)


# Every rewordings file (data/README.md): rewordings.jsonl's dev and test splits, then the held-out sets, each
# its own split (holdout2, holdout3, ...).
REWORDINGS = ["rewordings.jsonl", *sorted(p.name for p in DATA.glob("rewordings-holdout*.jsonl"))]


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def qa(row: dict) -> tuple[str, str]:
    return row["messages"][0]["content"], row["messages"][1]["content"]


def gateway_on(folder: Path, base_url: str, extra: dict | None = None):
    """``tuneloop serve`` (gunicorn, 2 workers) on ``folder``'s database, talking to ``base_url``."""
    values = {"knowledge": {"refresh_ms": 500}, "model": {"first_token_timeout_s": 30.0, "timeout_s": 120.0}}
    for section, keys in (extra or {}).items():
        values.setdefault(section, {}).update(keys)
    folder.mkdir(parents=True, exist_ok=True)
    return start_gunicorn_gateway(folder, base_url, extra=values, timeout_s=180)


def admin_headers(db) -> dict:
    token = db.execute("SELECT value FROM instance_secrets WHERE name = 'admin_token'").fetchone()[0]
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


# --- 1. freshness ---------------------------------------------------------------------------------


def freshness(plan: Plan, workdir: Path) -> dict:
    """Seconds from an approval to the corrected answer, per worker and question (see the module docstring)."""
    faq = rows("faq.jsonl")
    picks = random.Random(3).sample(rows("rewordings.jsonl"), plan.corrections)
    samples = []
    upstream = Upstream("--read-context")
    gw = db = None
    try:
        gw = gateway_on(workdir / "freshness", upstream.base_url)
        db = open_db(gw.data_dir / "tuneloop.db")
        headers = admin_headers(db)
        for n, rewording in enumerate(picks):
            question, answer = qa(faq[rewording["rewording_of"]])
            reworded = rewording["messages"][0]["content"]
            entry = store.entry_for_question(db, question)
            corrected = f"{answer} (corrected {n})"
            item = review.create_item(db, question=reworded)
            approved = time.monotonic()
            r = httpx2.post(
                f"{gw.url}/admin/review/{item.id}/approve",
                data={"answer": corrected, "reviewer": "bench", "kb_entry": entry.id},
                headers=headers,
                timeout=30,
            )
            done = time.monotonic()
            if r.status_code != 302:
                raise RuntimeError(f"approval failed: {r.status_code} {r.text[:300]}")
            probes = probe(gw.url, [question, reworded], done, plan.probe_s, tag=f"f{n}")
            samples.append(served_times(gw, probes, corrected, done, approved, rewording["lang"]))
    finally:
        if db is not None:
            db.close()
        if gw is not None:
            stop_gateway(gw)
        upstream.stop()
    everywhere = [s["everywhere_s"] for s in samples if s["everywhere_s"] is not None]
    return {
        "samples": samples,
        "everywhere_p50_s": statistics.median(everywhere) if everywhere else None,
        "everywhere_max_s": max(everywhere) if everywhere else None,
        "first_p50_s": statistics.median(s["first_s"] for s in samples if s["first_s"] is not None),
        "never": sum(1 for s in samples if s["everywhere_s"] is None),
        "stale_after_1s": sum(s["stale_after_1s"] for s in samples),
    }


def probe(url: str, questions: list[str], since: float, seconds: float, tag: str) -> list[dict]:
    """Two clients asking ``questions`` in turn for ``seconds``, each request on a new connection."""
    found: list[dict] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        n = 0
        while time.monotonic() - since < seconds:
            question = questions[(n + c) % len(questions)]
            name = f"{tag}-{c}-{n}"
            started = time.monotonic()
            with httpx2.Client(timeout=30) as http:
                body = http.post(f"{url}/api/chat?probe={name}", json={"message": question}).json()
            with lock:
                found.append(
                    {
                        "tag": name,
                        "question": question,
                        "started": started - since,
                        "ended": time.monotonic() - since,
                        "answer": body.get("answer", ""),
                    }
                )
            n += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return found


def worker_pids(gw, tags: list[str]) -> dict[str, str]:
    """Which worker (pid) served each tagged request, from the access log (waits for its lines to be written)."""
    deadline = time.monotonic() + 5
    while True:
        pids = dict(re.findall(r"\?probe=(\S+) HTTP/1.1\" \d+ \S+ \S+ <(\d+)>", gw.log()))
        if all(tag in pids for tag in tags) or time.monotonic() > deadline:
            return pids
        time.sleep(0.2)


def served_times(gw, probes: list[dict], corrected: str, done: float, approved: float, lang: str) -> dict:
    """Per worker and question: the first answer with the corrected text (seconds after the approval)."""
    pids = worker_pids(gw, [p["tag"] for p in probes])
    first: dict[tuple[str, str], float] = {}
    stale_late = 0
    for p in sorted(probes, key=lambda p: p["ended"]):
        key = (pids.get(p["tag"], "?"), p["question"])
        if p["answer"] == corrected:
            first.setdefault(key, p["ended"])
        elif p["started"] >= 1.0:
            stale_late += 1
    workers = {pid for pid, _ in first} | {pids[p["tag"]] for p in probes if p["tag"] in pids}
    questions = {p["question"] for p in probes}
    complete = all((w, q) in first for w in workers for q in questions)
    return {
        "lang": lang,
        "approval_ms": round((done - approved) * 1000, 1),
        "first_s": min(first.values()) if first else None,
        "everywhere_s": max(first.values()) if complete else None,
        "workers": len(workers),
        "probes": len(probes),
        "unlogged": sum(1 for p in probes if p["tag"] not in pids),
        "stale_after_1s": stale_late,
    }


# --- 2. latency -----------------------------------------------------------------------------------


def fill(db, size: int) -> int:
    """The FAQ (seeded), then synthesised entries up to ``size``, as one import would write them."""
    seed.ensure_seeded(db, load_settings(env={}).knowledge)
    held = {key for (key,) in db.execute("SELECT key FROM kb_question_keys")}
    seeded = store.state_counts(db)["active"]  # entries, not questions: the bundled ones have several
    extra = []
    for entry in synthesize(rows("faq.jsonl"), size * 2):
        key = question_key(entry.questions[0])
        if seeded + len(extra) >= size:
            break
        if key in held:
            continue
        held.add(key)
        extra.append(store.new_entry(questions=entry.questions, answer=entry.answer, lang=entry.lang, actor="bench"))
    for start in range(0, len(extra), 5000):
        store.save_entries(db, extra[start : start + 5000], actor="bench", reason="benchmark entries")
    return store.state_counts(db)["active"]


def latency(plan: Plan, workdir: Path) -> dict:
    """Added latency per chat at each size, against the same gateway with the knowledge base off."""
    upstream = Upstream()
    questions = [qa(r)[0] for r in rows("rewordings.jsonl")]
    figures = {}
    try:
        for size in plan.sizes:
            folder = workdir / f"latency-{size}"
            db = open_db(folder / "gw-var" / "tuneloop.db")
            entries = fill(db, size)
            db.close()
            gw = gateway_on(folder, upstream.base_url)
            port = int(gw.url.rsplit(":", 1)[1])
            # One client, requests alternating on/off with the same question: a drift in the machine's load (it is
            # shared) weighs on both conditions alike. With one client the latencies come back in request order.
            bodies = [{"message": q, "knowledge": use} for q in questions for use in (True, False)]
            spec = closed_spec(port, "/api/chat", bodies, 1, plan.per_condition * 2)
            try:
                measured = run_load(spec, gw.process.pid, upstream.process.pid, folder)
            finally:
                stop_gateway(gw)
            latencies = measured.result["latencies_ms"]
            first = spec["warmup"] % 2  # the condition of the first measured request: 0 is "on"
            on = [ms for i, ms in enumerate(latencies) if (i + first) % 2 == 0]
            off = [ms for i, ms in enumerate(latencies) if (i + first) % 2 == 1]
            figures[str(size)] = {
                "entries": entries,
                "other_cores": round(measured.other_cores, 2),
                "requests": len(on) + len(off),
                "on_p50_ms": pct(on, 50),
                "off_p50_ms": pct(off, 50),
                "on_p90_ms": pct(on, 90),
                "off_p90_ms": pct(off, 90),
                "added_p50_ms": pct(on, 50) - pct(off, 50),
                "ratio_p50": pct(on, 50) / pct(off, 50),
            }
    finally:
        upstream.stop()
    return figures


# --- 3. answers -----------------------------------------------------------------------------------


def answers(workdir: Path, model_dir: Path, split: str | None) -> dict:
    """Rewordings answered right through /api/chat, with the knowledge base and without (same gateway, same run)."""
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"no model in {model_dir}: build the starter model first (tuneloop starter build)")
    faq = rows("faq.jsonl")
    reworded = [row for name in REWORDINGS for row in rows(name)]
    asked = [r for r in reworded if split in (None, r["split"])]
    # The FAQ's own questions too, word for word: what a grounded prompt must not break.
    asked += [
        {
            **row,
            "rewording_of": n,
            "lang": "exact",
            "split": "faq",
            "faq_lang": "ko" if has_hangul(qa(row)[0]) else "en",
        }
        for n, row in enumerate(faq)
    ]
    server = start_model_server(model_dir, workdir / "model-server", name="starter", timeout_s=180)
    gw = None
    results = []
    try:
        extra = {"model_server": {"model_dir": str(model_dir)}, "gateway": {"workers": 1}}
        gw = gateway_on(workdir / "answers", server.base_url, extra)
        with httpx2.Client(timeout=120) as http:
            after = after_build(gw, http, faq, [r for r in asked if r["split"] == "test"])
            for n, row in enumerate(asked, 1):
                question, reference = qa(row)
                faq_question = qa(faq[row["rewording_of"]])[0]
                outcome = {"lang": row["lang"], "split": row["split"], "faq_lang": row.get("faq_lang")}
                for use in (True, False):
                    body = http.post(f"{gw.url}/api/chat", json={"message": question, "knowledge": use}).json()
                    key = "on" if use else "off"
                    outcome[key] = question_key(body.get("answer", "")) == question_key(reference)
                    if use:
                        sources = body.get("sources") or []
                        outcome["source_right"] = bool(sources) and sources[0]["question"] == faq_question
                results.append(outcome)
                print(f"\ranswers: {n}/{len(asked)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    finally:
        if gw is not None:
            stop_gateway(gw)
        stop_model_server(server)
    card = model_dir / "starter.json"
    weights = model_dir / "model.safetensors"
    return {
        "model_dir": str(model_dir),
        "model_card": json.loads(card.read_text()) if card.is_file() else None,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else None,
        "split": split or "all",
        "by_lang": {lang: _rates([r for r in results if r["lang"] == lang]) for lang in ("en", "ko")},
        "all": _rates([r for r in results if r["lang"] != "exact"]),
        "faq_word_for_word": _rates([r for r in results if r["lang"] == "exact"]),
        "faq_word_for_word_by_lang": {
            lang: _rates([r for r in results if r["lang"] == "exact" and r["faq_lang"] == lang])
            for lang in ("en", "ko")
        },
        "after_build": after,
    }


# Entries a reviewer adds after the model was built (written for this benchmark; in no training data).
NEW_ENTRIES = (
    (
        "Do you sell gift wrapping?",
        "Yes. Tick Gift wrap at checkout: 2,500 won per box, with a handwritten card.",
        "can you wrap my order as a present",
    ),
    (
        "Can I pick up my order at a store?",
        "Not yet. Store pickup starts in Seongsu on March 3; until then we only deliver.",
        "is there in-store pickup",
    ),
    (
        "Do you have a student discount?",
        "Students get 7% off with a verified school email, up to 30,000 won a month.",
        "any discount for students",
    ),
    (
        "Is there a mobile app for tablets?",
        "The Haneul Mart app runs on iPad and Android tablets with the same account.",
        "does the app work on an ipad",
    ),
    (
        "Can I change the delivery time slot?",
        "You can pick a 2-hour delivery slot until 8 p.m. the day before delivery.",
        "how do i choose when my package arrives",
    ),
    (
        "선물 포장이 되나요?",
        "네, 결제 시 선물 포장을 선택하시면 상자당 2,500원에 손글씨 카드를 함께 넣어 드립니다.",
        "선물용으로 포장해 주실 수 있어요",
    ),
    (
        "매장에서 직접 찾아갈 수 있나요?",
        "아직은 안 됩니다. 성수 매장 픽업은 3월 3일부터 시작하며 그 전에는 배송만 가능합니다.",
        "매장 픽업 되나요",
    ),
    (
        "학생 할인이 있나요?",
        "학교 이메일로 인증하시면 매달 최대 30,000원까지 7% 할인해 드립니다.",
        "학생도 할인 받을 수 있어요",
    ),
    (
        "태블릿용 앱이 있나요?",
        "하늘마트 앱은 아이패드와 안드로이드 태블릿에서도 같은 계정으로 쓰실 수 있습니다.",
        "아이패드에서도 앱 쓸 수 있나요",
    ),
    (
        "배송 시간대를 바꿀 수 있나요?",
        "배송 전날 오후 8시까지 2시간 단위 배송 시간대를 고르실 수 있습니다.",
        "배송 받는 시간 정할 수 있어요",
    ),
)
CORRECTIONS = 20  # FAQ entries corrected after the build (half English, half Korean: their test rewordings)


def corrected_answer(answer: str, korean: bool) -> str:
    """A correction no model was trained on: every number changed, and a new sentence in front."""
    changed = re.sub(r"\d", lambda m: str((int(m.group()) + 3) % 10), answer)
    return ("변경 안내: 2027년 1월부터 바뀐 내용입니다. " if korean else "Update from January 2027: ") + changed


def after_build(gw, http, faq: list[dict], test_rows: list[dict]) -> dict:
    """Entries changed or added after the model was built, asked right after: the model can only read them.

    A store edit (what approving a review item does to an entry), then ``knowledge.refresh_ms`` twice over,
    then each changed entry's FAQ question and its held-out rewording, and each new entry's question and a
    rewording of it. Right = the answer equals the entry's new answer (``question_key`` normalisation).
    The entries are put back afterwards, so the rewordings that follow are asked of the shipped FAQ.
    """
    db = open_db(gw.data_dir / "tuneloop.db")
    picked: list[dict] = []
    for lang in ("en", "ko"):
        seen: set[int] = set()
        for row in test_rows:
            if row["lang"] == lang and row["rewording_of"] not in seen and len(seen) < CORRECTIONS // 2:
                seen.add(row["rewording_of"])
                picked.append(row)
    restore: list[tuple[str, str]] = []
    added: list[str] = []
    asked: list[tuple[str, str, str, str]] = []  # (kind, question asked, entry's question, expected answer)
    try:
        for row in picked:
            question, answer = qa(faq[row["rewording_of"]])
            entry = store.entry_for_question(db, question)
            corrected = corrected_answer(answer, row["lang"] == "ko")
            store.update_entry(db, entry.id, answer=corrected, actor="bench", reason="bench: correction after build")
            restore.append((entry.id, entry.answer))
            asked += [("correction, FAQ question", question, question, corrected)]
            asked += [("correction, rewording", row["messages"][0]["content"], question, corrected)]
        for question, answer, reworded in NEW_ENTRIES:
            entry = store.add_entry(db, questions=[question], answer=answer, actor="bench", reason="bench: new entry")
            added.append(entry.id)
            asked += [("new entry, its question", question, question, answer)]
            asked += [("new entry, rewording", reworded, question, answer)]
        time.sleep(1.0)  # knowledge.refresh_ms = 500: every worker follows within that
        results = []
        for kind, question, entry_question, expected in asked:
            body = http.post(f"{gw.url}/api/chat", json={"message": question}).json()
            sources = body.get("sources") or []
            results.append(
                {
                    "kind": kind,
                    "right": question_key(body.get("answer", "")) == question_key(expected),
                    "source_right": bool(sources) and sources[0]["question"] == entry_question,
                }
            )
    finally:
        for entry_id, answer in restore:
            store.update_entry(db, entry_id, answer=answer, actor="bench", reason="bench: put back")
        for entry_id in added:
            store.retire_entry(db, entry_id, actor="bench", reason="bench: put back")
        db.close()
        time.sleep(1.0)
    by_kind: dict[str, dict[str, int]] = {}
    for r in results:
        counts = by_kind.setdefault(r["kind"], {"asked": 0, "right": 0, "source_right": 0})
        counts["asked"] += 1
        counts["right"] += r["right"]
        counts["source_right"] += r["source_right"]
    return by_kind


def _rates(results: list[dict]) -> dict:
    n = len(results)
    return {
        "asked": n,
        "right_with_knowledge": sum(r["on"] for r in results) / n if n else None,
        "right_without": sum(r["off"] for r in results) / n if n else None,
        "first_source_right": sum(r["source_right"] for r in results) / n if n else None,
        # How well the model reads: right answers among the questions whose right entry was first.
        "right_when_first_source_right": _share([r["on"] for r in results if r["source_right"]]),
    }


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


# --- report ---------------------------------------------------------------------------------------


def report(figures: dict) -> str:
    out = [f"# Knowledge base benchmark ({figures['mode']}, {figures['date']})", ""]
    if "freshness" in figures:
        f = figures["freshness"]
        out += [
            "## Approval → corrected answer served (seconds after the approval's response)",
            "",
            table(
                [
                    [
                        s["lang"],
                        f"{s['approval_ms']:.0f}",
                        _s(s["first_s"]),
                        _s(s["everywhere_s"]),
                        str(s["workers"]),
                        str(s["probes"]),
                        str(s["stale_after_1s"]),
                    ]
                    for s in f["samples"]
                ],
                [
                    "lang",
                    "approval ms",
                    "first answer",
                    "every worker, both wordings",
                    "workers",
                    "probes",
                    "stale >1 s",
                ],
            ),
            "",
            f"p50 everywhere {_s(f['everywhere_p50_s'])} s, max {_s(f['everywhere_max_s'])} s (target ≤ 5 s); "
            f"never served: {f['never']}; stale answers asked 1 s or more after the approval: {f['stale_after_1s']}",
            "",
        ]
    if "latency" in figures:
        out += ["## Retrieval's added latency per chat (same gateway, knowledge off per request)", ""]
        out.append(
            table(
                [
                    [
                        f"{v['entries']:,}",
                        str(v["requests"]),
                        f"{v['off_p50_ms']:.2f}",
                        f"{v['on_p50_ms']:.2f}",
                        f"{v['added_p50_ms']:+.2f}",
                        f"{v['ratio_p50']:.3f}",
                        f"{v['off_p90_ms']:.2f}",
                        f"{v['on_p90_ms']:.2f}",
                        f"{v['other_cores']:.2f}",
                    ]
                    for v in figures["latency"].values()
                ],
                [
                    "entries",
                    "requests",
                    "off p50 ms",
                    "on p50 ms",
                    "added p50 ms",
                    "on/off",
                    "off p90",
                    "on p90",
                    "other cores busy",
                ],
            )
        )
        out.append("")
    if "answers" in figures:
        a = figures["answers"]
        card = a.get("model_card") or {}
        out += [
            f"## Rewordings answered right through /api/chat ({a['split']}), model {a['model_dir']} "
            f"({card.get('code_version', '?')}, fingerprint {str(card.get('fingerprint', '?'))[:12]}, "
            f"weights {a['weights_sha256']}, built {card.get('built_at', '?')})",
            "",
            table(
                [
                    [
                        lang,
                        str(v["asked"]),
                        _p(v["right_with_knowledge"]),
                        _p(v["right_without"]),
                        _p(v["first_source_right"]),
                        _p(v.get("right_when_first_source_right")),
                    ]
                    for lang, v in [
                        *a["by_lang"].items(),
                        ("all rewordings", a["all"]),
                        ("FAQ word for word", a["faq_word_for_word"]),
                        *[(f"FAQ word for word, {k}", v) for k, v in a.get("faq_word_for_word_by_lang", {}).items()],
                    ]
                ],
                ["lang", "asked", "right, with knowledge", "right, without", "right entry first", "right when it was"],
            ),
            "",
            "Entries changed or added after the model was built (right = the entry's new answer):",
            "",
            table(
                [
                    [
                        kind,
                        str(v["asked"]),
                        f"{v['right']} ({v['right'] / v['asked']:.0%})",
                        _p(v["source_right"] / v["asked"]),
                    ]
                    for kind, v in a["after_build"].items()
                ],
                ["asked", "questions", "right", "right entry first"],
            ),
            "",
        ]
    return "\n".join(out)


def _s(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _p(value) -> str:
    return "–" if value is None else f"{value:.0%}"


def main(argv: list[str] | None = None) -> int:
    """Command line; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "var" / "models" / "starter", help="for 'answers'")
    parser.add_argument(
        "--split",
        choices=("dev", "test", *(name.removeprefix("rewordings-").removesuffix(".jsonl") for name in REWORDINGS[1:])),
        help="only this split of the rewordings ('answers'; holdout2: data/rewordings-holdout2.jsonl, and so on)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, databases)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    workdir = Path(tempfile.mkdtemp(prefix="tuneloop-bench-kb-"))
    figures: dict = {"mode": "quick" if args.quick else "full", "date": time.strftime("%Y-%m-%d %H:%M")}
    try:
        for section in args.only or SECTIONS:
            if section == "freshness":
                figures["freshness"] = freshness(plan, workdir)
            elif section == "latency":
                figures["latency"] = latency(plan, workdir)
            else:
                split = args.split or ("test" if args.quick else None)
                figures["answers"] = answers(workdir, args.model_dir.resolve(), split)
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
