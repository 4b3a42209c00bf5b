"""Realistic demo traffic, so a fresh install can show a weekly report before real users arrive.

``seed_demo(db, settings)`` writes several weeks of conversations for the Haneul
Mart FAQ (``data/faq.jsonl`` and ``data/paraphrases.jsonl``): users ask FAQ
questions in many phrasings, in Korean and English; the model answers most of
them right and some wrong (an outdated number, or the answer to a neighbouring
question); about 30 % of answers are rated, wrong answers far more often
thumbs-down, with reasons, comments and suggested corrections.

Two model versions answer: an older one (created here, retired) and the
configured live model (the row the gateway itself would register), which took
over a few weeks ago after a one-week canary. The new version fixed most of the
old one's wrong answers and broke two new ones, so the report has a story.

Demo rows are marked: conversations have ``source = 'demo'`` and the older
version's notes say ``demo``; :func:`remove_demo` deletes exactly those.
Timestamps are written explicitly (``record_turn`` stamps "now"), so this module
inserts rows itself, with the same columns ``record_turn`` fills.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlite_utils import Database

from config.errors import Conflict
from config.settings import PROJECT_ROOT, Settings
from feedback import versions
from feedback.db import new_id, write_transaction
from feedback.report.weeks import utc_text, week_label, week_monday
from feedback.sql import executemany
from feedback.text import has_hangul, question_key

DEMO_SOURCE = "demo"

COMMENTS_DOWN_EN = {
    "outdated": [
        "That's not what the website says.",
        "This looks like the old policy.",
        "The checkout page shows a different number.",
        "Outdated — this changed months ago.",
    ],
    "wrong": [
        "This answers a different question.",
        "Wrong answer, I asked about something else.",
        "Not what I asked.",
        "That's incorrect.",
    ],
    "incomplete": ["You didn't say how long it takes.", "Half an answer.", "What about Jeju?"],
    "unhelpful": ["Not helpful, I still don't know what to do.", "Please just give me a phone number.", "Too vague."],
    "other": ["I want to talk to a person.", "Answer was fine but too late for me."],
}
COMMENTS_DOWN_KO = {
    "outdated": ["홈페이지랑 금액이 달라요.", "예전 정책 같아요.", "결제 화면에는 다르게 나와요."],
    "wrong": ["질문이랑 상관없는 답이에요.", "제가 물어본 건 이게 아니에요.", "틀린 답변입니다."],
    "incomplete": ["기간은 안 알려주셨네요.", "제주도는요?", "설명이 부족해요."],
    "unhelpful": ["도움이 안 돼요.", "상담원 연결해 주세요.", "무슨 말인지 모르겠어요."],
    "other": ["답변이 너무 느려요.", "상담원이랑 얘기하고 싶어요."],
}
COMMENTS_UP = ["Thanks, that helped!", "Quick and clear.", "감사합니다!", "덕분에 해결했어요.", "Perfect."]
REASON_WEIGHTS_GOOD = {"unhelpful": 4, "incomplete": 3, "other": 3, "wrong": 1}


@dataclass
class _Item:
    question: str  # canonical FAQ question
    answer: str  # the right answer
    phrasings: list[str]
    weight: float  # popularity
    wrong_v1: str | None = None  # what the older version answers instead, when it is wrong
    wrong_v2: str | None = None
    kind_v1: str = ""  # "outdated" or "wrong"
    kind_v2: str = ""


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`seed_demo` wrote."""

    conversations: int
    answers: int
    ratings: int
    first: str
    last: str
    versions: tuple[str, str]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


_NUMBER = re.compile(r"\d[\d,]*")


def _outdated(answer: str, rng: random.Random) -> str | None:
    """The answer with one number changed, as an old policy would have it; None without numbers."""
    numbers = list(_NUMBER.finditer(answer))
    if not numbers:
        return None
    m = rng.choice(numbers)
    value = int(m.group().replace(",", ""))
    changed = value + max(1, round(value * rng.choice([0.5, -0.25, 1.0])))
    text = f"{changed:,}" if "," in m.group() else str(changed)
    return answer[: m.start()] + text + answer[m.end() :]


def _variants(question: str, rng: random.Random) -> list[str]:
    """Surface variants a user would type: case, punctuation, spacing."""
    bare = question.rstrip("?.!")
    forms = {question, bare, bare + "??", question.lower()}
    if has_hangul(question):
        forms.add(bare.replace(" ", "", 1) + "?")
    else:
        forms.add(bare.lower())
    return sorted(forms)


