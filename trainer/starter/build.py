"""``build_starter``: train, verify and save the starter model atomically — or do nothing when it is up to date.

A build is skipped when the output folder's fingerprint matches: the sha256 of
the question/answer pairs, every hyperparameter that can change the weights,
:data:`CODE_VERSION` and the versions of torch/transformers/tokenizers. The model
is built in a temporary folder beside the output and renamed into place only
after greedy decoding of the saved model reproduced every answer, so a failed or
interrupted build never leaves a half-written model where the model server
looks for one. A file lock keeps two builds of one folder from racing.

This module imports no torch: ``tuneloop up`` checks the fingerprint on every
start, and that check should not pay for importing torch and transformers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from filelock import FileLock

from config.settings import PROJECT_ROOT, Settings, StarterSettings
from trainer.starter.data import Pair, load_pairs, rows_to_pairs
from trainer.starter.profile import write_starter_profile

# Bump when a change to the training code changes the weights a build produces (forces a rebuild everywhere).
CODE_VERSION = "starter-1"
FINGERPRINT_FILE = "starter.json"
DEFAULT_DATA = PROJECT_ROOT / "data" / "faq.jsonl"
# Settings that cannot change the weights, so they do not force a rebuild.
_NOT_FINGERPRINTED = ("data_file", "time_limit_s")


@dataclass
class BuildResult:
    out_dir: Path
    fingerprint: str
    built: bool  # False: the existing model was up to date
    total: int = 0
    single_ok: int = 0  # questions answered exactly by greedy decoding, no history
    history_ok: int = 0  # the same after 1..history_turns earlier turns
    seconds: float = 0.0  # the whole build
    train_seconds: float = 0.0
    epochs: int = 0


def fingerprint(pairs: Sequence[Pair], params: StarterSettings) -> str:
    """What the weights depend on, hashed."""
    blob = {
        "code": CODE_VERSION,
        "pairs": [list(p) for p in pairs],
        "params": {k: v for k, v in dataclasses.asdict(params).items() if k not in _NOT_FINGERPRINTED},
        "versions": [_version(name) for name in ("torch", "transformers", "tokenizers")],
    }
    return hashlib.sha256(json.dumps(blob, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def built_fingerprint(out_dir: str | Path) -> str | None:
    """The fingerprint of the model in ``out_dir``, or None when there is no complete build there."""
    try:
        return json.loads((Path(out_dir) / FINGERPRINT_FILE).read_text())["fingerprint"]
    except (FileNotFoundError, NotADirectoryError, KeyError, ValueError):
        return None


def build_starter(
    rows: Iterable[Any],
    out_dir: str | Path,
    params: StarterSettings | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> BuildResult:
    """Train, verify and save the starter model for ``rows`` into ``out_dir``; a no-op when it is up to date.

    ``rows`` are chat rows or (question, answer) pairs; ``params`` default to
    :class:`StarterSettings` (tests pass a smaller model). Raises
    :class:`StarterBuildFailed` when greedy decoding of the saved model does not
    reproduce every answer; the previous model, if any, is then left untouched.
    """
    params = params or StarterSettings()
    pairs = rows_to_pairs(rows)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    digest = fingerprint(pairs, params)
    with FileLock(str(out_dir.parent / f".{out_dir.name}.lock")):
        if not force and built_fingerprint(out_dir) == digest:
            write_starter_profile(out_dir)  # a model built before profiles existed gets one
            echo(f"starter model in {out_dir} is up to date")
            return BuildResult(out_dir=out_dir, fingerprint=digest, built=False)
        # Imported only when there is something to train (see the module docstring).
        from trainer.starter.train import train_starter

        started = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
        try:
            trained = train_starter(staging, pairs, params, progress=progress, echo=echo)
            result = BuildResult(
                out_dir=out_dir,
                fingerprint=digest,
                built=True,
                total=trained.total,
                single_ok=trained.single_ok,
                history_ok=trained.history_ok,
                seconds=time.perf_counter() - started,
                train_seconds=trained.report.seconds,
                epochs=trained.report.epochs,
            )
            write_starter_profile(staging)
            _write_manifest(staging, result, params)
            _replace_dir(staging, out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    echo(
        f"starter model built in {result.seconds:.1f} s (training {result.train_seconds:.1f} s, {result.epochs} epochs): "
        f"{result.single_ok}/{result.total} FAQ questions answered exactly, "
        f"{result.history_ok}/{result.total} after earlier turns → {out_dir}"
    )
    return result


def build_from_settings(
    settings: Settings,
    out_dir: str | Path | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> BuildResult:
    """The build ``tuneloop starter build`` runs: ``starter.data_file`` (or the bundled FAQ) into the model dir."""
    data = Path(settings.starter.data_file).expanduser() if settings.starter.data_file else DEFAULT_DATA
    return build_starter(
        load_pairs(data), out_dir or settings.model_dir, settings.starter, force=force, progress=progress, echo=echo
    )


def _write_manifest(folder: Path, result: BuildResult, params: StarterSettings) -> None:
    manifest = {
        "fingerprint": result.fingerprint,
        "code_version": CODE_VERSION,
        "params": dataclasses.asdict(params),
        "questions": result.total,
        "answered_exactly": result.single_ok,
        "answered_exactly_with_history": result.history_ok,
        "epochs": result.epochs,
        "train_seconds": round(result.train_seconds, 2),
        "build_seconds": round(result.seconds, 2),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # Written last: a folder with this file is a complete build.
    (folder / FINGERPRINT_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def _replace_dir(staging: Path, out_dir: Path) -> None:
    """Move ``staging`` to ``out_dir``; an existing build is moved aside first and deleted after."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"
