"""The lock in config/ and pyproject.toml say the same thing, and the venv holds what the lock names.

`make run`, `make test` and the Dockerfile install from the lock alone (README, "Development"), so a
dependency added to pyproject.toml and not locked would simply be missing on a fresh machine, and one
dropped from pyproject.toml but left in the lock would keep installing. `make lock` regenerates both files.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = ROOT / "config" / "requirements.lock"
TEST_LOCK = ROOT / "config" / "requirements-test.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
# torch is installed on its own, first, before the lock (the Makefile and the Dockerfile pick its CPU or CUDA
# build); pyproject.toml pins it exactly instead.
OUTSIDE_THE_LOCK = {"torch"}


def locked(path: Path) -> dict[str, str]:
    """Package name → pinned version, for every pin in a lock file."""
    pins = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def direct(path: Path) -> set[str]:
    """The packages the lock says it took from pyproject.toml (``# via tuneloop (pyproject.toml)``)."""
    names, current = set(), None
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
        elif current and "tuneloop (pyproject.toml)" in line:
            names.add(current)
    return names


def declared(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize(("lock", "extra"), [(RUNTIME_LOCK, None), (TEST_LOCK, "test")])
def test_every_declared_dependency_is_locked_within_its_range(lock, extra):
    pins = locked(lock)
    problems = []
    for req in declared(extra):
        name = canonicalize_name(req.name)
        if name in OUTSIDE_THE_LOCK:
            assert "==" in str(req.specifier), f"{req.name} is outside the lock, so pyproject.toml must pin it exactly"
            continue
        if name not in pins:
            problems.append(f"{req.name} is in pyproject.toml but not in {lock.name}: run make lock")
        elif not req.specifier.contains(Version(pins[name]), prereleases=True):
            problems.append(f"{lock.name} pins {req.name}=={pins[name]}, outside {req.specifier}: run make lock")
    assert problems == []


@pytest.mark.parametrize(("lock", "extra"), [(RUNTIME_LOCK, None), (TEST_LOCK, "test")])
def test_nothing_is_locked_as_direct_that_pyproject_dropped(lock, extra):
    wanted = {canonicalize_name(r.name) for r in declared(extra)}
    assert direct(lock) - wanted == set(), "locked as a direct dependency but gone from pyproject.toml: run make lock"


def test_the_runtime_lock_is_the_test_lock_minus_test_tools():
    runtime, test = locked(RUNTIME_LOCK), locked(TEST_LOCK)
    assert {name: test.get(name) for name in runtime} == runtime
    assert not OUTSIDE_THE_LOCK & (runtime.keys() | test.keys())


def test_every_pin_is_hashed():
    for lock in (RUNTIME_LOCK, TEST_LOCK):
        text = lock.read_text()
        assert text.count("==") - text.count("--hash") <= 0, f"{lock.name} has pins without hashes"
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
        unhashed = [b.split(" ", 1)[0] for b in blocks if PIN.match(b) and "--hash=sha256:" not in b]
        assert unhashed == []


def test_the_venv_holds_exactly_the_locked_versions():
    """What the tests run on is what the lock names (a stale venv would test something else)."""
    pins = locked(TEST_LOCK)
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differ = {name: (version, installed.get(name)) for name, version in pins.items() if installed.get(name) != version}
    assert differ == {}
    assert installed["torch"].split("+")[0] == "2.13.0"


def test_pip_check_is_clean():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
