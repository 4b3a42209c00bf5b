"""Train / validation / test split: seeded, by group, so near-duplicates never straddle splits.

A test split that holds a near-copy of a training row measures memorization,
not the model. So whole groups (:func:`trainer.dataset.dedupe.connected_groups`)
are assigned, never single rows:

1. groups are ordered by ``sha256(seed, the group's smallest prompt key)`` — a
   function of the group's content and the seed only, so the same inputs and seed
   give the same split on any machine, and adding a row moves few others;
2. groups are dealt to test until it holds ``round(n × test_fraction)`` rows, then
   to validation likewise, the rest to train (a group is never cut, so a split
   may overshoot by part of a group). A non-zero fraction gets at least one
   group when there are enough groups to leave train one;
3. *pinned* groups always go to train. The builder pins groups that hold an
   approved correction: a correction exists to be learned, and it is evaluated
   on its own (docs/architecture.md, the loop, step 5), not hidden in the test split.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def _order(seed: int, anchor: str) -> str:
    return hashlib.sha256(f"{seed}\x00{anchor}".encode()).hexdigest()


def assign_splits(
    groups: list[int],
    anchors: dict[int, str],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    pinned: set[int] = frozenset(),
) -> list[str]:
    """The split of each row, given its group number; ``anchors`` names each group stably."""
    sizes: dict[int, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    n = len(groups)
    free = sorted((g for g in sizes if g not in pinned), key=lambda g: (_order(seed, anchors[g]), anchors[g]))
    targets = {"test": round(n * test_fraction), "val": round(n * val_fraction)}
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        if fraction > 0 and targets[name] == 0 and len(free) >= 3:
            targets[name] = 1
    filled = {"test": 0, "val": 0}
    split_of: dict[int, str] = {g: "train" for g in pinned}
    remaining = len(free)
    for g in free:
        choice = "train"
        for name in ("test", "val"):
            # Keep at least one group for train when nothing is pinned there.
            if filled[name] < targets[name] and (remaining > 1 or pinned):
                choice = name
                break
        split_of[g] = choice
        if choice != "train":
            filled[choice] += sizes[g]
        remaining -= 1
    return [split_of[g] for g in groups]
