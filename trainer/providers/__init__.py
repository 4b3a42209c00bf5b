"""Fine-tuning providers: where a training run actually trains.

- ``runs.py`` — the ``training_runs`` / ``training_events`` storage every process shares: the
  run row (``TrainingRun``), its states and its log lines (``RunEvent``);
- ``base.py`` — the interface on top of it (submit, poll, cancel, checkpoints, candidate) and ``ProviderError``;
- ``local.py`` — a worker process on this machine (``local_worker.py`` → ``local_train.py``:
  transformers Trainer + PEFT LoRA or full fine-tuning; ``local_data.py``: assistant-only labels);
- ``openai_ft.py`` — OpenAI's fine-tuning jobs API (no new jobs after 2027-01-06).

``trainer/training.py`` drives them; nothing here changes a run's state.
"""

from __future__ import annotations

import datetime
from typing import Callable

from sqlite_utils import Database

from config.errors import ValidationFailed
from config.settings import TRAINING_PROVIDERS, Settings
from trainer.providers.base import (
    CandidateSpec,
    PollResult,
    Provider,
    ProviderError,
    ProviderRetired,
)
from trainer.providers.local import LocalProvider
from trainer.providers.openai_ft import OpenAIProvider, utc_today
from trainer.providers.runs import RunEvent


def get_provider(
    name: str, settings: Settings, db: Database, *, today: Callable[[], datetime.date] = utc_today
) -> Provider:
    """The provider called ``name`` (``local`` or ``openai``); ``today`` is the clock the OpenAI cutoff uses."""
    if name == "local":
        return LocalProvider(settings, db)
    if name == "openai":
        return OpenAIProvider(settings, db, today=today)
    raise ValidationFailed(
        f"unknown training provider {name!r}; pick one of {', '.join(TRAINING_PROVIDERS)}", field="provider"
    )


__all__ = [
    "CandidateSpec",
    "LocalProvider",
    "OpenAIProvider",
    "PollResult",
    "Provider",
    "ProviderError",
    "ProviderRetired",
    "RunEvent",
    "get_provider",
]
