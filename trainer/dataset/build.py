"""``tuneloop dataset build``: base dataset + approved corrections (+ well-rated answers) → a versioned training set.

The pipeline, in order:

1. **Gather** (:func:`gather`, ``sources.py``): the base file's rows, one row per approved review
   item, and — when ``include_upvoted`` > 0 — answers rated up that often. Always
   the whole corrected set, never the new rows alone: training the starter model
   on corrections alone made it forget 60–93 % of what it knew (docs/architecture.md,
   the loop, step 3).
2. **Clean** (``clean.py``) and **mask personal data** (``pii.py``) in every message
   (:func:`clean_and_mask`); ``chat.system_prompt``, when set, is put in front of
   rows that have no system message, because the model is served with it.
3. **Replace** (:func:`replace_corrected`): a base row whose question is an approved item's question (same
   key, same key up to numbers, or a near-duplicate of it or of any phrasing
   grouped with it) is dropped; the correction takes its place. Up-voted answers
   to a question that is pending or approved are left out too.
4. **Deduplicate** (:func:`deduplicate`, ``dedupe.py``), corrections first, then base rows, then up-voted answers.
5. **Split** (:func:`split`, ``split.py``) by near-duplicate group, seeded; groups holding a
   correction go to train.
5b. **As served** (:func:`add_as_served`, ``as_served.py``): with ``"as_served"`` in ``dataset.views``, each
   train and validation row also comes with the knowledge block the gateway would send for its question, from
   the current knowledge base (its change counter is in the manifest); with ``"closed_book"`` not in the views,
   the twin replaces its row. The test split stays closed book: the evaluation asks it both ways.
6. **Validate** (``validate.py``) against OpenAI's format rules; any problem stops
   the build with every problem listed by split and row (and the row's lineage).
7. **Estimate cost** (``cost.py``) per OpenAI base model in ``dataset.prices``.
8. **Write** (:func:`describe` for the manifest) ``<data_dir>/datasets/v{n}/`` — ``train.jsonl``, ``val.jsonl``,
   ``test.jsonl``, ``preferences.jsonl`` (DPO pairs, ``preferences.py``) and
   ``manifest.json`` (sha256 of each file, counts, the masking report, dropped and
   replaced rows, and per-row lineage aligned with each file's lines) — into a
   temporary folder that is renamed into place only once everything is written,
   inside the transaction that records the ``datasets`` row: a failure leaves
   neither a partial folder nor a row. A file lock makes concurrent builds take
   turns for version numbers.

Nothing in the files or the manifest depends on the clock or on the version
number, so the same inputs and seed give byte-identical files; the version and
time are in the folder name and the ``datasets`` row. With ``dry_run`` every step
runs except the write.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from filelock import FileLock
from sqlite_utils import Database
from tqdm.auto import tqdm

from config.errors import ValidationFailed
from config.settings import Settings
from feedback import review
from feedback.db import new_id, utc_now, write_transaction
from feedback.knowledge import store
from feedback.knowledge.live import LiveIndex
from feedback.pii import TYPES, PiiMasker
from feedback.review_io import ImportRejected
from feedback.text import question_key
from modelclient.embeddings import embeddings_from_settings
from trainer.dataset.as_served import served_twins
from trainer.dataset.clean import clean_messages
from trainer.dataset.cost import estimate_costs
from trainer.dataset.dedupe import answer_key, connected_groups, find_duplicates, prompt_key
from trainer.dataset.preferences import PreferencePair, preference_pairs, to_jsonl
from trainer.dataset.sources import (
    Example,
    display_path,
    read_base,
    resolve_base_file,
    review_examples,
    upvoted_examples,
)
from trainer.dataset.split import SPLITS, assign_splits
from trainer.dataset.validate import TOKEN_COUNTING, ValidationReport, estimate_tokens, validate_splits

COST_NOTE = (
    "estimate: estimated training-file tokens × epochs × dataset.prices (USD per 1M training tokens, "
    "copied from OpenAI's pricing page; check current prices before relying on it)"
)


@dataclass
class BuildResult:
    """What a build produced (or, with ``dry_run``, would produce)."""

    dry_run: bool
    counts: dict
    pii: dict
    problems: list[dict]
    costs: list[dict]
    manifest: dict
    files: dict[str, bytes] = field(repr=False, default_factory=dict)
    version: int | None = None
    path: Path | None = None
    dataset_id: str | None = None

    @property
    def sha256(self) -> str:
        return self.manifest.get("sha256", "")


class DatasetInvalid(ValidationFailed):
    """The built rows break OpenAI's format rules; nothing was written. ``result.problems`` lists them."""

    def __init__(self, result: BuildResult):
        lines = [_describe(p) for p in result.problems[:30]]
        more = f"\n  … and {len(result.problems) - 30} more" if len(result.problems) > 30 else ""
        super().__init__(
            f"the dataset has {len(result.problems)} problem(s); nothing was written:\n  " + "\n  ".join(lines) + more
        )
        self.result = result


