"""``tuneloop migrate harvest``: the hosted model answers what users asked; its answers become a dataset.

**What is asked** (:func:`questions`), each question once (same ``question_key`` after masking):

- ``user`` — every question users asked that got an answer, newest wording of each; questions holding
  personal data are masked first (``feedback.pii``, ``dataset.pii_allowlist``): nothing personal leaves;
- ``golden`` — the golden set's questions (``migrate.harvest_golden``);
- ``reworded`` — the rewordings set's questions outside its test split (``migrate.harvest_reworded``); the
  test split is the held-out ``reworded`` suite and is never asked.

A question whose answer users rated down and a reviewer corrected is **not** asked: the approved correction is
the training row (the dataset build adds every approved correction and drops other rows for that question).

**How**: in each view the dataset trains on (``dataset.views``) — closed book (``chat.system_prompt`` and the
question) and as served (with the knowledge block the gateway retrieves for it), the prompts the evaluation's two
views send — at temperature 0, ``migrate.concurrency`` at a time, with retries that honour ``Retry-After``
(``teacher.py``) and a progress bar. Every answer is appended to a journal, ``<data_dir>/migrate/<teacher>.jsonl``,
and flushed to disk before the next is counted, keyed by the exact prompt: an interrupted harvest (Ctrl-C, a crash,
a kill) resumes where it stopped and never pays for the same answer twice. A line cut short by a crash is ignored.

**Then** (:func:`build`) the journal's answers go to ``trainer.dataset.build_dataset`` as teacher rows: cleaned,
masked again, deduplicated against the base file (the teacher's answer wins: it is what users were served),
split, validated; the as-served answers train the rows that got no as-served twin
(``trainer.dataset.build.add_teacher_served``); each row's lineage in the manifest is
``{"source": "teacher", "model", "asked", "view", …}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sqlite_utils import Database
from tqdm.auto import tqdm

from config.errors import UpstreamError
from config.settings import Settings
from feedback import review
from feedback.db import utc_now
from feedback.knowledge.grounding import ground
from feedback.pii import PiiMasker
from feedback.text import question_key
from feedback.versions import ModelVersion
from modelclient.chat import ChatClient
from trainer.dataset import build_dataset
from trainer.dataset.build import BuildResult
from trainer.dataset.sources import Example, read_base
from trainer.evaluation.run import knowledge_index
from trainer.evaluation.suites import golden_cases, reworded_path
from trainer.migration import teacher as teaching


@dataclass(frozen=True)
class Question:
    """One question to put to the teacher: the masked text, where it came from, and its prompt's key."""

    text: str
    asked: str  # user, golden, reworded
    ref: dict
    messages: tuple[dict, ...]
    key: str
    view: str = "closed_book"


@dataclass
class HarvestResult:
    """What a harvest did: answers asked now, found in the journal, questions skipped for an approved
    correction, failures (question, error), and where the journal is."""

    teacher: str
    journal: Path
    asked: int = 0
    resumed: int = 0
    corrected: int = 0
    masked: int = 0
    by_origin: Counter = field(default_factory=Counter)
    failed: list[tuple[str, str]] = field(default_factory=list)
    waits: int = 0


def user_questions(db: Database) -> list[dict]:
    """Distinct questions users asked that were answered (no error): ``question``, ``key``, ``times``, newest
    ``message_id``; newest first."""
    rows = db.execute(
        """SELECT u.id, u.content FROM messages u
           JOIN messages a ON a.conversation_id = u.conversation_id AND a.seq = u.seq + 1
           WHERE u.role = 'user' AND a.role = 'assistant' AND a.error IS NULL AND length(trim(a.content)) > 0
           ORDER BY u.created_at DESC, u.id DESC"""
    ).fetchall()
    found: dict[str, dict] = {}
    for message_id, content in rows:
        key = question_key(content)
        if not key:
            continue
        if key in found:
            found[key]["times"] += 1
        else:
            found[key] = {"question": content, "key": key, "times": 1, "message_id": message_id}
    return list(found.values())


