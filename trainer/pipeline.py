"""The loop as a resumable pipeline: each run a ``pipeline_runs`` row, written step by step.

Kinds and their steps:

- ``weekly``: collect (worst-answered questions of the live version in the last
  7 days → review queue) → report (write and deliver the weekly report);
- ``monthly``, ``threshold``, ``manual``: build → train → evaluate → gate →
  deploy → report. ``build`` is skipped, and every step after it up to the
  report, when no correction was approved since the last dataset.

Each step's outcome (:class:`StepOutcome`) and whatever it made for the steps
after it (:class:`RunContext`: dataset, training run, candidate, evaluation, gate
verdict, report files) are stored in the row before the next step starts: frozen
dataclasses written as JSON and read back typed, so a misspelt hand-off fails
where it is written, not after a training job. :func:`run_pipeline` resumes the newest unfinished
run of the same kind, so a scheduler killed mid-run picks up at the step it
stopped. Steps are idempotent: a finished step is not run again, and the train
step reuses the run stored in ``context`` — or, when the process died between
submitting and storing it, the run ``trainer.training.start_run`` finds for the
same dataset and configuration — so one pipeline run never submits a second
training job.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar

from sqlite_utils import Database

from config.errors import NotFound, ValidationFailed
from config.settings import Settings
from feedback.db import new_id, write_transaction
from feedback.ranking import RankingOptions, version_to_rank
from feedback.report import generate_report
from feedback.report.deliver import deliver_report
from feedback.report.weeks import utc_text
from feedback.review import collect_worst
from feedback.sql import integrity_errors, is_unique_violation
from feedback.versions import get_version, live_version
from trainer import deploy, gate
from trainer.dataset import build_dataset
from trainer.evaluation.run import evaluate, get_evaluation, list_evaluations
from trainer.training import start_run, wait_for_run

Clock = Callable[[], datetime]
Hand = TypeVar("Hand")
KINDS = ("weekly", "monthly", "threshold", "manual")
RETRAIN_STEPS = ("build", "train", "evaluate", "gate", "deploy", "report")
STEPS = {"weekly": ("collect", "report"), "monthly": RETRAIN_STEPS, "threshold": RETRAIN_STEPS, "manual": RETRAIN_STEPS}
ALL_STEPS = ("collect", *RETRAIN_STEPS)
ACTOR = "pipeline"


def utc_clock() -> datetime:
    """The real clock (UTC, aware)."""
    return datetime.now(timezone.utc)


class Skip(Exception):
    """A step has nothing to do; the message says why."""


def _json(value: Any) -> Any:
    """A dataclass as the JSON it is stored as: fields that are None left out, tuples as lists."""
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _json(getattr(value, f.name)) for f in fields(value) if getattr(value, f.name) is not None}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


def _decode(cls, data: dict, what: str, **nested: Callable[[Any], Any]):
    """``cls`` from its stored JSON; lists become tuples, ``nested`` fields are decoded by their function."""
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"{what} has field(s) this version does not know: {sorted(unknown)}")
    values = {}
    for name, value in data.items():
        if value is not None and name in nested:
            value = nested[name](value)
        values[name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


@dataclass(frozen=True)
class ReportFiles:
    """The weekly report a run wrote: its ISO week and each format's file."""

    week: str
    paths: dict[str, str]


@dataclass(frozen=True)
class GateVerdict:
    """What the gate step did with the candidate: ``promoted``, ``canary``, ``rejected`` or ``held``, and why."""

    action: str
    passed: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunContext:
    """What the steps made, handed from one step to the next; the run's ``context`` column.

    Stored as JSON with the names below (the shape every earlier version wrote), None fields left out.
    A step replaces it (``dataclasses.replace``) with what it made.
    """

    collected: tuple[str, ...] | None = None  # collect: the review items it queued
    report: ReportFiles | None = None  # report
    dataset_id: str | None = None  # build
    dataset_version: int | None = None  # build
    training_run_id: str | None = None  # train: stored as soon as the job is submitted
    candidate_id: str | None = None  # train: the model version the run registered
    evaluation_id: str | None = None  # evaluate
    load_error: str | None = None  # evaluate: why the candidate's adapter did not load (the gate rejects it)
    gate: GateVerdict | None = None  # gate

    @classmethod
    def from_json(cls, data: dict) -> "RunContext":
        return _decode(
            cls,
            data,
            "a pipeline run's context",
            report=lambda d: _decode(ReportFiles, d, "a pipeline run's report files"),
            gate=lambda d: _decode(GateVerdict, d, "a pipeline run's gate verdict"),
        )


