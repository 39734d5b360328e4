"""The offline recipes' shared part (offline LESS and NICE; not a selector itself): decide once,
before training, from every complete checkpoint of a warm-up run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from dataflex.errors import ConfigError
from dataflex.selectors.base import COUNT_OR_FRACTION, budget_problem
from dataflex.signals.distributed import is_main_process
from dataflex.signals.features import checkpoint_weight_vector
from dataflex.train.checkpoints import (
    check_checkpoint_choice,
    for_each_warmup_checkpoint,
    warmup_checkpoint_weights,
    warmup_checkpoints,
)
from dataflex.train.components import UpdateContext
from dataflex.train.fields import param
from dataflex.utils import atomic_write_json


@dataclass(kw_only=True, eq=False)
class WarmupRecipe:
    """The offline recipes' settings and loop (offline LESS and NICE; a mixin before the selector's
    base): decide once, before training, from every complete checkpoint of a warm-up run, each
    weighted (by default) by its epoch's mean learning rate. No schedule keys."""

    warmup_steps: ClassVar[int] = 0
    update_every: ClassVar[int] = 0
    num_updates: ClassVar[int] = 0
    acts_through_updates: ClassVar[bool] = False
    budget: int | float = param(0.05, check=budget_problem, expects=COUNT_OR_FRACTION)
    warmup_dir: str | None = None
    checkpoints: Sequence[int] | None = None
    checkpoint_weights: Sequence[float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.checkpoints, self.checkpoint_weights = check_checkpoint_choice(self.checkpoints, self.checkpoint_weights)

    def over_warmup_checkpoints(self, ctx: UpdateContext, command: str, score: Callable[[Any], Any]):
        """``(found, weights, [score(adam) under each checkpoint])``: every warm-up checkpoint's
        weights (and, for Adam features, its saved moments) loaded in turn into ``ctx.model``, which
        gets its own weights back afterwards; ``command`` is the one that trains the warm-up first."""
        name = getattr(self, "config_name", "selector")
        if not self.warmup_dir:
            raise ConfigError(
                f"selector={name} needs selector.warmup_dir=<a warm-up run directory with one checkpoint per epoch>; "
                f"`{command}` trains the warm-up and then this run"
            )
        ctx.require_validation(name)  # a missing validation set fails before any pass
        found = warmup_checkpoints(self.warmup_dir, self.checkpoints)
        weights = warmup_checkpoint_weights(found, self.checkpoint_weights)
        results = for_each_warmup_checkpoint(
            ctx.model,
            found,
            lambda _step, _path, adam: score(adam),
            optimizer=ctx.optimizer,
            adam=self.gradient_type == "adam",
        )
        return found, weights, results

    def keep_decision(
        self,
        ctx: UpdateContext,
        record_file: str,
        found,
        weights,
        candidates: torch.Tensor,
        scores: torch.Tensor,
        local: torch.Tensor,
        state: dict[str, Any] | None = None,
        record: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Keep the top ``local`` of ``candidates``: ``last_scores`` (checkpointed; ``state`` adds to it) and,
        on the main process, ``record_file`` in the run directory (the checkpoints, their weights, the
        chosen samples and their scores; ``record`` adds to it); the selection as every round's is logged."""
        chosen = candidates[local]
        steps, used = [s for s, _ in found], checkpoint_weight_vector(weights, len(found)).tolist()
        self.last_scores = {
            "update_index": ctx.update_index,
            "candidates": candidates,
            "scores": scores.float(),
            **(state or {}),
            "checkpoint_steps": steps,
            "checkpoint_weights": used,
        }
        if ctx.run_dir is not None and is_main_process():
            atomic_write_json(
                Path(ctx.run_dir) / record_file,
                {
                    "warmup_dir": str(self.warmup_dir),
                    "checkpoints": [str(p) for _, p in found],
                    "checkpoint_steps": steps,
                    "checkpoint_weights": used,
                    **(record or {}),
                    "candidates": int(candidates.numel()),
                    "k": int(chosen.numel()),
                    "indices": chosen.tolist(),
                    "scores": scores[local].tolist(),
                },
            )
        return self.record(ctx, chosen)

    def select(self, ctx: UpdateContext) -> torch.Tensor:  # never scheduled: update_every is 0
        raise RuntimeError(f"selector={getattr(self, 'config_name', 'offline')} selects once, before training")
