"""The questions an evaluation asks, with the reference answers, by suite.

- ``test`` — the test split of the candidate's dataset (``datasets/vN/test.jsonl``),
  each row with its lineage from the manifest. The dataset is the one the
  candidate's training run used (``training_runs.dataset_id``), else the newest.
- ``corrections`` — every approved review item: the question and the answer a
  person approved. These are what the loop exists to fix, so the gate asks the
  candidate to beat the live model here.
- ``golden`` — the golden regression set (``evaluation.golden_file``, the bundled
  ``data/golden.jsonl`` by default): answers a new model must not lose.

A row's prompt is its messages up to the last assistant message, which is the
reference; ``chat.system_prompt`` goes in front when the row has no system
message, exactly as the gateway sends it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from config.errors import ConfigError, ValidationFailed
from config.settings import PROJECT_ROOT, Settings
from feedback import review
from feedback.versions import ModelVersion
from trainer.dataset.sources import read_base

BUNDLED_GOLDEN = PROJECT_ROOT / "data" / "golden.jsonl"


@dataclass(frozen=True)
class Case:
    """One question of a suite: the prompt messages, the reference answer, and where it came from."""

    suite: str
    index: int
    messages: list[dict]
    reference: str
    source: dict

    @property
    def question(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


def golden_path(settings: Settings) -> Path:
    """``evaluation.golden_file`` (working directory first, then the project folder), or the bundled set."""
    configured = settings.evaluation.golden_file
    if not configured:
        return BUNDLED_GOLDEN
    path = Path(configured).expanduser()
    for candidate in [path] if path.is_absolute() else [Path.cwd() / path, PROJECT_ROOT / path]:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"evaluation.golden_file: {configured} not found", field="evaluation.golden_file")


def _prompt(messages: list[dict], system_prompt: str) -> tuple[list[dict], str] | None:
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or not any(m["role"] == "user" for m in messages[:last]):
        return None
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
    if system_prompt and not any(m["role"] == "system" for m in prompt):
        prompt.insert(0, {"role": "system", "content": system_prompt})
    return prompt, messages[last]["content"]


def _cases(suite: str, rows: list[tuple[list[dict], dict]], system_prompt: str) -> list[Case]:
    cases = []
    for messages, source in rows:
        split = _prompt(messages, system_prompt)
        if split:
            cases.append(Case(suite, len(cases), split[0], split[1], source))
    return cases


def golden_cases(settings: Settings) -> list[Case]:
    """The golden set; :class:`ValidationFailed` naming the bad lines when the file has any."""
    path = golden_path(settings)
    examples, errors = read_base(path)
    if errors:
        lines = "; ".join(f"line {e.line}: {e.message}" for e in errors[:5])
        raise ValidationFailed(f"{path}: {len(errors)} bad line(s): {lines}", field="evaluation.golden_file")
    return _cases("golden", [(ex.messages, ex.lineage) for ex in examples], settings.chat.system_prompt)


def correction_cases(db: Database, settings: Settings) -> list[Case]:
    """Every approved review item as a question with its approved answer."""
    rows = [
        (
            [{"role": "user", "content": item.question}, {"role": "assistant", "content": item.answer}],
            {"source": "review", "review_item_id": item.id},
        )
        for item in review.approved_items(db)
    ]
    return _cases("corrections", rows, settings.chat.system_prompt)


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
    return _cases("test", rows, settings.chat.system_prompt)
