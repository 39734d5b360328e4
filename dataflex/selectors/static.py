"""Static selector: no selection, plain training on the whole pool (ALGORITHMS.md, static)."""

from __future__ import annotations

from typing import Any

import torch

from dataflex.train.components import Selector, UpdateContext


class StaticSelector(Selector):
    """Trains on the whole pool through the DynamicSampler and never updates.

    It exists so that ``selector=static`` is a baseline that goes through the same sampler as the
    dynamic selectors (``selector=none`` keeps LLaMA-Factory's own sampler instead).
    """

    def __post_init__(self) -> None:
        # no schedule: the start decision (None) stays in force
        super().__post_init__()
        self.decisions = 0

    def initial_indices(self, ctx: UpdateContext) -> torch.Tensor | None:
        self.decisions += 1
        return None

    def select(self, ctx: UpdateContext) -> torch.Tensor:
        raise RuntimeError("the static selector never updates")

    def state_dict(self) -> dict[str, Any]:
        return {"decisions": self.decisions, "indices": None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decisions = int(state["decisions"])
