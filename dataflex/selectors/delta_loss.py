"""Delta-loss selector: favour samples whose loss dropped most since step 0, on a moving window
over the Δ ranking (ALGORITHMS.md, delta_loss)."""

from __future__ import annotations

import math
from typing import Any

import torch

from dataflex.selectors.base import INITIAL, PoolLossSelector, random_subset, seeded_generator
from dataflex.train.components import UpdateContext, selection_due
from dataflex.train.fields import param

#: weight of a sample outside the window (inside: 1)
OUTSIDE_WEIGHT = 0.025


def window_bounds(delta: torch.Tensor, update_index: int, num_updates: int, window: float = 0.2):
    """The window over Δ sorted descending for round ``update_index`` of ``num_updates``.

    Size ⌊w·N⌋ (at least 1), start ⌊σ(10·(t − 0.5))·(1 − w)·N⌋ with t = u/(U − 1) (t := 0 when
    U = 1), end cut at the first position whose Δ < 0.

    Args:
        delta: ``Tensor[N]`` of Δ_i = ℓ_i(θ_0) − ℓ_i(θ_t).
        update_index: u in ``[0, U)``.
        num_updates: U >= 1.
        window: w in ``(0, 1]``.

    Returns:
        ``(order, start, end)``: the descending order of Δ (stable) and the window's positions
        ``[start, end)`` in it (``end <= start`` means an empty window).
    """
    delta = torch.as_tensor(delta).flatten()
    n = delta.numel()
    if n == 0:
        raise ValueError("delta is empty")
    if num_updates < 1:
        raise ValueError(f"num_updates must be >= 1, got {num_updates}")
    if not 0 <= update_index < num_updates:
        raise ValueError(f"update_index must lie in [0, {num_updates}), got {update_index}")
    if not 0.0 < window <= 1.0:
        raise ValueError(f"window must lie in (0, 1], got {window}")
    t = update_index / (num_updates - 1) if num_updates > 1 else 0.0
    size = max(1, int(math.floor(window * n + 1e-9)))  # tolerance: 0.2 * 15 must give 3
    sigma = 1.0 / (1.0 + math.exp(-10.0 * (t - 0.5)))
    start = int(math.floor(sigma * (1.0 - window) * n))
    order = torch.sort(delta, descending=True, stable=True).indices
    sorted_delta = delta[order]
    negative = (sorted_delta < 0).nonzero().flatten()
    first_negative = int(negative[0]) if negative.numel() else n
    end = min(start + size, first_negative, n)
    return order, start, end


def delta_loss_probabilities(delta: torch.Tensor, update_index: int, num_updates: int, window: float = 0.2) -> torch.Tensor:
    """The pure core: sampling probabilities over the N samples (float64, sums to 1).

    Weight 1 inside :func:`window_bounds`' window, 0.025 outside, normalised. An empty window
    (it starts past the first Δ < 0) gives the uniform distribution.
    """
    order, start, end = window_bounds(delta, update_index, num_updates, window)
    weights = torch.full((order.numel(),), OUTSIDE_WEIGHT, dtype=torch.float64)
    if end > start:
        weights[order[start:end]] = 1.0
    return weights / weights.sum()


def count_updates(schedule, max_steps: int) -> int:
    """How many selection rounds the schedule runs in ``max_steps`` optimizer steps (>= 1; none at
    the last step, see :func:`selection_due`)."""
    done = 0
    for step in range(1, max_steps + 1):
        if selection_due(schedule, step, done, max_steps):
            done += 1
    return max(done, 1)


class DeltaLossSelector(PoolLossSelector):
    """Δ_i = ℓ_i(θ_0) − ℓ_i(θ_t), window sampling that moves from the largest drops to smaller ones.

    ℓ(θ_0) is computed once for the whole pool in :meth:`initial_indices` (before any optimizer
    step) and kept in the state dict, so a resumed run never recomputes it on a trained model.
    Warm-up: a seeded random subset of ``budget`` samples.

    U (the number of rounds that t = u/(U−1) is relative to) is ``num_updates`` when > 0, otherwise
    the number of rounds the schedule fits in the run's ``max_steps``.

    Attributes:
        window: w, the window's share of the candidates.
        (others as :class:`~dataflex.selectors.base.PoolLossSelector`)
    """

    #: the original DataFlex's component params under another name here (used by dataflex-cli)
    legacy_keys = {"window_size": "window"}
    acts_through_updates = True

    window: float = param(0.2, gt=0, le=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.initial_losses: torch.Tensor | None = None  # ℓ(θ_0) of every pool sample
        self.last_scores: dict[str, Any] | None = None

    def initial_indices(self, ctx: UpdateContext) -> torch.Tensor:
        if self.initial_losses is None:
            self.initial_losses = self.pool_losses(ctx, torch.arange(ctx.pool_size))
        indices = random_subset(ctx.pool_size, self.k(ctx), seeded_generator(self.seed, INITIAL))
        return self.record(ctx, indices)

    def total_updates(self, ctx: UpdateContext) -> int:
        return max(count_updates(self.schedule, ctx.max_steps), ctx.update_index + 1)

    def select(self, ctx: UpdateContext) -> torch.Tensor:
        if self.initial_losses is None:
            raise RuntimeError("delta_loss: ℓ(θ_0) was never computed (initial_indices did not run)")
        candidates = self.candidate_indices(ctx)
        delta = self.initial_losses[candidates] - self.pool_losses(ctx, candidates)
        num_updates = self.total_updates(ctx)
        p = delta_loss_probabilities(delta, ctx.update_index, num_updates, self.window)
        local = torch.multinomial(p, self.k(ctx), replacement=False, generator=seeded_generator(self.seed, ctx.update_index))
        self.last_scores = {
            "update_index": ctx.update_index,
            "num_updates": num_updates,
            "candidates": candidates,
            "delta": delta,
        }
        return self.record(ctx, candidates[local])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "initial_losses": self.initial_losses, "last_scores": self.last_scores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.initial_losses = state["initial_losses"]
        self.last_scores = state.get("last_scores")
