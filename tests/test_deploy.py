"""Deploying adapters into a real model server, and the whole evaluate → gate → promote → rollback path on it.

One ``tuneloop model-server`` process serves the tiny model for this module (its
own instance: loading adapters into the shared ``model_server`` would leak into
other tests). ``tiny_lora`` answers each question with the next row's answer, so
it is a candidate that is measurably worse than the live model.
"""

from __future__ import annotations

import json

import httpx2
import pytest
from click.testing import CliRunner

from cli.main import cli
from config.errors import Conflict, UpstreamError
from config.settings import load_settings
from feedback import accounts
from feedback.db import open_db
from feedback.review import create_item
from feedback.versions import create_candidate, ensure_live_version, get_version, live_version
from modelclient.chat import Target
from tests.plugins.gateway import write_config
from tests.plugins.model import qa, start_model_server, stop_model_server
from trainer import deploy, gate, registry
from trainer.evaluation.run import evaluate


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    running = start_model_server(tiny_model_dir, tmp_path_factory.mktemp("deploy-server"))
    yield running
    stop_model_server(running)


@pytest.fixture
def env(tmp_path, server, tiny_model_rows):
    """Settings on the test server (golden set = the tiny model's rows), a database with the base model live."""
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in tiny_model_rows), encoding="utf-8")
    values = {
        "paths.data_dir": str(tmp_path / "var"),
        "model.base_url": server.base_url,
        "model.retries": 0,
        "evaluation.golden_file": str(golden),
        "evaluation.max_tokens": 120,
        "evaluation.concurrency": 2,
        # The tiny model memorizes its rows and reads no context: it is served closed book, so its two views are
        # one prompt (asked once); the bundled rewordings are of an FAQ it never saw.
        "knowledge.enabled": False,
        "evaluation.suites": ["test", "corrections", "golden"],
    }
    settings = load_settings(env={}, overrides=values)
    db = open_db(settings.db_path)
    ensure_live_version(db, name="starter", provider="builtin")
    yield settings, db, values
    db.close()


def served(server) -> list[str]:
    return [m["id"] for m in httpx2.get(server.base_url + "/models", timeout=10).json()["data"]]


def answer(settings, name: str, question: str) -> str:
    return (
        deploy.model_client(settings)
        .complete(
            [Target(name, settings.model.base_url)],
            [{"role": "user", "content": question}],
            temperature=0,
            max_tokens=120,
        )
        .text
    )


def test_deploy_loads_the_adapter_idempotently_without_making_it_live(env, server, tiny_lora, tiny_model_rows):
    settings, db, _ = env
    candidate = create_candidate(
        db, name="lora-a", provider="local", base_model="starter", adapter_path=str(tiny_lora.path)
    )
    first = deploy.deploy(db, settings, candidate)
    assert (first.action, first.server) == ("loaded", server.base_url)
    assert "lora-a" in served(server)
    question, base_answer = qa(tiny_model_rows[0])
    assert answer(settings, "starter", question) == base_answer
    assert answer(settings, "lora-a", question) == tiny_lora.answers[question] != base_answer
    assert deploy.deploy(db, settings, candidate).action == "already_loaded"
    assert [e.event for e in registry.events(db, candidate.id)] == ["deployed"]  # only the load that changed something
    assert get_version(db, candidate.id).status == "candidate" and live_version(db).name == "starter"
    assert deploy.undeploy(db, settings, candidate).action == "unloaded"
    assert "lora-a" not in served(server)
    assert deploy.undeploy(db, settings, candidate).action == "not_loaded"


def test_deploy_fails_clearly(env, server, tmp_path):
    settings, db, _ = env
    missing = create_candidate(
        db, name="lora-missing", provider="local", base_model="starter", adapter_path=str(tmp_path / "nowhere")
    )
    with pytest.raises(UpstreamError, match="no such folder"):
        deploy.deploy(db, settings, missing)
    ft = create_candidate(db, name="ft:gpt-4.1-mini:acme::abc", provider="openai", base_model="gpt-4.1-mini")
    with pytest.raises(Conflict, match="does not serve 'ft:gpt-4.1-mini:acme::abc'"):
        deploy.deploy(db, settings, ft)  # nothing to load, and this server does not list the name
    down = load_settings(
        env={},
        overrides={
            "paths.data_dir": settings.paths.data_dir,
            "model.base_url": "http://127.0.0.1:9/v1",
            "model.connect_timeout_s": 0.5,
        },
    )
    lora = create_candidate(db, name="lora-down", provider="local", base_model="starter", adapter_path=str(tmp_path))
    with pytest.raises(UpstreamError, match="cannot reach the model server"):
        deploy.deploy(db, down, lora)


