"""DynamicSampler: the one place where selection and mixture decisions reach the data loader.

The sampler yields a global stream of pool indices (identical on every rank; accelerate shards the
batches across ranks). It reads the plan in force at EVERY draw, so a new selection or new domain
proportions take effect within the data loader's prefetch depth, not at the next epoch.

Determinism and resume: each plan is recorded with the draw position at which it took effect.
Iteration always starts at draw 0 with a generator seeded from ``seed``; the HF Trainer resumes by
replaying (skipping) the batches already trained, so with the plan history restored from the
checkpoint, a resumed run draws exactly the indices an uninterrupted run draws.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler


@dataclass
class Plan:
    """One decision in force from draw ``start`` on.

    Attributes:
        start: first draw index this plan applies to.
        indices: pool indices to draw from (None: the whole pool).
        proportions: domain proportions (None: no mixture, uniform over the indices).
    """

    start: int
    indices: torch.Tensor | None = None
    proportions: torch.Tensor | None = None


class DynamicSampler(Sampler[int]):
    """Draws pool indices under the current selection (indices) and mixture (domain proportions).

    Without proportions, draws go through seeded permutations of the selected indices (every
    selected sample once per pass). With proportions, each draw first picks a domain with the
    current proportions, then the next sample of that domain's own seeded permutation (restricted
    to the selected indices when a selection is in force; a domain the selection does not reach is
    skipped, the proportions renormalised over the others).

    Args:
        domain_ids: domain id of every pool sample (length = pool size).
        num_draws: total draws of the run (max_steps x global batch size).
        seed: seed of the draw stream.
    """

    def __init__(self, domain_ids: Sequence[int] | torch.Tensor, num_draws: int, seed: int = 0):
        self.domain_ids = torch.as_tensor(domain_ids, dtype=torch.long)
        if self.domain_ids.numel() == 0:
            raise ValueError("DynamicSampler needs a non-empty pool")
        self.num_domains = int(self.domain_ids.max()) + 1
        self.num_draws = int(num_draws)
        self.seed = int(seed)
        self.history: list[Plan] = [Plan(start=0)]
        self.drawn = 0  # draws made by the live iterator (including prefetched ones)

    @property
    def pool_size(self) -> int:
        return self.domain_ids.numel()

    @property
    def current(self) -> Plan:
        return self.history[-1]

    def __len__(self) -> int:
        return self.num_draws

    # -- decisions -------------------------------------------------------------------------------
    def set_indices(self, indices: torch.Tensor | Sequence[int] | None) -> None:
        """Restrict draws to ``indices`` (None: the whole pool) from the next draw on."""
        if indices is not None:
            indices = torch.as_tensor(indices, dtype=torch.long).flatten()
            if indices.numel() == 0:
                raise ValueError("a selection must contain at least one index")
            if int(indices.min()) < 0 or int(indices.max()) >= self.pool_size:
                raise ValueError(f"selected indices must lie in [0, {self.pool_size})")
        self._push(indices=indices, proportions=self.current.proportions)

    def set_proportions(self, proportions: torch.Tensor | Sequence[float] | None) -> None:
        """Sample domains with ``proportions`` (None: no mixture) from the next draw on."""
        if proportions is not None:
            proportions = torch.as_tensor(proportions, dtype=torch.float64).flatten()
            if proportions.numel() != self.num_domains:
                raise ValueError(f"got {proportions.numel()} proportions for {self.num_domains} domains")
            if not torch.isfinite(proportions).all() or (proportions < 0).any() or proportions.sum() <= 0:
                raise ValueError(f"proportions must be finite, >= 0 and not all 0, got {proportions.tolist()}")
            proportions = proportions / proportions.sum()
        self._push(indices=self.current.indices, proportions=proportions)

    def _push(self, indices, proportions) -> None:
        plan = Plan(start=self.drawn, indices=indices, proportions=proportions)
        if self.history[-1].start == plan.start:
            self.history[-1] = plan  # nothing was drawn under the previous plan
        else:
            self.history.append(plan)

    # -- drawing ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        plan_pos = 0
        stream = _PlanStream(self.history[0], self.domain_ids, generator)
        for i in range(self.num_draws):
            # The history may grow while we iterate (a live update): always check the next entry.
            while plan_pos + 1 < len(self.history) and self.history[plan_pos + 1].start <= i:
                plan_pos += 1
                stream = _PlanStream(self.history[plan_pos], self.domain_ids, generator)
            self.drawn = i + 1
            yield stream.next()

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "num_draws": self.num_draws,
            "history": [
                {"start": p.start, "indices": p.indices, "proportions": p.proportions} for p in self.history
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["num_draws"] != self.num_draws:
            raise ValueError(
                f"sampler state is for seed={state['seed']}, num_draws={state['num_draws']}; "
                f"this run has seed={self.seed}, num_draws={self.num_draws}"
            )
        self.history = [Plan(**p) for p in state["history"]]


class _PlanStream:
    """Draws under one plan; all randomness comes from the sampler's single generator."""

    def __init__(self, plan: Plan, domain_ids: torch.Tensor, generator: torch.Generator):
        self.generator = generator
        members = plan.indices if plan.indices is not None else torch.arange(domain_ids.numel())
        self.proportions = plan.proportions
        if self.proportions is None:
            self.groups = [members]
        else:
            member_domains = domain_ids[members]
            self.groups = [members[member_domains == d] for d in range(self.proportions.numel())]
            empty = [d for d, g in enumerate(self.groups) if g.numel() == 0 and self.proportions[d] > 0]
            if empty:
                # A selector and a mixer together: the proportions apply over the domains the selection
                # holds; a domain without selected samples is skipped and its mass spread over the others.
                kept = self.proportions.clone()
                kept[empty] = 0
                if kept.sum() <= 0:
                    raise ValueError(f"no selected sample lies in a domain with positive proportion (domains {empty})")
                self.proportions = kept / kept.sum()
        self.orders: list[torch.Tensor | None] = [None] * len(self.groups)
        self.cursors = [0] * len(self.groups)

    def next(self) -> int:
        if self.proportions is None:
            group = 0
        else:
            group = int(torch.multinomial(self.proportions, 1, generator=self.generator))
        order = self.orders[group]
        if order is None or self.cursors[group] >= order.numel():
            order = self.orders[group] = torch.randperm(self.groups[group].numel(), generator=self.generator)
            self.cursors[group] = 0
        index = self.groups[group][order[self.cursors[group]]]
        self.cursors[group] += 1
        return int(index)
