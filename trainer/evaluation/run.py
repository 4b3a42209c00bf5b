"""Candidate versus incumbent: ask both the same questions, score, judge, store, give the verdict.

:func:`evaluate` checks the pair and the suites (:func:`check_pair`), deploys the
candidate (idempotent: it must be servable to be asked anything, and deploying
never makes it live) — and the incumbent too when it is an adapter, which a
restarted model server may have forgotten (:func:`deploy_pair`) — collects the
suites (``suites.py``), and asks both models every question (:func:`ask_both`)
through the gateway's own client (``modelclient.chat.ChatClient``) at temperature
0, ``evaluation.concurrency`` questions at a time, with a progress bar. Each answer is scored against the
reference (``metrics.py``); the optional judge (``judge.py``) scores each pair.
The gate's verdict under the current ``[gate]`` settings (``trainer.gate.decide``)
is stored with the evaluation, but nothing is promoted or rejected here — that is
``trainer.gate.apply`` (``tuneloop eval --gate``).

A failed answer (the model server erred after its retries) scores 0 and is
counted per suite; when *every* answer of one model failed the evaluation stops
with that error instead of storing a meaningless comparison.

Storage: one ``evaluations`` row (metrics per suite, verdict, judge summary,
parameters) and the answers, row by row with their scores, in
``<data_dir>/evaluations/<id>.jsonl`` (``rows_path``).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sqlite_utils import Database
from tqdm.auto import tqdm

from config.errors import NotFound, UpstreamError, ValidationFailed
from config.settings import EVALUATION_SUITES, Settings
from feedback.db import new_id, utc_now, write_transaction
from feedback.versions import ModelVersion
from modelclient.chat import ChatClient, Target
from trainer import gate
from trainer.deploy import deploy, has_adapter, model_client, version_target
from trainer.evaluation import judge as judging
from trainer.evaluation.metrics import mean_scores, score
from trainer.evaluation.suites import (
    Case,
    candidate_dataset,
    correction_cases,
    dataset_cases,
    golden_cases,
    golden_path,
)
from trainer.registry import resolve_version

ROLES = ("candidate", "incumbent")
_JSON_COLUMNS = ("suites", "metrics", "reasons", "judge", "gate", "params")
_COLUMNS = (
    "id",
    "candidate_id",
    "incumbent_id",
    "dataset_id",
    "suites",
    "metrics",
    "rows_path",
    "passed",
    "reasons",
    "judge",
    "gate",
    "params",
    "duration_s",
    "created_at",
)


@dataclass
class Evaluation:
    """A stored evaluation. ``metrics[suite]`` holds ``rows``, each model's mean scores, the
    candidate-minus-incumbent ``delta`` and failed ``errors``; ``passed``/``reasons`` are the gate's verdict."""

    id: str
    candidate_id: str
    incumbent_id: str | None
    dataset_id: str | None
    suites: list[str]
    metrics: dict
    rows_path: str | None
    passed: bool | None
    reasons: list[str]
    judge: dict | None
    gate: dict
    params: dict
    duration_s: float | None
    created_at: str
    rows: list[dict] = field(default_factory=list, repr=False)  # filled by evaluate(); read_rows() otherwise


@dataclass
class _Answer:
    text: str = ""
    error: str | None = None


def _ask(client: ChatClient, target: Target, case: Case, max_tokens: int) -> _Answer:
    try:
        return _Answer(client.complete([target], case.messages, max_tokens=max_tokens, temperature=0.0).text)
    except UpstreamError as exc:
        return _Answer(error=exc.message)


def _collect(
    db: Database, settings: Settings, candidate: ModelVersion, suites: list[str]
) -> tuple[list[Case], dict | None, str]:
    dataset, dataset_source = candidate_dataset(db, candidate) if "test" in suites else (None, "not used")
    cases: list[Case] = []
    for suite in suites:
        if suite == "test":
            cases += dataset_cases(dataset, settings)
        elif suite == "corrections":
            cases += correction_cases(db, settings)
        elif suite == "golden":
            cases += golden_cases(settings)
    return cases, dataset, dataset_source