def test_the_adapter_that_answers_differently_is_rejected_by_the_gate(env, server, tiny_lora, tiny_model_rows):
    settings, db, _ = env
    for row in tiny_model_rows[:2]:
        question, correct = qa(row)
        create_item(db, question=question, answer=correct, reviewer="tester")
    candidate = create_candidate(
        db, name="lora-b", provider="local", base_model="starter", adapter_path=str(tiny_lora.path)
    )
    live = live_version(db)
    ev = evaluate(db, settings, candidate)  # deploys it first
    golden = ev.metrics["golden"]["as_served"]
    assert golden == ev.metrics["golden"]["closed_book"]  # without the knowledge base, served is closed book
    assert golden["rows"] == len(tiny_model_rows)
    assert golden["incumbent"]["exact_match"] == 1.0  # the tiny model memorized its rows
    assert golden["candidate"]["exact_match"] == 0.0  # the adapter gives the next row's answer to each
    assert ev.metrics["test"] == {"closed_book": {"rows": 0}, "as_served": {"rows": 0}}  # no dataset built here
    assert not ev.passed
    assert any(r.startswith("golden (as served): candidate chrF ") for r in ev.reasons)
    outcome = gate.apply(db, settings, ev)
    assert outcome.action == "rejected"
    assert live_version(db) == live
    assert "lora-b" not in served(server)  # gate.unload_retired: a rejected adapter is unloaded


def test_cli_promote_reaches_the_gateway_and_rollback_undoes_it(
    env, server, tiny_lora, tiny_model_rows, make_gateway, tmp_path
):
    settings, db, values = env
    candidate = create_candidate(
        db, name="lora-c", provider="local", base_model="starter", adapter_path=str(tiny_lora.path)
    )
    config = write_config(
        tmp_path / "cli.toml", {"paths": {"data_dir": values["paths.data_dir"]}, "model": {"base_url": server.base_url}}
    )
    run = lambda *args: CliRunner().invoke(cli, ["--config", str(config), *args], env={})  # noqa: E731
    # Closed book: the tiny model and its LoRA memorised their answers without a knowledge block.
    gateway = make_gateway(server.base_url, **{"gateway.model_cache_s": 0, "knowledge.enabled": False}).test_client()
    question, base_answer = qa(tiny_model_rows[3])
    assert gateway.post("/api/chat", json={"message": question}).get_json()["answer"] == base_answer

    accounts.add_user(db, "alice@example.com", role="admin", name="Alice", actor="test")  # --actor names an account
    result = run("models", "promote", "lora-c", "--reason", "better refunds", "--actor", "alice@example.com")
    assert result.exit_code == 0, result.output
    assert "lora-c" in result.output and "is live" in result.output
    body = gateway.post("/api/chat", json={"message": question}).get_json()
    assert (body["model"], body["answer"]) == ("lora-c", tiny_lora.answers[question])
    listing = run("models", "list").output
    assert f"{candidate.id}  live" in listing

    result = run("models", "rollback", "--reason", "users complained")
    assert result.exit_code == 0, result.output
    assert "starter" in result.output and "is live again" in result.output
    body = gateway.post("/api/chat", json={"message": question}).get_json()
    assert (body["model"], body["answer"]) == ("starter", base_answer)
    assert "lora-c" in served(server)  # the rolled-back adapter stays loaded until retired

    shown = run("models", "show", candidate.id).output
    assert "promoted" in shown and "by alice" in shown and "users complained" in shown
    result = run("models", "retire", candidate.id)
    assert result.exit_code == 0 and "adapter unloaded" in result.output
    assert "lora-c" not in served(server)
    assert run("models", "retire", "live").exit_code == 1  # the live version cannot be retired


def test_evaluation_reloads_a_live_adapter_the_server_forgot(env, server, tiny_lora):
    settings, db, _ = env
    live = create_candidate(db, name="lora-d", provider="local", base_model="starter", adapter_path=str(tiny_lora.path))
    deploy.promote(db, settings, live, actor="t")
    # A model server restart loses runtime-loaded adapters; here it is unloaded behind tuneloop's back.
    assert httpx2.post(server.base_url + "/unload_lora_adapter", json={"lora_name": "lora-d"}).status_code == 200
    candidate = create_candidate(
        db, name="lora-e", provider="local", base_model="starter", adapter_path=str(tiny_lora.path)
    )
    ev = evaluate(db, settings, candidate, suites=["golden"])
    assert ev.metrics["golden"]["closed_book"]["errors"] == {"candidate": 0, "incumbent": 0}
    assert ev.metrics["golden"]["closed_book"]["delta"]["exact_match"] == 0.0  # the same adapter under two names
    assert {"lora-d", "lora-e"} <= set(served(server))
    registry.rollback(db, "t")
    for name in ("lora-d", "lora-e"):
        deploy.retire(db, settings, registry.resolve_version(db, name), actor="t")
    assert not {"lora-d", "lora-e"} & set(served(server))
