"""The ``openai`` provider: OpenAI's fine-tuning jobs API, through the official ``openai`` SDK.

``submit`` uploads the dataset's ``train.jsonl`` and ``val.jsonl`` (purpose
``fine-tune``), then creates a job with ``method = {"type": "supervised",
"supervised": {"hyperparameters": {n_epochs, batch_size,
learning_rate_multiplier}}}`` (``"auto"`` where a setting is 0), ``suffix``,
``seed`` and ``metadata.tuneloop_run_id``. That metadata is how a process that
crashed between creating the job and storing its id finds the job again
(``find_submitted``) instead of paying for a second one.

``poll`` retrieves the job and every event newer than the last one stored
(OpenAI lists events newest first; each has an id, so storing is idempotent).
OpenAI's ``validating_files`` and ``queued`` are our ``queued``. Progress is the
newest metrics event's ``step / total_steps``; the output is the job's
``fine_tuned_model`` (``ft:BASE:ORG:SUFFIX:ID``), registered as the candidate's name.

OpenAI accepts no new fine-tuning jobs after 2027-01-06 (its deprecations page;
``training.openai_cutoff_date``). After that date ``submit`` refuses with
:class:`ProviderRetired`, naming the date and the ``local`` provider. Jobs
submitted before keep being polled, and fine-tuned models keep serving until
their base model is retired.
"""

from __future__ import annotations

import contextlib
import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import openai
from sqlite_utils import Database

from config.settings import Settings
from trainer.providers.base import CandidateSpec, PollResult, Provider, ProviderError, ProviderRetired
from trainer.providers.runs import RunEvent, TrainingRun, has_event, latest_event_data, log

# OpenAI job status -> run state.
_STATES = {
    "validating_files": "queued",
    "queued": "queued",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
    "paused": "running",
}
METADATA_KEY = "tuneloop_run_id"


def utc_today() -> datetime.date:
    """Today's date in UTC (the default clock)."""
    return datetime.datetime.now(datetime.timezone.utc).date()


