"""The gate: promote only a candidate better on corrections and not worse on golden; otherwise reject, say why."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import cli
from config.errors import Conflict
from config.settings import load_settings
from feedback.report import lifecycle
from feedback.versions import canary_versions, create_candidate, get_version, live_version
from tests.plugins.evaluation import CORRECTIONS, GOLDEN, TEST_SPLIT, fill, make_setup
from tests.plugins.gateway import write_config
from trainer import gate, registry
from trainer.evaluation.run import evaluate


def _metrics(corrections: tuple[float, float], golden: tuple[float, float], rows: int = 5) -> dict:
    def entry(cand: float, inc: float) -> dict:
        return {"rows": rows, "candidate": {"chrf": cand}, "incumbent": {"chrf": inc}}

    return {"corrections": entry(*corrections), "golden": entry(*golden)}


def test_the_rule_at_its_edges(settings):
    # Defaults: chrF, margin 0.02, tolerance 0.01.
    assert gate.decide(_metrics((0.62, 0.60), (0.95, 0.95)), settings).passed  # exactly the margin
    assert gate.decide(_metrics((0.70, 0.60), (0.94, 0.95)), settings).passed  # exactly the tolerance
    verdict = gate.decide(_metrics((0.61, 0.60), (0.95, 0.95)), settings)
    assert not verdict.passed
    assert verdict.reasons == [
        "corrections: candidate chrF 0.610 vs live 0.600 (+0.010); it must be better by at least 0.020"
    ]
    verdict = gate.decide(_metrics((0.70, 0.61), (0.93, 0.954)), settings)
    assert verdict.reasons == ["golden: candidate chrF 0.930 vs live 0.954 (-0.024); it may drop at most 0.010"]
    assert [c["ok"] for c in verdict.checks] == [True, False]
    verdict = gate.decide({"corrections": {"rows": 0}}, settings)
    assert [r.split(":")[0] for r in verdict.reasons] == ["corrections", "golden"]  # nothing shown is not a pass
    strict = load_settings(env={}, overrides={"gate.metric": "exact_match", "gate.correction_margin": 0.5})
    both = {
        s: {"rows": 2, "candidate": {"exact_match": 1.0}, "incumbent": {"exact_match": 0.5}}
        for s in ("corrections", "golden")
    }
    assert gate.decide(both, strict).passed


def test_better_on_corrections_and_equal_on_golden_is_promoted(better_candidate):
    s = better_candidate
    ev = evaluate(s.db, s.settings, s.candidate)
    assert ev.passed and ev.gate["checks"][1]["delta"] == 0.0
    outcome = gate.apply(s.db, s.settings, ev)
    assert (outcome.action, outcome.version.status) == ("promoted", "live")
    assert live_version(s.db).id == s.candidate.id
    assert get_version(s.db, s.live.id).status == "retired"
    event = registry.events(s.db, s.candidate.id)[0]
    assert (event.event, event.evaluation_id, event.previous_live_id, event.actor) == (
        "promoted",
        ev.id,
        s.live.id,
        "gate",
    )


def test_worse_on_golden_beyond_tolerance_is_rejected_and_live_is_untouched(tmp_path, table_upstream):
    s = make_setup(tmp_path, table_upstream)
    fill(table_upstream, "starter", GOLDEN + TEST_SPLIT + CORRECTIONS, wrong={q for q, _ in CORRECTIONS})
    fill(table_upstream, "tuned", GOLDEN + TEST_SPLIT + CORRECTIONS, wrong={GOLDEN[1][0]})  # forgot one golden answer
    live_before = get_version(s.db, s.live.id)
    ev = evaluate(s.db, s.settings, s.candidate)
    golden = ev.metrics["golden"]
    assert golden["incumbent"]["chrf"] == 1.0 and golden["candidate"]["chrf"] < 0.99
    assert not ev.passed
    (reason,) = ev.reasons
    assert reason.startswith(f"golden: candidate chrF {golden['candidate']['chrf']:.3f} vs live 1.000 (")
    assert reason.endswith("it may drop at most 0.010")
    outcome = gate.apply(s.db, s.settings, ev)
    assert (outcome.action, outcome.version.status, outcome.reasons) == ("rejected", "rejected", [reason])
    assert get_version(s.db, s.live.id) == live_before  # same row: still live, same promotion time
    event = registry.events(s.db, s.candidate.id)[0]
    assert (event.event, event.evaluation_id, event.details["reasons"]) == ("rejected", ev.id, [reason])
    # The weekly report names the models and gives the numbers.
    (reported,) = lifecycle.evaluation_events(s.db, "2000-01-01T00:00:00Z", "2999-01-01T00:00:00Z")["events"]
    assert (reported["candidate_name"], reported["incumbent_name"], reported["passed"]) == ("tuned", "starter", 0)
    assert f"golden chrf {golden['candidate']['chrf']:.3f} vs 1.000" in reported["summary"]
    assert reported["reasons"] == [reason]
    # A wider tolerance lets the same answers through.
    lenient = load_settings(env={}, overrides={**_same(s.settings), "gate.golden_tolerance": 0.5})
    assert gate.decide(ev, lenient).passed


def _same(settings) -> dict:
    return {
        "paths.data_dir": settings.paths.data_dir,
        "model.base_url": settings.model.base_url,
        "evaluation.golden_file": settings.evaluation.golden_file,
    }


def test_a_passing_candidate_becomes_a_canary_when_configured(tmp_path, table_upstream):
    s = make_setup(tmp_path, table_upstream, **{"gate.canary_weight": 0.1})
    fill(table_upstream, "starter", GOLDEN + CORRECTIONS, wrong={q for q, _ in CORRECTIONS})
    fill(table_upstream, "tuned", GOLDEN + CORRECTIONS)
    ev = evaluate(s.db, s.settings, s.candidate, suites=["corrections", "golden"])
    outcome = gate.apply(s.db, s.settings, ev)
    assert outcome.action == "canary"
    assert [(v.id, v.traffic_weight) for v in canary_versions(s.db)] == [(s.candidate.id, 0.1)]
    assert live_version(s.db).id == s.live.id


def test_a_verdict_against_a_version_no_longer_live_is_not_acted_on(better_candidate):
    s = better_candidate
    ev = evaluate(s.db, s.settings, s.candidate)
    other = registry.promote(s.db, create_candidate(s.db, name="other", provider="local", base_model="starter"), "t")
    with pytest.raises(Conflict, match="evaluate again"):
        gate.apply(s.db, s.settings, ev)
    assert get_version(s.db, s.candidate.id).status == "candidate"
    assert live_version(s.db).id == other.id


def test_cli_eval_prints_the_table_and_verdict_and_gates(tmp_path, table_upstream):
    s = make_setup(tmp_path, table_upstream)
    fill(table_upstream, "starter", GOLDEN + TEST_SPLIT + CORRECTIONS)
    fill(table_upstream, "tuned", GOLDEN + TEST_SPLIT + CORRECTIONS, wrong={GOLDEN[0][0], GOLDEN[2][0]})
    config = write_config(
        tmp_path / "t.toml",
        {
            "paths": {"data_dir": s.settings.paths.data_dir},
            "model": {"base_url": table_upstream.base_url, "retries": 0},
            "evaluation": {"golden_file": s.settings.evaluation.golden_file},
        },
    )
    result = CliRunner().invoke(cli, ["--config", str(config), "eval", "tuned", "--gate", "--worst", "1"], env={})
    assert result.exit_code == 1, result.output
    out = result.output
    assert "golden           4  exact       1.000   0.500  -0.500" in out
    assert "verdict: FAILED the gate (chrF)" in out
    assert "  - corrections: candidate chrF 1.000 vs live 1.000 (+0.000); it must be better by at least 0.020" in out
    assert "where the candidate lost most (chrF):" in out
    assert "is marked rejected; the live model is unchanged" in out
    assert get_version(s.db, s.candidate.id).status == "rejected"
    assert live_version(s.db).id == s.live.id
