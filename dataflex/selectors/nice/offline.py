"""NICE, offline (``selector=nice_offline``): once, before training, under every warm-up checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from dataflex.selectors.base import (
    WarmupRecipe,
    seeded_generator,
)
from dataflex.selectors.nice.online import NiceSelector
from dataflex.signals.distributed import (
    is_main_process,
)
from dataflex.signals.features import (
    checkpoint_weight_vector,
    combine_subtask_similarities,
    top_k_indices,
)
from dataflex.train.components import UpdateContext
from dataflex.utils import atomic_write_json

#: what the offline selector writes into the run directory (besides selections/round_000.json)
OFFLINE_RECORD = "nice_offline.json"


class NiceOfflineSelector(WarmupRecipe, NiceSelector):
    """NICE's offline recipe, as the paper runs it (``selector=nice_offline``): once, before
    training, score the pool under every per-epoch checkpoint of a warm-up run and keep the top k
    for the whole run (ALGORITHMS.md, nice; the checkpoint handling is offline LESS's).

    For every warm-up checkpoint c (:func:`~dataflex.train.checkpoints.for_each_warmup_checkpoint`:
    its weights loaded into this run's model, its saved Adam moments for the training features),
    one round of :class:`NiceSelector` runs under c: responses sampled from c's model (on-policy for
    c, the same seeded prompts and sampling seed at every c), their rewards, the REINFORCE
    validation features and the candidates' training features, kept as ``sim_c[z, j]`` (mean cosine
    with subtask j). Score(z) = max_j Σ_c w_c · sim_c[z, j] with w_c the mean learning rate of the
    epoch ending at c (:func:`~dataflex.train.checkpoints.warmup_checkpoint_weights`), normalised
    to sum 1 (:func:`~dataflex.signals.features.combine_subtask_similarities`). The model's own
    weights are put back before training; the selection never changes afterwards.

    Written to ``nice_offline.json`` (checkpoints, weights, each checkpoint's mean reward, the
    chosen samples and scores) and ``selections/round_000.json``. ``python -m
    dataflex.cli.less_offline experiment=nice_offline`` trains the warm-up and then runs this.

    Args:
        budget: k, an int count or a float fraction of the pool (the paper: 5%).
        warmup_dir: the warm-up run directory (or its ``checkpoints``).
        checkpoints: the warm-up steps to use (None: every complete checkpoint).
        checkpoint_weights: explicit w_c, one per checkpoint (None: the epochs' mean learning rates).
        (sampling, reward and feature settings as :class:`NiceSelector`)
    """

    def initial_indices(self, ctx: UpdateContext) -> torch.Tensor:
        candidates = self.candidate_indices(ctx)
        found, weights, rounds = self.over_warmup_checkpoints(
            ctx, "python -m dataflex.cli.less_offline experiment=nice_offline",
            lambda adam: self.similarities(ctx, candidates, adam=adam),
        )
        scores = combine_subtask_similarities(torch.stack([sims for sims, _, _ in rounds]), weights)
        local = top_k_indices(scores, self.k(ctx), seeded_generator(self.seed, ctx.update_index))
        chosen = candidates[local]
        rewards = torch.stack([r.float() for _, r, _ in rounds])  # [C, P, M]
        self.last_scores = {
            "update_index": ctx.update_index,
            "candidates": candidates,
            "scores": scores.float(),
            "validation_indices": rounds[0][2],
            "rewards": rewards,
            "checkpoint_steps": [s for s, _ in found],
            "checkpoint_weights": checkpoint_weight_vector(weights, len(found)).tolist(),
        }
        if ctx.run_dir is not None and is_main_process():
            atomic_write_json(Path(ctx.run_dir) / OFFLINE_RECORD, {
                "warmup_dir": str(self.warmup_dir),
                "checkpoints": [str(p) for _, p in found],
                "checkpoint_steps": self.last_scores["checkpoint_steps"],
                "checkpoint_weights": self.last_scores["checkpoint_weights"],
                "reward_mean": rewards.flatten(1).mean(1).tolist(),
                "candidates": int(candidates.numel()),
                "k": int(chosen.numel()),
                "indices": chosen.tolist(),
                "scores": scores[local].tolist(),
            })
        return self.record(ctx, chosen)

    def select(self, ctx: UpdateContext) -> torch.Tensor:  # never scheduled: update_every is 0
        raise RuntimeError("offline NICE selects once, before training")