def evaluate(
    db: Database,
    settings: Settings,
    candidate: ModelVersion | str,
    against: ModelVersion | str = "live",
    *,
    suites: list[str] | None = None,
    client: ChatClient | None = None,
    progress: bool = False,
    actor: str = "eval",
) -> Evaluation:
    """Evaluate ``candidate`` against ``against`` (the live version by default) and store the result."""
    started = time.perf_counter()
    candidate, incumbent, suites = check_pair(db, settings, candidate, against, suites)
    client = client or model_client(settings)
    deploy_pair(db, settings, candidate, incumbent, client=client, actor=actor)
    cases, dataset, dataset_source = _collect(db, settings, candidate, suites)
    if not cases:
        raise ValidationFailed(
            f"nothing to evaluate: suites {suites} have no rows (build a dataset, approve "
            "corrections, or check evaluation.golden_file)"
        )
    targets = {"candidate": version_target(settings, candidate), "incumbent": version_target(settings, incumbent)}
    judge_target = judging.judge_target(settings)
    answers, verdicts = ask_both(
        client, targets, cases, settings, judge_target, title=f"{candidate.name} vs {incumbent.name}", progress=progress
    )
    rows = _rows(cases, answers, verdicts)
    evaluation = Evaluation(
        id=new_id("ev"),
        candidate_id=candidate.id,
        incumbent_id=incumbent.id,
        dataset_id=dataset["id"] if dataset else None,
        suites=suites,
        metrics=_suite_metrics(suites, rows),
        rows_path=None,
        passed=None,
        reasons=[],
        judge=_judge_summary(suites, rows, judge_target),
        gate={},
        params={
            "max_tokens": settings.evaluation.max_tokens,
            "temperature": 0.0,
            "candidate": candidate.name,
            "incumbent": incumbent.name,
            "golden_file": str(golden_path(settings)) if "golden" in suites else None,
            "dataset_version": dataset["version"] if dataset else None,
            "dataset_source": dataset_source,
        },
        duration_s=None,
        created_at="",
        rows=rows,
    )
    verdict = gate.decide(evaluation, settings)
    evaluation.passed, evaluation.reasons, evaluation.gate = verdict.passed, verdict.reasons, verdict.to_dict()
    evaluation.duration_s = round(time.perf_counter() - started, 3)
    _store(db, settings, evaluation)
    return evaluation


def check_pair(
    db: Database,
    settings: Settings,
    candidate: ModelVersion | str,
    against: ModelVersion | str,
    suites: list[str] | None,
) -> tuple[ModelVersion, ModelVersion, list[str]]:
    """The candidate, the incumbent and the suites to ask, once each is known and the two are different
    versions; ``suites`` defaults to ``evaluation.suites``."""
    candidate = candidate if isinstance(candidate, ModelVersion) else resolve_version(db, candidate)
    incumbent = against if isinstance(against, ModelVersion) else resolve_version(db, against)
    if candidate.id == incumbent.id:
        raise ValidationFailed(f"{candidate.name} ({candidate.id}) cannot be evaluated against itself", field="against")
    suites = list(suites or settings.evaluation.suites)
    unknown = [s for s in suites if s not in EVALUATION_SUITES]
    if unknown:
        raise ValidationFailed(f"unknown suite(s) {unknown}; pick from {list(EVALUATION_SUITES)}", field="suites")
    return candidate, incumbent, suites


def deploy_pair(
    db: Database,
    settings: Settings,
    candidate: ModelVersion,
    incumbent: ModelVersion,
    *,
    client: ChatClient,
    actor: str,
) -> None:
    """Make both servable: the candidate always (deploying never makes it live), the incumbent when it is an
    adapter, which a restarted model server may have forgotten."""
    deploy(db, settings, candidate, actor=actor, client=client)
    if has_adapter(incumbent):
        deploy(db, settings, incumbent, actor=actor, client=client)


def ask_both(
    client: ChatClient,
    targets: dict[str, Target],
    cases: list[Case],
    settings: Settings,
    judge_target: Target | None,
    *,
    title: str,
    progress: bool = False,
) -> tuple[dict[str, list[_Answer]], list[judging.JudgeScore | None]]:
    """Ask each role's model every case at temperature 0, ``evaluation.concurrency`` at a time with one progress
    bar, then have the judge (when configured) score each pair. :class:`UpstreamError` when every answer of
    one model failed: a comparison with nothing on one side means nothing."""
    max_tokens = settings.evaluation.max_tokens
    total = len(cases) * (3 if judge_target else 2)
    with (
        tqdm(total=total, desc=f"evaluating {title}", unit="answer", disable=not progress, dynamic_ncols=True) as bar,
        ThreadPoolExecutor(max_workers=settings.evaluation.concurrency) as pool,
    ):

        def ask(role: str, case: Case) -> _Answer:
            answer = _ask(client, targets[role], case, max_tokens)
            bar.update(1)
            return answer

        futures = {role: [pool.submit(ask, role, case) for case in cases] for role in ROLES}
        answers = {role: [f.result() for f in futures[role]] for role in ROLES}
        for role in ROLES:
            failed = [a.error for a in answers[role] if a.error]
            if len(failed) == len(cases):
                raise UpstreamError(f"every answer of the {role} ({targets[role].name}) failed: {failed[0]}")
        verdicts: list[judging.JudgeScore | None] = [None] * len(cases)
        if judge_target:

            def judge(i: int) -> judging.JudgeScore:
                result = judging.judge_pair(
                    client, judge_target, cases[i], answers["candidate"][i].text, answers["incumbent"][i].text
                )
                bar.update(1)
                return result

            verdicts = list(pool.map(judge, range(len(cases))))
    return answers, verdicts


