"""Answer-versus-reference scores, all on a 0..1 scale, that work for Korean as well as English.

- **exact_match** — 1 when the texts are equal after Unicode NFKC, removing
  invisible format characters and collapsing whitespace; case and punctuation
  count (a golden answer must come back word for word, and "3,000 won" is not
  "3000 won").
- **token_f1** — SQuAD-style bag-of-tokens F1 over :func:`tokens`.
- **rouge_l** — ROUGE-L F-measure (Lin 2004: β = 1, longest common token
  subsequence over :func:`tokens`), computed here: it is one dynamic program, and
  Google's ``rouge-score`` (no release since 2022) pulled nltk, absl-py and six for
  it while its default tokenizer drops every Hangul character. The values matched
  ``rouge-score`` 0.1.2 fed the same tokenizer when this was written;
  ``tests/test_evaluation.py`` checks values worked out by hand.
- **chrf** — chrF from ``sacrebleu`` (character 6-grams, β = 2, whitespace
  ignored), divided by 100. It needs no tokenizer, gives partial credit for a
  changed particle or ending (배송비는 / 배송비가), and ignores spacing, which
  Korean writers vary freely — the gate's default metric for those reasons.

Tokens (:func:`tokens`): the text is NFKC-normalized and case-folded; Latin,
digits and other spaced scripts give one token per word (punctuation dropped);
Hangul, kana and Han characters give one token *per character*. A Korean word
(eojeol) glues a noun to its particle — 배송비는, 배송비가, 배송비를 are three
"words" — so word tokens would score a one-particle change as a total miss;
characters are what KorQuAD's official evaluation script compares for F1 as well.

Two empty texts are a perfect match for every metric; one empty text scores 0.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Sequence

import numpy as np
from sacrebleu.metrics import CHRF

METRICS = ("exact_match", "token_f1", "rouge_l", "chrf")
METRIC_LABELS = {"exact_match": "exact", "token_f1": "token F1", "rouge_l": "ROUGE-L", "chrf": "chrF"}

# Scripts written without spaces between words, or (Hangul) with particles glued to words.
_CHAR_SCRIPTS = "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CHAR_SCRIPTS}]|[^\W_{_CHAR_SCRIPTS}]+")
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, invisible format characters (zero-width space, BOM, soft hyphen) removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text or "")
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return _SPACE.sub(" ", text).strip()


def tokens(text: str) -> list[str]:
    """Word tokens, with one token per Hangul/kana/Han character (see the module docstring)."""
    return _TOKEN.findall(normalize(text).casefold())


_CHRF = CHRF()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalized texts are equal, else 0.0."""
    return 1.0 if normalize(prediction) == normalize(reference) else 0.0


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall (tokens counted with multiplicity)."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (one row of the table at a time)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: harmonic mean of LCS precision and recall over :func:`tokens`."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = lcs_length(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def chrf(prediction: str, reference: str) -> float:
    """sacrebleu's sentence chrF, on a 0..1 scale."""
    pred, ref = normalize(prediction), normalize(reference)
    if pred == ref:
        return 1.0  # also covers two empty texts, which sacrebleu scores 0
    return _CHRF.sentence_score(pred, [ref]).score / 100


_FUNCTIONS = {"exact_match": exact_match, "token_f1": token_f1, "rouge_l": rouge_l, "chrf": chrf}


def score(prediction: str, reference: str) -> dict[str, float]:
    """Every metric of one answer, by name."""
    return {name: round(float(_FUNCTIONS[name](prediction, reference)), 6) for name in METRICS}


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    """The per-metric mean of several :func:`score` results (0 for each metric when there are none)."""
    if not rows:
        return {name: 0.0 for name in METRICS}
    return {name: round(sum(r[name] for r in rows) / len(rows), 6) for name in METRICS}


# Resamples of the paired bootstrap, and its seed: the same scores always give the same interval.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def paired_interval(candidate: Sequence[float], incumbent: Sequence[float], confidence: float) -> tuple[float, float]:
    """The paired bootstrap interval of mean(candidate) − mean(incumbent) over the same questions.

    The questions are resampled with replacement :data:`BOOTSTRAP_RESAMPLES` times, each time keeping a question's
    two scores together (Koehn 2004's paired bootstrap, the one sacrebleu runs for corpus scores, here on the mean
    of per-question scores), and the middle ``confidence`` share of the resampled differences is the interval. Few
    questions, or scores that move in both directions, give a wide interval: a difference inside it may be noise.
    """
    differences = np.asarray(candidate, dtype=float) - np.asarray(incumbent, dtype=float)
    if differences.size == 0:
        raise ValueError("no questions to compare")
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    picks = rng.integers(0, differences.size, size=(BOOTSTRAP_RESAMPLES, differences.size))
    means = differences[picks].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return round(float(low), 6), round(float(high), 6)


def view_metrics(entry: dict | None) -> dict[str, dict]:
    """One suite's metrics by view (``closed_book``, ``as_served``); an evaluation stored before there were views
    asked every question closed book, so its metrics are that view's."""
    if not entry:
        return {}
    return {"closed_book": entry} if "rows" in entry else entry
