"""The uniform weighter: w_i = 1/B over the global micro-batch.

With the default ``reduction: token`` this is exactly the trainer's own loss (each sample's label
tokens multiplied by B·(1/B) = 1), so ``weighter=uniform`` trains exactly like ``weighter=none``
while logging the weight statistics; it is the r → ∞ limit of the loss weighter. With
``reduction: sample`` it is the mean of the per-sample token-mean losses (the paper's uniform
baseline), which differs from plain training when samples have different numbers of label tokens.
See :mod:`dataflex.weighters`.
"""

from __future__ import annotations

import torch

from dataflex.weighters import BatchWeighter


class UniformWeighter(BatchWeighter):
    """Every sample of the global micro-batch weighs 1/B.

    Args:
        reduction: ``token`` (default: exactly plain training) or ``sample``.
    """

    def batch_weights(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.full_like(losses, 1.0 / losses.numel(), dtype=torch.float64)