def _describe(problem: dict) -> str:
    where = f"{problem['split']}" + (f" row {problem['row']}" if problem.get("row") else "")
    origin = lineage_text(problem["lineage"]) if problem.get("lineage") else ""
    return f"{where}: {problem['code']}: {problem['message']}" + (f" ({origin})" if origin else "")


def lineage_text(lineage: dict) -> str:
    """A short human form of a row's lineage: ``data/faq.jsonl line 12``, ``review ri_…``, ``feedback msg_…``."""
    if lineage.get("source") == "base":
        return f"{lineage['file']} line {lineage['line']}"
    if lineage.get("source") == "review":
        return f"review item {lineage['review_item_id']}"
    if lineage.get("source") == "feedback":
        return f"feedback on {lineage['message_id']} ({lineage.get('votes')} up)"
    return json.dumps(lineage, ensure_ascii=False)


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_dataset(
    db: Database,
    settings: Settings,
    *,
    include_upvoted: int | None = None,
    seed: int | None = None,
    dry_run: bool = False,
    progress: bool = False,
    count_tokens: Callable[[str], int] = estimate_tokens,
    teacher: list[Example] | None = None,
    teacher_served: list[Example] | None = None,
) -> BuildResult:
    """Build the next dataset version (see the module docstring); :class:`DatasetInvalid` when rows break the rules.

    ``include_upvoted`` and ``seed`` default to ``dataset.include_upvoted_min`` and ``dataset.seed``. ``teacher``
    rows (a hosted model's answers, ``tuneloop migrate harvest``; lineage source ``teacher``) rank after the
    corrections and before the base file: they are what users were served. ``teacher_served`` are the same
    model's answers asked as served (:func:`add_teacher_served`).
    """
    ds = settings.dataset
    seed = ds.seed if seed is None else seed
    min_up = ds.include_upvoted_min if include_upvoted is None else include_upvoted
    if min_up < 0:
        raise ValidationFailed("include_upvoted must be >= 0", field="include_upvoted")
    threshold = ds.near_duplicate_threshold
    system_prompt = settings.chat.system_prompt.strip()
    masker = PiiMasker(ds.pii_allowlist)

    inputs = gather(db, settings, min_up)
    inputs.teacher = list(teacher or [])
    prepared, unusable = clean_and_mask(inputs.in_trust_order(), system_prompt, masker, progress=progress)
    kept, replaced, superseded = replace_corrected(prepared, inputs.approved, review.open_items(db), threshold)
    rows, duplicates, conflicts = deduplicate(kept, threshold)
    by_split = split(rows, threshold, val_fraction=ds.val_fraction, test_fraction=ds.test_fraction, seed=seed)
    served = add_as_served(db, settings, by_split, masker)
    if teacher_served and "as_served" in served["views"]:
        served["teacher_rows"] = add_teacher_served(by_split, teacher_served, settings, system_prompt, masker)
    split_rows = {name: [{"messages": ex.messages} for ex in by_split[name]] for name in SPLITS}
    lineage = {name: [_row_lineage(ex) for ex in by_split[name]] for name in SPLITS}
    report = validate_splits(
        split_rows, lineage, max_tokens=ds.max_tokens_per_example, min_examples=ds.min_examples, count=count_tokens
    )
    costs = estimate_costs(report.tokens.get("train", 0), ds.prices, ds.epochs)
    pairs = preference_pairs(inputs.approved, masker, system_prompt=system_prompt)  # DPO pairs ride along

    files = {f"{name}.jsonl": _jsonl(split_rows[name]) for name in SPLITS}
    files["preferences.jsonl"] = to_jsonl(pairs)
    pii = _pii_report(by_split, pairs)
    manifest = describe(
        inputs,
        files,
        rows=rows,
        split_rows=split_rows,
        lineage=lineage,
        pairs=pairs,
        dropped=unusable + superseded + duplicates,
        replaced=replaced,
        conflicts=conflicts,
        report=report,
        costs=costs,
        pii=pii,
        served=served,
        params={
            "seed": seed,
            "val_fraction": ds.val_fraction,
            "test_fraction": ds.test_fraction,
            "near_duplicate_threshold": threshold,
            "include_upvoted_min": min_up,
            "max_tokens_per_example": ds.max_tokens_per_example,
            "min_examples": ds.min_examples,
            "system_prompt": system_prompt or None,
            "pii_allowlist_entries": len(ds.pii_allowlist),
            "views": served["views"],
            "knowledge_seq": served["knowledge_seq"],
        },
    )
    files["manifest.json"] = (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    result = BuildResult(
        dry_run=dry_run,
        counts=manifest["counts"],
        pii=pii,
        problems=report.problems,
        costs=costs,
        manifest=manifest,
        files=files,
    )
    if report.problems and not dry_run:
        raise DatasetInvalid(result)
    if dry_run:
        result.version = next_version(db, settings.datasets_dir)
        return result
    result.version, result.path, result.dataset_id = _write(db, settings, files, result)
    return result


@dataclass
class Inputs:
    """What a build starts from: the base file's rows, the approved review items and their rows, the
    answers rated up."""

    base_path: Path
    base: list[Example]
    approved: list[review.ReviewItem]
    corrections: list[Example]
    upvoted: list[Example]
    teacher: list[Example] = field(default_factory=list)

    def in_trust_order(self) -> list[Example]:
        """Corrections, then a teacher's answers, then base rows, then up-voted answers: the order in which
        duplicates are kept."""
        return self.corrections + self.teacher + self.base + self.upvoted


def gather(db: Database, settings: Settings, min_upvotes: int) -> Inputs:
    """Phase 1: the base file (refused whole, with every problem, when a row is malformed), one row per
    approved review item, and the answers rated up at least ``min_upvotes`` times (none when 0)."""
    base_path = resolve_base_file(settings, db)
    base, errors = read_base(base_path)
    if errors:
        raise ImportRejected(display_path(base_path), errors)
    approved = review.approved_items(db)
    return Inputs(base_path, base, approved, review_examples(approved), upvoted_examples(db, min_upvotes))


def clean_and_mask(
    examples: list[Example], system_prompt: str, masker: PiiMasker, *, progress: bool = False
) -> tuple[list[Example], list[dict]]:
    """Phase 2: clean every message, put ``system_prompt`` in front of rows without a system message, mask
    personal data. Returns the prepared rows and the dropped ones (a message empty after cleaning)."""
    dropped: list[dict] = []
    prepared: list[Example] = []
    for ex in tqdm(examples, desc="clean + mask", unit="row", disable=not progress, dynamic_ncols=True):
        messages = clean_messages(ex.messages)
        if system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": system_prompt}] + messages
        if any(not m["content"] for m in messages):
            dropped.append({"lineage": ex.lineage, "reason": "a message is empty after cleaning"})
            continue
        ex.messages, ex.masked = masker.mask_messages(messages)
        prepared.append(ex)
    return prepared, dropped


def replace_corrected(
    prepared: list[Example], approved: list[review.ReviewItem], open_items: list[review.ReviewItem], threshold: float
) -> tuple[list[Example], list[dict], list[dict]]:
    """Phase 3: a base row asking an approved item's question makes way for the correction; an up-voted
    answer to a question that is pending or approved in review is left out. Returns (kept, replaced, dropped)."""
    replaced: list[dict] = []
    dropped: list[dict] = []
    kept: list[Example] = []
    for ex in prepared:
        source = ex.lineage["source"]
        if source in ("base", "feedback"):
            pool = approved if source == "base" else open_items
            match = review.matching_item(pool, {prompt_key(ex.messages)}, threshold)
            if match is not None:
                if source == "base":
                    replaced.append({"base": ex.lineage, "review_item_id": match.id})
                else:
                    dropped.append(
                        {"lineage": ex.lineage, "reason": f"question is {match.status} in review as {match.id}"}
                    )
                continue
        kept.append(ex)
    return kept, replaced, dropped


def deduplicate(kept: list[Example], threshold: float) -> tuple[list[Example], list[dict], list[dict]]:
    """Phase 4: drop exact and near duplicates, the earlier (more trusted) row wins. Returns (rows, dropped,
    conflicts): near-duplicate questions with different answers that were both kept."""
    duplicates, conflict_pairs = find_duplicates([ex.messages for ex in kept], threshold)
    dropped = [
        {"lineage": kept[index].lineage, "reason": f"{kind} duplicate of {lineage_text(kept[kept_index].lineage)}"}
        for index, (kept_index, kind) in sorted(duplicates.items())
    ]
    conflicts = [
        {"a": kept[i].lineage, "b": kept[j].lineage}
        for i, j in conflict_pairs
        if i not in duplicates and j not in duplicates
    ]
    return [ex for i, ex in enumerate(kept) if i not in duplicates], dropped, conflicts


def split(
    rows: list[Example], threshold: float, *, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Example]]:
    """Phase 5: train / val / test by near-duplicate group, seeded; a group holding a correction goes to train.
    Within a split, rows are in a seeded order that depends on their content only."""
    groups = connected_groups([ex.messages for ex in rows], threshold)
    anchors: dict[int, str] = {}
    for g, ex in zip(groups, rows, strict=False):
        anchor = prompt_key(ex.messages) + "\x00" + answer_key(ex.messages)
        anchors[g] = min(anchors.get(g, anchor), anchor)
    pinned = {g for g, ex in zip(groups, rows, strict=False) if ex.lineage["source"] == "review"}
    assigned = assign_splits(
        groups, anchors, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, pinned=pinned
    )
    by_split: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for ex, name in zip(rows, assigned, strict=False):
        by_split[name].append(ex)
    for name in SPLITS:  # not database or file order
        by_split[name].sort(key=lambda ex: _sha(f"{seed}\x00{json.dumps(ex.messages, ensure_ascii=False)}".encode()))
    return by_split


