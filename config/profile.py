"""Fine-tuning profiles: the training settings that fit a base model, kept in the model's own folder.

A model folder may carry ``tuneloop-finetune.json``: the settings its maker found to work when fine-tuning it —
the starter model's build writes one, and anyone registering a base model of their own may put one beside its
weights. :func:`config.settings.load_settings` reads the profile of the base model the local provider trains
(``model_server.model_dir``) and puts it between the defaults and the user's own settings, so a key the user sets
in a config file, the environment or a flag always wins, and a key nobody set comes from the profile::

    {
      "about": "why these values (shown by `tuneloop train start --dry-run`)",
      "dataset": {"val_fraction": 0.0, "test_fraction": 0.0},
      "training": {"learning_rate": 0.01, "epochs": 20, "lora_dropout": 0.0}
    }

Only the keys in :data:`PROFILE_KEYS` may appear: how to fine-tune this model and how to split its data, never
where to train or which provider (``training.device``, ``launcher``, ``provider``) — those belong to the machine
and the user. A profile that names another key, or gives a value of the wrong type, stops start-up with a message
naming the file and the key, like any other bad setting.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from config.errors import ConfigError

PROFILE_FILE = "tuneloop-finetune.json"
# The keys a profile may set, by section: what fits a base model, nothing about the machine or the user.
PROFILE_KEYS: dict[str, tuple[str, ...]] = {
    "dataset": ("val_fraction", "test_fraction", "views"),
    "training": (
        "method",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "epochs",
        "early_stopping_patience",
        "learning_rate",
        "batch_size",
        "gradient_accumulation",
        "max_length",
    ),
}


@dataclass(frozen=True)
class Profile:
    """A model folder's fine-tuning profile: where it was read from, why, and its values by section."""

    path: Path
    about: str
    values: dict[str, dict[str, Any]]


def profile_path(model_dir: str | os.PathLike) -> Path:
    """Where a model folder's profile lives."""
    return Path(model_dir) / PROFILE_FILE


def read_profile(model_dir: str | os.PathLike) -> Profile | None:
    """The profile in ``model_dir``, or None when it has none; :class:`ConfigError` naming the file when it is bad."""
    path = profile_path(model_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of sections, got {type(data).__name__}")
    about = data.pop("about", "")
    if not isinstance(about, str):
        raise ConfigError(f"{path}: about: expected a string")
    return Profile(path, about, check_values(data, where=str(path)))


def check_values(values: Mapping[str, Any], *, where: str) -> dict[str, dict[str, Any]]:
    """``values`` as sections of allowed keys; :class:`ConfigError` naming ``where`` and the first key that is not."""
    checked: dict[str, dict[str, Any]] = {}
    for section, keys in values.items():
        allowed = PROFILE_KEYS.get(section)
        if allowed is None:
            raise ConfigError(
                f"{where}: [{section}] cannot be set by a fine-tuning profile; it may set "
                + ", ".join(f"[{s}]" for s in PROFILE_KEYS),
                field=section,
            )
        if not isinstance(keys, Mapping):
            raise ConfigError(f"{where}: {section}: expected an object of settings", field=section)
        for key in keys:
            if key not in allowed:
                raise ConfigError(
                    f"{where}: {section}.{key} cannot be set by a fine-tuning profile; in [{section}] it may set "
                    + ", ".join(allowed),
                    field=f"{section}.{key}",
                )
        checked[section] = dict(keys)
    return checked


def write_profile(model_dir: str | os.PathLike, values: Mapping[str, Mapping[str, Any]], about: str) -> Path:
    """Write ``values`` as ``model_dir``'s profile (atomically; unchanged content is not rewritten)."""
    path = profile_path(model_dir)
    checked = check_values(values, where=str(path))
    text = json.dumps({"about": about, **checked}, ensure_ascii=False, indent=2) + "\n"
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
