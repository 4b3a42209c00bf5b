"""``tuneloop keys``: create shows the key once, list never shows it, revoke takes effect."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cli.main import cli
from feedback.apikeys import verify_key
from feedback.db import open_db


def run(tmp_path, *args):
    env = {"TUNELOOP_PATHS__DATA_DIR": str(tmp_path / "var")}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_create_list_revoke(tmp_path):
    created = run(tmp_path, "keys", "create", "shop-backend")
    assert created.exit_code == 0
    raw = created.output.strip().splitlines()[-1]
    assert raw.startswith("tl_sk_")
    db = open_db(tmp_path / "var" / "tuneloop.db")
    assert verify_key(db, raw) is not None

    listed = run(tmp_path, "keys", "list", "--json")
    rows = json.loads(listed.output)
    assert [r["name"] for r in rows] == ["shop-backend"]
    assert raw not in listed.output

    revoked = run(tmp_path, "keys", "revoke", rows[0]["id"])
    assert revoked.exit_code == 0
    assert verify_key(db, raw) is None
    assert "revoked" in run(tmp_path, "keys", "list").output


def test_publishable_key(tmp_path):
    out = run(tmp_path, "keys", "create", "widget", "--publishable").output
    assert out.strip().splitlines()[-1].startswith("tl_pk_")


def test_unknown_key_is_a_clear_error(tmp_path):
    result = run(tmp_path, "keys", "revoke", "key_nope")
    assert result.exit_code == 1
    assert "error: no API key 'key_nope'" in result.output


def test_bad_setting_names_the_key(tmp_path):
    result = CliRunner().invoke(cli, ["keys", "list"], env={"TUNELOOP_GATEWAY__PORT": "0"})
    assert result.exit_code == 2
    assert "gateway.port" in result.output