def _needs(value: Hand | None, step: str, what: str) -> Hand:
    """``value``, which ``step`` needs from an earlier step; a clear error when the run has none."""
    if value is None:
        raise RuntimeError(f"the {step} step needs {what} from an earlier step; this run has none")
    return value


@dataclass(frozen=True)
class StepResult:
    """What a step reports: one line for people, and the facts a reader of the run may want."""

    detail: str
    added: int | None = None  # collect: questions queued
    delivered: tuple[str, ...] | None = None  # report: the channels it reached
    passed: bool | None = None  # evaluate: the gate's verdict on the evaluation
    action: str | None = None  # gate: promoted / canary / rejected / held
    reasons: tuple[str, ...] | None = None  # evaluate, gate: why


@dataclass(frozen=True, kw_only=True)
class StepOutcome(StepResult):
    """A step that ended, as stored in the run's ``steps`` column: its result, state and when it ran."""

    step: str
    state: str  # succeeded / skipped / failed
    started_at: str
    finished_at: str

    def to_json(self) -> dict:
        head = {"step": self.step, "state": self.state, "started_at": self.started_at, "finished_at": self.finished_at}
        return {**head, **_json(self)}


@dataclass
class PipelineRun:
    """A ``pipeline_runs`` row, with ``context`` and ``steps`` decoded."""

    id: str
    kind: str
    step: str | None
    state: str
    started_at: str
    finished_at: str | None
    error: str | None
    context: RunContext = field(default_factory=RunContext)
    steps: list[StepOutcome] = field(default_factory=list)

    def outcome(self, step: str) -> StepOutcome | None:
        """The stored outcome of ``step`` in this run (None when it has not finished)."""
        return next((s for s in self.steps if s.step == step), None)

    def to_dict(self) -> dict:
        """The run as JSON-ready values (``tuneloop pipeline status --json``)."""
        return {**asdict(self), "context": _json(self.context), "steps": [s.to_json() for s in self.steps]}


# Named, not *: on PostgreSQL the table also has a rowid column, which is no PipelineRun field.
_COLUMNS = ", ".join(f.name for f in fields(PipelineRun))


def _from_row(row) -> PipelineRun:
    values = dict(row)
    values["context"] = RunContext.from_json(json.loads(values["context"] or "{}"))
    values["steps"] = [
        _decode(StepOutcome, s, "a pipeline run's step outcome") for s in json.loads(values["steps"] or "[]")
    ]
    return PipelineRun(**values)


def get_pipeline_run(db: Database, run_id: str) -> PipelineRun:
    """One run by id (:class:`NotFound` otherwise)."""
    rows = list(db.query(f"SELECT {_COLUMNS} FROM pipeline_runs WHERE id = ?", [run_id]))
    if not rows:
        raise NotFound(f"no pipeline run {run_id!r}", field="run_id")
    return _from_row(rows[0])


def list_pipeline_runs(db: Database, *, kind: str | None = None, limit: int = 20) -> list[PipelineRun]:
    """Runs, newest first."""
    where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
    rows = db.query(
        f"SELECT {_COLUMNS} FROM pipeline_runs {where} ORDER BY started_at DESC, rowid DESC LIMIT ?", [*params, limit]
    )
    return [_from_row(r) for r in rows]


