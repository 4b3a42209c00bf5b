"""Preference pairs for DPO: the approved correction is *chosen*, an answer users voted down is *rejected*.

Each approved review item yields one pair per distinct down-voted answer in its
evidence (up to three, most down-voted first) that differs from the approved
answer. Both sides are cleaned and masked like every other training text.

Two layouts:

- ``openai`` (default), OpenAI's preference fine-tuning format::

    {"input": {"messages": [{"role": "user", "content": Q}]},
     "preferred_output": [{"role": "assistant", "content": GOOD}],
     "non_preferred_output": [{"role": "assistant", "content": BAD}]}

- ``trl``, the conversational preference format of Hugging Face TRL's ``DPOTrainer``::

    {"prompt": [{"role": "user", "content": Q}], "chosen": [{"role": "assistant", "content": GOOD}],
     "rejected": [{"role": "assistant", "content": BAD}]}
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from config.errors import ValidationFailed
from feedback.pii import PiiMasker
from feedback.review import ReviewItem, approved_items
from trainer.dataset.clean import clean_text

FORMATS = ("openai", "trl")


@dataclass
class PreferencePair:
    """One prompt with a preferred and a rejected answer, and where they came from."""

    prompt: list[dict]
    chosen: str
    rejected: str
    lineage: dict
    masked: Counter = field(default_factory=Counter)

    def to_row(self, fmt: str = "openai") -> dict:
        """The pair in ``fmt`` (``openai`` or ``trl``)."""
        chosen = [{"role": "assistant", "content": self.chosen}]
        rejected = [{"role": "assistant", "content": self.rejected}]
        if fmt == "openai":
            return {"input": {"messages": self.prompt}, "preferred_output": chosen, "non_preferred_output": rejected}
        if fmt == "trl":
            return {"prompt": self.prompt, "chosen": chosen, "rejected": rejected}
        raise ValidationFailed(f"preference format must be openai or trl, got {fmt!r}", field="format")


def preference_pairs(items: list[ReviewItem], masker: PiiMasker, *, system_prompt: str = "") -> list[PreferencePair]:
    """Pairs from approved ``items``, cleaned and masked, in the items' order."""
    pairs = []
    for item in items:
        if item.status != "approved" or not item.answer:
            continue
        question = masker.mask(clean_text(item.question))
        good = masker.mask(clean_text(item.answer))
        seen = {good.text}
        for bad_text in item.downvoted_answers:
            bad = masker.mask(clean_text(bad_text))
            if not bad.text or bad.text in seen:
                continue
            seen.add(bad.text)
            prompt = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
                {"role": "user", "content": question.text}
            ]
            pairs.append(
                PreferencePair(
                    prompt=prompt,
                    chosen=good.text,
                    rejected=bad.text,
                    lineage={"source": "review", "review_item_id": item.id},
                    masked=question.counts + good.counts + bad.counts,
                )
            )
    return pairs


def to_jsonl(pairs: list[PreferencePair], fmt: str = "openai") -> bytes:
    """The pairs as JSONL bytes (UTF-8, one pair a line)."""
    if fmt not in FORMATS:
        raise ValidationFailed(f"preference format must be openai or trl, got {fmt!r}", field="format")
    return "".join(json.dumps(p.to_row(fmt), ensure_ascii=False) + "\n" for p in pairs).encode("utf-8")


def export_preferences(db, settings, path, *, fmt: str = "openai") -> int:
    """Write the preference pairs of every approved item to ``path`` (JSONL); returns how many."""
    pairs = preference_pairs(
        approved_items(db), PiiMasker(settings.dataset.pii_allowlist), system_prompt=settings.chat.system_prompt.strip()
    )
    data = to_jsonl(pairs, fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return len(pairs)
