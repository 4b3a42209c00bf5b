"""A real, throw-away PostgreSQL server for the test session, and the ``engine`` the storage tests run on.

One server per session (initdb ~0.7 s, start ~0.1 s): Debian's binaries (the highest version under
/usr/lib/postgresql; ``make postgres`` installs them), a data folder in a temporary directory, a Unix
socket only (no TCP port to collide with), ``fsync=off`` (nothing here must survive a crash), the
C.UTF-8 locale. ``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user.
One database is migrated once as a template; every test gets a fresh copy (``CREATE DATABASE …
TEMPLATE``, ~50 ms), so tests never see each other's rows.

A test module opts its ``db`` tests into both engines with ``pytestmark = pytest.mark.engines``; the
``engine`` fixture is then "sqlite" and "postgresql" in turn (only "sqlite" elsewhere). A test about one
engine's own behaviour (a SQLite query plan) narrows it with ``@pytest.mark.engines("sqlite")``. When no
PostgreSQL can be found or started, the PostgreSQL runs FAIL: a storage test that quietly skipped its
second engine would prove nothing. A developer without PostgreSQL may set
``TUNELOOP_TEST_POSTGRES=off`` to run SQLite only (CI never sets it).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ENGINES = ("sqlite", "postgresql")
OPT_OUT = "TUNELOOP_TEST_POSTGRES"  # "off": run the engine-parametrized tests on SQLite only
TEMPLATE = "tuneloop_template"
SUPERUSER = "postgres"


def pytest_configure(config):
    config.addinivalue_line("markers", "engines: run this module's `db` tests on SQLite and on PostgreSQL")


def pytest_generate_tests(metafunc):
    if "engine" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("engines")
    if marker is None:
        return  # the engine fixture's default: SQLite, and test ids as they always were
    engines = marker.args or ENGINES  # a test that is about one engine says so: @pytest.mark.engines("sqlite")
    if os.environ.get(OPT_OUT, "").lower() in ("off", "0", "no", "false"):
        engines = [e for e in engines if e != "postgresql"]
    metafunc.parametrize("engine", engines, indirect=True)


@pytest.fixture
def engine(request):
    """ "sqlite" or "postgresql": the engine this test's store runs on."""
    return getattr(request, "param", "sqlite")


def postgres_bin() -> Path | None:
    """The bin folder of the newest PostgreSQL installed the Debian way, or on PATH; None without one."""
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresServer:
    """A running throw-away server: its socket folder and how to reach a database on it."""

    bin: Path
    data: Path
    socket_dir: Path
    run_as: list[str]
    _names = itertools.count(1)

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser in the ``postgres`` database."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self) -> str:
        """A fresh database copied from the migrated template; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.admin(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.split("/")[-1].split("?")[0]
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        subprocess.run(
            [*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )


def start_server(root: Path) -> PostgresServer:
    """initdb and start a server under ``root``; raises with the server's own words when it cannot."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError(
            "no PostgreSQL found (/usr/lib/postgresql/*/bin or initdb on PATH): run `make postgres`, "
            f"or set {OPT_OUT}=off to run the storage tests on SQLite only"
        )
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        pwd.getpwnam(SUPERUSER)
        run_as = ["runuser", "-u", SUPERUSER, "--"]
        shutil.chown(root, SUPERUSER, SUPERUSER)
    root.chmod(0o700)
    data = root / "data"
    log = root / "server.log"

    def run(*argv: str) -> None:
        done = subprocess.run([*run_as, *argv], capture_output=True, text=True, check=False)
        if done.returncode:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {done.stdout}{done.stderr}{tail}")

    run(
        str(bin_dir / "initdb"),
        "-D",
        str(data),
        "-U",
        SUPERUSER,
        "--auth=trust",
        "--locale=C.UTF-8",
        "--encoding=UTF8",
        "--no-sync",
    )
    options = (
        f"-c listen_addresses='' -c unix_socket_directories={root} -c fsync=off -c synchronous_commit=off"
        " -c full_page_writes=off -c max_connections=200"
    )
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "30", "-o", options, "start")
    return PostgresServer(bin=bin_dir, data=data, socket_dir=root, run_as=run_as)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """The session's PostgreSQL server, with the migrated template database every test copies."""
    root = Path(tempfile.mkdtemp(prefix="tuneloop-pg-"))
    try:
        server = start_server(root)
    except Exception as exc:  # noqa: BLE001
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"the PostgreSQL test server could not start: {exc}", pytrace=False)
    try:
        from feedback.db import open_db

        server.admin(f"CREATE DATABASE {TEMPLATE}")
        open_db(server.url(TEMPLATE)).close()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of a fresh, migrated PostgreSQL database of this test's own."""
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def database_url(engine, request) -> str:
    """``database.url`` for this test: "" (the SQLite file under paths.data_dir) or a fresh PostgreSQL database."""
    return request.getfixturevalue("postgres_url") if engine == "postgresql" else ""