def _items(rng: random.Random) -> list[_Item]:
    data = PROJECT_ROOT / "data"
    faq = _read(data / "faq.jsonl")
    items = [
        _Item(question=row["messages"][0]["content"], answer=row["messages"][1]["content"], phrasings=[], weight=0.0)
        for row in faq
    ]
    for item in items:
        item.phrasings = _variants(item.question, rng)
    for row in _read(data / "paraphrases.jsonl"):
        items[row["paraphrase_of"]].phrasings.append(row["messages"][0]["content"])
    order = list(range(len(items)))
    rng.shuffle(order)
    for rank, i in enumerate(order):
        items[i].weight = 1.0 / (rank + 3) ** 0.85  # Zipf-like: a few questions are asked a lot
    popular = order[:70]
    bad_v1 = popular[2:16]  # the older version's wrong answers, among common questions
    bad_v2 = bad_v1[:4] + popular[30:32]  # the new one keeps four, fixes ten, breaks two
    for i in bad_v1:
        _make_wrong(items, i, "v1", rng)
    for i in bad_v2:
        if i in bad_v1 and rng.random() < 0.5:
            items[i].wrong_v2, items[i].kind_v2 = items[i].wrong_v1, items[i].kind_v1
        else:
            _make_wrong(items, i, "v2", rng)
    return items


def _make_wrong(items: list[_Item], i: int, which: str, rng: random.Random) -> None:
    item = items[i]
    outdated = _outdated(item.answer, rng)
    if outdated and rng.random() < 0.7:
        wrong, kind = outdated, "outdated"
    else:
        neighbour = items[i + 1 if i + 1 < len(items) else i - 1]
        wrong, kind = neighbour.answer, "wrong"
    setattr(item, f"wrong_{which}", wrong)
    setattr(item, f"kind_{which}", kind)


def has_demo(db: Database) -> bool:
    """True when demo conversations are in the store."""
    return db.execute("SELECT 1 FROM conversations WHERE source = ? LIMIT 1", [DEMO_SOURCE]).fetchone() is not None


def remove_demo(db: Database) -> int:
    """Delete demo conversations (their messages and votes cascade) and the demo model version."""
    with write_transaction(db):
        (count,) = db.execute("SELECT COUNT(*) FROM conversations WHERE source = ?", [DEMO_SOURCE]).fetchone()
        db.execute("DELETE FROM conversations WHERE source = ?", [DEMO_SOURCE])
        db.execute(
            """DELETE FROM model_versions WHERE notes = 'demo'
               AND NOT EXISTS (SELECT 1 FROM messages WHERE model_version_id = model_versions.id)"""
        )
    return count


