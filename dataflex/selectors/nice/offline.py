"""NICE, offline (``selector=nice_offline``): once, before training, under every warm-up checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch

from dataflex.errors import ConfigError
from dataflex.selectors.base import (
    COUNT_OR_FRACTION,
    budget_problem,
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
from dataflex.train.checkpoints import (
    check_checkpoint_choice,
    for_each_warmup_checkpoint,
    warmup_checkpoint_weights,
    warmup_checkpoints,
)
from dataflex.train.components import UpdateContext
from dataflex.train.fields import param
from dataflex.utils import atomic_write_json

#: what the offline selector writes into the run directory (besides selections/round_000.json)
OFFLINE_RECORD = "nice_offline.json"


class NiceOfflineSelector(NiceSelector):
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

    acts_through_updates = False
    # decides once, at the start: no schedule keys
    warmup_steps: ClassVar[int] = 0
    update_every: ClassVar[int] = 0
    num_updates: ClassVar[int] = 0
    budget: int | float = param(0.05, check=budget_problem, expects=COUNT_OR_FRACTION)
    warmup_dir: str | None = None
    checkpoints: Sequence[int] | None = None
    checkpoint_weights: Sequence[float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.checkpoints, self.checkpoint_weights = check_checkpoint_choice(self.checkpoints, self.checkpoint_weights)

    def initial_indices(self, ctx: UpdateContext) -> torch.Tensor:
        name = getattr(self, "config_name", "nice_offline")
        if not self.warmup_dir:
            raise ConfigError(
                f"selector={name} needs selector.warmup_dir=<a warm-up run directory with one checkpoint per epoch>; "
                "`python -m dataflex.cli.less_offline experiment=nice_offline` trains the warm-up and then this run"
            )
        ctx.require_validation(name)  # a missing validation set fails before any pass
        found = warmup_checkpoints(self.warmup_dir, self.checkpoints)
        weights = warmup_checkpoint_weights(found, self.checkpoint_weights)
        candidates = self.candidate_indices(ctx)
        rounds = for_each_warmup_checkpoint(
            ctx.model, found, lambda _step, _path, adam: self.similarities(ctx, candidates, adam=adam),
            optimizer=ctx.optimizer, adam=self.gradient_type == "adam",
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
