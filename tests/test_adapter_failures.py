"""A candidate that fails to load never takes serving down with it (issue 22).

Three kinds of bad adapter — a corrupt weights file, an adapter trained for another
base, and one whose loading raises inside PEFT (the incident: an incompatible PEFT
version) — against a real ``tuneloop model-server`` process running the tiny model.
The PEFT failure is injected at the PEFT call boundary by ``tests.plugins.faulty_peft``
in the server process; everything else is the real serving path. Users ask through
real gateways (``POST /api/chat``) before, during and after.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx2
import pytest
from click.testing import CliRunner

from cli.main import cli
from config.errors import Conflict, UpstreamError
from config.settings import load_settings
from feedback.db import open_db, utc_now, write_transaction
from feedback.report import generate_report, render
from feedback.report.weeks import week_label
from feedback.versions import create_candidate, ensure_live_version, get_version, live_version
from server.app import create_app
from server.model_server.engine import AdapterRefused, Engine, ModelUnavailable
from tests.plugins.gateway import gateway_settings, write_config
from tests.plugins.model import qa, start_model_server, stop_model_server, tiny_rows
from tests.plugins.vllm import BASE, MAX_LORA_RANK
from tests.test_pipeline import TRAINING
from trainer import deploy, gate, registry
from trainer.evaluation.run import evaluate, get_evaluation
from trainer.pipeline import run_pipeline


@pytest.fixture(scope="module")
def fault_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults") / "fault.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, fault_file, tiny_lora):
    """A model server of its own (adapters loaded here must not leak), PEFT faults on demand, ``live-lora`` loaded."""
    running = start_model_server(tiny_model_dir, tmp_path_factory.mktemp("faulty-server"), fault_file=fault_file)
    try:
        assert load(running, "live-lora", tiny_lora.path).status_code == 200
        yield running
    finally:
        stop_model_server(running)


@pytest.fixture(autouse=True)
def no_fault(fault_file):
    fault_file.unlink(missing_ok=True)
    yield
    fault_file.unlink(missing_ok=True)


def inject(fault_file: Path, methods: list[str], paths: list[Path] = ()) -> None:
    fault_file.write_text(json.dumps({"methods": methods, "paths": [str(p) for p in paths]}))


def load(server, name: str, path: Path) -> httpx2.Response:
    return httpx2.post(
        server.base_url + "/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}, timeout=60
    )


def unload(server, name: str) -> httpx2.Response:
    return httpx2.post(server.base_url + "/unload_lora_adapter", json={"lora_name": name}, timeout=60)


def ask(server, model: str, question: str) -> httpx2.Response:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0}
    return httpx2.post(server.base_url + "/chat/completions", json=body, timeout=60)


def text(response: httpx2.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def served(server) -> list[str]:
    return [m["id"] for m in httpx2.get(server.base_url + "/models", timeout=10).json()["data"]]


def metric(server, name: str, **labels) -> float:
    """One sample of the model server's /metrics (0 when absent)."""
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in httpx2.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


# --- the bad adapters ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corrupt_lora(tmp_path_factory, tiny_lora) -> Path:
    """tiny_lora with its weights file cut in half, as a full disk or an interrupted copy leaves it."""
    folder = tmp_path_factory.mktemp("corrupt") / "adapter"
    shutil.copytree(tiny_lora.path, folder)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


