"""An optional LLM judge: any configured OpenAI-protocol model scores each pair of answers.

The judge sees the question, the reference answer and the two answers as "A" and
"B", and replies with JSON ``{"a": 1-5, "b": 1-5}``. Which model is A alternates
with a hash of the question, so a judge that prefers the first answer it reads
(position bias, well documented for LLM judges) favours neither model overall.
Scores are shown next to the metrics and stored; they never decide the gate — a
judge is another model with its own mistakes, and the gate must be reproducible.
A reply that cannot be read is counted as unscored, not guessed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from config.errors import UpstreamError
from config.settings import Settings
from modelclient.chat import ChatClient, Target
from trainer.evaluation.suites import Case

# A judge reply is a small JSON object; the room is for judges that think aloud first.
JUDGE_MAX_TOKENS = 300

SYSTEM_PROMPT = (
    "You grade answers of a customer-support assistant. For the question below you get the reference answer, "
    "which is correct, and two candidate answers, A and B. Score each candidate from 1 to 5: 5 = says the same "
    "as the reference (wording may differ), 3 = partly right or missing something important, 1 = wrong, "
    "unrelated or harmful. Judge correctness against the reference, not style or length. Reply with JSON only, "
    'like {"a": 4, "b": 2}.'
)
_JSON = re.compile(r"\{[^{}]*\}")


@dataclass(frozen=True)
class JudgeScore:
    """One pair judged: each model's score (None when the reply could not be read) and the error, if any."""

    candidate: int | None
    incumbent: int | None
    error: str | None = None

    def to_dict(self) -> dict:
        return {"candidate": self.candidate, "incumbent": self.incumbent, "error": self.error}


def judge_target(settings: Settings) -> Target | None:
    """The configured judge model, or None when ``evaluation.judge_name`` is empty."""
    ev = settings.evaluation
    if not ev.judge_name:
        return None
    return Target(ev.judge_name, ev.judge_base_url, ev.judge_api_key())


def candidate_first(case: Case) -> bool:
    """Whether the candidate is shown as "A" for this question (half the questions each way)."""
    return hashlib.sha256(f"{case.suite}:{case.question}".encode()).digest()[0] % 2 == 0


def judge_messages(case: Case, first: str, second: str) -> list[dict]:
    """The chat messages the judge gets for one pair."""
    text = (
        f"Question:\n{case.question}\n\nReference answer:\n{case.reference}\n\n"
        f"Answer A:\n{first}\n\nAnswer B:\n{second}"
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]


def parse_reply(text: str) -> tuple[int, int] | None:
    """(score A, score B) from the judge's reply, or None when it holds no valid scores."""
    for match in _JSON.finditer(text or ""):
        try:
            data = {str(k).lower(): v for k, v in json.loads(match.group(0)).items()}
        except (ValueError, AttributeError):
            continue
        a, b = data.get("a"), data.get("b")
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and 1 <= v <= 5 for v in (a, b)):
            return round(a), round(b)
    return None


def judge_pair(client: ChatClient, target: Target, case: Case, candidate: str, incumbent: str) -> JudgeScore:
    """Ask the judge about one pair of answers."""
    first = candidate_first(case)
    a, b = (candidate, incumbent) if first else (incumbent, candidate)
    try:
        reply = client.complete([target], judge_messages(case, a, b), temperature=0.0, max_tokens=JUDGE_MAX_TOKENS)
    except UpstreamError as exc:
        return JudgeScore(None, None, exc.message)
    scores = parse_reply(reply.text)
    if scores is None:
        return JudgeScore(None, None, f"unreadable judge reply: {reply.text[:200]!r}")
    return JudgeScore(scores[0], scores[1]) if first else JudgeScore(scores[1], scores[0])


def summarize(scores: list[JudgeScore]) -> dict:
    """Per-suite judge summary: mean score of each model, and the candidate's wins, ties and losses."""
    scored = [s for s in scores if s.candidate is not None and s.incumbent is not None]
    summary = {
        "rows": len(scores),
        "scored": len(scored),
        "candidate_mean": None,
        "incumbent_mean": None,
        "wins": sum(s.candidate > s.incumbent for s in scored),
        "ties": sum(s.candidate == s.incumbent for s in scored),
        "losses": sum(s.candidate < s.incumbent for s in scored),
    }
    if scored:
        summary["candidate_mean"] = round(sum(s.candidate for s in scored) / len(scored), 3)
        summary["incumbent_mean"] = round(sum(s.incumbent for s in scored) / len(scored), 3)
    return summary
