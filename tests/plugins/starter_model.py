"""The real starter model, for end-to-end tests of the whole loop.

- ``starter_model_dir`` — the starter model exactly as ``make run`` builds it: the full bundled FAQ
  (``data/faq.jsonl``) and the default ``[starter]`` settings (about 60-90 s on 2 busy cores; built once
  per session, into a temporary folder, never into the project's ``var/``).
- ``starter_model_server`` — a real ``tuneloop model-server`` process serving it as ``starter``.

Set ``TUNELOOP_TEST_STARTER_CACHE`` to a folder to keep the build there between runs: the build is
fingerprinted (data, settings, library versions), so a later run reuses it when nothing changed.

The build verifies itself: greedy decoding of the saved model must reproduce every FAQ answer, so a
test on top of it may assert exact answers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config.settings import load_settings
from tests.plugins.model import start_model_server, stop_model_server


@pytest.fixture(scope="session")
def starter_model_dir(tmp_path_factory) -> Path:
    """The real starter model (full FAQ, default settings), built once per session."""
    from trainer.starter import build_from_settings

    cache = os.environ.get("TUNELOOP_TEST_STARTER_CACHE")
    out = (Path(cache) if cache else tmp_path_factory.mktemp("starter-model")) / "starter"
    result = build_from_settings(load_settings(env={}), out, progress=False, echo=lambda _msg: None)
    assert result.single_ok == result.total, f"the starter build did not memorize the FAQ: {result}"
    return out


@pytest.fixture(scope="session")
def starter_model_server(tmp_path_factory, starter_model_dir):
    """A real ``tuneloop model-server`` process serving the starter model as ``starter``."""
    server = start_model_server(starter_model_dir, tmp_path_factory.mktemp("starter-server"), name="starter")
    yield server
    stop_model_server(server)


def _uses_starter(item) -> bool:
    return bool({"starter_model_dir", "starter_model_server"} & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config, items):
    """The tests on the real starter model first.

    ``make test`` runs two pytest-xdist workers, each taking whole test files (``--dist loadfile``: a module's
    gateway, model server or platform starts once). The files on the starter are the suite's longest path;
    handed out first, they run while the other worker goes through the rest, instead of starting halfway and
    finishing alone. (Grouping them all onto one worker, so the starter is built once, would need
    ``--dist loadgroup``, whose groups pytest-xdist 3.8 cannot attach to pytest 9's test ids.)
    """
    starter = [item for item in items if _uses_starter(item)]
    chosen = set(map(id, starter))
    items[:] = starter + [item for item in items if id(item) not in chosen]
