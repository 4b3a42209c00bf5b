"""The deployment files are valid and agree with the CLI and the settings.

No Docker engine runs here, so the files are checked by linters from the package registries (the ``test``
extra): hadolint for the Dockerfile (any finding, info included, fails) and check-jsonschema with the
Compose specification's schema (bundled with it, so offline) for compose.yaml.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from cli.main import cli
from config.settings import PROJECT_ROOT, load_settings

BIN = Path(sys.executable).parent


def _lint(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert done.returncode == 0, f"{' '.join(argv)} found problems:\n{done.stdout}{done.stderr}"


def _compose() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "compose.yaml").read_text())


def _tuneloop_services(compose: dict) -> dict:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if "build" in svc or str(svc.get("image", "")).startswith("tuneloop")
    }


def test_hadolint_finds_nothing_in_the_dockerfile():
    _lint([str(BIN / "hadolint"), "--no-color", "--failure-threshold", "info", "Dockerfile"])


def test_compose_file_matches_the_compose_specification():
    _lint([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml"])


def test_compose_commands_are_tuneloop_commands():
    services = _tuneloop_services(_compose())
    assert set(services) == {"gateway", "scheduler"}
    for name, svc in services.items():
        argv = svc["command"]
        command = cli.commands.get(argv[0])
        assert command is not None, f"{name}: tuneloop has no command {argv[0]!r}"
        known = {opt for p in command.params for opt in getattr(p, "opts", [])}
        assert all(a in known for a in argv[1:] if a.startswith("--")), f"{name}: unknown option in {argv}"


def test_compose_environment_is_valid_tuneloop_settings():
    for name, svc in _tuneloop_services(_compose()).items():
        env = {k: str(v) for k, v in svc["environment"].items()}
        settings = load_settings(env=env)  # raises ConfigError on an unknown key or a bad value
        assert settings.model.provider == "vllm", name
        assert str(settings.data_dir) == "/data", name


def test_vllm_loads_adapters_at_runtime_from_the_path_the_scheduler_writes():
    services = _compose()["services"]
    vllm, scheduler = services["vllm"], services["scheduler"]
    assert "--enable-lora" in vllm["command"]
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # Adapters are trained under <data_dir>/training; vLLM must see them at the same path.
    training = str(load_settings(env={"TUNELOOP_PATHS__DATA_DIR": "/data"}).data_dir / "training")
    assert "adapters:" + training in vllm["volumes"] and "adapters:" + training in scheduler["volumes"]
    served = vllm["command"][vllm["command"].index("--served-model-name") + 1]
    assert scheduler["environment"]["TUNELOOP_MODEL_SERVER__SERVED_NAME"] == served
    assert scheduler["environment"]["TUNELOOP_MODEL__NAME"] == served


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck():
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2
    user = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert user and not user[-1].startswith(("root", "0")), user
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'ENTRYPOINT ["tuneloop"]' in text
