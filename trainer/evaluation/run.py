"""Candidate versus incumbent: ask both the same questions, closed book and as served; score, judge, store.

:func:`evaluate` checks the pair and the suites (:func:`check_pair`), deploys the
candidate (idempotent: it must be servable to be asked anything, and deploying
never makes it live) — and the incumbent too when it is an adapter, which a
restarted model server may have forgotten (:func:`deploy_pair`) — collects the
suites (``suites.py``), and puts every question to both models in each of ``evaluation.views``
(:func:`prompts`):

- **closed book** — the question alone, after ``chat.system_prompt``: what the model knows by itself, which is
  what fine-tuning changed;
- **as served** — the prompt the gateway would send for it now: ``feedback.knowledge.grounding.ground()`` over
  the current knowledge base (``LiveIndex.over``, the same retrieval and the same context block), which is what
  users get. With the knowledge base off, both views are the same prompt, asked once.

Both models are asked (:func:`ask_both`) through the gateway's own client (``modelclient.chat.ChatClient``) at
temperature 0, ``evaluation.concurrency`` questions at a time, with a progress bar. Each answer is scored against
the reference (``metrics.py``); per suite and view the mean scores, the difference and its paired bootstrap
interval (``gate.confidence``) are stored; the optional judge (``judge.py``) scores each pair.
The gate's verdict under the current ``[gate]`` settings (``trainer.gate.decide``)
is stored with the evaluation, but nothing is promoted or rejected here — that is
``trainer.gate.apply`` (``tuneloop eval --gate``). The incumbent may be any registered version — the live one,
a retired one, a hosted model — as long as its server answers to its name.

A failed answer (the model server erred after its retries) scores 0 and is
counted per suite; when *every* answer of one model failed the evaluation stops
with that error instead of storing a meaningless comparison.

Storage: one ``evaluations`` row (metrics per suite and view, verdict, judge summary,
parameters) and the answers, one row per question and view with their scores, in
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
from config.settings import EVALUATION_SUITES, VIEWS, Settings
from feedback.db import new_id, utc_now, write_transaction
from feedback.knowledge.grounding import Index, ground
from feedback.knowledge.live import LiveIndex
from feedback.versions import ModelVersion
from modelclient.chat import ChatClient, Target
from modelclient.embeddings import embeddings_from_settings
from trainer import gate
from trainer.deploy import deploy, has_adapter, model_client, version_target
from trainer.evaluation import judge as judging
from trainer.evaluation.metrics import METRICS, mean_scores, paired_interval, score
from trainer.evaluation.suites import (
    Case,
    candidate_dataset,
    correction_cases,
    dataset_cases,
    golden_cases,
    golden_paths,
    reworded_cases,
    reworded_correction_cases,
    reworded_path,
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
    """A stored evaluation. ``metrics[suite][view]`` holds ``rows``, each model's mean scores, the
    candidate-minus-incumbent ``delta``, its paired bootstrap ``interval`` per metric (at ``confidence``) and failed
    ``errors``; ``passed``/``reasons`` are the gate's verdict (``gate["outcome"]``: passed, failed, inconclusive)."""

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


@dataclass(frozen=True)
class Ask:
    """One question as put to both models in one view: the messages sent and the entries given (as served)."""

    case: Case
    view: str
    messages: list[dict]
    sources: tuple[str, ...] = ()


def _ask(client: ChatClient, target: Target, messages: list[dict], max_tokens: int) -> _Answer:
    try:
        return _Answer(client.complete([target], messages, max_tokens=max_tokens, temperature=0.0).text)
    except UpstreamError as exc:
        return _Answer(error=exc.message)


_SUITE_CASES = {
    "corrections": correction_cases,
    "corrections_reworded": reworded_correction_cases,
}


