"""The gate: promote only a candidate better on corrections and not worse on golden; otherwise reject, say why."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from cli.main import cli
from config.errors import Conflict
from config.settings import load_settings
from feedback.report import generate_report, lifecycle
from feedback.versions import canary_versions, create_candidate, get_version, live_version
from tests.plugins.evaluation import CORRECTIONS, GOLDEN, REWORDED, TEST_SPLIT, fill, make_setup
from tests.plugins.gateway import write_config
from trainer import gate, registry
from trainer.evaluation.run import evaluate

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL


def _metrics(corrections: tuple, golden: tuple, rows: int = 5) -> dict:
    """Corrections closed book and golden as served: (candidate, incumbent[, interval low, high])."""

    def entry(cand: float, inc: float, *interval: float) -> dict:
        found = {"rows": rows, "candidate": {"chrf": cand}, "incumbent": {"chrf": inc}}
        return {**found, "interval": {"chrf": list(interval)}} if interval else found

    return {"corrections": {"closed_book": entry(*corrections)}, "golden": {"as_served": entry(*golden)}}


def test_the_rule_at_its_edges(settings):
    # Defaults: chrF, margin 0.02, tolerance 0.01. Without an interval the difference counts as exact.
    assert gate.decide(_metrics((0.62, 0.60), (0.95, 0.95)), settings).passed  # exactly the margin
    assert gate.decide(_metrics((0.70, 0.60), (0.94, 0.95)), settings).passed  # exactly the tolerance
    verdict = gate.decide(_metrics((0.61, 0.60), (0.95, 0.95)), settings)
    assert (verdict.passed, verdict.outcome) == (False, "failed")
    assert verdict.reasons == [
        "corrections (closed book): candidate chrF 0.610 vs live 0.600 (+0.010; 95% interval +0.010 to +0.010 "
        "over 5 questions); it must be better by at least 0.020"
    ]
    verdict = gate.decide(_metrics((0.70, 0.61), (0.93, 0.954)), settings)
    assert verdict.reasons == [
        "golden (as served): candidate chrF 0.930 vs live 0.954 (-0.024; 95% interval -0.024 to -0.024 "
        "over 5 questions); it may drop at most 0.010"
    ]
    assert [(c["suite"], c["view"], c["ok"]) for c in verdict.checks] == [
        ("corrections", "closed_book", True),
        ("golden", "as_served", False),
    ]
    verdict = gate.decide({"corrections": {"rows": 0}}, settings)
    assert [r.split(":")[0] for r in verdict.reasons] == ["corrections (closed book)", "golden (as served)"]
    strict = load_settings(env={}, overrides={"gate.metric": "exact_match", "gate.correction_margin": 0.5})
    both = {
        s: {"rows": 2, "candidate": {"exact_match": 1.0}, "incumbent": {"exact_match": 0.5}}
        for s in ("corrections", "golden")
    }
    assert gate.decide(both, strict).passed  # stored before views: closed book, and checked as such


def test_an_interval_across_the_bar_is_too_close_to_tell_and_neither_passes_nor_fails(settings):
    # +0.02 over three questions that moved both ways: it may be better, it may be noise.
    verdict = gate.decide(_metrics((0.62, 0.60, -0.01, 0.06), (0.95, 0.95, 0.0, 0.0), rows=3), settings)
    assert (verdict.passed, verdict.outcome) == (False, "inconclusive")
    assert verdict.reasons == [
        "corrections (closed book): candidate chrF 0.620 vs live 0.600 (+0.020; 95% interval -0.010 to +0.060 "
        "over 3 questions); too few questions to tell whether it is better by at least 0.020"
    ]
    # The whole interval above the margin passes; the whole interval below fails, even with a wide interval.
    assert gate.decide(_metrics((0.9, 0.6, 0.2, 0.4), (0.95, 0.95, -0.005, 0.0)), settings).outcome == "passed"
    assert gate.decide(_metrics((0.6, 0.6, -0.2, 0.015), (0.95, 0.95, 0.0, 0.0)), settings).outcome == "failed"
    # Not worse: within the tolerance passes, however wide the interval (nothing says it is worse); a drop beyond
    # it whose interval reaches zero is too close to tell; one whose whole interval is below zero fails.
    assert gate.decide(_metrics((0.9, 0.6, 0.2, 0.4), (0.944, 0.95, -0.05, 0.04)), settings).outcome == "passed"
    unclear = gate.decide(_metrics((0.9, 0.6, 0.2, 0.4), (0.935, 0.95, -0.03, 0.005)), settings)
    assert unclear.outcome == "inconclusive" and unclear.reasons[0].endswith(
        "too few questions to tell whether it dropped more than 0.010"
    )
    assert gate.decide(_metrics((0.9, 0.6, 0.2, 0.4), (0.9, 0.95, -0.08, -0.02)), settings).outcome == "failed"
    # A failed check wins over an unclear one.
    mixed = gate.decide(_metrics((0.62, 0.60, -0.01, 0.06), (0.9, 0.95, -0.08, -0.02)), settings)
    assert mixed.outcome == "failed" and len(mixed.reasons) == 2


def test_reworded_is_gated_as_served_when_it_is_run(settings):
    metrics = _metrics((0.9, 0.6, 0.2, 0.4), (0.95, 0.95, 0.0, 0.0))
    metrics["reworded"] = {
        "as_served": {
            "rows": 61,
            "candidate": {"chrf": 0.7},
            "incumbent": {"chrf": 0.8},
            "interval": {"chrf": [-0.15, -0.05]},
        },
        "closed_book": {"rows": 61, "candidate": {"chrf": 0.5}, "incumbent": {"chrf": 0.2}},
    }
    verdict = gate.decide(metrics, settings)
    assert verdict.outcome == "failed" and verdict.reasons[0].startswith("reworded (as served): candidate chrF 0.700")
    del metrics["reworded"]
    assert gate.decide(metrics, settings).passed  # not run: not gated


def test_better_on_corrections_and_equal_on_golden_is_promoted(better_candidate):
    s = better_candidate
    ev = evaluate(s.db, s.settings, s.candidate)
    assert ev.passed and [c["delta"] for c in ev.gate["checks"]] == [
        1 - ev.metrics["corrections"]["closed_book"]["incumbent"]["chrf"],
        0.0,
        0.0,
    ]
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
    # The weekly report says what the retrain changed: the corrections, now answered closed book; as served the
    # live model answered them already (their knowledge-base entries were corrected on approval).
    report, paths = generate_report(s.db, s.settings, now=datetime.now(timezone.utc) + timedelta(days=7))
    markdown = paths["md"].read_text(encoding="utf-8")
    assert "**What tuned answers differently** (passed):" in markdown
    assert "| corrections | closed book | 0/2 → 2/2 | chrf " in markdown
    assert "| corrections | as served | 2/2 → 2/2 | chrf 1.000 → 1.000 |" in markdown
    assert "| reworded | as served | 2/2 → 2/2 |" in markdown
    html = paths["html"].read_text(encoding="utf-8")
    assert "What tuned answers differently" in html and "<td>corrections</td><td>closed book</td>" in html


def test_worse_on_golden_beyond_tolerance_is_rejected_and_live_is_untouched(tmp_path, table_upstream):
    s = make_setup(tmp_path, table_upstream)
    fill(table_upstream, "starter", GOLDEN + TEST_SPLIT + CORRECTIONS, wrong={q for q, _ in CORRECTIONS})
    wrong = {q for q, _ in GOLDEN[1:]}  # forgot three of the four golden answers
    fill(table_upstream, "tuned", GOLDEN + TEST_SPLIT + CORRECTIONS, wrong=wrong)
    live_before = get_version(s.db, s.live.id)
    ev = evaluate(s.db, s.settings, s.candidate, suites=["corrections", "golden"])
    golden = ev.metrics["golden"]["as_served"]
    assert golden["incumbent"]["chrf"] == 1.0 and golden["candidate"]["chrf"] < 0.5
    assert golden["interval"]["chrf"][1] < -0.01  # beyond the tolerance, whichever questions are drawn
    assert not ev.passed and ev.gate["outcome"] == "failed"
    (reason,) = ev.reasons
    assert reason.startswith(f"golden (as served): candidate chrF {golden['candidate']['chrf']:.3f} vs live 1.000 (")
    assert reason.endswith("it may drop at most 0.010")
    outcome = gate.apply(s.db, s.settings, ev)
    assert (outcome.action, outcome.version.status, outcome.reasons) == ("rejected", "rejected", [reason])
    assert get_version(s.db, s.live.id) == live_before  # same row: still live, same promotion time
    event = registry.events(s.db, s.candidate.id)[0]
    assert (event.event, event.evaluation_id, event.details["reasons"]) == ("rejected", ev.id, [reason])
    # The weekly report names the models and gives the numbers.
    (reported,) = lifecycle.evaluation_events(s.db, "2000-01-01T00:00:00Z", "2999-01-01T00:00:00Z")["events"]
    assert (reported["candidate_name"], reported["incumbent_name"], reported["passed"]) == ("tuned", "starter", 0)
    assert reported["outcome"] == "failed"
    assert (
        f"golden: closed book 1/4 exact (live 4/4), chrf {golden['candidate']['chrf']:.3f} vs 1.000"
        in reported["summary"]
    )
    assert reported["reasons"] == [reason]
    # A wider tolerance lets the same answers through.
    lenient = load_settings(env={}, overrides={**_same(s.settings), "gate.tolerance": 1.0})
    assert gate.decide(ev, lenient).passed


def test_a_difference_too_small_to_tell_holds_the_candidate_neither_promoted_nor_rejected(tmp_path, table_upstream):
    s = make_setup(tmp_path, table_upstream)
    # The candidate learned one correction and lost another: about no change on average, over two questions that
    # moved in opposite directions — it may be better by the margin, it may be worse.
    fill(table_upstream, "starter", GOLDEN + REWORDED + CORRECTIONS, wrong={CORRECTIONS[0][0]})
    fill(table_upstream, "tuned", GOLDEN + REWORDED + CORRECTIONS, wrong={CORRECTIONS[1][0]})
    ev = evaluate(s.db, s.settings, s.candidate, suites=["corrections", "golden", "reworded"])
    assert (ev.passed, ev.gate["outcome"]) == (False, "inconclusive")
    (reason,) = ev.reasons
    assert reason.startswith("corrections (closed book)") and reason.endswith(
        "too few questions to tell whether it is better by at least 0.020"
    )
    result = CliRunner().invoke(cli, ["--config", str(_config(tmp_path, s)), "eval", "tuned"], env={})
    assert result.exit_code == 2, result.output  # 1 is a failed gate; 2 says it cannot tell
    assert "verdict: INCONCLUSIVE (chrF)" in result.output and f"  - {reason}" in result.output
    outcome = gate.apply(s.db, s.settings, ev)
    assert (outcome.action, outcome.version.status, outcome.reasons) == ("held", "candidate", [reason])
    assert live_version(s.db).id == s.live.id and registry.events(s.db, s.candidate.id) == []
    reported = lifecycle.evaluation_events(s.db, "2000-01-01T00:00:00Z", "2999-01-01T00:00:00Z")["events"]
    assert [r["outcome"] for r in reported] == ["inconclusive", "inconclusive"]  # this one and the CLI's


def _same(settings) -> dict:
    return {
        "paths.data_dir": settings.paths.data_dir,
        "model.base_url": settings.model.base_url,
        "evaluation.golden_file": settings.evaluation.golden_file,
    }


def _config(tmp_path, s):
    """A config file with the settings of ``make_setup``'s ``s``, for the CLI."""
    return write_config(
        tmp_path / "t.toml",
        {
            "paths": {"data_dir": s.settings.paths.data_dir},
            "model": {"base_url": s.upstream.base_url, "retries": 0},
            "evaluation": {
                "golden_file": s.settings.evaluation.golden_file,
                "reworded_file": s.settings.evaluation.reworded_file,
            },
            "knowledge": {"base_file": s.settings.knowledge.base_file},
        },
    )


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
    fill(table_upstream, "starter", GOLDEN + REWORDED + TEST_SPLIT + CORRECTIONS)
    fill(table_upstream, "tuned", GOLDEN + REWORDED + TEST_SPLIT + CORRECTIONS, wrong={GOLDEN[0][0], GOLDEN[2][0]})
    config = _config(tmp_path, s)
    result = CliRunner().invoke(cli, ["--config", str(config), "eval", "tuned", "--gate", "--worst", "1"], env={})
    assert result.exit_code == 1, result.output
    out = result.output
    lines = out.splitlines()
    golden = lines.index(next(line for line in lines if line.startswith("golden ")))
    assert lines[golden].split() == ["golden", "closed", "book", "4", "1.000", "→", "0.500"] + lines[golden].split()[7:]
    assert lines[golden + 1].split()[:6] == ["as", "served", "4", "1.000", "→", "0.500"]
    assert "verdict: FAILED the gate (chrF)" in out
    assert (
        "  - corrections (closed book): candidate chrF 1.000 vs live 1.000 (+0.000; 95% interval +0.000 to +0.000 "
        "over 2 questions); it must be better by at least 0.020" in out
    )
    assert "where the candidate lost most (chrF):" in out
    assert "is marked rejected; the live model is unchanged" in out
    assert get_version(s.db, s.candidate.id).status == "rejected"
    assert live_version(s.db).id == s.live.id
