"""Settings: documented defaults, precedence, and errors that name the key."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from config.errors import ConfigError
from config.settings import DEFAULT_TOML, Settings, load_settings


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
    for section in dataclasses.fields(Settings):
        fields = {f.name for f in dataclasses.fields(hints[section.name])}
        assert section.name in documented, f"[{section.name}] missing from default.toml"
        assert fields == documented[section.name], f"[{section.name}] documented keys differ from the dataclass"


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
