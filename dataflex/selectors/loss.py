"""Loss-based selector: keep the samples the current model finds hardest (ALGORITHMS.md, loss)."""

from __future__ import annotations

from typing import Any

import torch

from dataflex.selectors.base import PoolLossSelector, seeded_generator
from dataflex.train.components import UpdateContext
from dataflex.train.fields import param

RULES = ("topk", "tercile")
FOCUS = ("low", "medium", "high")
#: weight of the focus bucket in the tercile rule (the other two buckets get 1)
FOCUS_WEIGHT = 5.0


def tercile_buckets(losses: torch.Tensor) -> torch.Tensor:
    """Bucket of each score: 0 (low) for s <= q1, 2 (high) for s > q2, 1 (medium) otherwise.

    ``q1``, ``q2`` are the 1/3 and 2/3 quantiles (linear interpolation, ``torch.quantile``).
    """
    s = losses.double()
    q1, q2 = torch.quantile(s, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    buckets = torch.ones_like(s, dtype=torch.long)
    buckets[s <= q1] = 0
    buckets[s > q2] = 2
    return buckets


def tercile_probabilities(losses: torch.Tensor, focus: str = "high", temperature: float = 1.0) -> torch.Tensor:
    """p_i ∝ w_i^(1/T), w = 5 in the ``focus`` bucket and 1 elsewhere (float64, sums to 1)."""
    if focus not in FOCUS:
        raise ValueError(f"focus must be one of {FOCUS}, got {focus!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    buckets = tercile_buckets(losses)
    w = torch.where(buckets == FOCUS.index(focus), FOCUS_WEIGHT, 1.0).double()
    p = w ** (1.0 / temperature)
    return p / p.sum()


def loss_scores_to_indices(
    losses: torch.Tensor,
    k: int,
    rule: str = "topk",
    focus: str = "high",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The pure core: ``k`` indices into ``losses``.

    Args:
        losses: ``Tensor[N]`` scores s_i = ℓ_i.
        k: number of indices, ``1 <= k <= N``.
        rule: ``topk`` (the k highest scores; ties broken by the lower index) or ``tercile``
            (DataFlex-compatible: draw k without replacement with :func:`tercile_probabilities`).
        focus: the tercile bucket favoured by ``tercile`` (``low``/``medium``/``high``).
        temperature: T of ``tercile``; T -> inf flattens to uniform, T -> 0 to the focus bucket.
        generator: RNG of the ``tercile`` draw.

    Returns:
        LongTensor[k]; for ``topk`` in decreasing order of score.
    """
    losses = torch.as_tensor(losses).flatten()
    n = losses.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in [1, {n}], got {k}")
    if rule == "topk":
        # a stable sort (not torch.topk) so ties always resolve the same way
        return torch.sort(losses, descending=True, stable=True).indices[:k]
    if rule == "tercile":
        p = tercile_probabilities(losses, focus, temperature)
        return torch.multinomial(p, k, replacement=False, generator=generator)
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


class LossSelector(PoolLossSelector):
    """Every round, score (a candidate subset of) the pool by ℓ_i under the current model and keep k.

    Warm-up: a seeded random subset of ``budget`` samples (no model signal is read before the
    first update; ALGORITHMS.md's "warmup_steps of training on a random subset").

    Attributes:
        rule: ``topk`` (default) or ``tercile``.
        focus: tercile bucket favoured (``low``/``medium``/``high``).
        temperature: tercile temperature T.
        (others as :class:`~dataflex.selectors.base.PoolLossSelector`)
    """

    #: the original DataFlex's default where this one differs: its tercile draw (used by dataflex-cli)
    legacy_defaults = {"rule": "tercile"}
    acts_through_updates = True

    rule: str = param("topk", choices=RULES)
    focus: str = param("high", choices=FOCUS)
    temperature: float = param(1.0, gt=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        # the scores of the latest round only (a full history would grow the checkpoint every round)
        self.last_scores: dict[str, Any] | None = None

    def select(self, ctx: UpdateContext) -> torch.Tensor:
        candidates = self.candidate_indices(ctx)
        losses = self.pool_losses(ctx, candidates)
        local = loss_scores_to_indices(
            losses, self.k(ctx), self.rule, self.focus, self.temperature, seeded_generator(self.seed, ctx.update_index)
        )
        self.last_scores = {"update_index": ctx.update_index, "candidates": candidates, "losses": losses}
        return self.record(ctx, candidates[local])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_scores": self.last_scores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_scores = state.get("last_scores")
