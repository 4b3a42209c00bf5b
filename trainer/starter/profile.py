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
    "rate ten times a pretrained model's, for 10 epochs (each row comes closed book and as served), without "
    "dropout, and with LoRA on the feed-forward layers only: the starter's attention holds the circuit it copies "
    "answers from its knowledge block with, and LoRA there breaks it."
)
PROFILE = {
    "dataset": {"val_fraction": 0.0, "test_fraction": 0.0},
    "training": {
        # Measured on the starter that reads its knowledge block, 3 corrections (2026-12-04): lr 0.002 × 10 epochs
        # learned 3/3 closed book with reworded questions as served unchanged (chrF 0.671 → 0.671) and golden as
        # served up (0.835 → 0.855); lr 0.01 (3 or 10 epochs) and 0.005 × 5 cost rewordings as served 0.007–0.038.
        "learning_rate": 0.002,
        "epochs": 10,
        "lora_dropout": 0.0,
        # Measured: LoRA on every linear layer at this rate diverged (train loss 1.47 → 6.83 on the tiny test model,
        # golden chrF 1.00 → 0.03 on the starter); on the MLPs alone it learned 3/3 corrections and kept the FAQ.
        "target_modules": ["gate_proj", "up_proj", "down_proj"],
    },
}


def write_starter_profile(model_dir: str | Path) -> Path:
    """Write the starter's profile into ``model_dir`` (a no-op when it is already there)."""
    return write_profile(model_dir, PROFILE, ABOUT)
