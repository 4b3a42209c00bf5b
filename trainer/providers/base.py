"""The fine-tuning provider interface, and the errors providers raise.

A provider turns a persisted :class:`~trainer.providers.runs.TrainingRun` into a
trained model somewhere else — a worker process on this machine, or a job at
OpenAI — through four calls, none of which keeps state in memory that a
restarted process would need:

- ``submit(run)`` starts the work and returns the external id (OpenAI's job id,
  the local worker's ``pid:N``); the caller stores it on the run row at once.
- ``poll(run)`` reports where the work stands as a :class:`PollResult`: state,
  progress, new log events (:class:`~trainer.providers.runs.RunEvent`), metrics,
  and the output once it succeeded.
- ``cancel(run)`` stops it.
- ``candidate(run)`` says how the output is served, for the model registry.

``trainer/training.py`` owns every state change of the run row; providers only
report. The run row and its log are storage (``runs.py``), which imports nothing
from here: this interface sits on top of them. Errors in the tree (config/errors.py)::

    TuneloopError
    └── ProviderError        the provider failed or refused    (502)
        └── ProviderRetired  the provider takes no new jobs    (409)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from config.errors import TuneloopError
from trainer.providers.runs import RunEvent, TrainingRun


class ProviderError(TuneloopError):
    """A fine-tuning provider failed, or refused the job."""

    status = 502
    code = "provider_error"


class ProviderRetired(ProviderError):
    """The provider no longer accepts new fine-tuning jobs (OpenAI after its cutoff date)."""

    status = 409
    code = "provider_retired"


@dataclass(frozen=True)
class PollResult:
    """Where a submitted run stands, as the provider sees it."""

    state: str
    progress: float | None = None  # 0..1 when known
    events: list[RunEvent] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    output: str | None = None  # adapter/model folder, or the ft: model name, once succeeded
    error: str | None = None


@dataclass(frozen=True)
class CandidateSpec:
    """How a succeeded run's output is served: what ``feedback.versions.create_candidate`` records."""

    name: str
    provider: str
    base_model: str
    adapter_path: str | None = None
    base_url: str | None = None


class Provider(abc.ABC):
    """What every fine-tuning provider implements (see the module docstring)."""

    name: str = ""

    @abc.abstractmethod
    def base_model(self) -> str:
        """The model this provider fine-tunes, as its server knows it."""

    @abc.abstractmethod
    def hyperparameters(self) -> dict[str, Any]:
        """The configuration a new run records (and is fingerprinted by)."""

    @abc.abstractmethod
    def setting_keys(self) -> tuple[str, ...]:
        """The settings (``section.key``) that decide this provider's runs: what ``train start --dry-run`` lists."""

    def check_submit(self) -> None:  # noqa: B027 - optional hook: most providers can always submit
        """Raise :class:`ProviderError` when a new run cannot be submitted now (before any row is written)."""

    def find_submitted(self, run: TrainingRun) -> str | None:
        """The external id of ``run`` if it was submitted but the id never got stored (a crash in between)."""
        return None

    @abc.abstractmethod
    def submit(self, run: TrainingRun) -> str:
        """Start training ``run``; returns the external id."""

    @abc.abstractmethod
    def poll(self, run: TrainingRun) -> PollResult:
        """Report the state of a submitted run."""

    @abc.abstractmethod
    def cancel(self, run: TrainingRun) -> None:
        """Stop a submitted run (a no-op when it already stopped)."""

    @abc.abstractmethod
    def checkpoints(self, run: TrainingRun) -> list[dict[str, Any]]:
        """Saved checkpoints of a run: step, metrics and where each one is."""

    @abc.abstractmethod
    def candidate(self, run: TrainingRun) -> CandidateSpec:
        """How the output of a succeeded run is served."""
