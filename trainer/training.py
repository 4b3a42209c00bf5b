"""Fine-tuning runs: start, poll, resume, cancel — the one place a run's state changes.

A run is a ``training_runs`` row first and a job second. :func:`start_run`
writes the row (``queued``), asks the provider to submit, and stores the
external id right away; :func:`poll_run` asks the provider where the job
stands and records it — state, progress, metrics, new log events — and when
the job succeeded registers its output as a ``candidate`` model version
(``feedback.versions.create_candidate``) with its lineage (run id, which names
the dataset; the adapter folder or ``ft:`` name). Nothing lives only in memory,
so any process can poll any run, and a restarted one calls :func:`resume_runs`:
queued and running runs are polled, never submitted twice (a run whose external
id never got stored is first looked for at the provider).

Idempotent starts: a dataset trained with the same provider, base model and
hyperparameters (``runs.config_key``) is not trained again while that run is
queued, running or succeeded — :func:`start_run` returns the existing run —
unless ``force`` is given; a partial unique index makes the database refuse a
second active run of one dataset and config even when two processes race.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Any, Callable

from sqlite_utils import Database

from config.errors import Conflict, NotFound
from config.profile import Profile, read_profile
from config.settings import Settings
from feedback.db import utc_now, write_transaction
from feedback.versions import create_candidate
from trainer.providers import Provider, ProviderError, get_provider
from trainer.providers.openai_ft import utc_today
from trainer.providers.runs import (
    FINISHED,
    TrainingRun,
    add_event,
    config_key,
    create_run,
    find_run,
    get_run,
    list_runs,
    log,
    update_run,
)

Clock = Callable[[], datetime.date]


@dataclass(frozen=True)
class Started:
    """What :func:`start_run` did: ``created`` is False when an existing run was returned instead."""

    run: TrainingRun
    created: bool


def resolve_dataset(db: Database, ref: str | None = "latest") -> dict:
    """A built dataset by ``latest`` (or None), ``vN``/``N`` (its version) or its id: ``{id, version, path}``."""
    ref = (ref or "latest").strip()
    if ref == "latest":
        row = db.execute("SELECT id, version, path FROM datasets ORDER BY version DESC LIMIT 1").fetchone()
    elif ref.lstrip("vV").isdigit():
        row = db.execute("SELECT id, version, path FROM datasets WHERE version = ?", [int(ref.lstrip("vV"))]).fetchone()
    else:
        row = db.execute("SELECT id, version, path FROM datasets WHERE id = ?", [ref]).fetchone()
    if row is None:
        if ref == "latest":
            raise NotFound("no dataset built yet: run `tuneloop dataset build` first", field="dataset")
        raise NotFound(f"no dataset {ref!r} (see `tuneloop dataset list`)", field="dataset")
    return {"id": row[0], "version": row[1], "path": row[2]}


def start_run(
    db: Database,
    settings: Settings,
    dataset: str | None = "latest",
    provider: str | None = None,
    *,
    force: bool = False,
    today: Clock = utc_today,
) -> Started:
    """Start fine-tuning ``dataset`` with ``provider`` (default ``training.provider``); see the module docstring.

    Raises :class:`~trainer.providers.ProviderError` (e.g. OpenAI after its cutoff
    date, or no base model) before any row is written, and :class:`Conflict` when
    ``force`` asks for a second run while the same one is still active.
    """
    name = provider or settings.training.provider
    chosen = get_provider(name, settings, db, today=today)
    ds = resolve_dataset(db, dataset)
    hyperparameters = chosen.hyperparameters()
    base_model = chosen.base_model()
    key = config_key(name, base_model, hyperparameters)
    active = find_run(db, ds["id"], key, ("queued", "running"))
    if active and force:
        raise Conflict(
            f"run {active.id} of this dataset and configuration is still {active.state}; "
            f"cancel it first (`tuneloop train cancel {active.id}`)",
            code="run_active",
        )
    existing = active or (None if force else find_run(db, ds["id"], key, ("succeeded",)))
    if existing:
        return Started(existing, created=False)
    chosen.check_submit()
    run = create_run(
        db,
        dataset_id=ds["id"],
        provider=name,
        base_model=base_model,
        hyperparameters=hyperparameters,
        work_root=settings.data_dir / "training",
    )
    log(
        db,
        run.id,
        f"run created: dataset v{ds['version']}, provider {name}, base model {base_model}",
        dataset_id=ds["id"],
        forced=force,
    )
    _submit(db, chosen, run)
    return Started(poll_run(db, settings, run.id, today=today), created=True)


# The dataset settings that shape what a run learns from (they act when `tuneloop dataset build` runs).
DATASET_KEYS = ("dataset.val_fraction", "dataset.test_fraction", "dataset.views")


@dataclass(frozen=True)
class RunPlan:
    """What :func:`start_run` would do, and with which settings (``tuneloop train start --dry-run``)."""

    provider: str
    base_model: str
    dataset: dict | None  # None: no dataset built yet
    existing: TrainingRun | None  # the run start_run would return instead of training again
    training: list[tuple[str, Any, str]]  # (key, value, where it came from) for the provider's settings
    dataset_settings: list[tuple[str, Any, str]]  # the same for the settings of the next dataset build
    profile: Profile | None  # the base model folder's fine-tuning profile, when it applies


def plan_run(
    db: Database,
    settings: Settings,
    dataset: str | None = "latest",
    provider: str | None = None,
    *,
    today: Clock = utc_today,
) -> RunPlan:
    """Everything :func:`start_run` would decide, without writing or submitting anything."""
    name = provider or settings.training.provider
    chosen = get_provider(name, settings, db, today=today)
    try:
        ds = resolve_dataset(db, dataset)
    except NotFound:
        if dataset not in (None, "latest"):
            raise
        ds = None
    key = config_key(name, chosen.base_model(), chosen.hyperparameters())
    existing = None
    if ds is not None:
        existing = find_run(db, ds["id"], key, ("queued", "running")) or find_run(db, ds["id"], key, ("succeeded",))
    use_profile = name == "local" and settings.training.use_model_profile
    return RunPlan(
        provider=name,
        base_model=chosen.base_model(),
        dataset=ds,
        existing=existing,
        training=_values(settings, ("training.provider", *chosen.setting_keys())),
        dataset_settings=_values(settings, DATASET_KEYS),
        profile=read_profile(settings.model_dir) if use_profile else None,
    )


def _values(settings: Settings, keys: tuple[str, ...]) -> list[tuple[str, Any, str]]:
    values = []
    for key in keys:
        section, _, name = key.partition(".")
        values.append((key, getattr(getattr(settings, section), name), settings.origin(key)))
    return values


def _submit(db: Database, provider: Provider, run: TrainingRun) -> TrainingRun:
    try:
        external = provider.find_submitted(run) or provider.submit(run)
    except ProviderError as exc:
        _finish(db, run, "failed", error=exc.message)
        raise
    log(db, run.id, f"submitted to {run.provider} as {external}", external_job_id=external)
    return update_run(db, run.id, external_job_id=external, started_at=utc_now())


def poll_run(db: Database, settings: Settings, run_id: str, *, today: Clock = utc_today) -> TrainingRun:
    """Ask the provider where ``run_id`` stands, record it, and register the candidate once it succeeded."""
    run = get_run(db, run_id)
    if run.state == "succeeded" and not run.candidate_version_id:
        return _register_candidate(db, get_provider(run.provider, settings, db, today=today), run)
    if run.finished:
        return run
    provider = get_provider(run.provider, settings, db, today=today)
    if not run.external_job_id:
        run = _submit(db, provider, run)
    result = provider.poll(run)
    for event in result.events:
        add_event(db, run.id, event)
    changes: dict = {"metrics": {**run.metrics, **result.metrics}}
    if result.progress is not None:
        changes["progress"] = result.progress
    if result.state != run.state:
        log(db, run.id, f"{run.state} → {result.state}", state=result.state)
        changes["state"] = result.state
    if result.state in FINISHED:
        changes.update(finished_at=utc_now(), output=result.output, error=result.error)
        if result.error:
            log(db, run.id, result.error, level="error")
    run = update_run(db, run.id, **changes)
    if run.state == "succeeded":
        run = _register_candidate(db, provider, run)
    return run


def _register_candidate(db: Database, provider: Provider, run: TrainingRun) -> TrainingRun:
    spec = provider.candidate(run)
    with write_transaction(db):
        # Re-read inside the write lock: two pollers (CLI and scheduler) must not both register.
        current = get_run(db, run.id)
        if current.candidate_version_id:
            return current
        version = create_candidate(
            db,
            name=spec.name,
            provider=spec.provider,
            base_model=spec.base_model,
            training_run_id=run.id,
            adapter_path=spec.adapter_path,
            base_url=spec.base_url,
            notes=f"fine-tuned by run {run.id} ({run.provider}) on dataset v{run.dataset_version} ({run.dataset_id})",
        )
        update_run(db, run.id, candidate_version_id=version.id)
    log(
        db,
        run.id,
        f"registered candidate model version {version.id} as {spec.name!r}",
        version_id=version.id,
        name=spec.name,
    )
    return get_run(db, run.id)


def _finish(db: Database, run: TrainingRun, state: str, *, error: str | None = None) -> TrainingRun:
    log(
        db,
        run.id,
        f"{run.state} → {state}" + (f": {error}" if error else ""),
        level="error" if error else "info",
        state=state,
    )
    return update_run(db, run.id, state=state, error=error, finished_at=utc_now())


def resume_runs(db: Database, settings: Settings, *, today: Clock = utc_today) -> list[TrainingRun]:
    """Poll every unfinished run (and register candidates a crash left unregistered); for process restarts.

    A provider error on one run is logged on that run and does not stop the others.
    """
    pending = [
        r
        for r in list_runs(db, states=("queued", "running", "succeeded"))
        if not r.finished or not r.candidate_version_id
    ]
    resumed = []
    for run in reversed(pending):  # oldest first
        try:
            resumed.append(poll_run(db, settings, run.id, today=today))
        except ProviderError as exc:
            log(db, run.id, f"could not poll: {exc.message}", level="warning")
            resumed.append(get_run(db, run.id))
    return resumed


def cancel_run(db: Database, settings: Settings, run_id: str, *, today: Clock = utc_today) -> TrainingRun:
    """Stop a queued or running run at its provider and mark it ``cancelled``."""
    run = get_run(db, run_id)
    if run.finished:
        raise Conflict(f"run {run.id} already {run.state}", code="run_finished")
    if run.external_job_id:
        get_provider(run.provider, settings, db, today=today).cancel(run)
    return _finish(db, run, "cancelled")


def run_checkpoints(db: Database, settings: Settings, run_id: str, *, today: Clock = utc_today) -> list[dict]:
    """The run's saved checkpoints, as its provider lists them."""
    run = get_run(db, run_id)
    return get_provider(run.provider, settings, db, today=today).checkpoints(run)


def wait_for_run(
    db: Database,
    settings: Settings,
    run_id: str,
    *,
    on_poll: Callable[[TrainingRun], None] | None = None,
    interval_s: float | None = None,
    timeout_s: float | None = None,
    today: Clock = utc_today,
) -> TrainingRun:
    """Poll ``run_id`` every ``interval_s`` (default ``training.poll_interval_s``) until it finished."""
    interval = settings.training.poll_interval_s if interval_s is None else interval_s
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        run = poll_run(db, settings, run_id, today=today)
        if on_poll:
            on_poll(run)
        if run.finished and (run.state != "succeeded" or run.candidate_version_id):
            return run
        if deadline is not None and time.monotonic() > deadline:
            return run
        time.sleep(interval)