def _save(db: Database, run: PipelineRun) -> None:
    with write_transaction(db):
        db.execute(
            "UPDATE pipeline_runs SET step = ?, state = ?, finished_at = ?, error = ?, context = ?, steps = ? "
            "WHERE id = ?",
            [
                run.step,
                run.state,
                run.finished_at,
                run.error,
                json.dumps(_json(run.context), ensure_ascii=False),
                json.dumps([s.to_json() for s in run.steps], ensure_ascii=False),
                run.id,
            ],
        )


def open_run(db: Database, kind: str, *, now: datetime) -> tuple[PipelineRun, bool]:
    """The newest unfinished (pending or running) run of ``kind``, or a new one: (run, resumed).

    At most one run of a kind is open, across every process and host: the store refuses a second
    (unique index ``pipeline_runs_one_open``), and on PostgreSQL the look-then-insert holds the
    advisory lock ``pipeline:<kind>``. A process that loses the race resumes the winner's run.
    """
    if kind not in KINDS:
        raise ValidationFailed(f"unknown pipeline kind {kind!r}; pick from {', '.join(KINDS)}", field="kind")
    try:
        return _open_run(db, kind, now)
    except integrity_errors() as exc:
        if not is_unique_violation(exc):
            raise
        return _open_run(db, kind, now)  # another process opened one in between: resume it


def _open_run(db: Database, kind: str, now: datetime) -> tuple[PipelineRun, bool]:
    with write_transaction(db, lock=f"pipeline:{kind}"):
        rows = list(
            db.query(
                f"SELECT {_COLUMNS} FROM pipeline_runs WHERE kind = ? AND state IN ('pending', 'running') "
                "ORDER BY started_at DESC, rowid DESC LIMIT 1",
                [kind],
            )
        )
        if rows:
            return _from_row(rows[0]), True
        run = PipelineRun(
            id=new_id("pl"),
            kind=kind,
            step=None,
            state="pending",
            started_at=utc_text(now),
            finished_at=None,
            error=None,
        )
        db.execute(
            "INSERT INTO pipeline_runs (id, kind, step, state, started_at, context, steps) "
            "VALUES (?, ?, ?, ?, ?, '{}', '[]')",
            [run.id, kind, None, "pending", run.started_at],
        )
    return run, False


def new_corrections(db: Database) -> int:
    """Approved corrections decided after the newest dataset was built (all approved ones if none was)."""
    (last,) = db.execute("SELECT MAX(created_at) FROM datasets").fetchone()
    (count,) = db.execute(
        # CAST: PostgreSQL must know the type of a parameter that is only tested for NULL.
        "SELECT COUNT(*) FROM review_items WHERE status = 'approved' AND (CAST(? AS TEXT) IS NULL OR decided_at > ?)",
        [last, last],
    ).fetchone()
    return count


# --- the steps: (db, settings, run, now) -> StepResult; raise Skip when there is nothing to do ---


def step_collect(db: Database, settings: Settings, run: PipelineRun, now: datetime) -> StepResult:
    """Queue the live version's worst-answered questions of the last 7 days for review."""
    version = version_to_rank(db, None)
    since, until = utc_text(now - timedelta(days=7)), utc_text(now)
    result = collect_worst(
        db, model_version_id=version.id, since=since, until=until, options=RankingOptions.from_settings(settings.report)
    )
    run.context = replace(run.context, collected=tuple(item.id for item in result.added))
    return StepResult(
        f"queued {len(result.added)} question(s) of {version.name} for review, "
        f"{len(result.skipped)} already in the queue",
        added=len(result.added),
    )


def step_report(db: Database, settings: Settings, run: PipelineRun, now: datetime) -> StepResult:
    """Write the weekly report for the last complete week and deliver it where configured."""
    built, paths = generate_report(db, settings, now=now)
    deliveries = deliver_report(built, settings.report)
    run.context = replace(run.context, report=ReportFiles(built["week"], {k: str(v) for k, v in paths.items()}))
    failed = [f"{d.channel}: {d.detail}" for d in deliveries if not d.ok]
    return StepResult(
        f"report {built['week']} written to {paths.get('html') or next(iter(paths.values()))}"
        + (f"; delivery failed: {'; '.join(failed)}" if failed else ""),
        delivered=tuple(d.channel for d in deliveries if d.ok),
    )