def add_as_served(db: Database, settings: Settings, by_split: dict[str, list[Example]], masker: PiiMasker) -> dict:
    """Phase 5b: the as-served twins of the train and validation rows (see the module docstring), in place.

    Returns what the manifest says about them: the views written, the knowledge base's change counter they were
    made from, twins per split and why rows got none."""
    views = list(settings.dataset.views)
    if "as_served" not in views or not settings.knowledge.enabled:  # without a knowledge base, served = closed book
        return {"views": ["closed_book"], "knowledge_seq": None, "rows": {}, "skipped": {}}
    index = LiveIndex.over(db, settings.knowledge, embed=embeddings_from_settings(settings.knowledge))
    known = {question_key(q) for entry in store.all_entries(db, state="active") for q in entry.questions}
    made, skipped = {}, Counter()
    for name in ("train", "val"):
        twins = served_twins(by_split[name], index, settings, masker, known)
        if "closed_book" in views:
            by_split[name] = by_split[name] + twins.rows
        else:
            by_split[name] = [twin or ex for ex, twin in zip(by_split[name], twins.of, strict=True)]
        made[name] = len(twins.rows)
        skipped.update(twins.skipped)
    return {"views": views, "knowledge_seq": index.seq, "rows": made, "skipped": dict(sorted(skipped.items()))}