def _rows(cases: list[Case], answers: dict[str, list[_Answer]], verdicts: list) -> list[dict]:
    rows = []
    for i, case in enumerate(cases):
        row = {
            "suite": case.suite,
            "index": case.index,
            "messages": case.messages,
            "reference": case.reference,
            "source": case.source,
        }
        for role in ROLES:
            answer = answers[role][i]
            row[role] = {"answer": answer.text, "error": answer.error, "scores": score(answer.text, case.reference)}
        row["judge"] = verdicts[i].to_dict() if verdicts[i] else None
        rows.append(row)
    return rows


def _suite_metrics(suites: list[str], rows: list[dict]) -> dict:
    metrics = {}
    for suite in suites:
        mine = [r for r in rows if r["suite"] == suite]
        entry: dict = {"rows": len(mine)}
        if mine:
            for role in ROLES:
                entry[role] = mean_scores([r[role]["scores"] for r in mine])
            entry["delta"] = {k: round(entry["candidate"][k] - entry["incumbent"][k], 6) for k in entry["candidate"]}
            entry["errors"] = {role: sum(1 for r in mine if r[role]["error"]) for role in ROLES}
        metrics[suite] = entry
    return metrics


def _judge_summary(suites: list[str], rows: list[dict], target: Target | None) -> dict | None:
    if target is None:
        return None
    summary = {"model": target.name, "suites": {}}
    for suite in suites:
        scores = [judging.JudgeScore(**r["judge"]) for r in rows if r["suite"] == suite and r["judge"]]
        summary["suites"][suite] = judging.summarize(scores)
    return summary


def _store(db: Database, settings: Settings, evaluation: Evaluation) -> None:
    folder = settings.data_dir / "evaluations"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{evaluation.id}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in evaluation.rows), encoding="utf-8")
    os.replace(tmp, path)
    evaluation.rows_path = str(path.resolve())
    evaluation.created_at = utc_now()
    values = {c: getattr(evaluation, c) for c in _COLUMNS}
    for column in _JSON_COLUMNS:
        values[column] = None if values[column] is None else json.dumps(values[column], ensure_ascii=False)
    values["passed"] = None if evaluation.passed is None else int(evaluation.passed)
    with write_transaction(db):
        db.execute(
            f"INSERT INTO evaluations ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            [values[c] for c in _COLUMNS],
        )


def _from_row(row) -> Evaluation:
    values = dict(zip(_COLUMNS, row, strict=False))
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column]) if values[column] is not None else None
    values["passed"] = None if values["passed"] is None else bool(values["passed"])
    return Evaluation(**values)


def get_evaluation(db: Database, evaluation_id: str) -> Evaluation:
    """One stored evaluation (without its rows: :func:`read_rows`); :class:`NotFound` otherwise."""
    row = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM evaluations WHERE id = ?", [evaluation_id]).fetchone()
    if row is None:
        raise NotFound(f"no evaluation {evaluation_id!r}")
    return _from_row(row)


def list_evaluations(db: Database, candidate_id: str | None = None, *, limit: int = 20) -> list[Evaluation]:
    """Stored evaluations, newest first; of one candidate when given."""
    where, params = ("candidate_id = ?", [candidate_id]) if candidate_id else ("1", [])
    rows = db.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM evaluations WHERE {where} ORDER BY created_at DESC, rowid DESC "
        f"LIMIT {int(limit)}",
        params,
    ).fetchall()
    return [_from_row(row) for row in rows]


def read_rows(evaluation: Evaluation) -> list[dict]:
    """The answers and per-row scores of an evaluation, from its JSONL file."""
    if evaluation.rows:
        return evaluation.rows
    path = Path(evaluation.rows_path or "")
    if not path.is_file():
        raise NotFound(f"the answers of evaluation {evaluation.id} are gone from {path}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