def step_build(db: Database, settings: Settings, run: PipelineRun, now: datetime) -> StepResult:
    """Build the next dataset, unless no correction was approved since the last one."""
    fresh = new_corrections(db)
    if fresh == 0:
        raise Skip("skipped: no approved corrections since the last dataset")
    result = build_dataset(db, settings)
    run.context = replace(run.context, dataset_id=result.dataset_id, dataset_version=result.version)
    return StepResult(f"built dataset v{result.version} with {fresh} new approved correction(s)")


def step_train(db: Database, settings: Settings, run: PipelineRun, now: datetime) -> StepResult:
    """Fine-tune the run's dataset (never a second job for it) and wait until a candidate is registered."""
    dataset_id = _needs(run.context.dataset_id, "train", "a dataset")
    if not run.context.training_run_id:
        # start_run returns the existing run for this dataset and configuration, so a process that died
        # after submitting, before the id below was stored, does not submit again.
        started = start_run(db, settings, dataset_id)
        run.context = replace(run.context, training_run_id=started.run.id)
        _save(db, run)
    training = wait_for_run(db, settings, run.context.training_run_id, interval_s=settings.scheduler.poll_interval_s)
    if training.state != "succeeded":
        raise RuntimeError(f"training run {training.id} {training.state}: {training.error or 'no error given'}")
    run.context = replace(run.context, candidate_id=training.candidate_version_id)
    return StepResult(f"training run {training.id} succeeded; candidate {training.candidate_version_id}")


_VERDICT_WORDS = {
    "passed": "passed the gate",
    "failed": "failed the gate",
    "inconclusive": "the gate cannot tell (too few questions)",
}


def step_evaluate(db: Database, settings: Settings, run: PipelineRun, now: datetime) -> StepResult:
    """Evaluate the candidate against the live model (reusing an evaluation a crash left unrecorded)."""
    candidate = _needs(run.context.candidate_id, "evaluate", "a candidate")
    live = live_version(db)
    earlier = [e for e in list_evaluations(db, candidate, limit=1) if live and e.incumbent_id == live.id]
    try:
        evaluation = earlier[0] if earlier else evaluate(db, settings, candidate, "live", actor=ACTOR)
    except deploy.AdapterRefused as exc:
        if exc.version_id != candidate:
            raise  # the live version's adapter was refused: not the candidate's fault, fail visibly
        run.context = replace(run.context, load_error=exc.reason)  # the gate step rejects it
        raise Skip(f"skipped: candidate {candidate} cannot be evaluated: {exc.message}") from exc
    run.context = replace(run.context, evaluation_id=evaluation.id)
    return StepResult(
        f"evaluation {evaluation.id}: {_VERDICT_WORDS[gate.outcome_of(evaluation)]}",
        passed=bool(evaluation.passed),
        reasons=tuple(evaluation.reasons),
    )


def step_gate(db: Database, settings: Settings, run: PipelineRun, now: datetime) -> StepResult:
    """Act on the verdict: promote (or canary) a passing candidate, mark a failing one rejected."""
    if run.context.load_error:  # its adapter did not load: nothing to evaluate, never serve it
        candidate_id = _needs(run.context.candidate_id, "gate", "a candidate")
        outcome = gate.reject_unloadable(db, settings, candidate_id, run.context.load_error, actor=ACTOR)
        reasons = tuple(outcome.reasons)
        run.context = replace(run.context, gate=GateVerdict(outcome.action, False, reasons))
        return StepResult(
            f"candidate {outcome.version.id} rejected; live model unchanged: {reasons[0]}",
            action=outcome.action,
            reasons=reasons,
        )
    evaluation = get_evaluation(db, _needs(run.context.evaluation_id, "gate", "an evaluation"))
    candidate = get_version(db, evaluation.candidate_id)
    if candidate.status == "candidate":
        outcome = gate.apply(db, settings, evaluation, actor=ACTOR)
        action, reasons = outcome.action, tuple(outcome.reasons)
    else:  # applied before a crash: the registry already says what happened
        action = {"live": "promoted", "canary": "canary"}.get(candidate.status, candidate.status)
        reasons = tuple(evaluation.reasons)
    run.context = replace(run.context, gate=GateVerdict(action, bool(evaluation.passed), reasons))
    words = {
        "promoted": "promoted to live",
        "canary": "made the canary",
        "rejected": "rejected; live model unchanged",
        "held": "held (too close to tell: neither promoted nor rejected); live model unchanged",
    }
    return StepResult(
        f"candidate {candidate.id} {words.get(action, action)}" + (": " + "; ".join(reasons) if reasons else ""),
        action=action,
        reasons=reasons,
    )


