"""The gate: does a candidate replace the live model?

The rule (``[gate]`` settings, metric ``gate.metric``, all on a 0..1 scale):

1. **corrections** — the candidate must beat the live model on the approved
   corrections by at least ``correction_margin``: fixing what users reported is
   the reason to retrain, so a candidate that did not learn the fixes has no case;
2. **golden** — it must not score below the live model on the golden set by more
   than ``golden_tolerance``: the fixes must not cost answers that were right.

Both suites must have rows; an empty one fails its check (nothing was shown).
The test split is reported, not gated: it is drawn from the same data each build
and changes with every build, so it tells how training went rather than whether
users are better off. The default metric is chrF: exact match is all-or-nothing
and punishes a correct answer in other words as hard as a wrong one, and a
7-billion-parameter model seldom repeats a reference word for word; chrF moves
with every character that is right, needs no tokenizer for Korean and ignores
spacing. Use ``exact_match`` where answers must be verbatim (as with the
starter model, which memorizes its FAQ).

Example with the defaults (chrF, margin 0.02, tolerance 0.01): live 0.612 and
candidate 0.701 on corrections (+0.089 ≥ 0.02: ok); live 0.954 and candidate
0.948 on golden (−0.006, within 0.01: ok) → passed. Had golden fallen to 0.930
(−0.024), the candidate would be rejected with "golden: candidate chrF 0.930 vs
live 0.954 (-0.024); it may drop at most 0.010".

:func:`decide` is pure; :func:`apply` acts on the verdict: a failed candidate is
marked ``rejected`` with the reasons (and its adapter unloaded when
``gate.unload_retired``); the live model is not touched. A passing one becomes
the canary at ``gate.canary_weight`` when that is above 0, else it is promoted.

A candidate whose adapter the model server refuses is rejected with the reason
"adapter did not load: …" (:func:`reject_unloadable`) — before it was evaluated
(the pipeline's evaluate step), or when deploying it for the canary or the
promotion fails here. It never takes traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from config.errors import Conflict
from config.settings import Settings
from feedback.versions import ModelVersion, get_version, live_version
from trainer import deploy, registry
from trainer.evaluation.metrics import METRIC_LABELS

# Scores are rounded to 6 places; a delta exactly at the margin must pass.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Verdict:
    """``passed``, the reasons it failed (empty when it passed), and each check with its numbers."""

    passed: bool
    reasons: list[str]
    checks: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**self.settings, "passed": self.passed, "checks": self.checks}


@dataclass(frozen=True)
class GateOutcome:
    """What :func:`apply` did: ``promoted``, ``canary`` or ``rejected``, and the version afterwards."""

    action: str
    version: ModelVersion
    reasons: list[str]


def _check(suite: str, entry: dict | None, metric: str, kind: str, bound: float) -> tuple[dict, str | None]:
    label = METRIC_LABELS[metric]
    check: dict = {"suite": suite, "metric": metric, "rule": kind, "bound": bound}
    if not entry or not entry.get("rows"):
        check["ok"] = False
        return (
            check,
            f"{suite}: no rows to compare, so the candidate cannot show it is {'better' if kind == 'margin' else 'not worse'}",
        )
    cand, inc = entry["candidate"][metric], entry["incumbent"][metric]
    delta = cand - inc
    ok = delta >= bound - _EPSILON if kind == "margin" else delta >= -bound - _EPSILON
    check.update(candidate=cand, incumbent=inc, delta=round(delta, 6), rows=entry["rows"], ok=ok)
    numbers = f"candidate {label} {cand:.3f} vs live {inc:.3f} ({delta:+.3f})"
    if ok:
        return check, None
    if kind == "margin":
        return check, f"{suite}: {numbers}; it must be better by at least {bound:.3f}"
    return check, f"{suite}: {numbers}; it may drop at most {bound:.3f}"


def decide(evaluation: Any, settings: Settings) -> Verdict:
    """The verdict for an evaluation (anything with ``.metrics`` per suite, or that dict itself)."""
    metrics = evaluation if isinstance(evaluation, dict) else evaluation.metrics
    g = settings.gate
    checks, reasons = [], []
    for suite, kind, bound in (
        ("corrections", "margin", g.correction_margin),
        ("golden", "tolerance", g.golden_tolerance),
    ):
        check, reason = _check(suite, metrics.get(suite), g.metric, kind, bound)
        checks.append(check)
        if reason:
            reasons.append(reason)
    gate_settings = {
        "metric": g.metric,
        "correction_margin": g.correction_margin,
        "golden_tolerance": g.golden_tolerance,
    }
    return Verdict(passed=not reasons, reasons=reasons, checks=checks, settings=gate_settings)


def apply(db: Database, settings: Settings, evaluation: Any, *, actor: str = "gate") -> GateOutcome:
    """Act on a stored evaluation's verdict: reject, start a canary, or promote (see the module docstring).

    Raises :class:`Conflict` when a passing evaluation was made against a version
    that is no longer live: the comparison no longer says anything about what it
    would replace, so evaluate again.
    """
    candidate = get_version(db, evaluation.candidate_id)
    if not evaluation.passed:
        rejected = registry.reject(db, candidate, evaluation.reasons, actor, evaluation_id=evaluation.id)
        deploy.withdraw(db, settings, rejected, actor=actor)
        return GateOutcome("rejected", rejected, list(evaluation.reasons))
    live = live_version(db)
    if live is None or live.id != evaluation.incumbent_id:
        raise Conflict(
            f"evaluation {evaluation.id} compared {candidate.name} with {evaluation.incumbent_id}, but "
            f"{live.name if live else 'nothing'} is live now; evaluate again against live"
        )
    reason = f"passed the gate in evaluation {evaluation.id}"
    weight = settings.gate.canary_weight
    try:
        if weight > 0:
            version = deploy.start_canary(
                db, settings, candidate, weight, actor=actor, reason=reason, evaluation_id=evaluation.id
            )
            return GateOutcome("canary", version, [])
        version = deploy.promote(db, settings, candidate, actor=actor, reason=reason, evaluation_id=evaluation.id)
        return GateOutcome("promoted", version, [])
    except deploy.AdapterRefused as exc:  # e.g. the model server restarted and now refuses it
        return reject_unloadable(db, settings, candidate, exc.reason, actor=actor, evaluation_id=evaluation.id)


def reject_unloadable(
    db: Database,
    settings: Settings,
    candidate: ModelVersion | str,
    reason: str,
    *,
    actor: str = "gate",
    evaluation_id: str | None = None,
) -> GateOutcome:
    """Reject a candidate whose adapter the model server refused ("adapter did not load: …"); idempotent."""
    rejected = deploy.reject_unloadable(db, settings, candidate, reason, actor=actor, evaluation_id=evaluation_id)
    return GateOutcome("rejected", rejected, [f"{deploy.LOAD_FAILED}: {reason}"])