def add_teacher_served(
    by_split: dict[str, list[Example]], rows: list[Example], settings: Settings, system_prompt: str, masker: PiiMasker
) -> int:
    """Phase 5c: a teacher's answers asked as served, for the train rows that got no as-served twin, in place.

    A twin needs a knowledge-base entry that holds the row's very question (``as_served.py``), so a question users
    word their own way only ever trains closed book, and a small model trained on many of those stops reading its
    context block (measured on the starter model after distilling 212 closed-book teacher answers: golden as served
    0.80 chrF against the teacher's 1.00, reworded as served 0.17 against 0.67). A teacher asked with the block the
    gateway retrieves shows the model how to answer with one. Only rows whose closed-book question is in the train
    split are added (a question replaced by a correction, deduplicated away or split off stays out). Returns how
    many."""
    header = settings.knowledge.header

    def served(example: Example) -> bool:
        return any(m["role"] == "system" and header in m.get("content", "") for m in example.messages)

    closed = {prompt_key(ex.messages) for ex in by_split["train"] if not served(ex)}
    twinned = {prompt_key(ex.messages) for ex in by_split["train"] if served(ex)}
    wanted = [ex for ex in rows if prompt_key(ex.messages) in closed - twinned]
    prepared, _ = clean_and_mask(wanted, system_prompt, masker)
    by_split["train"] = by_split["train"] + prepared
    return len(prepared)


