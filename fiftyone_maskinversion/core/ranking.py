"""Ranking region embeddings by cosine to a query: the one ranking used by search and the region index."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def cosine_top_k(embeddings: np.ndarray, query: np.ndarray, k: Optional[int] = None,
                 reverse: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """(indices, cosines) of the ``k`` rows of ``embeddings`` (n x d) most similar to ``query`` (d),
    best first (least similar first with ``reverse``); ties keep row order."""
    matrix = np.asarray(embeddings, dtype=np.float32)
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    vector = np.asarray(query, dtype=np.float32)
    scores = matrix @ (vector / np.linalg.norm(vector))
    order = np.argsort(scores if reverse else -scores, kind="stable")[:k]
    return order, scores[order]