@pytest.fixture(scope="module")
def foreign_lora(tmp_path_factory) -> Path:
    """A LoRA for another base model: same architecture, hidden size 48 instead of the tiny model's 120."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=400,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, target_modules="all-linear"))
    folder = tmp_path_factory.mktemp("foreign") / "adapter"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def peft_mismatch_lora(tmp_path_factory, tiny_lora) -> Path:
    """A good adapter; the test makes PEFT raise for it (``inject``), as an incompatible PEFT does."""
    folder = tmp_path_factory.mktemp("peft-mismatch") / "adapter"
    shutil.copytree(tiny_lora.path, folder)
    return folder


# --- users asking through real gateways meanwhile ----------------------------------------------


@dataclass
class Traffic:
    """Two gateways — one serving the base model, one the live adapter — asked in a loop on a thread."""

    expected: dict[str, dict[str, str]]  # gateway's live model -> question -> answer
    clients: dict
    answers: list[tuple[float, float, str, int, str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "Traffic":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            for model, client in self.clients.items():
                for question in self.expected[model]:
                    started = time.monotonic()
                    r = client.post("/api/chat", json={"message": question})
                    body = r.get_json() or {}
                    self.answers.append(
                        (
                            started,
                            time.monotonic(),
                            model,
                            r.status_code,
                            question,
                            body.get("answer", r.get_data(True)),
                        )
                    )

    def check(self) -> None:
        """Every answer was 200 and word for word what that model says."""
        assert self.answers, "no traffic ran"
        wrong = [a for a in self.answers if a[3] != 200 or a[5] != self.expected[a[2]][a[4]]]
        assert wrong == [], wrong[:3]

    def during(self, windows: list[tuple[float, float]]) -> int:
        """How many answers were in flight while one of ``windows`` lasted."""
        return sum(1 for a in self.answers if any(a[0] < end and a[1] > start for start, end in windows))


@pytest.fixture
def traffic(tmp_path, server, tiny_model_rows, tiny_lora):
    pairs = [qa(r) for r in tiny_model_rows[:3]]
    expected = {"starter": dict(pairs), "live-lora": {q: tiny_lora.answers[q] for q, _ in pairs}}
    clients = {}
    for model in expected:
        # Closed book (no knowledge block), so the gateway sends what a direct call sends and the tiny model's
        # memorised answers are the expected ones; grounding is tested in tests/test_knowledge_*.py.
        settings = gateway_settings(
            tmp_path / model,
            server.base_url,
            **{"model.name": model, "chat.system_prompt": "", "chat.temperature": 0, "knowledge.enabled": False},
        )
        clients[model] = create_app(settings=settings).test_client()
    return Traffic(expected, clients)


# --- 1. refused at load, nothing else changes --------------------------------------------------


def test_each_bad_adapter_is_refused_with_its_reason_while_base_and_live_keep_answering(
    server, traffic, fault_file, corrupt_lora, foreign_lora, peft_mismatch_lora
):
    traffic.start()
    time.sleep(0.5)  # before
    cases = [
        ("corrupt", corrupt_lora, None, "did not pass its check"),
        ("foreign", foreign_lora, None, "do not fit this model"),
        ("peft", peft_mismatch_lora, ["load_adapter"], "The version of PEFT you are using is not compatible"),
        ("peft-switch", peft_mismatch_lora, ["enable_adapters"], "The version of PEFT you are using is not compatible"),
    ]
    windows = []
    try:
        for name, folder, methods, words in cases:
            if methods:
                inject(fault_file, methods, [folder])
            started = time.monotonic()
            r = load(server, name, folder)
            windows.append((started, time.monotonic()))
            fault_file.unlink(missing_ok=True)
            assert r.status_code == 400, (name, r.text)
            error = r.json()["error"]
            assert error["code"] == "adapter_refused" and error["param"] == "lora_path"
            assert words in error["message"] and str(folder) in error["message"], error["message"]
        time.sleep(0.5)  # after
    finally:
        traffic.stop()
    traffic.check()
    assert traffic.during(windows) > 0, "no request was in flight while the adapters were checked"
    assert served(server) == ["starter", "live-lora"]
    assert metric(server, "tuneloop_model_server_adapter_loads_total", result="refused") >= len(cases)
    assert httpx2.get(server.url + "/health").json()["status"] == "ok"


def test_a_good_adapter_after_the_bad_ones_loads_and_answers(server, tiny_lora, tiny_model_rows, peft_mismatch_lora):
    r = load(server, "fixed", peft_mismatch_lora)  # the same files, with PEFT working again
    assert r.status_code == 200, r.text
    try:
        question, answer = qa(tiny_model_rows[1])
        assert text(ask(server, "fixed", question)) == tiny_lora.answers[question]
        assert text(ask(server, "starter", question)) == answer
    finally:
        assert unload(server, "fixed").status_code == 200
    assert text(ask(server, "live-lora", question)) == tiny_lora.answers[question]  # loading it changed nothing


# --- 2. a switch that fails while serving ------------------------------------------------------


def test_a_switch_that_fails_at_request_time_fails_that_request_only(
    server, traffic, fault_file, tiny_lora, tiny_model_rows, peft_mismatch_lora
):
    question, answer = qa(tiny_model_rows[2])
    assert load(server, "flaky", peft_mismatch_lora).status_code == 200
    assert text(ask(server, "flaky", question)) == tiny_lora.answers[question]
    switch_failures = metric(server, "tuneloop_model_server_adapter_switch_failures_total", model="starter")
    reloads = metric(server, "tuneloop_model_server_model_reloads_total", model="starter", result="ok")
    traffic.start()
    try:
        time.sleep(0.3)
        inject(fault_file, ["set_adapter"], [peft_mismatch_lora])  # from now on PEFT cannot switch to it
        failed = ask(server, "flaky", question)
        time.sleep(0.3)
    finally:
        traffic.stop()
    traffic.check()  # the base and the live adapter answered throughout, through the gateway
    assert failed.status_code == 503
    error = failed.json()["error"]
    assert error["code"] == "adapter_unavailable"
    assert "switching to adapter 'flaky' raised ValueError" in error["message"]
    assert "The version of PEFT you are using is not compatible" in error["message"]
    # Reloaded from disk before the next request; the adapter that no longer switches was taken off.
    assert metric(server, "tuneloop_model_server_adapter_switch_failures_total", model="starter") == switch_failures + 1
    assert metric(server, "tuneloop_model_server_model_reloads_total", model="starter", result="ok") >= reloads + 1
    assert served(server) == ["starter", "live-lora"]
    health = httpx2.get(server.url + "/health").json()
    assert health["status"] == "degraded" and "PEFT" in health["problems"]["flaky"]
    assert metric(server, "tuneloop_model_server_degraded") == 1
    ready = traffic.clients["starter"].get("/readyz")  # a gateway on this server: still ready, degraded
    assert ready.status_code == 200 and ready.get_json()["status"] == "degraded"
    assert "PEFT" in ready.get_json()["checks"]["serving"]["model_server_problems"]["flaky"]
    again = ask(server, "flaky", question)  # a 503 a gateway falls back on, not a 404
    assert again.status_code == 503 and "failed while serving and was unloaded" in again.json()["error"]["message"]
    assert text(ask(server, "starter", question)) == answer
    assert text(ask(server, "live-lora", question)) == tiny_lora.answers[question]
    # Once PEFT works again the adapter loads again and the server is healthy.
    fault_file.unlink()
    assert load(server, "flaky", peft_mismatch_lora).status_code == 200
    assert text(ask(server, "flaky", question)) == tiny_lora.answers[question]
    assert httpx2.get(server.url + "/health").json()["status"] == "ok"
    assert traffic.clients["starter"].get("/readyz").get_json()["status"] == "ready"
    assert unload(server, "flaky").status_code == 200


def test_the_incident_a_peft_that_fails_every_switch_costs_one_request_not_the_base(
    server, fault_file, tiny_lora, tiny_model_rows
):
    """Issue 22 as it happened: every enable/disable raises; before the fix every later request failed."""
    question, answer = qa(tiny_model_rows[0])
    assert text(ask(server, "live-lora", question)) == tiny_lora.answers[question]  # the model has adapters on
    inject(fault_file, ["enable_adapters", "disable_adapters"])
    try:
        first = ask(server, "starter", question)  # switching the adapters off raises
        assert first.status_code == 503 and "PEFT" in first.json()["error"]["message"]
        for _ in range(3):  # the model was reloaded without the adapter that cannot switch: the base answers
            assert text(ask(server, "starter", question)) == answer
        assert served(server) == ["starter"]
        assert ask(server, "live-lora", question).status_code == 503
    finally:
        fault_file.unlink()
        unload(server, "live-lora")  # clears its failure
        assert load(server, "live-lora", tiny_lora.path).status_code == 200
    assert text(ask(server, "live-lora", question)) == tiny_lora.answers[question]
    assert httpx2.get(server.url + "/health").json()["status"] == "ok"


# --- 3. a canary that breaks at request time ---------------------------------------------------


def test_a_canary_whose_adapter_fails_at_request_time_falls_back_to_live(
    server, fault_file, tmp_path, tiny_model_rows, peft_mismatch_lora
):
    settings = gateway_settings(  # closed book: the answers are compared with direct calls (see ``traffic``)
        tmp_path / "gw",
        server.base_url,
        **{"gateway.model_cache_s": 0, "model.retries": 0, "chat.temperature": 0, "knowledge.enabled": False},
    )
    client = create_app(settings=settings).test_client()
    db = open_db(settings.db_path)
    try:
        canary = create_candidate(
            db, name="canary-lora", provider="local", base_model="starter", adapter_path=str(peft_mismatch_lora)
        )
        deploy.start_canary(db, settings, canary, 0.99, actor="test")  # loads it into the model server
        question, answer = qa(tiny_model_rows[3])
        for _ in range(20):  # a conversation the canary answers (99% of them)
            first = client.post("/api/chat", json={"message": question}).get_json()
            if first["model"] == "canary-lora":
                break
        assert first["model"] == "canary-lora"
        assert client.get("/readyz").get_json()["status"] == "ready"

        inject(fault_file, ["set_adapter"], [peft_mismatch_lora])
        assert text(ask(server, "starter", question)) == answer  # the next canary request must switch back
        r = client.post("/api/chat", json={"message": question, "conversation_id": first["conversation_id"]})
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        assert body["model"] == "starter"  # the live model answered this request of the canary's conversation
        history = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": first["answer"]},
            {"role": "user", "content": question},
        ]
        direct = httpx2.post(
            server.base_url + "/chat/completions",
            json={"model": "starter", "messages": history, "temperature": 0},
            timeout=60,
        )
        assert body["answer"] == text(direct)
        row = db.execute("SELECT model_version_id, error FROM messages WHERE id = ?", [body["message_id"]]).fetchone()
        assert row == (live_version(db).id, None)  # recorded as written by the live version

        ready = client.get("/readyz")
        assert ready.status_code == 200  # a load balancer keeps this gateway
        report = ready.get_json()
        assert report["status"] == "degraded"
        (missing,) = report["checks"]["serving"]["missing"]
        assert missing["name"] == "canary-lora" and missing["role"] == "canary" and "PEFT" in missing["reason"]
        assert "answered by the live model" in report["checks"]["serving"]["message"]
        new = client.post("/api/chat", json={"message": qa(tiny_model_rows[4])[0]}).get_json()
        assert new["model"] == "starter" and new["answer"] == qa(tiny_model_rows[4])[1]
    finally:
        fault_file.unlink(missing_ok=True)
        unload(server, "canary-lora")
        db.close()


# --- 4. checking in place: the same guarantees without a scratch copy ---------------------------


@pytest.fixture(scope="module")
def in_place(tiny_model_dir):
    engine = Engine(device="cpu", max_new_tokens=128, adapter_check="in_place")  # answers run to ~100 tokens
    engine.load_base("starter", tiny_model_dir)
    return engine


def generate(engine, model: str, question: str) -> str:
    generation = engine.generate(model, [{"role": "user", "content": question}], temperature=0)
    generation.wait_started()
    return generation.collect()


def test_in_place_a_refused_adapter_leaves_the_model_verified_unchanged(
    in_place, tiny_lora, corrupt_lora, foreign_lora, tiny_model_rows
):
    in_place.load("good", tiny_lora.path)
    question, answer = qa(tiny_model_rows[5])
    for folder, words in ((corrupt_lora, "did not pass its check"), (foreign_lora, "do not fit this model")):
        with pytest.raises(AdapterRefused, match=words):
            in_place.load("bad", folder)
        assert in_place.names() == ["starter", "good"]
        assert generate(in_place, "starter", question) == answer
        assert generate(in_place, "good", question) == tiny_lora.answers[question]
    assert in_place.base.model.peft_config.keys() == {in_place.resolve("good")[1]}  # nothing left behind


def test_in_place_a_cleanup_that_raises_reloads_the_model_from_disk(
    in_place, tiny_lora, foreign_lora, tiny_model_rows, monkeypatch
):
    if "good" not in in_place.names():
        in_place.load("good", tiny_lora.path)
    untrusted = in_place.base.model
    monkeypatch.setattr(untrusted, "delete_adapter", lambda *a, **k: (_ for _ in ()).throw(OSError("disk gone")))
    reloads = in_place.metrics.reloads.labels("starter", "ok")._value.get()
    with pytest.raises(AdapterRefused):
        in_place.load("bad", foreign_lora)
    assert in_place.base.model is not untrusted  # read again from disk
    assert in_place.metrics.reloads.labels("starter", "ok")._value.get() == reloads + 1
    question, answer = qa(tiny_model_rows[6])
    assert generate(in_place, "starter", question) == answer
    assert generate(in_place, "good", question) == tiny_lora.answers[question]  # re-attached after the reload


def test_a_scratch_copy_that_cannot_be_read_is_the_servers_trouble_not_a_refusal(
    tiny_model_dir, tiny_lora, monkeypatch
):
    engine = Engine(device="cpu", max_new_tokens=64, adapter_check="scratch")
    engine.load_base("starter", tiny_model_dir)
    monkeypatch.setattr(engine, "_read_weights", lambda folder: (_ for _ in ()).throw(MemoryError("no room")))
    with pytest.raises(ModelUnavailable, match="cannot check the adapter.*MemoryError: no room") as info:
        engine.load("cand", tiny_lora.path)
    assert info.value.status == 503  # so deploying says the server failed, and nothing is rejected
    assert engine.names() == ["starter"]


# --- 5. the pipeline: an unloadable candidate is rejected, users never notice ------------------


def pipeline_settings(data_dir: Path, base_url: str, model_dir: Path, rows: list[dict], **extra):
    golden, base_file = data_dir.parent / "golden.jsonl", data_dir.parent / "base.jsonl"
    golden.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    base_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in tiny_rows(16)), encoding="utf-8")
    values = {
        "paths.data_dir": str(data_dir),
        "model.base_url": base_url,
        "model.retries": 0,
        "model_server.model_dir": str(model_dir),
        "dataset.base_file": str(base_file),
        "evaluation.golden_file": str(golden),
        "evaluation.max_tokens": 120,
        "evaluation.concurrency": 2,
        "scheduler.poll_interval_s": 0.5,
        "gate.canary_weight": 0.5,
        # The tiny model memorizes and reads no context: served closed book, and never asked the bundled rewordings.
        "knowledge.enabled": False,
        "evaluation.suites": ["test", "corrections", "golden"],
        **TRAINING,
        **extra,
    }
    return load_settings(env={}, overrides=values)


def approve_two_corrections(db, rows) -> None:
    from feedback.review import create_item

    for i in range(2):
        question, _ = qa(rows[i])
        create_item(db, question=question, answer=qa(rows[i + 1])[1], reviewer="test")


@pytest.mark.slow  # trains a LoRA (~20 s)
def test_the_pipeline_rejects_a_candidate_that_does_not_load_and_users_never_notice(
    server, traffic, fault_file, tmp_path, tiny_model_dir, tiny_model_rows
):
    # The pipeline shares its database with the gateway that serves the base model to users.
    data_dir = tmp_path / "starter"
    settings = pipeline_settings(data_dir, server.base_url, tiny_model_dir, tiny_model_rows)
    db = open_db(settings.db_path)
    ensure_live_version(db, name="starter", provider="builtin")
    approve_two_corrections(db, tiny_model_rows)
    inject(fault_file, ["load_adapter"], [data_dir])  # PEFT raises for every adapter trained here
    traffic.start()
    try:
        run = run_pipeline(db, settings, "manual")
    finally:
        traffic.stop()
    traffic.check()

    assert run.state == "succeeded", run.error
    candidate = get_version(db, run.context.candidate_id)
    assert candidate.status == "rejected"
    assert run.outcome("evaluate").state == "skipped"
    assert "adapter did not load" in run.outcome("evaluate").detail
    gate_step = run.outcome("gate")
    assert gate_step.state == "succeeded" and gate_step.action == "rejected"
    (reason,) = gate_step.reasons
    assert reason.startswith("adapter did not load: ") and "The version of PEFT you are using" in reason
    assert run.outcome("deploy").state == "skipped" and run.outcome("report").state == "succeeded"
    (event,) = [e for e in registry.events(db, candidate.id) if e.event == "rejected"]
    assert event.reason == reason and event.actor == "pipeline"
    assert live_version(db).name == "starter"
    assert candidate.name not in served(server)
    assert db.execute("SELECT COUNT(*) FROM model_versions WHERE status = 'canary'").fetchone()[0] == 0

    report, paths = generate_report(db, settings, week=week_label(datetime.now(timezone.utc).date()))
    # The Markdown report escapes user-visible text (">=" arrives as "&gt;="); compare in its own escaping.
    expected = f"{candidate.name} rejected by the gate (now rejected) by pipeline: {reason}"
    assert render._md(expected) in paths["md"].read_text()
    with pytest.raises(Conflict, match="rejected"):
        registry.promote(db, candidate, "test")  # never made live without --force

    # The scheduler's next runs are not blocked: a new run starts and finishes.
    fault_file.unlink()
    weekly = run_pipeline(db, settings, "weekly")
    assert weekly.state == "succeeded", weekly.error
    again = run_pipeline(db, settings, "manual")
    assert again.id != run.id and again.state == "succeeded", again.error
    db.close()


# --- 6. vLLM: a refused load_lora_adapter rejects the candidate --------------------------------


@pytest.fixture
def vllm_env(tmp_path, fake_vllm):
    settings = load_settings(
        env={},
        overrides={
            "paths.data_dir": str(tmp_path / "var"),
            "model.base_url": fake_vllm.base_url,
            "model.name": BASE,
            "model.retries": 0,
            "gateway.model_cache_s": 0,
            "gate.canary_weight": 0.5,
        },
    )
    db = open_db(settings.db_path)
    ensure_live_version(db, name=BASE, provider="vllm")
    yield settings, db
    db.close()


def adapter_folder(path: Path, rank: int) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 16}))
    (path / "adapter_model.safetensors").write_bytes(b"")
    return path


def test_vllm_refusing_an_adapter_rejects_the_candidate_and_routes_nothing_to_it(vllm_env, fake_vllm, tmp_path):
    settings, db = vllm_env
    too_big = adapter_folder(tmp_path / "r64", MAX_LORA_RANK * 4)
    candidate = create_candidate(db, name="tuned-r64", provider="local", base_model=BASE, adapter_path=str(too_big))
    with pytest.raises(deploy.AdapterRefused) as refused:
        evaluate(db, settings, candidate)
    assert refused.value.version_id == candidate.id
    assert refused.value.reason == (
        f"LoRA rank {MAX_LORA_RANK * 4} is greater than max_lora_rank {MAX_LORA_RANK}. "
        "Please launch the server with a larger --max-lora-rank."
    )
    outcome = gate.reject_unloadable(db, settings, candidate, refused.value.reason, actor="pipeline")
    assert outcome.action == "rejected" and outcome.reasons == [f"adapter did not load: {refused.value.reason}"]
    assert get_version(db, candidate.id).status == "rejected"
    gateway = create_app(settings=settings).test_client()
    for i in range(10):
        assert gateway.post("/api/chat", json={"message": f"q{i}"}).get_json()["model"] == BASE
    assert {r["model"] for r in fake_vllm.requests} == {BASE}
    assert fake_vllm.adapters == {}


def test_cli_eval_gate_rejects_a_candidate_vllm_refuses(vllm_env, fake_vllm, tmp_path):
    settings, db = vllm_env
    too_big = adapter_folder(tmp_path / "r32", 32)
    candidate = create_candidate(db, name="tuned-r32", provider="local", base_model=BASE, adapter_path=str(too_big))
    config = write_config(
        tmp_path / "t.toml",
        {"paths": {"data_dir": settings.paths.data_dir}, "model": {"base_url": fake_vllm.base_url, "retries": 0}},
    )
    without_gate = CliRunner().invoke(cli, ["--config", str(config), "eval", "tuned-r32"], env={})
    assert without_gate.exit_code != 0 and "adapter did not load: LoRA rank 32" in without_gate.output
    assert get_version(db, candidate.id).status == "candidate"  # evaluating alone changes nothing
    result = CliRunner().invoke(cli, ["--config", str(config), "eval", "tuned-r32", "--gate"], env={})
    assert result.exit_code == 1, result.output
    assert f"gate: tuned-r32 ({candidate.id}) is marked rejected: adapter did not load: LoRA rank 32" in result.output
    assert get_version(db, candidate.id).status == "rejected"


def test_vllm_no_adapter_found_is_a_refusal_and_a_disabled_endpoint_is_not(vllm_env, fake_vllm, tmp_path):
    settings, db = vllm_env
    gone = create_candidate(db, name="gone", provider="local", base_model=BASE, adapter_path=str(tmp_path / "gone"))
    with pytest.raises(deploy.AdapterRefused, match="No adapter found for"):
        deploy.deploy(db, settings, gone)  # vLLM's 404 NotFoundError: the files are not there
    elsewhere = settings.model.base_url.replace("/v1", "/no-lora/v1")  # FastAPI's {"detail": "Not Found"}
    other = create_candidate(
        db, name="other", provider="local", base_model=BASE, base_url=elsewhere, adapter_path=str(tmp_path)
    )
    with pytest.raises(UpstreamError, match="does not accept adapters at run time") as info:
        deploy.deploy(db, settings, other)
    assert not isinstance(info.value, deploy.AdapterRefused)  # says nothing about the adapter: not rejected


def test_vllm_refusal_when_the_gate_deploys_a_passing_candidate_rejects_it(vllm_env, fake_vllm, tmp_path):
    """The server was restarted with a smaller --max-lora-rank between evaluation and gate."""
    settings, db = vllm_env
    folder = adapter_folder(tmp_path / "ok", 8)
    candidate = create_candidate(db, name="tuned", provider="local", base_model=BASE, adapter_path=str(folder))
    evaluation = _passing_evaluation(db, candidate)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 64}))
    outcome = gate.apply(db, settings, evaluation, actor="gate")
    assert outcome.action == "rejected" and outcome.reasons[0].startswith("adapter did not load: LoRA rank 64")
    assert get_version(db, candidate.id).status == "rejected" and live_version(db).name == BASE
    assert db.execute("SELECT COUNT(*) FROM model_versions WHERE status = 'canary'").fetchone()[0] == 0


def test_a_canary_vllm_refuses_after_a_restart_is_rejected_and_live_takes_its_share(vllm_env, fake_vllm, tmp_path):
    settings, db = vllm_env
    folder = adapter_folder(tmp_path / "canary", 8)
    canary = create_candidate(db, name="canary", provider="local", base_model=BASE, adapter_path=str(folder))
    deploy.start_canary(db, settings, canary, 0.5, actor="test")
    gateway = create_app(settings=settings).test_client()
    models = {gateway.post("/api/chat", json={"message": f"q{i}"}).get_json()["model"] for i in range(30)}
    assert models == {BASE, "canary"}
    fake_vllm.adapters.clear()  # vLLM restarted: runtime adapters are gone ...
    models = {gateway.post("/api/chat", json={"message": f"r{i}"}).get_json()["model"] for i in range(30)}
    assert models == {BASE}  # ... its 404 sends the canary's conversations to the live model meanwhile
    readyz = gateway.get("/readyz")
    assert readyz.status_code == 200 and readyz.get_json()["status"] == "degraded"
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 64}))  # ... and refuses it
    results = deploy.deploy_serving(db, settings, actor="ops")
    assert [(r.name, r.action) for r in results] == [(BASE, "nothing_to_load"), ("canary", "rejected")]
    assert results[1].detail.startswith("adapter did not load: LoRA rank 64")
    assert get_version(db, canary.id).status == "rejected"
    assert gateway.get("/readyz").get_json()["status"] == "ready"


def _passing_evaluation(db, candidate):
    """A stored evaluation in which ``candidate`` passed the gate against the live version."""
    with write_transaction(db):
        db.execute(
            "INSERT INTO evaluations (id, candidate_id, incumbent_id, passed, created_at) VALUES (?, ?, ?, 1, ?)",
            ["ev_passed", candidate.id, live_version(db).id, utc_now()],
        )
    return get_evaluation(db, "ev_passed")
