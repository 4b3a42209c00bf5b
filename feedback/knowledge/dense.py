"""Dense vectors of entry questions, searched by cosine: the optional half of the retriever.

Vectors come from whatever ``embed`` callable the retriever was given (an OpenAI-protocol
``/v1/embeddings`` endpoint in practice); they are L2-normalised on the way in, so a dot product is a
cosine. Rows live in one growable float32 matrix; removing an owner marks its rows dead (their cosine
is never used) and the matrix is compacted when more than half of it is dead. A search is one
matrix-vector product: at 20,000 questions of 1,536 dimensions, about 30 M multiply-adds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class DenseIndex:
    """Rows of unit vectors, each owned by an entry ordinal and numbered within it (the question's position)."""

    def __init__(self):
        self._matrix = np.zeros((0, 0), dtype=np.float32)
        self._owner = np.zeros(0, dtype=np.int64)
        self._position = np.zeros(0, dtype=np.int32)
        self._alive = np.zeros(0, dtype=bool)
        self._rows = 0
        self._dim = 0

    def __len__(self) -> int:
        return int(self._alive[: self._rows].sum())

    def add(self, owner: int, vectors: Sequence[Sequence[float]]) -> None:
        """Store ``owner``'s vectors, one per question in order. ValueError on a dimension change."""
        block = np.asarray(vectors, dtype=np.float32)
        if block.ndim != 2 or block.shape[1] == 0:
            raise ValueError("embeddings must be a non-empty list of equally long vectors")
        if self._dim and block.shape[1] != self._dim:
            raise ValueError(f"embedding dimension changed from {self._dim} to {block.shape[1]}")
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        block = block / np.where(norms > 0, norms, 1.0)
        self._dim = block.shape[1]
        self._reserve(self._rows + len(block))
        rows = slice(self._rows, self._rows + len(block))
        self._matrix[rows] = block
        self._owner[rows] = owner
        self._position[rows] = np.arange(len(block))
        self._alive[rows] = True
        self._rows += len(block)

    def remove(self, owner: int) -> None:
        """Forget ``owner``'s vectors."""
        self._alive[: self._rows][self._owner[: self._rows] == owner] = False
        dead = self._rows - len(self)
        if dead > 1000 and dead > self._rows // 2:
            keep = np.flatnonzero(self._alive[: self._rows])
            self._matrix, self._owner = self._matrix[keep], self._owner[keep]
            self._position, self._alive = self._position[keep], self._alive[keep]
            self._rows = len(keep)

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._matrix) and self._matrix.shape[1] == self._dim:
            return
        capacity = max(64, rows, 2 * len(self._matrix))
        matrix = np.zeros((capacity, self._dim), dtype=np.float32)
        if self._rows:
            matrix[: self._rows] = self._matrix[: self._rows]
        self._matrix = matrix
        for name in ("_owner", "_position", "_alive"):
            old = getattr(self, name)
            grown = np.zeros(capacity, dtype=old.dtype)
            grown[: self._rows] = old[: self._rows]
            setattr(self, name, grown)

    def cosines(self, query: Sequence[float]) -> np.ndarray:
        """The query's cosine with every row (dead rows: -1)."""
        vector = np.asarray(query, dtype=np.float32)
        if vector.shape != (self._dim,):
            raise ValueError(f"query embedding has {vector.size} dimensions, the index {self._dim}")
        vector = vector / (np.linalg.norm(vector) or 1.0)
        sims = self._matrix[: self._rows] @ vector
        return np.where(self._alive[: self._rows], sims, -1.0)

    def best_by_owner(self, cosines: np.ndarray, owners: int) -> np.ndarray:
        """Each owner's best cosine, clipped at 0 (owners without vectors: 0)."""
        best = np.zeros(owners)
        np.maximum.at(best, self._owner[: self._rows], np.clip(cosines, 0.0, None))
        return best

    def owner_cosines(self, owner: int, cosines: np.ndarray, questions: int) -> np.ndarray:
        """``owner``'s cosine for each of its ``questions`` positions (0 where it has no vector)."""
        out = np.zeros(questions)
        rows = np.flatnonzero((self._owner[: self._rows] == owner) & self._alive[: self._rows])
        out[self._position[rows]] = np.clip(cosines[rows], 0.0, None)
        return out
