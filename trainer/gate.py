"""The gate: does a candidate replace the live model?

An evaluation asks both models every question two ways (``trainer/evaluation/run.py``): *closed book*, the
model alone — what fine-tuning taught it — and *as served*, with the knowledge-base entries the gateway would
give it — what users get. Approved corrections are served through the knowledge base the moment they are
approved, so as served the live model already answers them; only closed book shows whether training
consolidated them. The rule (``[gate]`` settings, metric ``gate.metric``, all on a 0..1 scale):

1. **learned the corrections** — on ``corrections``, closed book, the candidate must beat the live model by at
   least ``correction_margin``: fixing what users reported is the reason to retrain;
2. **not worse for users** — on ``golden`` and ``reworded`` (when that suite is run), as served, it must not
   score below the live model by more than ``tolerance``: the fixes must not cost answers users get today, in
   the FAQ's words or in their own.

Each check also looks at the paired bootstrap interval of the candidate-minus-live difference
(``gate.confidence``, 95 % by default; ``metrics.paired_interval``), so that a difference the questions cannot
tell from noise decides nothing — a difference of 0.02 over three questions is noise:

- *learned*: **passes** when the difference is at least the margin and the whole interval is above zero;
  **fails** when even the interval's top is below the margin; otherwise it is **too close to tell**;
- *not worse*: **passes** when the difference is within the tolerance; **fails** when it drops more than the
  tolerance and the whole interval is below zero (the drop is real); otherwise it is **too close to tell**.

The verdict is *passed* when every check passes, *failed* when any fails, else *inconclusive*. A suite without
rows fails its check (nothing was shown). A check takes its
preferred view when the evaluation has it (the other one otherwise: an evaluation run with one view, or stored
before there were views, which was closed book); an evaluation stored without intervals counts its difference
as exact. The test split and ``corrections_reworded`` are reported, not gated. The default metric is chrF:
exact match is all-or-nothing and punishes a correct answer in other words as hard as a wrong one, and a
7-billion-parameter model seldom repeats a reference word for word; chrF moves with every character that is
right, needs no tokenizer for Korean and ignores spacing.

Example with the defaults (chrF, margin 0.02, tolerance 0.01): corrections closed book, live 0.728 and
candidate 1.000 (+0.272, interval +0.133 to +0.404: passes); golden as served, live 0.550 and candidate 0.564
(+0.014: passes); reworded as served, live 0.160 and candidate 0.156 (−0.004, within 0.01: passes) → passed.
Had reworded dropped to 0.140 (−0.020) with an interval of −0.066 to +0.025, the verdict would be inconclusive:
"reworded (as served): … too few questions to tell whether it dropped more than 0.010".

:func:`decide` is pure; :func:`apply` acts on the verdict: a failed candidate is
marked ``rejected`` with the reasons (and its adapter unloaded when
``gate.unload_retired``); an inconclusive one is **held** — left a candidate, neither promoted nor rejected,
for a person to promote or retire; the live model is not touched. A passing one becomes
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
from trainer.evaluation.metrics import METRIC_LABELS, view_metrics

# Scores are rounded to 6 places; a bound exactly at the bar must pass.
_EPSILON = 1e-9
VIEW_WORDS = {"closed_book": "closed book", "as_served": "as served"}
# (suite, views in order of preference, rule, the [gate] setting that is its bar)
CHECKS = (
    ("corrections", ("closed_book", "as_served"), "better", "correction_margin"),
    ("golden", ("as_served", "closed_book"), "not_worse", "tolerance"),
    ("reworded", ("as_served", "closed_book"), "not_worse", "tolerance"),
)
OUTCOMES = ("passed", "failed", "inconclusive")


@dataclass(frozen=True)
class Verdict:
    """``outcome`` (passed, failed, inconclusive), ``passed``, the reasons it did not pass, and each check with its
    numbers."""

    passed: bool
    reasons: list[str]
    checks: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    outcome: str = "passed"

    def to_dict(self) -> dict:
        return {**self.settings, "passed": self.passed, "outcome": self.outcome, "checks": self.checks}


@dataclass(frozen=True)
class GateOutcome:
    """What :func:`apply` did: ``promoted``, ``canary``, ``rejected`` or ``held``, and the version afterwards."""

    action: str
    version: ModelVersion
    reasons: list[str]


def _check(suite: str, entry: dict | None, prefer: tuple[str, ...], metric: str, rule: str, bar: float, settings):
    label = METRIC_LABELS[metric]
    views = view_metrics(entry)
    view = next((v for v in prefer if v in views), prefer[0])
    data = views.get(view) or {}
    check: dict = {"suite": suite, "view": view, "metric": metric, "rule": rule, "bound": bar}
    where = f"{suite} ({VIEW_WORDS[view]})"
    if not data.get("rows"):
        check.update(ok=False, result="failed")
        shown = "better" if rule == "better" else "not worse"
        return check, f"{where}: no rows to compare, so the candidate cannot show it is {shown}"
    cand, inc = data["candidate"][metric], data["incumbent"][metric]
    delta = cand - inc
    low, high = (data.get("interval") or {}).get(metric) or (delta, delta)
    result = _result(rule, bar, delta, low, high)
    check.update(
        candidate=cand,
        incumbent=inc,
        delta=round(delta, 6),
        interval=[low, high],
        rows=data["rows"],
        ok=result == "passed",
        result=result,
    )
    confidence = data.get("confidence", settings.confidence)
    numbers = (
        f"candidate {label} {cand:.3f} vs live {inc:.3f} ({delta:+.3f}; {confidence:.0%} interval "
        f"{low:+.3f} to {high:+.3f} over {data['rows']} question{'s' if data['rows'] != 1 else ''})"
    )
    if result == "passed":
        return check, None
    if result == "failed":
        need = f"it must be better by at least {bar:.3f}" if rule == "better" else f"it may drop at most {bar:.3f}"
        return check, f"{where}: {numbers}; {need}"
    doubt = f"is better by at least {bar:.3f}" if rule == "better" else f"dropped more than {bar:.3f}"
    return check, f"{where}: {numbers}; too few questions to tell whether it {doubt}"


def _result(rule: str, bar: float, delta: float, low: float, high: float) -> str:
    """passed, failed or unclear: the difference decides the direction, its interval whether that may be noise."""
    if rule == "better":
        if delta >= bar - _EPSILON and low > _EPSILON:
            return "passed"  # better by the margin, and the interval excludes no improvement at all
        return "failed" if high < bar - _EPSILON else "unclear"
    if delta >= -bar - _EPSILON:
        return "passed"  # within the tolerance
    return "failed" if high < -_EPSILON else "unclear"  # a drop beyond it: real only if the interval excludes 0


def decide(evaluation: Any, settings: Settings, checks_to_run: tuple = CHECKS) -> Verdict:
    """The verdict for an evaluation (anything with ``.metrics`` per suite and ``.suites``, or that dict itself).

    ``checks_to_run`` are (suite, views by preference, rule, bar) like :data:`CHECKS`; a bar is the name of a
    ``[gate]`` setting or the number itself (``tuneloop migrate`` gates every suite against the model it
    replaces with ``migrate.tolerance``)."""
    metrics = evaluation if isinstance(evaluation, dict) else evaluation.metrics
    run = list(metrics) if isinstance(evaluation, dict) else list(evaluation.suites)
    g = settings.gate
    checks, reasons = [], []
    for suite, prefer, rule, key in checks_to_run:
        if suite == "reworded" and suite not in run:
            continue  # an optional suite: gated when it is run
        bar = key if isinstance(key, (int, float)) else getattr(g, key)
        check, reason = _check(suite, metrics.get(suite), prefer, g.metric, rule, bar, g)
        checks.append(check)
        if reason:
            reasons.append(reason)
    results = {c["result"] for c in checks}
    outcome = "failed" if "failed" in results else "inconclusive" if "unclear" in results else "passed"
    gate_settings = {
        "metric": g.metric,
        "correction_margin": g.correction_margin,
        "tolerance": g.tolerance,
        "confidence": g.confidence,
    }
    return Verdict(passed=outcome == "passed", reasons=reasons, checks=checks, settings=gate_settings, outcome=outcome)


def outcome_of(evaluation: Any) -> str:
    """passed, failed or inconclusive: what the gate said of a stored evaluation (older ones: passed or failed)."""
    return (evaluation.gate or {}).get("outcome") or ("passed" if evaluation.passed else "failed")


def apply(db: Database, settings: Settings, evaluation: Any, *, actor: str = "gate") -> GateOutcome:
    """Act on a stored evaluation's verdict: reject, hold, start a canary, or promote (see the module docstring).

    Raises :class:`Conflict` when a passing evaluation was made against a version
    that is no longer live: the comparison no longer says anything about what it
    would replace, so evaluate again.
    """
    candidate = get_version(db, evaluation.candidate_id)
    if outcome_of(evaluation) == "inconclusive":  # neither better nor worse beyond doubt: a person decides
        return GateOutcome("held", candidate, list(evaluation.reasons))
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
