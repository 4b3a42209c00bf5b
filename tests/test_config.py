"""Settings: documented defaults, precedence, and errors that name the key."""

from __future__ import annotations

import dataclasses
import json
import re
import typing

import pytest

from config.errors import ConfigError
from config.profile import PROFILE_FILE, write_profile
from config.settings import DEFAULT_TOML, SECTIONS, Settings, load_settings, redact_url


def _documented_keys() -> dict[str, set[str]]:
    """Section → keys that have a comment line directly above them in default.toml."""
    keys: dict[str, set[str]] = {}
    section = None
    previous = ""
    for line in DEFAULT_TOML.read_text().splitlines():
        stripped = line.strip()
        if m := re.fullmatch(r"\[([a-z_]+)\]", stripped):
            section = m.group(1)
            keys[section] = set()
        elif section and (m := re.match(r"([a-z_]+)\s*=", stripped)) and previous.startswith("#"):
            keys[section].add(m.group(1))
        if stripped:
            previous = stripped
    return keys


def test_every_setting_is_documented_in_default_toml():
    documented = _documented_keys()
    hints = typing.get_type_hints(Settings)
    assert set(documented) == set(SECTIONS)
    for section in SECTIONS:
        fields = {f.name for f in dataclasses.fields(hints[section])}
        assert section in documented, f"[{section}] missing from default.toml"
        assert fields == documented[section], f"[{section}] documented keys differ from the dataclass"


def test_defaults_load_and_paths_derive_from_data_dir():
    s = load_settings(env={})
    assert s.gateway.port == 8000
    assert str(s.db_path).endswith("var/tuneloop.db")
    assert s.gateway.api_key_required is False  # loopback by default


def test_precedence_file_then_env_then_overrides(tmp_path):
    user = tmp_path / "mine.toml"
    user.write_text('[gateway]\nport = 9001\nworkers = 3\n[chat]\nsystem_prompt = "from file"\n')
    env = {"TUNELOOP_GATEWAY__PORT": "9002", "TUNELOOP_FEEDBACK__REASONS": "wrong,rude"}
    s = load_settings(user, env=env, overrides={"chat.system_prompt": "override"})
    assert s.gateway.port == 9002  # env beats file
    assert s.gateway.workers == 3  # file beats default
    assert s.chat.system_prompt == "override"  # overrides beat everything
    assert s.feedback.reasons == ["wrong", "rude"]


def test_public_host_requires_keys_by_default():
    s = load_settings(env={}, overrides={"gateway.host": "0.0.0.0"})
    assert s.gateway.api_key_required is True
    s = load_settings(env={}, overrides={"gateway.host": "0.0.0.0", "gateway.require_api_key": "never"})
    assert s.gateway.api_key_required is False


@pytest.mark.parametrize(
    "env, key",
    [
        ({"TUNELOOP_GATEWAY__PORT": "70000"}, "gateway.port"),
        ({"TUNELOOP_GATEWAY__PORT": "eighty"}, "gateway.port"),
        ({"TUNELOOP_MODEL__PROVIDER": "llamafile"}, "model.provider"),
        ({"TUNELOOP_LIMITS__ENABLED": "maybe"}, "limits.enabled"),
        ({"TUNELOOP_GATEWAY__COLOUR": "blue"}, "gateway.colour"),
        ({"TUNELOOP_MODEL__BASE_URL": "localhost:8001"}, "model.base_url"),
        ({"TUNELOOP_MODEL_SERVER__MAX_BATCH": "0"}, "model_server.max_batch"),
        ({"TUNELOOP_DATABASE__URL": "mysql://u:pw@db/x"}, "database.url"),
        ({"DATABASE_URL": "postgresql://u:pw@db:port/x"}, "database.url"),
        ({"TUNELOOP_DATABASE__URL": "sqlite://relative.db"}, "database.url"),
        ({"TUNELOOP_DATABASE__POOL_SIZE": "0"}, "database.pool_size"),
    ],
)
def test_bad_values_stop_with_the_key_named(env, key):
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert info.value.message.startswith(key + ":")


def test_bad_toml_file_is_reported(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env={})


def test_wrong_type_in_file_names_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nport = "8000"\n')
    with pytest.raises(ConfigError, match=r"^gateway.port: expected int"):
        load_settings(bad, env={})


def test_fallbacks_are_typed():
    s = load_settings(env={}, overrides={"model.fallbacks": [{"name": "backup", "base_url": "http://127.0.0.1:9/v1"}]})
    assert s.model.fallbacks[0].name == "backup"
    with pytest.raises(ConfigError, match="model.fallbacks.nmae"):
        load_settings(env={}, overrides={"model.fallbacks": [{"nmae": "typo"}]})


def test_model_aliases_are_names_listed_once():
    assert load_settings(env={}, overrides={"model.aliases": ["gpt-4o-mini"]}).model.aliases == ["gpt-4o-mini"]
    for bad, why in ((["gpt-4o", "gpt-4o"], "lists a name twice"), ([" gpt-4o"], "surrounding spaces"), ([""], "")):
        with pytest.raises(ConfigError, match="^model.aliases: .*" + why):
            load_settings(env={}, overrides={"model.aliases": bad})


