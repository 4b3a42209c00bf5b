"""The order tests run in, and which pytest-xdist worker runs which file (``make test``: ``-n auto --dist loadfile``).

Three rules, for a suite whose wall time is set by its longest path on two cores:

- The files on the real starter model (``tests/plugins/starter_model.py``) go first, and all to one worker, in
  turn: that worker builds the starter once (~2 min of one core) while the other worker runs other files; none
  waits for the build. Only when nothing else is left does the other worker take a starter file too (the build
  is done or nearly; ``build_starter``'s file lock makes it wait for the rest). Without this scheduler (another
  ``--dist``) both workers may need the starter at once: still one build (the file lock), the other waiting.
- Then the longest files first (longest processing time first: ``KNOWN_SECONDS``, measured; a file not there
  counts 10 s with a ``slow`` or browser test, else 0), so the files handed out last are short and both workers
  finish close together.
- Files estimated alike keep the collection order (file names), so a run is reproducible.

The ordering is done at collection, identically on every worker (pytest-xdist requires the same collection
everywhere); the workers also write which files need the starter into the run's shared folder, where the
scheduler, in the controller process, reads it. The controller prints each worker's busy time at the end
(``Timeline``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.plugins.common import run_folder
from tests.plugins.starter_model import uses_starter

PLAN_FILE = "xdist-plan.json"


# Seconds each file took in a fresh-clone CI run (2 workers, 2026-12-04, xdist-timeline.json), every file of 10 s
# or more: only the order depends on them, so they need not be exact. A file not here is estimated by its marks.
KNOWN_SECONDS = {
    # On the starter (after its build):
    "tests/test_loop_cli_e2e.py": 140,
    "tests/test_migrate_e2e.py": 120,
    "tests/test_loop_e2e.py": 88,
    "tests/test_pipeline_kill.py": 68,
    "tests/test_starter.py": 60,
    # The others:
    "tests/test_bench_smoke.py": 115,
    "tests/test_responses.py": 102,
    "tests/test_gateway_api.py": 76,
    "tests/test_up.py": 42,
    "tests/test_model_server.py": 41,
    "tests/test_adapter_failures.py": 39,
    "tests/test_migrate.py": 35,
    "tests/test_widget_browser.py": 35,
    "tests/test_many_hosts_e2e.py": 34,
    "tests/test_scheduler_leader.py": 34,
    "tests/test_privacy.py": 33,
    "tests/test_hostile_input.py": 27,
    "tests/test_widget_answers_browser.py": 24,
    "tests/test_accounts_browser.py": 22,
    "tests/test_gateway_faults.py": 20,
    "tests/test_dataset_build.py": 20,
    "tests/test_fuzz_openapi.py": 19,
    "tests/test_training_local.py": 19,
    "tests/test_store_postgres.py": 17,
    "tests/test_clients.py": 17,
    "tests/test_deploy.py": 17,
    "tests/test_admin_roles.py": 17,
    "tests/test_scheduler.py": 15,
    "tests/test_knowledge_e2e.py": 15,
    "tests/test_gateway_upstream.py": 14,
    "tests/test_admin_auth.py": 14,
    "tests/test_report.py": 13,
    "tests/test_schema_doc.py": 13,
    "tests/test_gateway_postgres.py": 13,
    "tests/test_admin_review.py": 12,
    "tests/test_registry.py": 12,
    "tests/test_scheduler_worker_hosts.py": 12,
    "tests/test_pipeline.py": 11,
    "tests/test_openai_errors.py": 11,
    "tests/test_model_limits.py": 11,
    "tests/test_knowledge_live.py": 10,
}
_MARKED = {"slow": 10, "browser": 10}  # a new file with such a test (not in KNOWN_SECONDS yet)


def file_of(nodeid: str) -> str:
    """The test file of a test id (pytest-xdist's ``loadfile`` scope)."""
    return nodeid.split("::", 1)[0]


def estimated_seconds(name: str, items) -> float:
    """How long a file's tests may take, for the order only."""
    if name in KNOWN_SECONDS:
        return KNOWN_SECONDS[name]
    return max(
        (seconds for mark, seconds in _MARKED.items() for item in items if item.get_closest_marker(mark)), default=0
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Whole files, longest first (stable), and tell the controller which files use the starter."""
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(file_of(item.nodeid), []).append(item)
    starter = {name for name, file_items in files.items() if any(map(uses_starter, file_items))}
    estimate = {name: estimated_seconds(name, file_items) for name, file_items in files.items()}
    order = sorted(files, key=lambda name: (name not in starter, -estimate[name]))
    # Within a file, the tests on the starter first (the test that builds it, in tests/test_starter.py).
    items[:] = [item for name in order for item in sorted(files[name], key=lambda item: not uses_starter(item))]
    if os.environ.get("PYTEST_XDIST_WORKER"):
        starter_files = [name for name in order if name in starter]
        plan = run_folder(config._tmp_path_factory) / PLAN_FILE
        staging = plan.with_name(f"{PLAN_FILE}.{os.environ['PYTEST_XDIST_WORKER']}")
        staging.write_text(json.dumps({"starter_files": starter_files}), encoding="utf-8")
        staging.replace(plan)  # every worker writes the same plan; a reader never sees half of one


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the starter's files on one worker (the module docstring); other modes as they are."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class StarterAffinityScheduling(LoadFileScheduling):
        """LoadFileScheduling that hands every starter file to the worker that took the first one."""

        def __init__(self, config, log=None):
            super().__init__(config, log)
            self.starter_files: set[str] = set()
            self.starter_node = None
            self.timeline = Timeline()
            config.pluginmanager.register(self.timeline, "tuneloop-timeline")

        def schedule(self):
            if self.collection is None:
                plan = Path(config._tmp_path_factory.getbasetemp()) / PLAN_FILE
                if plan.exists():
                    self.starter_files = set(json.loads(plan.read_text(encoding="utf-8"))["starter_files"])
                # The collection's order is the plan; xdist's default would re-sort the files by test count.
                self.config.option.loadscopereorder = False
            super().schedule()

        def mark_test_complete(self, node, item_index, duration=0):
            self.timeline.add(node.gateway.id, self.registered_collections[node][item_index], duration)
            super().mark_test_complete(node, item_index, duration)

        def remove_node(self, node):
            if node is self.starter_node:
                self.starter_node = None  # a crashed worker's files go back to the queue, for any worker
            return super().remove_node(node)

        def _reschedule(self, node):
            # As LoadFileScheduling, but a worker gets its next file only when it has one test left (it runs a
            # test once it knows the next, for teardown), not two: no worker holds a file the other could run.
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) <= 1:
                self._assign_work_unit(node)

        def _assign_work_unit(self, node):
            scope = self._next_file_for(node)
            self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)  # takes the queue's first file

        def _next_file_for(self, node) -> str:
            starter = [name for name in self.workqueue if name in self.starter_files]
            if starter and self.starter_node in (None, node):
                self.starter_node = node
                return starter[0]
            others = [name for name in self.workqueue if name not in self.starter_files]
            return others[0] if others else starter[0]

    return StarterAffinityScheduling(config, log)


class Timeline:
    """Which worker ran which file, when and for how long: a line per worker at the end of the run, and every
    file in ``xdist-timeline.json`` in the run's temporary folder (for the next change to the order above)."""

    def __init__(self):
        self.started = time.monotonic()
        self.files: dict[str, dict] = {}

    def add(self, worker: str, nodeid: str, seconds: float) -> None:
        now = time.monotonic() - self.started
        entry = self.files.setdefault(file_of(nodeid), {"worker": worker, "start": now - seconds, "seconds": 0.0})
        entry["seconds"] += seconds
        entry["end"] = now

    def pytest_terminal_summary(self, terminalreporter, config):
        if not self.files:
            return
        path = Path(config._tmp_path_factory.getbasetemp()) / "xdist-timeline.json"
        path.write_text(json.dumps(self.files, indent=1), encoding="utf-8")
        for worker in sorted({entry["worker"] for entry in self.files.values()}):
            ran = [entry for entry in self.files.values() if entry["worker"] == worker]
            terminalreporter.write_line(
                f"{worker}: {len(ran)} files, {sum(e['seconds'] for e in ran):.0f} s of tests, "
                f"last result at {max(e['end'] for e in ran):.0f} s ({path})"
            )