def describe(
    inputs: Inputs,
    files: dict[str, bytes],
    *,
    rows: list[Example],
    split_rows: dict[str, list[dict]],
    lineage: dict[str, list[dict]],
    pairs: list[PreferencePair],
    dropped: list[dict],
    replaced: list[dict],
    conflicts: list[dict],
    report: ValidationReport,
    costs: list[dict],
    pii: dict,
    served: dict,
    params: dict,
) -> dict:
    """The manifest: what went in (``params``, inputs), what came out (counts, each file's sha256, tokens,
    the cost estimate (phases 6 and 7), masked personal data) and every row's lineage."""
    file_info = {
        name: {"rows": data.count(b"\n"), "bytes": len(data), "sha256": _sha(data)} for name, data in files.items()
    }
    counts = {
        **{name: len(split_rows[name]) for name in SPLITS},
        "preferences": len(pairs),
        "sources": dict(Counter(ex.lineage["source"] for ex in rows)),
        "base_rows": len(inputs.base),
        "approved_corrections": len(inputs.approved),
        "upvoted_answers": len(inputs.upvoted),
        **({"teacher_answers": len(inputs.teacher)} if inputs.teacher else {}),
        "replaced": len(replaced),
        "dropped": len(dropped),
        "conflicts": len(conflicts),
        "as_served": sum(served["rows"].values()),
    }
    return {
        "format": "OpenAI chat fine-tuning JSONL (train/val/test); preferences.jsonl: OpenAI DPO format",
        "params": params,
        "inputs": {
            "base_file": {
                "path": display_path(inputs.base_path),
                "sha256": _sha(inputs.base_path.read_bytes()),
                "rows": len(inputs.base),
            },
            "approved_corrections": len(inputs.approved),
            "upvoted_answers": len(inputs.upvoted),
        },
        "counts": counts,
        "files": file_info,
        "sha256": _sha("".join(f"{n} {i['sha256']}\n" for n, i in sorted(file_info.items())).encode()),
        "tokens": {**report.tokens, "max_example": report.max_example_tokens, "counting": TOKEN_COUNTING},
        "cost_estimate": {"note": COST_NOTE, "models": costs},
        "pii": pii,
        "as_served": served,
        "replaced": replaced,
        "dropped": dropped,
        "conflicts": conflicts,
        "rows": lineage,
        "preferences": [_row_lineage(p) for p in pairs],
    }


def _row_lineage(item) -> dict:
    lineage = dict(item.lineage)
    if item.masked:
        lineage["masked"] = {t: item.masked[t] for t in TYPES if item.masked.get(t)}
    return lineage


def _pii_report(by_split: dict[str, list[Example]], pairs) -> dict:
    by_source: dict[str, Counter] = {}
    rows_masked = 0
    for name in SPLITS:
        for ex in by_split[name]:
            if ex.masked:
                rows_masked += 1
                by_source.setdefault(ex.lineage["source"], Counter()).update(ex.masked)
    preference_counts = Counter()
    for pair in pairs:
        preference_counts.update(pair.masked)
    total = sum(by_source.values(), Counter())
    ordered = lambda c: {t: c[t] for t in TYPES if c.get(t)}  # noqa: E731
    return {
        "placeholders": {t: f"[{t}]" for t in TYPES},
        "rows_masked": rows_masked,
        "by_source": {s: ordered(c) for s, c in sorted(by_source.items())},
        "total": ordered(total),
        "preferences": ordered(preference_counts),
    }


_VERSION_DIR = re.compile(r"^v(\d+)$")


def next_version(db: Database, root: Path) -> int:
    """One more than the highest version in the database or on disk."""
    (recorded,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM datasets").fetchone()
    on_disk = [int(m.group(1)) for p in (root.iterdir() if root.is_dir() else ()) if (m := _VERSION_DIR.match(p.name))]
    return max([recorded, *on_disk]) + 1


def _write(db: Database, settings: Settings, files: dict[str, bytes], result: BuildResult) -> tuple[int, Path, str]:
    root = settings.datasets_dir
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".build.lock")):
        version = next_version(db, root)
        final = root / f"v{version}"
        tmp = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=root))
        renamed = False
        try:
            for name, data in files.items():
                with open(tmp / name, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            dataset_id = new_id("ds")
            counts = {k: v for k, v in result.counts.items() if k in (*SPLITS, "preferences")}
            with write_transaction(db):
                db.execute(
                    """INSERT INTO datasets (id, version, path, sha256, counts, manifest_path, params, created_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                    [
                        dataset_id,
                        version,
                        str(final.resolve()),
                        result.sha256,
                        json.dumps(counts),
                        str((final / "manifest.json").resolve()),
                        json.dumps(result.manifest["params"]),
                        utc_now(),
                    ],
                )
                os.rename(tmp, final)  # the folder appears whole, and only if the row commits
                renamed = True
        except BaseException:
            shutil.rmtree(final if renamed else tmp, ignore_errors=True)
            raise
        _fsync_dir(root)
    return version, final, dataset_id


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_datasets(db: Database) -> list[dict]:
    """Built datasets, newest first, with their counts."""
    rows = db.execute(
        "SELECT id, version, path, sha256, counts, created_at FROM datasets ORDER BY version DESC"
    ).fetchall()
    return [
        {"id": i, "version": v, "path": p, "sha256": s, "counts": json.loads(c), "created_at": t}
        for i, v, p, s, c, t in rows
    ]