# --- fine-tuning profiles: what a model folder brings, below what the user sets -----------------------


def _model_with_profile(tmp_path, values: dict, about: str = "measured on this model"):
    folder = tmp_path / "model"
    folder.mkdir()
    write_profile(folder, values, about)
    return folder


def test_a_model_folders_profile_applies_unless_the_user_sets_the_key(tmp_path):
    model = _model_with_profile(
        tmp_path,
        {"training": {"learning_rate": 0.01, "epochs": 20, "lora_dropout": 0.0}, "dataset": {"val_fraction": 0.0}},
    )
    mine = tmp_path / "mine.toml"
    mine.write_text(f'[model_server]\nmodel_dir = "{model}"\n[training]\nepochs = 7\n')
    s = load_settings(mine, env={"TUNELOOP_TRAINING__LORA_DROPOUT": "0.1"}, overrides={"training.lora_r": 4})
    profile = f"model folder {model / PROFILE_FILE}"
    assert (s.training.learning_rate, s.origin("training.learning_rate")) == (0.01, profile)
    assert (s.dataset.val_fraction, s.origin("dataset.val_fraction")) == (0.0, profile)
    assert (s.training.epochs, s.origin("training.epochs")) == (7, f"config file {mine}")
    assert (s.training.lora_dropout, s.origin("training.lora_dropout")) == (
        0.1,
        "environment TUNELOOP_TRAINING__LORA_DROPOUT",
    )
    assert (s.training.lora_r, s.origin("training.lora_r")) == (4, "flag")
    assert (s.training.batch_size, s.origin("training.batch_size")) == (8, "default")
    assert s.origin("model_server.model_dir") == f"config file {mine}"


def test_a_profile_is_not_used_when_switched_off_or_when_another_provider_trains(tmp_path):
    model = _model_with_profile(tmp_path, {"training": {"learning_rate": 0.01}})
    base = {"model_server.model_dir": str(model)}
    assert load_settings(env={}, overrides=base).training.learning_rate == 0.01
    off = load_settings(env={}, overrides={**base, "training.use_model_profile": False})
    assert (off.training.learning_rate, off.origin("training.learning_rate")) == (0.0002, "default")
    hosted = load_settings(env={}, overrides={**base, "training.provider": "openai"})
    assert hosted.training.learning_rate == 0.0002


@pytest.mark.parametrize(
    "values, words",
    [
        ({"training": {"device": "cuda"}}, "training.device cannot be set by a fine-tuning profile"),
        ({"gateway": {"port": 1}}, "[gateway] cannot be set by a fine-tuning profile"),
        ({"training": {"epochs": "many"}}, "training.epochs: expected int"),
    ],
)
def test_a_bad_profile_stops_start_up_naming_its_file_and_key(tmp_path, values, words):
    folder = tmp_path / "model"
    folder.mkdir()
    about = {"about": "hand-written"}
    (folder / PROFILE_FILE).write_text(json.dumps({**about, **values}))
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, overrides={"model_server.model_dir": str(folder)})
    assert info.value.message.startswith(str(folder / PROFILE_FILE) + ": ")
    assert words in info.value.message


def test_an_origins_section_in_a_config_file_is_refused(tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text('[origins]\n"training.epochs" = "default"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(mine, env={})
    assert info.value.message.startswith("origins: unknown setting")


def test_database_url_from_either_variable_ours_first_and_the_password_never_shown():
    pg = load_settings(env={"DATABASE_URL": "postgres://app:pw-123@db.internal:5432/tuneloop"})
    assert pg.database.url == "postgresql://app:pw-123@db.internal:5432/tuneloop"  # the alias, one spelling
    assert pg.store == pg.database.url and pg.database.is_postgres
    assert pg.origin("database.url") == "environment DATABASE_URL"
    assert "pw-123" not in repr(pg) and "pw-123" not in repr(pg.database)
    ours = load_settings(env={"DATABASE_URL": "postgres://a@b/c", "TUNELOOP_DATABASE__URL": "sqlite:///x/t.db"})
    assert ours.origin("database.url") == "environment TUNELOOP_DATABASE__URL"
    assert not ours.database.is_postgres and str(ours.store) == "x/t.db" == str(ours.db_path)
    embedded = load_settings(env={}, overrides={"paths.data_dir": "/srv/t"})
    assert str(embedded.store) == "/srv/t/tuneloop.db"
    with pytest.raises(ConfigError) as info:
        load_settings(env={"DATABASE_URL": "mysql://app:pw-123@db/x"})
    assert "pw-123" not in info.value.message and "app:***@db" in info.value.message


def test_redact_url_hides_passwords_in_the_userinfo_and_the_query():
    assert redact_url("postgresql://u:p@h:5/d?sslmode=require&password=q") == (
        "postgresql://u:***@h:5/d?sslmode=require&password=***"
    )
    assert redact_url("postgresql://u@/d?host=/run/pg") == "postgresql://u@/d?host=/run/pg"
