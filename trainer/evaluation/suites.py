"""The questions an evaluation asks, with the reference answers, by suite.

- ``test`` — the test split of the candidate's dataset (``datasets/vN/test.jsonl``),
  each row with its lineage from the manifest. The dataset is the one the
  candidate's training run used (``training_runs.dataset_id``), else the newest.
- ``corrections`` — every approved review item: the question and the answer a
  person approved. These are what the loop exists to fix, so the gate asks the
  candidate to have learned them.
- ``corrections_reworded`` — the other wordings users asked those questions in (the ranking grouped them with
  the item: ``evidence.variants``), with the approved answer: what the people who rated it down actually typed.
- ``golden`` — the golden regression set (``evaluation.golden_file``; by default the bundled
  ``data/golden.jsonl``, 40 FAQ questions word for word, and ``data/golden-rewordings.jsonl``, a rewording
  of each in the same language): answers a new model must not lose.
- ``reworded`` — questions in users' own words (``evaluation.reworded_file``; by default the test split of the
  bundled ``data/rewordings.jsonl``, which no training set and no knowledge base holds).

A :class:`Case` is a question, the turns before it and the reference; how it is put to a model — closed book
or as served — is the evaluation's business (``run.py``), through the gateway's own ``ground()``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sqlite_utils import Database

from config.errors import ConfigError, ValidationFailed
from config.settings import PROJECT_ROOT, Settings
from feedback import review
from feedback.knowledge.corrections import phrasings
from feedback.review_io import detect_format, read_records
from feedback.text import question_key
from feedback.versions import ModelVersion
from trainer.dataset.sources import read_base

BUNDLED_GOLDEN = (PROJECT_ROOT / "data" / "golden.jsonl", PROJECT_ROOT / "data" / "golden-rewordings.jsonl")
BUNDLED_REWORDED = PROJECT_ROOT / "data" / "rewordings.jsonl"


@dataclass(frozen=True)
class Case:
    """One question of a suite: the earlier turns, the question, the reference answer, and where it came from."""

    suite: str
    index: int
    question: str
    reference: str
    source: dict
    history: tuple[dict, ...] = field(default=())


def _find(configured: str, key: str) -> Path:
    path = Path(configured).expanduser()
    for candidate in [path] if path.is_absolute() else [Path.cwd() / path, PROJECT_ROOT / path]:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{key}: {configured} not found", field=key)


def golden_paths(settings: Settings) -> tuple[Path, ...]:
    """``evaluation.golden_file`` (working directory first, then the project folder), or the bundled set."""
    configured = settings.evaluation.golden_file
    return (_find(configured, "evaluation.golden_file"),) if configured else BUNDLED_GOLDEN


def reworded_path(settings: Settings) -> Path:
    """``evaluation.reworded_file``, or the bundled rewordings."""
    configured = settings.evaluation.reworded_file
    return _find(configured, "evaluation.reworded_file") if configured else BUNDLED_REWORDED


def _split(messages: list[dict]) -> tuple[str, list[dict], str] | None:
    """(question, earlier turns, reference) of a chat row: the reference is its last assistant message."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    asked = max((i for i, m in enumerate(messages[: last or 0]) if m["role"] == "user"), default=None)
    if last is None or asked is None:
        return None
    earlier = [{"role": m["role"], "content": m["content"]} for m in messages[:asked]]
    return messages[asked]["content"], earlier, messages[last]["content"]


def _cases(suite: str, rows: list[tuple[list[dict], dict]]) -> list[Case]:
    cases = []
    for messages, source in rows:
        split = _split(messages)
        if split:
            question, earlier, reference = split
            cases.append(Case(suite, len(cases), question, reference, source, tuple(earlier)))
    return cases


def _chat_file(path: Path, key: str) -> list:
    examples, errors = read_base(path)
    if errors:
        lines = "; ".join(f"line {e.line}: {e.message}" for e in errors[:5])
        raise ValidationFailed(f"{path}: {len(errors)} bad line(s): {lines}", field=key)
    return examples