def step_deploy(db: Database, settings: Settings, run: PipelineRun, now: datetime) -> StepResult:
    """Make sure what serves users (live and canary) is loaded in the model server."""
    verdict = run.context.gate
    if verdict is None or verdict.action not in ("promoted", "canary"):
        raise Skip("skipped: the gate kept the live model")
    results = deploy.deploy_serving(db, settings, actor=ACTOR)
    return StepResult("; ".join(f"{r.name}: {r.action}" for r in results) or "nothing to deploy")


STEP_FUNCTIONS = {
    "collect": step_collect,
    "report": step_report,
    "build": step_build,
    "train": step_train,
    "evaluate": step_evaluate,
    "gate": step_gate,
    "deploy": step_deploy,
}


def run_pipeline(
    db: Database,
    settings: Settings,
    kind: str = "monthly",
    *,
    steps: list[str] | None = None,
    clock: Clock = utc_clock,
) -> PipelineRun:
    """Run (or resume) a pipeline of ``kind``; with ``steps``, only those of its steps that are still to do.

    A step that raises fails the run (``error`` says which step and why) and stops
    it; the next run of that kind starts afresh. A run whose process died stays
    ``running`` and is resumed.
    """
    now = clock()
    run, _ = open_run(db, kind, now=now)
    wanted = STEPS[kind]
    unknown = [s for s in steps or () if s not in wanted]
    if unknown:
        raise ValidationFailed(
            f"a {kind} pipeline has no step(s) {unknown}; its steps: {', '.join(wanted)}", field="step"
        )
    skip_reason = None
    for step in wanted:
        done = run.outcome(step)
        if done:
            if done.state == "skipped" and step == "build":
                skip_reason = done.detail
            continue
        if steps and step not in steps:
            continue
        run.step, run.state = step, "running"
        _save(db, run)
        started = utc_text(clock())
        try:
            if skip_reason and step != "report":
                raise Skip(skip_reason)
            result, state = STEP_FUNCTIONS[step](db, settings, run, now), "succeeded"
        except Skip as exc:
            result, state = StepResult(str(exc)), "skipped"
            skip_reason = skip_reason or (str(exc) if step == "build" else None)
        except Exception as exc:  # noqa: BLE001 — any failure ends the run with its reason, the scheduler lives on
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            run.steps.append(
                StepOutcome(
                    step=step, state="failed", started_at=started, finished_at=utc_text(clock()), detail=message
                )
            )
            run.state, run.error, run.finished_at = "failed", f"{step}: {message}", utc_text(clock())
            _save(db, run)
            return run
        run.steps.append(
            StepOutcome(**asdict(result), step=step, state=state, started_at=started, finished_at=utc_text(clock()))
        )
        _save(db, run)
    if all(run.outcome(s) for s in wanted):
        run.state, run.finished_at = "succeeded", utc_text(clock())
    else:
        run.state = "pending"  # --step ran part of it; the rest waits for the next run of this kind
    _save(db, run)
    return run


def retrain_due(db: Database, settings: Settings) -> bool:
    """True when ``scheduler.retrain_threshold`` (K > 0) approved corrections are not yet in a dataset."""
    k = settings.scheduler.retrain_threshold
    return k > 0 and new_corrections(db) >= k
