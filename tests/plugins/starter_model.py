"""The real starter model, for end-to-end tests of the whole loop.

- ``starter_model_dir`` — the starter model exactly as ``make run`` builds it: the full bundled FAQ
  (``data/faq.jsonl``) and the default ``[starter]`` settings (about 2-2½ min of one core; built once per
  run, into the run's temporary folder, never into the project's ``var/``).
- ``starter_model_server`` — a real ``tuneloop model-server`` process serving it as ``starter``.

Under pytest-xdist the workers share one build: it goes into the folder all of a run's workers share (the
controller's ``--basetemp``), and ``build_starter`` holds a file lock while it builds, so the first worker
that needs the model builds it and any other waits for it, then finds it up to date. Which worker runs the
files on the starter, and when, is ``tests/plugins/scheduling.py``'s business: one worker takes them all,
so nobody waits.

Set ``TUNELOOP_TEST_STARTER_CACHE`` to a folder to keep the build there between runs: the build is
fingerprinted (data, settings, library versions), so a later run reuses it when nothing changed.

The build verifies itself: greedy decoding of the saved model must reproduce every FAQ answer, so a
test on top of it may assert exact answers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from config.settings import load_settings
from tests.plugins.common import run_folder
from tests.plugins.model import start_model_server, stop_model_server
from trainer.starter.build import FINGERPRINT_FILE


@pytest.fixture(scope="session")
def starter_model_dir(tmp_path_factory) -> Path:
    """The real starter model (full FAQ, default settings), built once per run."""
    from trainer.starter import build_from_settings

    cache = os.environ.get("TUNELOOP_TEST_STARTER_CACHE")
    out = (Path(cache) if cache else run_folder(tmp_path_factory) / "starter-model") / "starter"
    result = build_from_settings(load_settings(env={}), out, progress=False, echo=lambda _msg: None)
    if result.built:
        assert result.single_ok == result.total, f"the starter build did not memorize the FAQ: {result}"
    else:  # built by another worker, or an earlier run (the cache): its manifest says what its build checked
        manifest = json.loads((out / FINGERPRINT_FILE).read_text(encoding="utf-8"))
        assert manifest["answered_exactly"] == manifest["questions"], f"the starter build in {out}: {manifest}"
    return out


@pytest.fixture(scope="session")
def starter_model_server(tmp_path_factory, starter_model_dir):
    """A real ``tuneloop model-server`` process serving the starter model as ``starter``."""
    server = start_model_server(starter_model_dir, tmp_path_factory.mktemp("starter-server"), name="starter")
    yield server
    stop_model_server(server, quick=True)


def uses_starter(item) -> bool:
    """Whether a collected test needs the starter model."""
    return bool({"starter_model_dir", "starter_model_server"} & set(getattr(item, "fixturenames", ())))