class OpenAIProvider(Provider):
    """Fine-tunes ``training.openai_base_model`` with OpenAI's jobs API; see the module docstring."""

    name = "openai"

    def __init__(self, settings: Settings, db: Database, *, today: Callable[[], datetime.date] = utc_today):
        self.settings = settings
        self.db = db
        self.today = today
        self._client: openai.OpenAI | None = None

    # --- configuration ------------------------------------------------------------------------

    def base_model(self) -> str:
        return self.settings.training.openai_base_model

    def hyperparameters(self) -> dict[str, Any]:
        t = self.settings.training
        return {
            "n_epochs": t.openai_epochs or "auto",
            "batch_size": t.openai_batch_size or "auto",
            "learning_rate_multiplier": t.openai_lr_multiplier or "auto",
            "suffix": t.openai_suffix,
            "seed": t.seed,
        }

    def setting_keys(self) -> tuple[str, ...]:
        keys = ("base_model", "epochs", "batch_size", "lr_multiplier", "suffix", "base_url", "cutoff_date")
        return (*(f"training.openai_{key}" for key in keys), "training.seed")

    def check_submit(self) -> None:
        cutoff = datetime.date.fromisoformat(self.settings.training.openai_cutoff_date)
        today = self.today()
        if today > cutoff:
            raise ProviderRetired(
                f"OpenAI accepts no new fine-tuning jobs after {cutoff.isoformat()} (see OpenAI's deprecations page); "
                f"today is {today.isoformat()}. Fine-tune with the local provider instead: "
                '`tuneloop train start --provider local`, or set training.provider = "local". To replace a '
                "fine-tuned model that serves users before it shuts down, see docs/migrate-from-openai.md "
                "(`tuneloop migrate plan`).",
                field="training.provider",
            )
        self.client()  # a missing API key fails here, before any row is written

    def client(self) -> openai.OpenAI:
        """The SDK client (``training.openai_base_url``, key from ``training.openai_api_key_env``)."""
        if self._client is None:
            t = self.settings.training
            key = t.openai_api_key()
            if not key:
                raise ProviderError(
                    f"set the environment variable {t.openai_api_key_env} to an OpenAI API key "
                    "(training.openai_api_key_env names it)",
                    field="training.openai_api_key_env",
                )
            self._client = openai.OpenAI(api_key=key, base_url=t.openai_base_url or None, max_retries=2, timeout=120)
        return self._client

    def base_url(self) -> str:
        """The API base URL the fine-tuned model is served from."""
        return str(self.client().base_url).rstrip("/")

    # --- the interface ------------------------------------------------------------------------

    def find_submitted(self, run: TrainingRun) -> str | None:
        with _api("look for an earlier job of this run"):
            page = self.client().fine_tuning.jobs.list(metadata={METADATA_KEY: run.id}, limit=10)
            for job in page.data:
                if (job.metadata or {}).get(METADATA_KEY) == run.id:
                    return job.id
        return None

    def submit(self, run: TrainingRun) -> str:
        self.check_submit()
        dataset = Path(run.dataset_path)
        training_file = self._upload(run, dataset / "train.jsonl")
        val = dataset / "val.jsonl"
        validation_file = self._upload(run, val) if val.is_file() and val.stat().st_size else None
        hp = run.hyperparameters
        with _api("create the fine-tuning job"):
            job = self.client().fine_tuning.jobs.create(
                model=run.base_model,
                training_file=training_file,
                validation_file=validation_file,
                method={
                    "type": "supervised",
                    "supervised": {
                        "hyperparameters": {
                            "n_epochs": hp["n_epochs"],
                            "batch_size": hp["batch_size"],
                            "learning_rate_multiplier": hp["learning_rate_multiplier"],
                        }
                    },
                },
                suffix=hp["suffix"] or None,
                seed=hp["seed"],
                metadata={METADATA_KEY: run.id},
            )
        log(self.db, run.id, f"created OpenAI fine-tuning job {job.id} ({job.status})", job_id=job.id)
        return job.id

    def _upload(self, run: TrainingRun, path: Path) -> str:
        with _api(f"upload {path.name}"):
            uploaded = self.client().files.create(
                file=(f"{run.id}-{path.name}", path.read_bytes()), purpose="fine-tune"
            )
        log(self.db, run.id, f"uploaded {path.name} as {uploaded.id} ({uploaded.bytes} bytes)", file_id=uploaded.id)
        return uploaded.id

    def poll(self, run: TrainingRun) -> PollResult:
        with _api("retrieve the fine-tuning job"):
            job = self.client().fine_tuning.jobs.retrieve(run.external_job_id)
        events = self._new_events(run)
        state = _STATES.get(job.status)
        if state is None:
            raise ProviderError(f"OpenAI job {job.id} has an unknown status {job.status!r}")
        latest = next((e.data for e in reversed(events) if e.data.get("total_steps")), None)
        latest = latest or latest_event_data(self.db, run.id, "total_steps")
        progress = min(1.0, latest["step"] / latest["total_steps"]) if latest else None
        metrics: dict[str, Any] = {
            "openai_status": job.status,
            "trained_tokens": job.trained_tokens,
            "estimated_finish": job.estimated_finish,
        }
        if job.hyperparameters is not None:
            metrics["hyperparameters"] = job.hyperparameters.model_dump(exclude_none=True)
        if latest:
            metrics.update({k: v for k, v in latest.items() if k.endswith(("loss", "accuracy")) or k == "step"})
        if state == "succeeded":
            if not job.fine_tuned_model:
                raise ProviderError(f"OpenAI job {job.id} succeeded without a fine_tuned_model")
            return PollResult(state, 1.0, events, metrics, output=job.fine_tuned_model)
        error = None
        if state == "failed":
            error = f"OpenAI job {job.id} failed: " + (
                f"{job.error.code}: {job.error.message}" if job.error else "no reason given"
            )
        return PollResult(state, progress, events, metrics, error=error)

    def _new_events(self, run: TrainingRun) -> list[RunEvent]:
        """Events not stored yet, oldest first (the SDK pages through the newest-first list)."""
        fresh: list[RunEvent] = []
        with _api("list the job's events"):
            for event in self.client().fine_tuning.jobs.list_events(run.external_job_id, limit=100):
                if has_event(self.db, run.id, event.id):
                    break
                data = event.data if isinstance(event.data, dict) else {}
                fresh.append(
                    RunEvent(
                        message=event.message,
                        level=event.level,
                        data=dict(data),
                        external_id=event.id,
                        created_at=_iso(event.created_at),
                    )
                )
        return fresh[::-1]

    def cancel(self, run: TrainingRun) -> None:
        with _api("cancel the fine-tuning job"):
            job = self.client().fine_tuning.jobs.cancel(run.external_job_id)
        log(self.db, run.id, f"asked OpenAI to cancel job {job.id}; it is {job.status}")

    def checkpoints(self, run: TrainingRun) -> list[dict[str, Any]]:
        if not run.external_job_id:
            return []
        with _api("list the job's checkpoints"):
            found = [
                {
                    "step": c.step_number,
                    "name": c.fine_tuned_model_checkpoint,
                    "created_at": _iso(c.created_at),
                    "metrics": c.metrics.model_dump(exclude_none=True),
                }
                for c in self.client().fine_tuning.jobs.checkpoints.list(run.external_job_id, limit=100)
            ]
        return sorted(found, key=lambda c: c["step"])

    def candidate(self, run: TrainingRun) -> CandidateSpec:
        return CandidateSpec(name=run.output, provider="openai", base_model=run.base_model, base_url=self.base_url())


@contextlib.contextmanager
def _api(what: str) -> Iterator[None]:
    """OpenAI SDK errors become :class:`ProviderError` with what we were doing and what OpenAI said."""
    try:
        yield
    except openai.APIStatusError as exc:
        raise ProviderError(f"OpenAI refused to {what}: HTTP {exc.status_code}: {_message(exc)}") from exc
    except openai.APIError as exc:
        raise ProviderError(f"could not {what} at OpenAI: {exc}") from exc


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    return error.get("message") if isinstance(error, dict) and error.get("message") else str(exc)


def _iso(unix_seconds: int | None) -> str | None:
    if unix_seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(unix_seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
