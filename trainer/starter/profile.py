"""The starter model's fine-tuning profile: the settings a retrain of it needs, written into its folder.

The starter model is tiny and trained from scratch: it knows the FAQ word for word and nothing else, so the
``[training]`` defaults — chosen for pretrained models, with a validation split and early stopping — leave most
corrections unlearned on it. These values are the ones measured to learn every approved correction while keeping
every golden answer (docs/benchmarks.md, "Fine-tuning"); the build writes them next to the weights
(``config/profile.py``), so the pipeline uses them with no configuration and a user's own settings still win.
"""

from __future__ import annotations

from pathlib import Path

from config.profile import write_profile

ABOUT = (
    "The starter model is tiny and trained from scratch: held-out rows teach it nothing, so every row trains (no "
    "validation or test split; with no validation rows every epoch runs and the last one is kept), at a learning "
    "rate fifty times a pretrained model's, for 10 epochs (each row comes closed book and as served), without "
    "dropout."
)
PROFILE = {
    "dataset": {"val_fraction": 0.0, "test_fraction": 0.0},
    "training": {"learning_rate": 0.01, "epochs": 10, "lora_dropout": 0.0},
}


def write_starter_profile(model_dir: str | Path) -> Path:
    """Write the starter's profile into ``model_dir`` (a no-op when it is already there)."""
    return write_profile(model_dir, PROFILE, ABOUT)
