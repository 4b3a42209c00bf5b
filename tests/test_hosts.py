"""What a host checks before it serves (feedback/hosts.py): paths.data_dir writable and, on PostgreSQL, the shared
one; secrets set in the settings equal on every host; a supervisor's status read only on its own host. (Two hosts
seeding one empty store at once: tests/test_knowledge_store.py.)

"Two hosts" here are two settings (each its own paths.data_dir and secrets) on one store, each with its own
connection — what two machines starting ``tuneloop serve`` on one ``database.url`` amount to for the store.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import cli
from config.errors import ConfigError
from config.settings import load_settings
from feedback.db import open_store
from feedback.hosts import MARKER_FILE, check_data_dir, check_shared_store
from feedback.process_status import read_status, write_status
from feedback.secrets import forget_fingerprints

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

TOKEN = "a-long-admin-token-0123456789"


@pytest.fixture
def host(tmp_path, database_url):
    """``host(name, **settings)``: the settings of another host on this test's store, with a data_dir of its own."""

    def make(name: str, **overrides):
        overrides = {"paths.data_dir": str(tmp_path / name), **overrides}
        if database_url:
            overrides["database.url"] = database_url
        return load_settings(env={}, overrides=overrides)

    return make


def _start(settings) -> None:
    """What ``tuneloop serve`` checks before gunicorn starts, on a connection of this host's own."""
    check_data_dir(settings)
    db = open_store(settings)
    try:
        check_shared_store(settings, db)
    finally:
        db.close()


def _error(call) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        call()
    return caught.value


def test_a_missing_data_dir_is_created_and_left_without_a_probe(host, tmp_path):
    settings = host("fresh/deeper")
    assert check_data_dir(settings) == tmp_path / "fresh" / "deeper"
    assert list((tmp_path / "fresh" / "deeper").iterdir()) == []  # the probe file is gone again


def test_a_data_dir_that_cannot_take_a_write_is_refused_naming_the_key(host, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    error = _error(lambda: check_data_dir(host("a-file/var")))
    assert error.field == "paths.data_dir"
    assert error.message.startswith(f"paths.data_dir: {tmp_path / 'a-file' / 'var'} is not a writable folder")


@pytest.mark.parametrize("command", ["serve", "up", "scheduler"])
def test_each_long_running_command_stops_with_one_line_on_an_unwritable_data_dir(command, tmp_path, database_url):
    (tmp_path / "a-file").write_text("not a folder")
    env = {"TUNELOOP_PATHS__DATA_DIR": str(tmp_path / "a-file" / "var"), "TUNELOOP_DATABASE__URL": database_url}
    result = CliRunner().invoke(cli, [command], env=env)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"error: paths.data_dir: {tmp_path / 'a-file' / 'var'} is not a writable folder (Not a directory); "
        "create it or fix its permissions (on several hosts: mount the shared volume there)"
    ]


@pytest.mark.engines("postgresql")
def test_on_postgresql_a_host_without_the_shared_data_dir_is_refused(host, tmp_path):
    first = host("shared")
    _start(first)
    marker = (tmp_path / "shared" / MARKER_FILE).read_text().strip()
    _start(host("shared"))  # another host mounting the same folder starts
    error = _error(lambda: _start(host("local")))  # a host whose data_dir is a folder of its own
    assert error.field == "paths.data_dir"
    assert f"{tmp_path / 'local'} is not the folder the other hosts on this store use" in error.message
    assert f"it lacks {MARKER_FILE}" in error.message
    assert not (tmp_path / "local" / MARKER_FILE).exists()  # refused, not adopted
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / MARKER_FILE).write_text("9a0c5a0e-another-store\n")
    error = _error(lambda: _start(host("other")))
    assert f"its {MARKER_FILE} belongs to another store" in error.message
    assert (tmp_path / "shared" / MARKER_FILE).read_text().strip() == marker  # written once, by the first host


@pytest.mark.engines("postgresql")
def test_the_cli_refuses_a_second_hosts_own_data_dir_in_one_line(host, tmp_path, database_url):
    _start(host("shared"))
    env = {"TUNELOOP_PATHS__DATA_DIR": str(tmp_path / "local"), "TUNELOOP_DATABASE__URL": database_url}
    result = CliRunner().invoke(cli, ["scheduler"], env=env)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: paths.data_dir: {tmp_path / 'local'} is not the folder")


