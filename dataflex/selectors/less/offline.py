"""Offline LESS (``selector=less_offline``), the LESS paper's recipe: once, before training, score the
pool with the per-epoch checkpoints of a warm-up run, learning-rate-weighted, and keep the top k
for the whole run (ALGORITHMS.md, less). ``python -m dataflex.cli.less_offline`` runs the warm-up
and then this.

The scoring is LESS's (:mod:`dataflex.selectors.less.scoring`; this recipe is a LESS variant, so it
shares LESS's component base); the warm-up's checkpoints are read through :mod:`dataflex.train.checkpoints`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dataflex.selectors.base import WarmupRecipe
from dataflex.selectors.less.scoring import LessComponent
from dataflex.signals.distributed import is_main_process
from dataflex.signals.features import (
    checkpoint_weight_vector,
    combine_subtask_similarities,
    top_k_indices,
)
from dataflex.train.components import UpdateContext
from dataflex.utils import atomic_write_json

#: What the offline selector writes into the run directory (besides selections/round_000.json).
OFFLINE_RECORD = "less_offline.json"


class LessOfflineSelector(WarmupRecipe, LessComponent):
    """The LESS paper's offline selection (``selector=less_offline``): once, before training, score
    the pool with the per-epoch checkpoints of a warm-up run and keep the top k for the whole run.

    For every warm-up checkpoint c (``checkpoint-N`` of ``warmup_dir`` holding a LoRA adapter or
    full weights, and ``optimizer.pt``): its weights are loaded into this run's model, the
    validation features ∇ℓ_c and the candidates' training features Γ_c (with c's saved Adam
    moments) are computed, and their mean cosine per validation subtask is kept (``[N, J]``).
    Score(z) = max_j Σ_c w_c · sim_c[z, j] with w_c the mean learning rate of the epoch ending at c
    (:func:`~dataflex.train.checkpoints.epoch_learning_rates`, from the last checkpoint's
    ``trainer_state.json``), normalised to sum 1. The model's own weights are restored before
    training starts (it trains from where it was built, as in the paper), and never updates
    afterwards.

    The decision is logged like every selection (``selections/round_000.json``) and written with
    the checkpoints, their weights and the chosen samples' scores to ``less_offline.json`` in the
    run directory. ``python -m dataflex.cli.less_offline`` trains the warm-up and then runs this.

    Attributes:
        budget: k, an int count or a float fraction of the pool (the paper: 5%).
        warmup_dir: the warm-up run directory (or its ``checkpoints``).
        checkpoints: the warm-up steps to use (None: every complete checkpoint).
        checkpoint_weights: explicit w_c, one per checkpoint (None: the epochs' mean learning rates).
        (others as :class:`~dataflex.selectors.less.online.LessSelector`)
    """

    def initial_indices(self, ctx: UpdateContext) -> torch.Tensor:
        candidates = self.candidate_indices(ctx)
        found, weights, sims = self.over_warmup_checkpoints(
            ctx, "python -m dataflex.cli.less_offline", lambda adam: self.similarities(ctx, candidates, adam=adam)
        )
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