def golden_cases(settings: Settings) -> list[Case]:
    """The golden set; :class:`ValidationFailed` naming the bad lines when a file has any."""
    rows = []
    for path in golden_paths(settings):
        rows += [(ex.messages, ex.lineage) for ex in _chat_file(path, "evaluation.golden_file")]
    return _cases("golden", rows)


def reworded_cases(settings: Settings) -> list[Case]:
    """The reworded questions: the rows of ``evaluation.reworded_file`` marked ``"split": "test"`` when the file
    has a split field (the others were looked at while building retrieval), else every row."""
    path = reworded_path(settings)
    examples = _chat_file(path, "evaluation.reworded_file")
    records, _ = read_records(path, detect_format(path))
    splits = {line: record.get("split") for line, record in records if isinstance(record, dict)}
    if any(splits.values()):
        examples = [ex for ex in examples if splits.get(ex.lineage["line"]) == "test"]
    return _cases("reworded", [(ex.messages, ex.lineage) for ex in examples])


def correction_cases(db: Database, settings: Settings) -> list[Case]:
    """Every approved review item as a question with its approved answer."""
    rows = [
        (
            [{"role": "user", "content": item.question}, {"role": "assistant", "content": item.answer}],
            {"source": "review", "review_item_id": item.id},
        )
        for item in review.approved_items(db)
    ]
    return _cases("corrections", rows)


def reworded_correction_cases(db: Database, settings: Settings) -> list[Case]:
    """The other wordings users asked each approved item's question in, with its approved answer.

    The same phrasings an approval adds to the item's knowledge-base entry (those holding personal data left
    out), less the item's own question."""
    rows = []
    for item in review.approved_items(db):
        own = question_key(item.question)
        seen = {own}
        for wording in phrasings(item)[1:]:
            if question_key(wording) in seen:
                continue
            seen.add(question_key(wording))
            rows.append(
                (
                    [{"role": "user", "content": wording}, {"role": "assistant", "content": item.answer}],
                    {"source": "review", "review_item_id": item.id, "rewording_of": item.question},
                )
            )
    return _cases("corrections_reworded", rows)


def candidate_dataset(db: Database, candidate: ModelVersion) -> tuple[dict | None, str]:
    """The dataset row a candidate was trained on (via its training run), else the newest; and which it was."""
    dataset_id = None
    if "training_runs" in db.table_names():
        row = db.execute(
            "SELECT dataset_id FROM training_runs WHERE id = ? OR candidate_version_id = ? "
            "ORDER BY id = ? DESC LIMIT 1",
            [candidate.training_run_id, candidate.id, candidate.training_run_id],
        ).fetchone()
        dataset_id = row[0] if row else None
    if dataset_id:
        row = db.execute("SELECT id, version, path, manifest_path FROM datasets WHERE id = ?", [dataset_id]).fetchone()
        if row:
            return dict(zip(("id", "version", "path", "manifest_path"), row, strict=False)), "training run"
    row = db.execute("SELECT id, version, path, manifest_path FROM datasets ORDER BY version DESC LIMIT 1").fetchone()
    if row:
        return dict(zip(("id", "version", "path", "manifest_path"), row, strict=False)), "newest dataset"
    return None, "no dataset built"


def dataset_cases(dataset: dict | None, settings: Settings) -> list[Case]:
    """The dataset's test split, each row with its lineage from the manifest (when the manifest has it)."""
    if dataset is None:
        return []
    path = Path(dataset["path"]) / "test.jsonl"
    if not path.is_file():
        raise ValidationFailed(f"dataset v{dataset['version']} has no test split at {path}")
    lineage: list = []
    manifest = Path(dataset.get("manifest_path") or "")
    if manifest.is_file():
        lineage = json.loads(manifest.read_text(encoding="utf-8")).get("rows", {}).get("test", [])
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            source = lineage[i] if i < len(lineage) else {"file": str(path), "line": i + 1}
            rows.append((json.loads(line)["messages"], {"dataset_version": dataset["version"], **source}))
    return _cases("test", rows)
