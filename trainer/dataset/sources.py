"""Where training rows come from: the base file, approved corrections, well-rated answers.

Every row carries its lineage, which the manifest keeps per output row:

- ``{"source": "base", "file": "data/faq.jsonl", "line": 12}`` — a line of the base
  file (a CSV row is reported at the line it starts on);
- ``{"source": "review", "review_item_id": "ri_…", "answer_source": "reviewer"}`` —
  an approved correction;
- ``{"source": "feedback", "message_id": "msg_…", "votes": 7}`` — an answer users
  rated up (``votes`` thumbs-up over all answers with the same question and text;
  ``message_id`` is the newest of them).

The base file is ``dataset.base_file`` when set (a relative path is looked up in
the working directory, then in the project folder), else the file most recently
imported with ``tuneloop dataset import`` (copied into ``<data_dir>/base/`` and
recorded in ``dataset_bases``), else the bundled ``data/faq.jsonl``. It is OpenAI
chat JSONL (``{"messages": [...]}`` a line; other top-level keys are ignored) or
CSV with ``question`` and ``answer`` columns (and an optional ``system`` column).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlite_utils import Database

from config.errors import ConfigError, NotFound, ValidationFailed
from config.settings import PROJECT_ROOT, Settings
from feedback.db import new_id, utc_now, write_transaction
from feedback.review import ReviewItem
from feedback.review_io import ImportRejected, LineError, detect_format, read_records
from feedback.sql import flag
from feedback.text import question_key
from trainer.dataset.validate import check_example

BUNDLED_BASE = PROJECT_ROOT / "data" / "faq.jsonl"
# Rows are checked for format on import and read; length is the build's business.
_NO_TOKEN_LIMIT = 10**12


@dataclass
class Example:
    """One training conversation and where it came from."""

    messages: list[dict]
    lineage: dict
    masked: Counter = field(default_factory=Counter)


def display_path(path: Path) -> str:
    """``path`` relative to the project folder or working directory when inside one, else absolute."""
    resolved = path.resolve()
    for root in (PROJECT_ROOT, Path.cwd().resolve()):
        try:
            return resolved.relative_to(root).as_posix()
        except ValueError:
            continue
    return str(resolved)


def resolve_base_file(settings: Settings, db: Database) -> Path:
    """The base dataset file a build starts from (see the module docstring)."""
    configured = settings.dataset.base_file
    if configured:
        path = Path(configured).expanduser()
        candidates = [path] if path.is_absolute() else [Path.cwd() / path, PROJECT_ROOT / path]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        looked = " or ".join(str(c) for c in candidates)
        raise ConfigError(f"dataset.base_file: {configured} not found (looked for {looked})", field="dataset.base_file")
    row = db.execute("SELECT path FROM dataset_bases ORDER BY created_at DESC, rowid DESC LIMIT 1").fetchone()
    if row:
        path = Path(row[0])
        if not path.is_file():
            raise NotFound(f"the imported base dataset {path} is gone; import it again (tuneloop dataset import)")
        return path
    return BUNDLED_BASE


def read_base(path: str | Path) -> tuple[list[Example], list[LineError]]:
    """The rows of a base file and the lines that are not valid examples."""
    path = Path(path)
    fmt = detect_format(path)
    records, errors = read_records(path, fmt)
    shown = display_path(path)
    examples = []
    for line, record in records:
        if fmt == "csv":
            messages, problem = _csv_messages(record)
        else:
            messages, problem = _jsonl_messages(record)
        if problem:
            errors.append(LineError(line, problem))
            continue
        examples.append(Example(messages=messages, lineage={"source": "base", "file": shown, "line": line}))
    return examples, sorted(errors, key=lambda e: e.line)


def _csv_messages(record: dict) -> tuple[list[dict], str | None]:
    if "question" not in record or "answer" not in record:
        return [], "the header must name a question and an answer column"
    question, answer = record["question"].strip(), record["answer"].strip()
    if not question or not answer:
        return [], "question and answer must both be filled in"
    system = (record.get("system") or "").strip()
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]
    return messages, None


def _jsonl_messages(record: dict) -> tuple[list[dict], str | None]:
    problems = check_example(record, max_tokens=_NO_TOKEN_LIMIT, allow_extra_keys=True)
    if problems:
        return [], "; ".join(p.message for p in problems)
    messages = [{k: v for k, v in m.items() if k in ("role", "content", "weight")} for m in record["messages"]]
    if not any(m["role"] == "user" for m in messages):
        return [], "needs a user message"
    return messages, None


def import_base(db: Database, settings: Settings, source: str | Path) -> dict:
    """Check a company FAQ file and make it the base dataset: copied into ``<data_dir>/base/`` and recorded.

    All-or-nothing: any bad line raises :class:`ImportRejected` (with line numbers)
    and nothing is copied.
    """
    source = Path(source)
    if not source.is_file():
        raise NotFound(f"no file {source}")
    examples, errors = read_base(source)
    if errors:
        raise ImportRejected(source.name, errors)
    if not examples:
        raise ValidationFailed(f"{source.name} holds no rows")
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    folder = settings.data_dir / "base"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = (folder / f"{stamp}-{digest[:8]}-{source.name}").resolve()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".import-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    record = {
        "id": new_id("base"),
        "path": str(target),
        "original_name": source.name,
        "sha256": digest,
        "rows": len(examples),
        "created_at": utc_now(),
    }
    try:
        with write_transaction(db):
            db.execute(  # plain SQL, not sqlite-utils' table API: the PostgreSQL handle has none
                f"INSERT INTO dataset_bases ({', '.join(record)}) VALUES ({', '.join('?' for _ in record)})",
                list(record.values()),
            )
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return record


def list_bases(db: Database) -> list[dict]:
    """Imported base files, newest first."""
    rows = db.execute(
        "SELECT id, path, original_name, sha256, rows, created_at FROM dataset_bases"
        " ORDER BY created_at DESC, rowid DESC"
    ).fetchall()
    return [dict(zip(("id", "path", "original_name", "sha256", "rows", "created_at"), r, strict=False)) for r in rows]


def review_examples(items: list[ReviewItem]) -> list[Example]:
    """One example per approved item: its question and the approved answer."""
    return [
        Example(
            messages=[{"role": "user", "content": item.question}, {"role": "assistant", "content": item.answer or ""}],
            lineage={"source": "review", "review_item_id": item.id, "answer_source": item.answer_source},
        )
        for item in items
    ]


def upvoted_examples(db: Database, min_up: int) -> list[Example]:
    """Answers rated up at least ``min_up`` times, with at least 3 thumbs-up per thumbs-down.

    Votes are summed over every answer with the same question key and the same
    text, so a good answer served many times counts once with all its votes.
    """
    if min_up <= 0:
        return []
    rows = db.execute(
        f"""SELECT a.id, a.created_at, u.content, a.content, SUM({flag("f.rating > 0")}), SUM({flag("f.rating < 0")})
           FROM feedback f
           JOIN messages a ON a.id = f.message_id
           JOIN messages u ON u.conversation_id = a.conversation_id AND u.seq = a.seq - 1
           WHERE a.error IS NULL AND a.content != ''
           GROUP BY a.id, a.created_at, u.content, a.content"""  # one u per a: PostgreSQL wants them all grouped
    ).fetchall()
    groups: dict[tuple[str, str], dict] = defaultdict(
        lambda: {"up": 0, "down": 0, "phrasings": Counter(), "latest": ("", "")}
    )
    for message_id, at, question, answer, up, down in rows:
        group = groups[(question_key(question), answer.strip())]
        group["up"] += up
        group["down"] += down
        group["phrasings"][question.strip()] += 1
        group["latest"] = max(group["latest"], (at, message_id))
    examples = []
    for (_, answer), group in sorted(groups.items()):
        if group["up"] < min_up or group["up"] < 3 * group["down"]:
            continue
        question = min(group["phrasings"].items(), key=lambda kv: (-kv[1], kv[0]))[0]
        examples.append(
            Example(
                messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                lineage={"source": "feedback", "message_id": group["latest"][1], "votes": group["up"]},
            )
        )
    return examples