def seed_demo(
    db: Database,
    settings: Settings,
    *,
    weeks: int = 12,
    turns_per_week: int = 900,
    seed: int = 7,
    now: datetime | None = None,
) -> DemoSummary:
    """Write ``weeks`` complete weeks of demo traffic plus the current week so far.

    Raises :class:`Conflict` when demo data is already there (remove it first).
    """
    if has_demo(db):
        raise Conflict("demo data is already in this database; remove it first (tuneloop demo seed --reset)")
    rng = random.Random(seed)
    now = now or datetime.now(timezone.utc)
    zone = ZoneInfo(settings.report.timezone)
    this_monday = week_monday(week_label(now.astimezone(zone).date()))
    start = datetime.combine(this_monday - timedelta(weeks=weeks), datetime.min.time(), tzinfo=zone)
    canary_start = start + timedelta(weeks=max(1, weeks - 5))
    promoted = canary_start + timedelta(weeks=1)
    items = _items(rng)
    cumulative, total = [], 0.0
    for item in items:
        total += item.weight
        cumulative.append(total)

    live = versions.ensure_live_version(
        db, name=settings.model.name, provider=settings.model.provider, base_url=settings.model.base_url
    )
    old_id = new_id("mv")
    with write_transaction(db):
        db.execute(
            """INSERT INTO model_versions (id, name, provider, base_model, status, traffic_weight, created_at,
                   promoted_at, retired_at, notes)
               VALUES (?, ?, ?, ?, 'retired', 0, ?, ?, ?, 'demo')""",
            [
                old_id,
                f"{settings.model.name}-v0",
                live.provider,
                live.base_model,
                utc_text(start),
                utc_text(start),
                utc_text(promoted),
            ],
        )
        # A live row registered moments ago (by this call, on a fresh store) gets the demo's
        # history: created before the canary week, promoted after it.
        db.execute(
            # created_at becomes the earlier of the two (PostgreSQL has no two-argument MIN)
            "UPDATE model_versions SET promoted_at = ?, "
            "created_at = CASE WHEN created_at < ? THEN created_at ELSE ? END WHERE id = ? AND promoted_at >= ?",
            [utc_text(promoted), *[utc_text(canary_start)] * 2, live.id, utc_text(now - timedelta(minutes=10))],
        )

    conversations, messages, votes = [], [], []
    day = start
    while day < now:
        week_index = (day - start).days // 7
        weekday = day.weekday()
        per_day = turns_per_week / 7 * (1.04**week_index) * (1.15 if weekday < 5 else 0.62)
        for _ in range(max(0, round(rng.gauss(per_day, math.sqrt(per_day))))):
            hour = rng.choices(range(24), weights=_HOURS)[0]
            moment = day + timedelta(hours=hour, seconds=rng.uniform(0, 3600))
            if moment >= now:
                continue
            use_new = moment >= promoted or (moment >= canary_start and rng.random() < 0.1)
            _conversation(
                rng, items, cumulative, moment, live.id if use_new else old_id, use_new, conversations, messages, votes
            )
        day += timedelta(days=1)

    with write_transaction(db):
        executemany(
            db,
            "INSERT INTO conversations (id, created_at, user_ref, source, metadata) VALUES (?, ?, ?, ?, '{}')",
            conversations,
        )
        executemany(
            db,
            """INSERT INTO messages (id, conversation_id, seq, role, content, model_version_id, created_at,
                   latency_ms, tokens_in, tokens_out, finish_reason, error, question_key)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            messages,
        )
        executemany(
            db,
            """INSERT INTO feedback (id, message_id, voter_ref, rating, reason, comment, correction, created_at,
                   updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            votes,
        )
    answers = [m for m in messages if m[3] == "assistant"]
    return DemoSummary(
        conversations=len(conversations),
        answers=len(answers),
        ratings=len(votes),
        first=min(m[6] for m in messages) if messages else "",
        last=max(m[6] for m in messages) if messages else "",
        versions=(old_id, live.id),
    )


# Share of traffic by hour of day in the report's time zone: quiet at night, busy evenings.
_HOURS = [1, 0.6, 0.4, 0.3, 0.3, 0.4, 0.8, 1.5, 2.5, 3.5, 4, 4, 3.8, 3.8, 4, 4, 3.8, 3.5, 3.5, 4, 4.5, 4.5, 3.5, 2]


def _conversation(rng, items, cumulative, moment, version_id, is_new, conversations, messages, votes) -> None:
    conversation_id = new_id("conv")
    user = f"demo-user-{rng.randrange(10**9):09d}"
    conversations.append((conversation_id, utc_text(moment), user, DEMO_SOURCE))
    turns = rng.choices([1, 2, 3], weights=[6, 3, 1])[0]
    seq = 0
    for _ in range(turns):
        item = items[_pick(rng, cumulative)]
        question = rng.choice(item.phrasings)
        wrong = item.wrong_v2 if is_new else item.wrong_v1
        kind = item.kind_v2 if is_new else item.kind_v1
        failed = rng.random() < 0.007
        latency = rng.lognormvariate(math.log(520 if is_new else 640), 0.45)
        asked_at = utc_text(moment)
        answered = moment + timedelta(milliseconds=latency)
        answer = "" if failed else (wrong or item.answer)
        user_id, answer_id = new_id("msg"), new_id("msg")
        messages.append(
            (user_id, conversation_id, seq + 1, "user", question, None, asked_at, None, None, None, None, None, None)
        )
        messages.append(
            (
                answer_id,
                conversation_id,
                seq + 2,
                "assistant",
                answer,
                version_id,
                utc_text(answered),
                round(latency if not failed else 30000.0, 1),
                len(question) // 3,
                None if failed else len(answer) // 3,
                None if failed else "stop",
                "upstream_timeout" if failed else None,
                question_key(question),
            )
        )
        seq += 2
        if not failed and rng.random() < (0.42 if wrong else 0.3):
            votes.append(
                _vote(
                    rng,
                    answer_id,
                    user,
                    item,
                    question,
                    bool(wrong),
                    kind,
                    answered + timedelta(seconds=rng.uniform(4, 240)),
                )
            )
        moment = answered + timedelta(seconds=rng.uniform(20, 180))


def _pick(rng: random.Random, cumulative: list[float]) -> int:
    target = rng.random() * cumulative[-1]
    lo, hi = 0, len(cumulative) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cumulative[mid] < target:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _vote(rng, message_id, voter, item, question, wrong, kind, at) -> tuple:
    down = rng.random() < (0.74 if wrong else 0.07)
    reason = comment = correction = None
    if down:
        if wrong:
            reason = kind if rng.random() < 0.7 else rng.choice(["wrong", "incomplete", "unhelpful"])
        else:
            reason = rng.choices(list(REASON_WEIGHTS_GOOD), weights=list(REASON_WEIGHTS_GOOD.values()))[0]
        if rng.random() < 0.35:
            bank = COMMENTS_DOWN_KO if has_hangul(question) else COMMENTS_DOWN_EN
            comment = rng.choice(bank[reason])
        if wrong and rng.random() < 0.18:
            correction = item.answer
        if rng.random() < 0.2:
            reason = None  # not everyone picks a reason
    elif rng.random() < 0.05:
        comment = rng.choice(COMMENTS_UP)
    stamp = utc_text(at)
    return (new_id("fb"), message_id, voter, -1 if down else 1, reason, comment, correction, stamp, stamp)
