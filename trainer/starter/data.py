"""What a starter build reads: question/answer pairs, checked; and how a build fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from config.errors import InvalidRequest, TuneloopError

Pair = tuple[str, str]


class StarterBuildFailed(TuneloopError):
    """Training did not memorize the data, or ran out of time."""


def load_pairs(path: str | Path) -> list[Pair]:
    """(question, answer) pairs from an OpenAI chat JSONL file (one user/assistant pair a line)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InvalidRequest(f"FAQ file not found: {path}", field="starter.data_file") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{path}:{number}: not JSON: {exc}") from None
    return rows_to_pairs(rows, source=str(path))


def load_paraphrases(path: str | Path) -> list[tuple[str, int]]:
    """(reworded question, FAQ row index) pairs from a paraphrase file (chat rows with ``paraphrase_of``)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row["messages"][0]["content"], int(row["paraphrase_of"])) for row in rows]


def rows_to_pairs(rows: Iterable[Any], *, source: str = "rows") -> list[Pair]:
    """Accepts chat rows (``{"messages": [user, assistant]}``) or (question, answer) tuples."""
    pairs: list[Pair] = []
    for number, row in enumerate(rows, start=1):
        if isinstance(row, (tuple, list)) and len(row) == 2:
            question, answer = row
        else:
            messages = row.get("messages") if isinstance(row, dict) else None
            roles = [m.get("role") for m in messages or [] if isinstance(m, dict)]
            if roles != ["user", "assistant"]:
                raise InvalidRequest(f"{source} row {number}: expected one user and one assistant message, got {roles}")
            question, answer = messages[0].get("content"), messages[1].get("content")
        if not isinstance(question, str) or not isinstance(answer, str) or not question.strip() or not answer.strip():
            raise InvalidRequest(f"{source} row {number}: question and answer must be non-empty text")
        pairs.append((question, answer))
    if not pairs:
        raise InvalidRequest(f"{source}: no question/answer pairs")
    seen: set[str] = set()
    for question, _ in pairs:
        if question in seen:
            raise InvalidRequest(f"{source}: the question {question!r} appears more than once")
        seen.add(question)
    return pairs
