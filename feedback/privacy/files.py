"""Files derived from personal data follow the store: dataset versions, evaluation rows, weekly reports.

The rule for rows in files, the same after an erasure and after a retention purge: a row whose lineage names a
message or review item that no longer exists, or that the erasure changed, goes; so does any row (other than
one from the company's own base or golden file) that holds the subject's words (:class:`Texts`). Rows are
removed, never edited, and the rest is rewritten byte for byte as it was.

- **Datasets** (``<data_dir>/datasets/vN/``, written by ``trainer/dataset/build.py``): each ``<split>.jsonl``
  is aligned line for line with ``manifest.json``'s ``rows[<split>]`` lineage, and ``preferences.jsonl`` with
  ``preferences``. The files are rewritten (each atomically), the manifest's file sizes, hashes, counts and
  lineage follow, and its ``erasures`` list says when, why and how many rows of each file went; the
  ``datasets`` row gets the new fingerprint. A model already trained on the version is not retrained by this
  (docs/privacy.md).
- **Evaluation rows** (``<data_dir>/evaluations/<id>.jsonl``): each row carries its ``source`` lineage.
- **Reports** (``report.reports_dir``): rebuilt from the store for every week the subject was active in, or whose
  JSON still quotes them (:func:`rebuild_reports`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlite_utils import Database

from config.settings import Settings
from feedback.privacy.expiry import message_expired
from feedback.privacy.texts import Texts
from feedback.report import generate_report, list_reports

MANIFEST_ROWS = "rows"  # manifest key: lineage per split, aligned with <split>.jsonl
MANIFEST_PREFERENCES = "preferences"  # manifest key: lineage aligned with preferences.jsonl


@dataclass
class Gone:
    """What the files must follow: the subject's words, and the messages and review items the run deleted or
    changed (rows naming a message or item that no longer exists go whether listed or not)."""

    texts: Texts = field(default_factory=Texts)
    items: set[str] = field(default_factory=set)
    messages: set[str] = field(default_factory=set)
    expired_before: str | None = None  # a purge's dry run: messages of conversations idle since then count as gone


def _exists(db: Database, table: str, row_id: str) -> bool:
    return db.execute(f"SELECT 1 FROM {table} WHERE id = ?", [row_id]).fetchone() is not None


def row_goes(db: Database, gone: Gone, lineage: dict | None, row) -> bool:
    """Whether a file row with this lineage must go (see the module docstring)."""
    lineage = lineage if isinstance(lineage, dict) else {}
    if lineage.get("source") == "base":
        return False  # a line of the company's own file (base dataset, golden set)
    item = lineage.get("review_item_id")
    if item and (item in gone.items or not _exists(db, "review_items", item)):
        return True
    message = lineage.get("message_id")
    if message and (message in gone.messages or not _exists(db, "messages", message)):
        return True
    if message and gone.expired_before and message_expired(db, message, gone.expired_before):
        return True
    return gone.texts.in_value(row)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _jsonl_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []


def _keep_rows(db: Database, gone: Gone, lines: list[str], lineage: list) -> tuple[list[str], list, int]:
    kept_lines, kept_lineage, dropped = [], [], 0
    for i, line in enumerate(lines):
        origin = lineage[i] if i < len(lineage) else None
        if row_goes(db, gone, origin, json.loads(line)):
            dropped += 1
            continue
        kept_lines.append(line)
        if i < len(lineage):
            kept_lineage.append(origin)
    return kept_lines, kept_lineage, dropped


def scrub_dataset(
    db: Database, dataset: dict, gone: Gone, *, why: str, erasure_id: str, at: str, dry_run: bool = False
) -> dict[str, int]:
    """Remove the rows that must go from one dataset version; returns rows removed per file (empty: none).
    ``dry_run`` counts them and changes nothing."""
    folder = Path(dataset["path"])
    manifest_path = Path(dataset["manifest_path"])
    if not manifest_path.is_file():
        return {}
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    aligned = {f"{name}.jsonl": (MANIFEST_ROWS, name) for name in manifest.get(MANIFEST_ROWS, {})}
    aligned["preferences.jsonl"] = (MANIFEST_PREFERENCES, None)
    removed: dict[str, int] = {}
    new_files: dict[str, bytes] = {}
    for filename, (key, split) in aligned.items():
        path = folder / filename
        if not path.is_file():
            continue
        lineage = manifest.get(key, {}).get(split, []) if split else manifest.get(key, [])
        kept, kept_lineage, dropped = _keep_rows(db, gone, _jsonl_lines(path), lineage)
        if not dropped:
            continue
        removed[filename] = dropped
        new_files[filename] = "".join(line + "\n" for line in kept).encode("utf-8")
        if split:
            manifest[key][split] = kept_lineage
        else:
            manifest[key] = kept_lineage
    if not removed or dry_run:
        return removed
    for filename, data in new_files.items():
        _write_atomic(folder / filename, data)
        info = manifest.setdefault("files", {}).setdefault(filename, {})
        info.update(rows=data.count(b"\n"), bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        name = filename.removesuffix(".jsonl")
        if name in manifest.get("counts", {}):
            manifest["counts"][name] = data.count(b"\n")
    files = manifest.get("files", {})
    manifest["sha256"] = hashlib.sha256(
        "".join(f"{n} {i['sha256']}\n" for n, i in sorted(files.items()) if "sha256" in i).encode()
    ).hexdigest()
    manifest.setdefault("erasures", []).append({"id": erasure_id, "at": at, "why": why, "rows_removed": removed})
    _write_atomic(manifest_path, (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    counts = json.loads(dataset.get("counts") or "{}")
    counts.update({k: v for k, v in manifest.get("counts", {}).items() if k in counts})
    db.execute(
        "UPDATE datasets SET sha256 = ?, counts = ? WHERE id = ?",
        [manifest["sha256"], json.dumps(counts), dataset["id"]],
    )
    return removed


def scrub_datasets(
    db: Database, gone: Gone, *, why: str, erasure_id: str, at: str, dry_run: bool = False
) -> dict[int, dict]:
    """:func:`scrub_dataset` over every built version; returns, by version, ``{"dataset_id", "rows_removed"}``
    (rows removed per file) for the versions that lost rows."""
    result = {}
    for row in db.execute("SELECT id, version, path, manifest_path, counts FROM datasets ORDER BY version").fetchall():
        dataset = dict(zip(("id", "version", "path", "manifest_path", "counts"), row, strict=True))
        removed = scrub_dataset(db, dataset, gone, why=why, erasure_id=erasure_id, at=at, dry_run=dry_run)
        if removed:
            result[dataset["version"]] = {"dataset_id": dataset["id"], "rows_removed": removed}
    return result


def scrub_evaluations(db: Database, settings: Settings, gone: Gone, *, dry_run: bool = False) -> dict[str, int]:
    """Remove the rows that must go from every evaluation's row file; returns rows removed per evaluation
    (``dry_run``: counts only)."""
    paths = {Path(p) for (p,) in db.execute("SELECT rows_path FROM evaluations WHERE rows_path IS NOT NULL")}
    folder = settings.data_dir / "evaluations"
    if folder.is_dir():
        paths.update(folder.glob("*.jsonl"))
    result = {}
    for path in sorted(paths):
        lines = _jsonl_lines(path)
        rows = [json.loads(line) for line in lines]
        kept = [line for line, row in zip(lines, rows, strict=True) if not row_goes(db, gone, row.get("source"), row)]
        if len(kept) != len(lines):
            if not dry_run:
                _write_atomic(path, "".join(line + "\n" for line in kept).encode("utf-8"))
            result[path.stem] = len(lines) - len(kept)
    return result


def quoting_reports(settings: Settings, texts: Texts) -> set[str]:
    """Weeks whose report on disk still quotes the subject."""
    found = set()
    if not texts:
        return found
    for entry in list_reports(settings.reports_dir):
        week = entry["week"]
        path = settings.reports_dir / f"report-{week}.json"
        if path.is_file():
            quoted = texts.in_value(json.loads(path.read_text(encoding="utf-8")))
        else:
            quoted = any(
                texts.matches(line)
                for fmt in entry["formats"]
                for line in (settings.reports_dir / f"report-{week}.{fmt}").read_text(encoding="utf-8").splitlines()
            )
        if quoted:
            found.add(week)
    return found


def report_weeks_on_disk(settings: Settings) -> set[str]:
    """Weeks with a report file in ``report.reports_dir``."""
    return {entry["week"] for entry in list_reports(settings.reports_dir)}


def rebuild_reports(db: Database, settings: Settings, weeks: set[str]) -> tuple[list[str], list[str]]:
    """Rebuild, from the store as it is now, the reports of ``weeks`` that exist on disk.

    Returns (weeks rebuilt, problems): a week that cannot be rebuilt is reported, not raised, so the rest go on.
    """
    rebuilt, problems = [], []
    for week in sorted(weeks & report_weeks_on_disk(settings)):
        try:
            generate_report(db, settings, week=week)
            rebuilt.append(week)
        except Exception as exc:  # noqa: BLE001 - one report must not stop the others; the log says which
            problems.append(f"report {week}: {exc}")
    return rebuilt, problems
