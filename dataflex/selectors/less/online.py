"""Online LESS (``selector=less``): every update, the current model and optimizer state, one
checkpoint (ALGORITHMS.md, less). The scoring is :mod:`dataflex.selectors.less.scoring`'s."""

from __future__ import annotations

import torch

from dataflex.selectors.less.scoring import LessComponent, combine_subtask_similarities
from dataflex.signals.features import top_k_indices
from dataflex.train.components import UpdateContext


class LessSelector(LessComponent):
    """Online LESS (``selector=less``): every update, score (a candidate subset of) the pool by the
    cosine of its Adam-preconditioned gradient features with the target set's gradient features,
    under the current model and optimizer state, and keep the top k.

    One checkpoint (now), so Score(z) = max_j mean_{z' in val_j} cos(Γ(z), ∇ℓ(z')); the subtasks
    are the validation set's ``domain_id`` (one per name in ``data.validation``, or per value of
    ``subtask_column``). Warm-up: a seeded
    random subset of ``budget`` samples (the Adam state is empty before the first optimizer step),
    so the first real selection happens after ``warmup_steps``. A round depends only on the model,
    the optimizer state, the seed and the round index, so a resumed run selects what the
    uninterrupted run selects.

    Attributes:
        proj_dim: d, the projected feature dimension.
        proj_kind: the random projection (``sjlt``, the default: sparse JL; ``rademacher``, its dense
            form; ``gaussian``, ``sparse``), seeded by ``seed``.
        gradient_type: ``adam`` (Γ) or ``sgd`` (the plain gradient) for the training features.
        projection_cache_mb: keep up to this many MiB of the projection's random blocks between
            batches and rounds (0: regenerate them every batch). Worth it for LoRA, whose
            projection matrix (trainable parameters x d x 4 bytes) may be small enough to keep.
        validation_per_subtask: score against at most this many rows of every validation subtask
            (a seeded subset fixed for the run, as the paper's few-shot targets; None: all rows).
        subtask_column: the subtasks are the values of this column of the one validation set (e.g.
            ``subject`` for MMLU); None: one subtask per name in ``data.validation``.
        batch_size: rows per batched forward/backward of the feature passes.
        (others as :class:`~dataflex.selectors.base.PoolLossSelector`)
    """

    #: the original DataFlex's params with no counterpart here, and why (used by dataflex-cli)
    legacy_unused = {"save_interval": "nothing is cached between rounds"}
    acts_through_updates = True

    def select(self, ctx: UpdateContext) -> torch.Tensor:
        self.validation(ctx)  # a missing validation set fails before any pass
        candidates = self.candidate_indices(ctx)
        scores = combine_subtask_similarities(self.similarities(ctx, candidates))
        local = top_k_indices(scores, self.k(ctx))
        self.last_scores = {"update_index": ctx.update_index, "candidates": candidates, "scores": scores.float()}
        return self.record(ctx, candidates[local])