def _collect(
    db: Database, settings: Settings, candidate: ModelVersion, suites: list[str]
) -> tuple[list[Case], dict | None, str]:
    dataset, dataset_source = candidate_dataset(db, candidate) if "test" in suites else (None, "not used")
    cases: list[Case] = []
    for suite in suites:
        if suite == "test":
            cases += dataset_cases(dataset, settings)
        elif suite == "golden":
            cases += golden_cases(settings)
        elif suite == "reworded":
            cases += reworded_cases(settings)
        else:
            cases += _SUITE_CASES[suite](db, settings)
    return cases, dataset, dataset_source


def knowledge_index(db: Database, settings: Settings) -> LiveIndex | None:
    """The knowledge base as a gateway worker searches it now (None when it is off: as served is closed book)."""
    if not settings.knowledge.enabled:
        return None
    return LiveIndex.over(db, settings.knowledge, embed=embeddings_from_settings(settings.knowledge))


def prompts(cases: list[Case], views: list[str], index: Index | None, settings: Settings) -> list[Ask]:
    """Each case in each view, as the gateway would send it: ``ground()`` with or without the knowledge base."""
    asks = []
    for case in cases:
        for view in views:
            grounded = ground(index, settings, case.question, case.history, use_knowledge=view == "as_served")
            asks.append(Ask(case, view, grounded.messages, tuple(s.entry_id for s in grounded.sources)))
    return asks


