"""The deployment files are valid and agree with the CLI and the settings.

No Docker engine runs here, so the files are checked by linters from the package registries (the ``test``
extra): hadolint for the Dockerfile (any finding, info included, fails) and check-jsonschema with the
Compose specification's schema (bundled with it, so offline) for compose.yaml.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
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


def _interpolated(value: str) -> str:
    """``value`` with compose's ``${VAR:-default}`` filled in the way ``POSTGRES_PASSWORD=pw docker compose`` would."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: ENV.get(m.group(1), m.group(2)), value)


ENV = {"POSTGRES_PASSWORD": "pw"}
PG_SERVICES = {"postgres", "pg-migrate", "pg-gateway-1", "pg-gateway-2", "pg-scheduler"}


def test_compose_commands_are_tuneloop_commands():
    services = _tuneloop_services(_compose())
    assert set(services) == {"gateway", "scheduler", "pg-migrate", "pg-gateway-1", "pg-gateway-2", "pg-scheduler"}
    for name, svc in services.items():
        argv = svc["command"]
        command = cli.commands.get(argv[0])
        assert command is not None, f"{name}: tuneloop has no command {argv[0]!r}"
        if isinstance(command, click.Group) and len(argv) > 1 and not argv[1].startswith("--"):  # `db migrate`
            command, argv = command.commands.get(argv[1]), argv[1:]
            assert command is not None, f"{name}: tuneloop {svc['command'][0]} has no command {argv[0]!r}"
        known = {opt for p in command.params for opt in getattr(p, "opts", [])}
        assert all(a in known for a in argv[1:] if a.startswith("--")), f"{name}: unknown option in {argv}"


def test_compose_environment_is_valid_tuneloop_settings():
    for name, svc in _tuneloop_services(_compose()).items():
        env = {k: _interpolated(str(v)) for k, v in svc["environment"].items()}
        settings = load_settings(env=env)  # raises ConfigError on an unknown key or a bad value
        assert settings.model.provider == "vllm", name
        assert str(settings.data_dir) == "/data", name
        assert settings.database.is_postgres == (name in PG_SERVICES), name


def test_without_the_profile_compose_runs_what_it_always_ran():
    services = _compose()["services"]
    default = {name for name, svc in services.items() if "profiles" not in svc}
    assert default == {"vllm", "gateway", "scheduler"}
    assert {name for name, svc in services.items() if svc.get("profiles") == ["postgres"]} == PG_SERVICES
    for name in default:  # nothing the default services need comes from the profile
        assert not set(services[name].get("depends_on", {})) & PG_SERVICES, name
        assert "TUNELOOP_DATABASE__URL" not in services[name].get("environment", {}), name


def test_the_postgres_profile_runs_two_gateways_on_one_store_and_one_shared_volume():
    services = _compose()["services"]
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:") and postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    url = "postgresql://tuneloop:pw@postgres:5432/tuneloop"
    gateways = [services[f"pg-gateway-{n}"] for n in (1, 2)]
    for svc in gateways:
        assert svc["command"] == ["serve"]
        assert _interpolated(svc["environment"]["TUNELOOP_DATABASE__URL"]) == url
        assert svc["volumes"] == ["pg-shared-data:/data"]
        assert svc["depends_on"]["pg-migrate"]["condition"] == "service_completed_successfully"
    assert len({svc["ports"][0].split(":")[0] for svc in gateways}) == 2  # one host port each
    migrate, scheduler = services["pg-migrate"], services["pg-scheduler"]
    assert (
        migrate["command"] == ["db", "migrate"] and migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    )
    assert "pg-shared-data:/data" in scheduler["volumes"]
    assert _interpolated(scheduler["environment"]["TUNELOOP_DATABASE__URL"]) == url
    assert [s for s in services if services[s].get("command", [None])[0] == "scheduler"] == [
        "scheduler",
        "pg-scheduler",
    ]


def test_the_postgres_schedulers_healthcheck_asks_the_store_not_a_lock_file():
    test = _compose()["services"]["pg-scheduler"]["healthcheck"]["test"]
    assert test == ["CMD", "tuneloop", "scheduler", "status"]  # exit 0 while a scheduler holds the leader lock
    assert "filelock" not in " ".join(test)


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
