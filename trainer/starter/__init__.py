"""The starter model: a byte-level BPE tokenizer and a small Llama trained from scratch on the bundled FAQ.

It memorizes the FAQ; it does not generalize. It exists so the whole loop runs on a
laptop with no GPU, no download and no API key (see docs/model-server.md).

data (pairs in, StarterBuildFailed) → chat (format, template) → tokenizer → train
(fit, memorization checks) → verify (greedy answers of the saved model) → build
(fingerprint, atomic write; imports no torch until it has to train).
"""

from trainer.starter.build import BuildResult, build_from_settings, build_starter, built_fingerprint, fingerprint
from trainer.starter.data import StarterBuildFailed, load_pairs, rows_to_pairs

__all__ = [
    "BuildResult",
    "StarterBuildFailed",
    "build_from_settings",
    "build_starter",
    "built_fingerprint",
    "fingerprint",
    "load_pairs",
    "rows_to_pairs",
]