def journal_path(settings: Settings, teacher: ModelVersion) -> Path:
    """``<data_dir>/migrate/<teacher name, made file-safe>.jsonl``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in teacher.name)
    return settings.data_dir / "migrate" / f"{safe}.jsonl"


def _prompt_key(teacher: str, messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps([teacher, messages], ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def questions(db: Database, settings: Settings, teacher: ModelVersion) -> tuple[list[Question], int, int]:
    """The questions to ask (see the module docstring), each in every view the dataset trains on; the number left
    out for an approved correction, and the number that held personal data (masked)."""
    masker = PiiMasker(settings.dataset.pii_allowlist)
    index = knowledge_index(db, settings) if "as_served" in settings.dataset.views else None
    views = ["closed_book"] + (["as_served"] if index is not None else [])
    corrected = {question_key(item.question) for item in review.approved_items(db)}
    seen: set[str] = set()
    found: list[Question] = []
    skipped = masked = 0

    def add(text: str, asked: str, ref: dict) -> None:
        nonlocal skipped, masked
        result = masker.mask(text)
        key = question_key(result.text)
        if not key or key in seen:
            return
        seen.add(key)
        if question_key(text) in corrected or key in corrected:
            skipped += 1
            return
        masked += bool(result.counts)
        for view in views:
            messages = ground(index, settings, result.text, (), use_knowledge=view == "as_served").messages
            key = _prompt_key(teacher.name, messages)
            found.append(Question(result.text, asked, ref, tuple(messages), key, view))

    for row in user_questions(db):
        add(row["question"], "user", {"message_id": row["message_id"], "times": row["times"]})
    if settings.migrate.harvest_golden:
        for case in golden_cases(settings):
            add(case.question, "golden", dict(case.source))
    if settings.migrate.harvest_reworded:
        for example in _rewordings_outside_test(settings):
            add(example.messages[-2]["content"], "reworded", dict(example.lineage))
    return found, skipped, masked


def _rewordings_outside_test(settings: Settings) -> list[Example]:
    path = reworded_path(settings)
    examples, _ = read_base(path)
    splits = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            splits[number] = (json.loads(line) or {}).get("split")
        except (ValueError, AttributeError):
            continue
    return [
        ex
        for ex in examples
        if splits.get(ex.lineage.get("line")) != "test" and len(ex.messages) >= 2 and ex.messages[-2]["role"] == "user"
    ]


def read_journal(path: Path) -> dict[str, dict]:
    """The answers already in the journal, by prompt key (a line cut short by a crash is skipped)."""
    answers: dict[str, dict] = {}
    if not path.is_file():
        return answers
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("key") and isinstance(record.get("answer"), str):
            answers[record["key"]] = record
    return answers


class _Journal:
    """Append-only, one JSON line per answer, on disk before the answer counts."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def harvest(
    db: Database,
    settings: Settings,
    *,
    client: ChatClient | None = None,
    progress: bool = False,
    sleep: Callable[[float], None] | None = None,
) -> HarvestResult:
    """Ask the teacher every question not yet in its journal (see the module docstring)."""
    teacher = teaching.teacher_version(db, settings)
    target = teaching.teacher_target(settings, teacher)
    client = client or teaching.teacher_client(settings)
    path = journal_path(settings, teacher)
    done = read_journal(path)
    todo, corrected, masked = questions(db, settings, teacher)
    result = HarvestResult(teacher.name, path, corrected=corrected, masked=masked)
    result.by_origin = Counter(q.asked for q in todo if q.view == "closed_book")
    pending = [q for q in todo if q.key not in done]
    result.resumed = len(todo) - len(pending)
    journal = _Journal(path)
    counts = Counter()
    lock = threading.Lock()  # the workers count into one result

    def waited(_seconds: float, _exc: UpstreamError) -> None:
        with lock:
            counts["waits"] += 1

    try:
        with (
            tqdm(
                total=len(todo),
                initial=result.resumed,
                desc=f"harvesting {teacher.name}",
                unit="answer",
                disable=not progress,
                dynamic_ncols=True,
            ) as bar,
            ThreadPoolExecutor(max_workers=settings.migrate.concurrency) as pool,
        ):

            def one(question: Question) -> None:
                extra = {"sleep": sleep} if sleep else {}
                try:
                    answer = teaching.ask(client, target, list(question.messages), settings, on_wait=waited, **extra)
                except UpstreamError as exc:
                    with lock:
                        result.failed.append((question.text, exc.message))
                    return
                journal.append(
                    {
                        "key": question.key,
                        "teacher": teacher.name,
                        "asked": question.asked,
                        "view": question.view,
                        "ref": question.ref,
                        "messages": list(question.messages),
                        "answer": answer,
                        "at": utc_now(),
                    }
                )
                with lock:
                    counts["asked"] += 1
                bar.update(1)

            list(pool.map(one, pending))
    finally:
        journal.close()
    result.asked, result.waits = counts["asked"], counts["waits"]
    return result


def teacher_examples(settings: Settings, teacher: ModelVersion, view: str = "closed_book") -> list[Example]:
    """The journal's answers in ``view`` as training rows with their lineage (empty answers left out)."""
    rows = []
    for record in read_journal(journal_path(settings, teacher)).values():
        if not record["answer"].strip() or record.get("view", "closed_book") != view:
            continue
        messages = [*record["messages"], {"role": "assistant", "content": record["answer"]}]
        origin = {k: v for k, v in record["ref"].items() if k != "source"}  # e.g. the golden file and line
        lineage = {"source": "teacher", "model": record["teacher"], "asked": record["asked"], "view": view, **origin}
        rows.append(Example(messages=messages, lineage=lineage))
    return rows


def build(db: Database, settings: Settings, teacher: ModelVersion, *, progress: bool = False) -> BuildResult:
    """The next dataset version: the base file, approved corrections and the teacher's answers."""
    return build_dataset(
        db,
        settings,
        progress=progress,
        teacher=teacher_examples(settings, teacher),
        teacher_served=teacher_examples(settings, teacher, "as_served"),
    )