def evaluate(
    db: Database,
    settings: Settings,
    candidate: ModelVersion | str,
    against: ModelVersion | str = "live",
    *,
    suites: list[str] | None = None,
    views: list[str] | None = None,
    client: ChatClient | None = None,
    progress: bool = False,
    actor: str = "eval",
) -> Evaluation:
    """Evaluate ``candidate`` against ``against`` (the live version by default) and store the result.

    ``suites`` and ``views`` default to ``evaluation.suites`` and ``evaluation.views``."""
    started = time.perf_counter()
    candidate, incumbent, suites = check_pair(db, settings, candidate, against, suites)
    views = [v for v in VIEWS if v in (views or settings.evaluation.views)]
    client = client or model_client(settings)
    deploy_pair(db, settings, candidate, incumbent, client=client, actor=actor)
    cases, dataset, dataset_source = _collect(db, settings, candidate, suites)
    if not cases:
        raise ValidationFailed(
            f"nothing to evaluate: suites {suites} have no rows (build a dataset, approve "
            "corrections, or check evaluation.golden_file)"
        )
    index = knowledge_index(db, settings) if "as_served" in views else None
    asks = prompts(cases, views, index, settings)
    targets = {"candidate": version_target(settings, candidate), "incumbent": version_target(settings, incumbent)}
    judge_target = judging.judge_target(settings)
    answers, verdicts = ask_both(
        client, targets, asks, settings, judge_target, title=f"{candidate.name} vs {incumbent.name}", progress=progress
    )
    rows = _rows(asks, answers, verdicts)
    evaluation = Evaluation(
        id=new_id("ev"),
        candidate_id=candidate.id,
        incumbent_id=incumbent.id,
        dataset_id=dataset["id"] if dataset else None,
        suites=suites,
        metrics=_suite_metrics(suites, views, rows, settings.gate.confidence),
        rows_path=None,
        passed=None,
        reasons=[],
        judge=_judge_summary(suites, views, rows, judge_target),
        gate={},
        params={
            "max_tokens": settings.evaluation.max_tokens,
            "temperature": 0.0,
            "candidate": candidate.name,
            "incumbent": incumbent.name,
            "views": views,
            "knowledge_seq": index.seq if index is not None else None,
            "golden_file": [str(p) for p in golden_paths(settings)] if "golden" in suites else None,
            "reworded_file": str(reworded_path(settings)) if "reworded" in suites else None,
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
    asks: list[Ask],
    settings: Settings,
    judge_target: Target | None,
    *,
    title: str,
    progress: bool = False,
) -> tuple[dict[str, list[_Answer]], list[judging.JudgeScore | None]]:
    """Ask each role's model every prompt at temperature 0, ``evaluation.concurrency`` at a time with one progress
    bar, then have the judge (when configured) score each pair. The same prompt twice (both views, with the
    knowledge base off) is asked once. :class:`UpstreamError` when every answer of one model failed: a comparison
    with nothing on one side means nothing."""
    max_tokens = settings.evaluation.max_tokens
    distinct: dict[str, list[dict]] = {}
    keys = []
    for ask in asks:
        key = json.dumps(ask.messages, ensure_ascii=False, sort_keys=True)
        distinct.setdefault(key, ask.messages)
        keys.append(key)
    total = len(distinct) * 2 + (len(asks) if judge_target else 0)
    with (
        tqdm(total=total, desc=f"evaluating {title}", unit="answer", disable=not progress, dynamic_ncols=True) as bar,
        ThreadPoolExecutor(max_workers=settings.evaluation.concurrency) as pool,
    ):

        def ask(role: str, messages: list[dict]) -> _Answer:
            answer = _ask(client, targets[role], messages, max_tokens)
            bar.update(1)
            return answer

        futures = {role: {k: pool.submit(ask, role, m) for k, m in distinct.items()} for role in ROLES}
        answered = {role: {k: f.result() for k, f in futures[role].items()} for role in ROLES}
        answers = {role: [answered[role][k] for k in keys] for role in ROLES}
        for role in ROLES:
            failed = [a.error for a in answered[role].values() if a.error]
            if len(failed) == len(distinct):
                raise UpstreamError(f"every answer of the {role} ({targets[role].name}) failed: {failed[0]}")
        verdicts: list[judging.JudgeScore | None] = [None] * len(asks)
        if judge_target:

            def judge(i: int) -> judging.JudgeScore:
                result = judging.judge_pair(
                    client, judge_target, asks[i].case, answers["candidate"][i].text, answers["incumbent"][i].text
                )
                bar.update(1)
                return result

            verdicts = list(pool.map(judge, range(len(asks))))
    return answers, verdicts


def _rows(asks: list[Ask], answers: dict[str, list[_Answer]], verdicts: list) -> list[dict]:
    rows = []
    for i, ask in enumerate(asks):
        case = ask.case
        row = {
            "suite": case.suite,
            "view": ask.view,
            "index": case.index,
            "question": case.question,
            "messages": ask.messages,
            "sources": list(ask.sources),
            "reference": case.reference,
            "source": case.source,
        }
        for role in ROLES:
            answer = answers[role][i]
            row[role] = {"answer": answer.text, "error": answer.error, "scores": score(answer.text, case.reference)}
        row["judge"] = verdicts[i].to_dict() if verdicts[i] else None
        rows.append(row)
    return rows


def _suite_metrics(suites: list[str], views: list[str], rows: list[dict], confidence: float) -> dict:
    metrics: dict = {}
    for suite in suites:
        metrics[suite] = {}
        for view in views:
            mine = [r for r in rows if r["suite"] == suite and r["view"] == view]
            entry: dict = {"rows": len(mine)}
            if mine:
                for role in ROLES:
                    entry[role] = mean_scores([r[role]["scores"] for r in mine])
                entry["delta"] = {k: round(entry["candidate"][k] - entry["incumbent"][k], 6) for k in METRICS}
                entry["interval"] = {
                    k: list(
                        paired_interval(
                            [r["candidate"]["scores"][k] for r in mine],
                            [r["incumbent"]["scores"][k] for r in mine],
                            confidence,
                        )
                    )
                    for k in METRICS
                }
                entry["confidence"] = confidence
                entry["errors"] = {role: sum(1 for r in mine if r[role]["error"]) for role in ROLES}
            metrics[suite][view] = entry
    return metrics


def _judge_summary(suites: list[str], views: list[str], rows: list[dict], target: Target | None) -> dict | None:
    if target is None:
        return None
    summary = {"model": target.name, "suites": {}}
    for suite in suites:
        summary["suites"][suite] = {
            view: judging.summarize(
                [
                    judging.JudgeScore(**r["judge"])
                    for r in rows
                    if r["suite"] == suite and r["view"] == view and r["judge"]
                ]
            )
            for view in views
        }
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
    where, params = ("candidate_id = ?", [candidate_id]) if candidate_id else ("1=1", [])
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
