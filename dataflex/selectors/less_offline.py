"""Offline LESS (``selector=less_offline``), the LESS paper's recipe: once, before training, score the
pool with the per-epoch checkpoints of a warm-up run, learning-rate-weighted, and keep the top k
for the whole run (ALGORITHMS.md, less). ``python -m dataflex.cli.less_offline`` runs the warm-up
and then this.

The scoring is LESS's (:mod:`dataflex.selectors.less`; this recipe is a LESS variant, so it shares
LESS's component base); the warm-up's checkpoints are read through :mod:`dataflex.train.checkpoints`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from dataflex.errors import ConfigError
from dataflex.selectors.less import (
    LessComponent,
    checkpoint_weight_vector,
    combine_subtask_similarities,
    epoch_learning_rates,
)
from dataflex.signals.distributed import is_main_process
from dataflex.signals.features import top_k_indices
from dataflex.signals.gradients import trainable_parameters
from dataflex.train.checkpoints import checkpoint_adam_state, load_trainable_weights, warmup_checkpoints
from dataflex.train.components import UpdateContext
from dataflex.utils import atomic_write_json

#: What the offline selector writes into the run directory (besides selections/round_000.json).
OFFLINE_RECORD = "less_offline.json"


class LessOfflineSelector(LessComponent):
    """The LESS paper's offline selection (``selector=less_offline``): once, before training, score
    the pool with the per-epoch checkpoints of a warm-up run and keep the top k for the whole run.

    For every warm-up checkpoint c (``checkpoint-N`` of ``warmup_dir`` holding a LoRA adapter or
    full weights, and ``optimizer.pt``): its weights are loaded into this run's model, the
    validation features ∇ℓ_c and the candidates' training features Γ_c (with c's saved Adam
    moments) are computed, and their mean cosine per validation subtask is kept (``[N, J]``).
    Score(z) = max_j Σ_c w_c · sim_c[z, j] with w_c the mean learning rate of the epoch ending at c
    (:func:`~dataflex.selectors.less.epoch_learning_rates`, from the last checkpoint's
    ``trainer_state.json``), normalised to sum 1. The model's own weights are restored before
    training starts (it trains from where it was built, as in the paper), and never updates
    afterwards.

    The decision is logged like every selection (``selections/round_000.json``) and written with
    the checkpoints, their weights and the chosen samples' scores to ``less_offline.json`` in the
    run directory. ``python -m dataflex.cli.less_offline`` trains the warm-up and then runs this.

    Args:
        budget: k, an int count or a float fraction of the pool (the paper: 5%).
        warmup_dir: the warm-up run directory (or its ``checkpoints``).
        checkpoints: the warm-up steps to use (None: every complete checkpoint).
        checkpoint_weights: explicit w_c, one per checkpoint (None: the epochs' mean learning rates).
        (others as :class:`~dataflex.selectors.less.LessSelector`)
    """

    def __init__(
        self,
        budget=0.05,
        warmup_dir: str | None = None,
        checkpoints: Sequence[int] | None = None,
        checkpoint_weights: Sequence[float] | None = None,
        seed=0,
        candidates=None,
        batch_size=16,
        proj_dim: int = 8192,
        proj_kind: str = "sjlt",
        gradient_type: str = "adam",
        projection_cache_mb: float = 0,
        validation_per_subtask: int | None = None,
        # -- fidelity options (docs/ALGORITHMS.md "less") --
        subtask_column: str | None = None,
    ):
        super().__init__(budget, 0, 0, 0, seed, candidates, batch_size,
                         proj_dim, proj_kind, gradient_type, projection_cache_mb, validation_per_subtask,
                         subtask_column=subtask_column)
        if checkpoints is not None and (not list(checkpoints) or any(int(s) <= 0 for s in checkpoints)):
            raise ValueError(f"checkpoints must list positive warm-up steps (or be null), got {checkpoints!r}")
        if checkpoint_weights is not None:
            checkpoint_weight_vector(checkpoint_weights, len(list(checkpoint_weights)))  # finite, >= 0, not all 0
            if checkpoints is not None and len(list(checkpoint_weights)) != len(list(checkpoints)):
                raise ValueError(
                    f"{len(list(checkpoint_weights))} checkpoint_weights for {len(list(checkpoints))} checkpoints"
                )
        self.warmup_dir = warmup_dir
        self.checkpoints = None if checkpoints is None else sorted(int(s) for s in checkpoints)
        self.checkpoint_weights = None if checkpoint_weights is None else [float(w) for w in checkpoint_weights]

    def _weights(self, found: list[tuple[int, Path]]) -> list[float]:
        if self.checkpoint_weights is not None:
            if len(self.checkpoint_weights) != len(found):
                n = len(self.checkpoint_weights)
                raise ConfigError(f"selector.checkpoint_weights has {n} entries for {len(found)} checkpoints")
            return list(self.checkpoint_weights)
        state_file = found[-1][1] / "trainer_state.json"
        if not state_file.is_file():
            raise ConfigError(f"{state_file} not found; give selector.checkpoint_weights explicitly")
        return epoch_learning_rates(json.loads(state_file.read_text())["log_history"], [s for s, _ in found])

    def initial_indices(self, ctx: UpdateContext) -> torch.Tensor:
        name = getattr(self, "config_name", "less_offline")
        if not self.warmup_dir:
            raise ConfigError(
                f"selector={name} needs selector.warmup_dir=<a warm-up run directory with one checkpoint per epoch>; "
                "`python -m dataflex.cli.less_offline` trains the warm-up and then this run"
            )
        self.validation(ctx)  # a missing validation set fails before any pass
        found = warmup_checkpoints(self.warmup_dir, self.checkpoints)
        weights = self._weights(found)
        candidates = self.candidate_indices(ctx)
        model = ctx.model
        own = {n: p.detach().clone() for n, p in trainable_parameters(model).items()}
        sims = []
        try:
            for _, path in found:
                load_trainable_weights(model, path)
                adam = checkpoint_adam_state(path, ctx.optimizer, model) if self.gradient_type == "adam" else None
                sims.append(self.similarities(ctx, candidates, adam=adam))
        finally:
            with torch.no_grad():
                for n, p in trainable_parameters(model).items():
                    p.copy_(own[n])
        scores = combine_subtask_similarities(torch.stack(sims), weights)
        local = top_k_indices(scores, self.k(ctx))
        chosen = candidates[local]
        self.last_scores = {
            "update_index": ctx.update_index,
            "candidates": candidates,
            "scores": scores.float(),
            "checkpoint_steps": [s for s, _ in found],
            "checkpoint_weights": checkpoint_weight_vector(weights, len(found)).tolist(),
        }
        if ctx.run_dir is not None and is_main_process():
            atomic_write_json(
                Path(ctx.run_dir) / OFFLINE_RECORD,
                {
                    "warmup_dir": str(self.warmup_dir),
                    "checkpoints": [str(p) for _, p in found],
                    "checkpoint_steps": self.last_scores["checkpoint_steps"],
                    "checkpoint_weights": self.last_scores["checkpoint_weights"],
                    "candidates": int(candidates.numel()),
                    "k": int(chosen.numel()),
                    "indices": chosen.tolist(),
                    "scores": scores[local].tolist(),
                },
            )
        return self.record(ctx, chosen)

    def select(self, ctx: UpdateContext) -> torch.Tensor:  # never scheduled: update_every is 0
        raise RuntimeError("offline LESS selects once, before training")
