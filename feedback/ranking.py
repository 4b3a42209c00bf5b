"""Worst-answered questions: which questions a model version answers worst, with the evidence.

Raw thumbs-down counts mislead: two angry votes on a rare question would beat
forty out of a hundred on a common one. So a group of questions is scored by the
**lower bound of the Wilson score interval** on its thumbs-down share — the
share we can be confident of given how many votes there are:

    lower = (p + z²/2n − z·√(p(1−p)/n + z²/4n²)) / (1 + z²/n)

with n votes, p = down/n and z from ``report.confidence`` (1.96 for 95 %).
Groups with fewer than ``report.min_votes`` votes are not ranked at all; ties
go to the group asked more often. ``docs/reports.md`` has a worked example.

How it stays fast (``bench/analytics.py``): every answer row carries the
normalized key of the question it replied to (``messages.question_key``, written
by ``record_turn``), and every vote a copy of its answer's version, time and key
(filled by a trigger, migration m002). So the per-question counts are two
index-only ``GROUP BY`` scans, on ``messages_version_time_question`` and
``feedback_version_answered``, with no join. Questions that differ only in
numbers are merged first; near-duplicate grouping then runs in Python only over
distinct keys that got at least one vote in the window (a phrasing nobody rated
joins no group, so a group's volume counts its rated phrasings' answers), and
the evidence (answers, comments, reasons, corrections) is read only for the top
N groups.

Grouping is leader clustering: keys are taken most-voted first; each joins the
most similar existing leader at or above ``report.similarity_threshold``
(:func:`feedback.text.similarity`), or becomes a leader itself. Comparing with
leaders only, never chaining through members, keeps a group from drifting
("A≈B≈C" but "A≠C"). Candidate leaders are found by prefix filtering (Bayardo et
al., "Scaling up all pairs similarity search", 2007): two n-gram sets with
Jaccard ≥ t share one of their rarest ``|x| − ⌈t·|x|⌉ + 1`` n-grams, so only
those are indexed and probed.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

from sqlite_utils import Database

from config.errors import NotFound, ValidationFailed
from feedback import versions
from feedback.knowledge import lineage, store
from feedback.sql import flag, in_list
from feedback.text import fold_numbers, ngrams, question_key


@dataclass(frozen=True)
class RankingOptions:
    """What to rank and how; defaults match ``[report]`` in config/default.toml."""

    min_votes: int = 5
    top_n: int = 20
    similarity_threshold: float = 0.45
    confidence: float = 0.95

    def __post_init__(self):
        if self.min_votes < 1:
            raise ValidationFailed("min_votes must be >= 1", field="min_votes")
        if self.top_n < 1:
            raise ValidationFailed("top_n must be >= 1", field="top_n")
        if not 0 < self.similarity_threshold <= 1:
            raise ValidationFailed("similarity_threshold must be in (0, 1]", field="similarity_threshold")
        if not 0 < self.confidence < 1:
            raise ValidationFailed("confidence must be in (0, 1)", field="confidence")

    @classmethod
    def from_settings(cls, report_settings, **overrides) -> "RankingOptions":
        """Options from a ``ReportSettings``; keyword overrides that are None are ignored."""
        values = {
            "min_votes": report_settings.min_votes,
            "top_n": report_settings.top_n,
            "similarity_threshold": report_settings.similarity_threshold,
            "confidence": report_settings.confidence,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def z(self) -> float:
        """The two-sided normal quantile for ``confidence`` (1.95996… for 0.95)."""
        return NormalDist().inv_cdf(0.5 + self.confidence / 2)


@dataclass
class Evidence:
    """What a reviewer needs to judge a group: what was answered, and what users said."""

    answers: list[dict] = field(default_factory=list)  # {"answer", "up", "down"}, most down-voted first
    comments: list[dict] = field(default_factory=list)  # {"comment", "reason", "question", "at"}, newest first
    reasons: dict[str, int] = field(default_factory=dict)  # reason of each thumbs-down → count
    corrections: list[dict] = field(default_factory=list)  # {"correction", "count"}, most suggested first
    variants: list[dict] = field(default_factory=list)  # {"question", "key", "votes"}: phrasings in the group
    message_ids: list[str] = field(default_factory=list)  # down-voted answers, newest first
    # Knowledge-base entries the down-voted answers were built on (rank 1): {"id", "question", "down"}, most first.
    entries: list[dict] = field(default_factory=list)


@dataclass
class QuestionGroup:
    """Near-duplicate questions scored together."""

    question: str  # the most voted phrasing, as a user typed it
    question_key: str  # the leader's normalized key
    keys: list[str]
    asked: int  # answers in the window to the group's phrasings (the volume that breaks ties)
    votes: int
    down: int
    score: float  # Wilson lower bound of the thumbs-down share
    evidence: Evidence | None = None

    @property
    def up(self) -> int:
        return self.votes - self.down

    @property
    def down_share(self) -> float:
        return self.down / self.votes if self.votes else 0.0

    def to_dict(self) -> dict:
        """JSON-ready form, with the derived numbers included."""
        data = asdict(self)
        data.update(up=self.up, down_share=round(self.down_share, 4), score=round(self.score, 4))
        return data


@dataclass
class Ranking:
    """The top groups for one model version and window, and how many were considered."""

    model_version_id: str
    since: str
    until: str
    options: RankingOptions
    groups: list[QuestionGroup]
    distinct_questions: int  # distinct keys answered in the window
    rated_questions: int  # of those, keys with at least one vote
    candidate_groups: int  # groups with at least min_votes votes

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "model_version_id": self.model_version_id,
            "since": self.since,
            "until": self.until,
            "options": asdict(self.options),
            "distinct_questions": self.distinct_questions,
            "rated_questions": self.rated_questions,
            "candidate_groups": self.candidate_groups,
            "groups": [g.to_dict() for g in self.groups],
        }


def version_to_rank(db: Database, version_id: str | None) -> versions.ModelVersion:
    """The version ``version_id``, or the live one when it is None; :class:`NotFound` otherwise."""
    if version_id is None:
        live = versions.live_version(db)
        if live is None:
            raise NotFound("no live model version yet; name a model version id")
        return live
    return versions.get_version(db, version_id)


def wilson_lower_bound(down: int, votes: int, z: float = 1.959963984540054) -> float:
    """Lower bound of the Wilson score interval for ``down`` successes in ``votes`` trials."""
    if votes <= 0:
        return 0.0
    p = down / votes
    z2 = z * z
    centre = p + z2 / (2 * votes)
    margin = z * math.sqrt(p * (1 - p) / votes + z2 / (4 * votes * votes))
    return max(0.0, (centre - margin) / (1 + z2 / votes))


def rank_worst(
    db: Database,
    *,
    model_version_id: str,
    since: str,
    until: str,
    options: RankingOptions | None = None,
    with_evidence: bool = True,
) -> Ranking:
    """The worst-answered question groups of ``model_version_id`` for answers in [since, until).

    ``since``/``until`` are ISO-8601 UTC strings as stored (``2026-11-16T15:00:00.000Z``).
    Only answers written by that version count: a question answered by an older
    version in the same window is not charged to this one.
    """
    options = options or RankingOptions()
    asked, votes, downs = _counts(db, model_version_id, since, until)
    rated = [key for key in votes if votes[key] > 0]
    # Keys that differ only in numbers are one question; they are merged before the
    # similarity pass, which then compares far fewer strings.
    by_shape: dict[str, list[str]] = defaultdict(list)
    for key in rated:
        by_shape[fold_numbers(key)].append(key)
    shape_votes = {shape: sum(votes[k] for k in keys) for shape, keys in by_shape.items()}
    shapes = sorted(by_shape, key=lambda s: (-shape_votes[s], s))
    groups = []
    z = options.z
    for member_shapes in cluster_keys(shapes, options.similarity_threshold).values():
        members = sorted((k for shape in member_shapes for k in by_shape[shape]), key=lambda k: (-votes[k], k))
        leader = members[0]
        n = sum(votes[k] for k in members)
        if n < options.min_votes:
            continue
        d = sum(downs[k] for k in members)
        groups.append(
            QuestionGroup(
                question=leader,
                question_key=leader,
                keys=members,
                asked=sum(asked.get(k, 0) for k in members),
                votes=n,
                down=d,
                score=wilson_lower_bound(d, n, z),
            )
        )
    groups.sort(key=lambda g: (-g.score, -g.asked, -g.down, g.question_key))
    top = groups[: options.top_n]
    if with_evidence and top:
        _attach_evidence(db, top, model_version_id, since, until)
    return Ranking(
        model_version_id=model_version_id,
        since=since,
        until=until,
        options=options,
        groups=top,
        distinct_questions=len(asked),
        rated_questions=len(rated),
        candidate_groups=len(groups),
    )


def _counts(db: Database, version: str, since: str, until: str) -> tuple[Counter, Counter, Counter]:
    """Per question key: answers, votes and thumbs-down in the window (two index-only scans)."""
    window = {"version": version, "since": since, "until": until}
    asked: Counter = Counter()
    for key, n in db.execute(
        """SELECT question_key, COUNT(*) FROM messages
           WHERE model_version_id = :version AND created_at >= :since AND created_at < :until AND error IS NULL
           GROUP BY question_key""",
        window,
    ):
        asked[key] = n
    votes: Counter = Counter()
    downs: Counter = Counter()
    # feedback carries its answer's version, time and key (migration m002), so no join.
    for key, n, d in db.execute(
        f"""SELECT question_key, COUNT(*), SUM({flag("rating < 0")}) FROM feedback
           WHERE model_version_id = :version AND answered_at >= :since AND answered_at < :until
           GROUP BY question_key""",
        window,
    ):
        votes[key] = n
        downs[key] = d
    if None in asked or None in votes:
        _count_unkeyed(db, window, asked, votes, downs)
    return asked, votes, downs


def _count_unkeyed(db: Database, window: dict, asked: Counter, votes: Counter, downs: Counter) -> None:
    # Rows written without a key (by a bulk import that bypassed record_turn) are
    # keyed here from their question text, so they are ranked rather than lost.
    for counter in (asked, votes, downs):
        counter.pop(None, None)
    rows = db.execute(
        f"""SELECT u.content, {flag("a.error IS NULL")}, COUNT(f.id), COALESCE(SUM({flag("f.rating < 0")}), 0)
           FROM messages a
           JOIN messages u ON u.conversation_id = a.conversation_id AND u.seq = a.seq - 1
           LEFT JOIN feedback f ON f.message_id = a.id
           WHERE a.model_version_id = :version AND a.created_at >= :since AND a.created_at < :until
             AND a.question_key IS NULL
           GROUP BY a.id, u.content, a.error""",  # one u per a: PostgreSQL wants every selected column grouped
        window,
    )
    for text, answered, n, d in rows:
        key = question_key(text)
        asked[key] += answered
        if n:
            votes[key] += n
            downs[key] += d


def cluster_keys(keys: list[str], threshold: float) -> dict[str, list[str]]:
    """Group ``keys`` (most important first) into leader → members, leaders included first.

    Each key joins the most similar leader with similarity ≥ ``threshold``,
    or leads a new group. See the module docstring for why leaders only.
    """
    if threshold >= 1.0:
        return {key: [key] for key in keys}
    grams = [ngrams(key) for key in keys]
    # Rarest n-grams first: the prefix each key is indexed and probed by.
    frequency = Counter(g for gs in grams for g in gs)
    rank = {g: i for i, (g, _) in enumerate(sorted(frequency.items(), key=lambda kv: (kv[1], kv[0])))}
    groups: dict[str, list[str]] = {}
    index: dict[str, list[tuple[str, frozenset]]] = defaultdict(list)
    for key, key_grams in zip(keys, grams, strict=False):
        size = len(key_grams)
        prefix = sorted(key_grams, key=rank.__getitem__)[: size - math.ceil(threshold * size) + 1]
        best, best_sim = None, threshold
        seen: set[str] = set()
        for gram in prefix:
            for leader, leader_grams in index.get(gram, ()):
                if leader in seen:
                    continue
                seen.add(leader)
                shared = len(key_grams & leader_grams)
                sim = shared / (size + len(leader_grams) - shared)
                if sim >= best_sim and (best is None or sim > best_sim or leader < best):
                    best, best_sim = leader, sim
        if best is None:
            groups[key] = [key]
            for gram in prefix:
                index[gram].append((key, key_grams))
        else:
            groups[best].append(key)
    return groups


def _attach_evidence(db: Database, groups: list[QuestionGroup], version: str, since: str, until: str) -> None:
    leader_of = {key: g.question_key for g in groups for key in g.keys}
    by_leader = {g.question_key: g for g in groups}
    in_keys, keys = in_list(db, "f.question_key", leader_of, name="keys")
    rows = db.execute(
        f"""SELECT a.id, f.question_key, u.content, a.content, f.rating, f.reason, f.comment, f.correction,
                  f.updated_at
           FROM feedback f
           JOIN messages a ON a.id = f.message_id
           JOIN messages u ON u.conversation_id = a.conversation_id AND u.seq = a.seq - 1
           WHERE f.model_version_id = :version AND f.answered_at >= :since AND f.answered_at < :until
             AND {in_keys}
           ORDER BY f.updated_at DESC""",
        {"version": version, "since": since, "until": until, **keys},
    ).fetchall()
    collected: dict[str, dict] = {
        leader: {
            "answers": {},
            "comments": [],
            "reasons": Counter(),
            "corrections": Counter(),
            "variants": Counter(),
            "ids": [],
            "down_ids": [],
        }
        for leader in by_leader
    }
    for msg_id, key, question, answer, rating, reason, comment, correction, at in rows:
        bucket = collected[leader_of[key]]
        bucket["variants"][(key, question.strip())] += 1
        tally = bucket["answers"].setdefault(answer, [0, 0])
        tally[0 if rating > 0 else 1] += 1
        if rating < 0:
            bucket["down_ids"].append(msg_id)
            bucket["reasons"][reason or "no reason given"] += 1
            if len(bucket["ids"]) < 50:
                bucket["ids"].append(msg_id)
        if comment and comment.strip():
            bucket["comments"].append(
                {"comment": comment.strip(), "reason": reason, "rating": rating, "question": question, "at": at}
            )
        if correction and correction.strip():
            bucket["corrections"][correction.strip()] += 1
    for leader, bucket in collected.items():
        group = by_leader[leader]
        answers = sorted(bucket["answers"].items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))
        comments, seen = [], set()
        for item in sorted(bucket["comments"], key=lambda c: c["rating"] > 0):  # thumbs-down first, newest first
            if item["comment"] not in seen and len(comments) < 8:
                seen.add(item["comment"])
                comments.append(item)
        group.evidence = Evidence(
            answers=[{"answer": a, "up": up, "down": down} for a, (up, down) in answers[:3]],
            comments=comments,
            reasons=dict(bucket["reasons"].most_common()),
            corrections=[{"correction": c, "count": n} for c, n in bucket["corrections"].most_common(5)],
            variants=_variants(bucket["variants"]),
            message_ids=bucket["ids"],
            entries=_entries(db, bucket["down_ids"]),
        )
        phrasings = [(n, q) for (key, q), n in bucket["variants"].items() if key == leader]
        if phrasings:
            group.question = max(phrasings)[1]


def _entries(db: Database, down_ids: list[str], limit: int = 3) -> list[dict]:
    """The knowledge-base entries these thumbs-down answers were built on, most first."""
    counts = lineage.built_on(db, down_ids)
    if not counts:
        return []
    top = list(counts.items())[:limit]
    entries = store.get_entries(db, [entry_id for entry_id, _ in top])
    return [
        {"id": entry_id, "question": entries[entry_id].question if entry_id in entries else "", "down": n}
        for entry_id, n in top
    ]


def _variants(phrasings: Counter) -> list[dict]:
    """One line per distinct key in a group: its commonest phrasing and the votes on the key."""
    per_key: dict[str, dict] = {}
    for (key, question), n in phrasings.most_common():
        entry = per_key.setdefault(key, {"question": question, "key": key, "votes": 0})
        entry["votes"] += n
    return sorted(per_key.values(), key=lambda v: -v["votes"])[:8]
