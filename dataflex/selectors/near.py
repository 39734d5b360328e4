"""NEAR selector: the pool samples nearest to the validation/target examples, taken round-robin by
rank (RDS+-style; ALGORITHMS.md, near), on :class:`~dataflex.selectors.base.EmbeddingSelector`, the
shell NEAR and TSDS share.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dataflex.errors import ConfigError
from dataflex.selectors.base import EmbeddingSelector
from dataflex.signals.knn import KnnIndex
from dataflex.train.components import UpdateContext


def round_robin(neighbors: torch.Tensor, k: int) -> torch.Tensor:
    """The pure core: ``k`` distinct candidates, every query's rank-1 neighbour, then every rank-2, ...

    Within a rank, queries go in their row order; a candidate already taken is skipped. Entries < 0
    (padding) are skipped too.

    Args:
        neighbors: ``[M, K]`` candidate indices per query, best first.
        k: how many to take (>= 1).

    Returns:
        LongTensor[k], in the order taken.

    Raises:
        ValueError: fewer than ``k`` distinct candidates in ``neighbors``.
    """
    neighbors = torch.as_tensor(neighbors, dtype=torch.long)
    if neighbors.ndim != 2:
        raise ValueError(f"neighbors must be [M, K], got shape {tuple(neighbors.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    flat = neighbors.T.reshape(-1)  # rank-major: (rank 1 of every query), (rank 2 of every query), ...
    flat = flat[flat >= 0]
    distinct, inverse = torch.unique(flat, return_inverse=True)
    if distinct.numel() < k:
        raise ConfigError(f"round_robin: {distinct.numel()} distinct candidates among the neighbours, {k} asked")
    positions = torch.arange(flat.numel())
    # the first position at which each distinct candidate appears; taking them in that order is the
    # round robin with duplicates skipped
    first = torch.full((distinct.numel(),), flat.numel(), dtype=torch.long).scatter_reduce(
        0, inverse, positions, "amin"
    )
    return flat[torch.sort(first).values[:k]]


def near_indices(index: KnnIndex, queries: torch.Tensor, k: int, info: dict[str, Any] | None = None) -> torch.Tensor:
    """NEAR on an index: :func:`round_robin` over each query's ``4·ceil(k/M)`` nearest candidates,
    searching four times as deep until they hold ``k`` distinct ones (the result is the round robin
    over the full neighbour lists: ranks beyond the depth searched are never reached). A search
    costs about the same at any moderate depth (scanning the candidates dominates), so it starts
    deep (neighbour lists of different queries overlap) and grows fast.

    ``info``, if given, gets ``depth``: the neighbours per query of the last search.
    """
    m = len(queries)
    if not 1 <= k <= index.n:
        raise ValueError(f"k must lie in [1, {index.n}], got {k}")
    depth = min(index.n, 4 * math.ceil(k / m))
    while True:
        _, neighbors = index.search(queries, depth)
        try:
            picked = round_robin(neighbors, k)
        except ValueError:
            if depth >= index.n:
                raise
            depth = min(index.n, 4 * depth)
            continue
        if info is not None:
            info["depth"] = depth
        return picked


class NearSelector(EmbeddingSelector):
    """Every round, the ``budget`` pool samples nearest to the validation examples (whole examples by
    default, ``query: prompt`` for their prompts), round-robin by rank.

    With sentence embeddings the selection is the same every round (nothing it reads changes);
    with ``embedding: model`` it follows the training model.

    Args: as :class:`EmbeddingSelector`.
    """

    #: the original DataFlex's params with no counterpart here, and why (used by dataflex-cli)
    legacy_unused = {"indices_path": "neighbours are computed in the run"}

    method = "near"

    def choose(
        self, ctx: UpdateContext, candidates: torch.Tensor, queries: torch.Tensor
    ) -> tuple[torch.Tensor, dict | None]:
        info: dict[str, Any] = {}
        picked = near_indices(self.index(candidates), queries, self.k(ctx), info)
        return picked, {"update_index": ctx.update_index, **info}
