"""Hand-built LossInputs for the weighter tests (the loss on the trainer's scale)."""

from __future__ import annotations

import torch

from dataflex.train.components import LossInputs


def micro_batch(token_scale, mean_scale, lengths=(3, 1, 5, 0), seed=0, grad_accum_steps=2):
    """``(LossInputs, token losses)`` over ragged samples of seeded random token losses in [0, 4) (a sample
    of length 0 has no label tokens); the token losses require grad."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    mask = torch.tensor([[j < n for j in range(t)] for n in lengths])
    nll = (torch.rand(len(lengths), t, generator=g) * 4 * mask).requires_grad_(True)
    li = LossInputs(
        token_losses=nll,
        token_mask=mask,
        batch={},
        inputs={},
        model=None,
        num_items_in_batch=None,
        grad_accum_steps=grad_accum_steps,
        world_size=1,
        token_scale=token_scale,
        mean_scale=mean_scale,
    )
    return li, nll
