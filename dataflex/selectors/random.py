"""Random selector: a uniform sample of k pool indices per round (ALGORITHMS.md, random)."""

from __future__ import annotations

import torch

from dataflex.selectors.base import BudgetSelector, random_subset, seeded_generator
from dataflex.train.components import UpdateContext


def random_indices(pool_size: int, k: int, seed: int, update_index: int, replacement: bool = False) -> torch.Tensor:
    """The pure core: ``k`` uniform indices of ``range(pool_size)`` for round ``update_index``.

    Seeded by ``(seed, update_index)`` only, so a resumed run draws the same indices.

    Args:
        pool_size: number of pool samples.
        k: number of indices (``1 <= k <= pool_size``).
        seed: the run's selector seed.
        update_index: the round (-1: the warm-up decision).
        replacement: draw with replacement (duplicates possible).

    Returns:
        LongTensor[k].
    """
    if not 1 <= k <= pool_size:
        raise ValueError(f"k must lie in [1, {pool_size}], got {k}")
    return random_subset(pool_size, k, seeded_generator(seed, update_index), replacement)


class RandomSelector(BudgetSelector):
    """A fresh uniform subset of ``budget`` samples every ``update_every`` steps.

    The warm-up decision is drawn the same way (round -1), so the first window is random too.

    Attributes:
        replacement: sample with replacement (default: without).
        (others as :class:`~dataflex.selectors.base.BudgetSelector`)
    """

    replacement: bool = False

    def initial_indices(self, ctx: UpdateContext) -> torch.Tensor:
        return self.select(ctx)

    def select(self, ctx: UpdateContext) -> torch.Tensor:
        indices = random_indices(ctx.pool_size, self.k(ctx), self.seed, ctx.update_index, self.replacement)
        return self.record(ctx, indices)
