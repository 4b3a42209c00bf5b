"""Personal data out of the weekly report: what users typed is masked before any format is rendered.

The report travels further than the admin pages — mailed, posted to a chat
channel, attached as JSON — so the sections that quote users (the worst-answered
questions with their answers, comments and suggested corrections, and the week's
comments, and the reviewed questions quoted under "What changed") go through the
same masker as training data (:mod:`feedback.pii`, with ``dataset.pii_allowlist``).
HTML, Markdown, JSON, the e-mail and the webhook are all rendered from the masked dict,
so none of them can carry what it removed.
"""

from __future__ import annotations

from collections import Counter

from feedback.pii import PiiMasker

USER_TEXT_SECTIONS = ("worst", "comments", "changes")
# Inside those sections these are ids, times, settings or model names, never user text (and a random id
# can hold a digit run that a number rule would take for an account).
_NOT_USER_TEXT = frozenset(
    {"message_ids", "model_version", "model_version_id", "id", "since", "until", "at", "options", "model", "reason"}
    # "What changed": the people who changed things and what they changed are staff-facing, not user text.
    | {"who", "via", "action", "description", "subject", "counts", "people", "total", "listed"}
)
# Question keys are user text normalized for grouping: punctuation gone, so "203.0.113.45" is "203011345"
# and no rule can recognise it. The report only needs to tell keys apart, so each becomes a label (q1, q2, …).
_KEY_FIELDS = frozenset({"question_key", "keys", "key"})


def mask_report(report: dict, masker: PiiMasker) -> Counter:
    """Mask every user text in ``report`` in place; returns how many values of each type were masked."""
    masking = _Masking(masker)
    for section in USER_TEXT_SECTIONS:
        if report.get(section) is not None:
            report[section] = masking.walk(report[section])
    return masking.counts


class _Masking:
    def __init__(self, masker: PiiMasker):
        self.masker = masker
        self.counts: Counter = Counter()
        self.labels: dict[str, str] = {}

    def label(self, key: str) -> str:
        return self.labels.setdefault(key, f"q{len(self.labels) + 1}")

    def walk(self, value, field: str | None = None):
        if field in _NOT_USER_TEXT:
            return value
        if isinstance(value, str):
            if field in _KEY_FIELDS:
                return self.label(value)
            result = self.masker.mask(value)
            self.counts.update(result.counts)
            return result.text
        if isinstance(value, list):
            return [self.walk(item, field) for item in value]
        if isinstance(value, dict):
            return {key: self.walk(item, key) for key, item in value.items()}
        return value
