"""Random mixer: a fresh Dirichlet(1) draw of the domain proportions at every update.

A baseline for the learned mixers: it changes the mixture as often as they do, but blindly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dataflex.errors import ConfigError
from dataflex.train.components import Mixer, Scheduled, UpdateContext
from dataflex.train.fields import param


def dirichlet_draw(num_domains: int, seed: int, update_index: int) -> torch.Tensor:
    """The Dirichlet(1, ..., 1) draw of update ``update_index`` under ``seed`` (float64, [K]).

    The generator is seeded from (seed, update_index) alone, so a resumed run (or a test) gets the
    same draw without replaying earlier ones. numpy's SeedSequence mixes the pair, so different
    (seed, update) pairs do not collide the way ``seed * C + update`` would.
    """
    if num_domains < 1:
        raise ValueError(f"num_domains must be >= 1, got {num_domains}")
    if seed < 0 or update_index < 0:
        raise ValueError(f"seed and update_index must be >= 0, got {seed}, {update_index}")
    state = np.random.SeedSequence([seed, update_index]).generate_state(2, np.uint32)
    generator = torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))
    # Dirichlet(1) = i.i.d. Exp(1) draws normalised (torch's Dirichlet takes no generator).
    draws = torch.empty(num_domains, dtype=torch.float64).exponential_(generator=generator)
    return draws / draws.sum()


class RandomMixer(Scheduled, Mixer):
    """Uniform (or ``initial``) proportions at the start, then a seeded Dirichlet(1) draw at every update.

    The initial proportions are uniform (1/K each), not a draw, so the run starts unbiased and the
    ``u``-th update's draw depends only on (seed, u).

    Args:
        seed: seed of the draws (the shipped YAML uses the run's ``seed``).
        warmup_steps: optimizer steps before the first update.
        update_every: steps between updates (<= 0: never update, stay uniform).
        num_updates: number of updates (<= 0: until the end of training).
        initial: the proportions before the first update: null (uniform) or one weight per domain
            (normalised; the original DataFlex's ``init_mixture_proportions``).
    """

    seed: int = param(0, ge=0)
    update_every: int = 10
    # -- original DataFlex option (its init_mixture_proportions: the mixture before the first draw) --
    initial: list[float] | None = param(
        None,
        check=lambda w: (
            None if w and all(x >= 0 for x in w) and sum(w) > 0 else "must list one weight >= 0 per domain, not all 0"
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # One entry per decision: update_index (-1 for the start), global_step, proportions.
        self.history: list[dict[str, Any]] = []

    def _record(self, ctx: UpdateContext, proportions: torch.Tensor) -> torch.Tensor:
        self.history.append(
            {
                "update_index": ctx.update_index,
                "global_step": ctx.global_step,
                "proportions": proportions.tolist(),
            }
        )
        return proportions

    def initial_proportions(self, ctx: UpdateContext) -> torch.Tensor:
        k = int(ctx.domain_ids.max()) + 1
        if self.initial is None:
            return self._record(ctx, torch.full((k,), 1.0 / k, dtype=torch.float64))
        if len(self.initial) != k:
            raise ConfigError(
                f"mixer=random: initial has {len(self.initial)} weights for {k} domains; give one per domain"
            )
        weights = torch.tensor([float(w) for w in self.initial], dtype=torch.float64)
        return self._record(ctx, weights / weights.sum())

    def update(self, ctx: UpdateContext) -> torch.Tensor:
        k = int(ctx.domain_ids.max()) + 1
        return self._record(ctx, dirichlet_draw(k, self.seed, ctx.update_index))

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"mixer=random: checkpoint was drawn with seed {state['seed']}, this run has {self.seed}")
        self.history = [dict(h) for h in state.get("history", [])]