@pytest.mark.engines("sqlite")
def test_on_sqlite_the_store_is_this_hosts_file_and_no_marker_is_written(host, tmp_path, db):
    _start(host("var"))
    assert not (tmp_path / "var" / MARKER_FILE).exists()
    # One host, nothing to compare with: a secret changed in the settings is a rotation, and the next start uses it.
    _start(host("var", **{"admin.token": TOKEN}))
    _start(host("var", **{"admin.token": "the-rotated-admin-token-987"}))
    assert db.execute("SELECT count(*) FROM instance_secrets WHERE name LIKE 'fingerprint:%'").fetchone()[0] == 0


@pytest.mark.engines("postgresql")
@pytest.mark.parametrize("key", ["admin.token", "gateway.secret_key"])
def test_a_host_with_another_secret_is_refused_naming_the_key_never_the_value(key, host, tmp_path):
    _start(host("var", **{key: TOKEN}))
    _start(host("var", **{key: TOKEN}))  # the same value on a second host: fine
    other = "a-different-value-0123456789"
    error = _error(lambda: _start(host("var", **{key: other})))
    assert error.field == key
    assert error.message.startswith(f"{key} on this host differs from the value the hosts sharing this store use")
    assert "tuneloop db forget-secrets" in error.message
    assert TOKEN not in error.message and other not in error.message
    error = _error(lambda: _start(host("var")))  # unset here, set on the others: their tokens would not work here
    assert error.message.startswith(f"{key} is unset on this host but set on the hosts sharing this store")


@pytest.mark.engines("postgresql")
def test_a_host_setting_a_secret_the_others_leave_unset_is_refused(host):
    _start(host("var"))
    error = _error(lambda: _start(host("var", **{"admin.token": TOKEN})))
    assert error.field == "admin.token"
    assert error.message.startswith("admin.token is set on this host but unset on the hosts sharing this store")


@pytest.mark.engines("postgresql")
def test_the_store_keeps_a_keyed_fingerprint_not_the_secret(host, db):
    _start(host("var", **{"admin.token": TOKEN}))
    rows = dict(db.execute("SELECT name, value FROM instance_secrets WHERE name LIKE 'fingerprint:%'").fetchall())
    assert set(rows) == {"fingerprint:admin.token", "fingerprint:gateway.secret_key"}
    assert rows["fingerprint:gateway.secret_key"] == "unset"
    assert rows["fingerprint:admin.token"].startswith("hmac-sha256:")
    assert TOKEN not in repr(db.execute("SELECT * FROM instance_secrets").fetchall())


@pytest.mark.engines("postgresql")
def test_forgetting_the_fingerprints_lets_a_changed_secret_start_and_records_it(host, db, tmp_path, database_url):
    _start(host("var", **{"admin.token": TOKEN}))
    changed = host("var", **{"admin.token": "the-rotated-admin-token-987"})
    _error(lambda: _start(changed))
    env = {"TUNELOOP_PATHS__DATA_DIR": str(tmp_path / "var"), "TUNELOOP_DATABASE__URL": database_url}
    result = CliRunner().invoke(cli, ["db", "forget-secrets"], env=env)
    assert result.exit_code == 0, result.output
    assert "forgot the fingerprints of admin.token, gateway.secret_key" in result.output
    _start(changed)
    assert _error(lambda: _start(host("var", **{"admin.token": TOKEN}))).field == "admin.token"  # the old one now
    assert forget_fingerprints(db) == ["admin.token", "gateway.secret_key"]


@pytest.mark.engines("sqlite")
def test_a_gateway_reads_only_its_own_hosts_supervisor_status_from_a_shared_data_dir(tmp_path, monkeypatch):
    """``tuneloop up`` on host A writes what its model server is doing; a gateway on host B, on the same shared
    volume, must not report host A's model server in its /readyz (nor host A's file overwrite host B's)."""
    shared = tmp_path / "shared"
    monkeypatch.setattr("socket.gethostname", lambda: "host-a")
    write_status(shared, {"model": {"state": "restarting"}})
    assert read_status(shared) == {"model": {"state": "restarting"}}
    monkeypatch.setattr("socket.gethostname", lambda: "host-b")
    assert read_status(shared) is None
    write_status(shared, {"model": {"state": "running"}})
    assert read_status(shared) == {"model": {"state": "running"}}
    monkeypatch.setattr("socket.gethostname", lambda: "host-a")
    assert read_status(shared) == {"model": {"state": "restarting"}}
