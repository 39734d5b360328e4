"""LESS (Xia et al. 2024): select the training samples whose (Adam-preconditioned) gradients point
where the validation samples' gradients point (ALGORITHMS.md, less).

The scoring, each part usable on its own:

* the pure core :func:`less_scores` (tensors in, tensors out; the documented extension API), with
  :func:`combine_subtask_similarities` and :func:`epoch_learning_rates` for the checkpoint weights;
* :func:`checkpoint_similarities`: one checkpoint's mean cosine of every candidate with every
  validation subtask, from the signals engine's feature passes
  (:func:`dataflex.signals.features.training_features`, :func:`~dataflex.signals.features.validation_features`);
* the component :class:`LessSelector` (``selector=less``, online: every update, the current model
  and optimizer state, one checkpoint) on :class:`LessComponent`, the base it shares with the
  paper's offline recipe (:class:`dataflex.selectors.less_offline.LessOfflineSelector`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from dataflex.errors import ConfigError
from dataflex.selectors.base import PoolLossSelector
from dataflex.signals.features import (
    GRADIENT_TYPES,
    NORM_EPS,
    as_checkpoints,
    make_projector,
    normalize_features,
    subtask_centroids,
    top_k_indices,
    training_features,
    validation_features,
)
from dataflex.signals.text import IGNORE_INDEX
from dataflex.train.components import UpdateContext

#: generator stream of the validation subset (stream 1 is the candidate subset's)
VALIDATION_STREAM = 2


# ------------------------------------------------------------------------------------ pure cores
def checkpoint_weight_vector(checkpoint_weights: Tensor | Sequence[float] | None, c: int) -> Tensor:
    """``w_c`` normalised to sum 1 (float64; None: uniform over ``c`` checkpoints)."""
    if checkpoint_weights is None:
        return torch.full((c,), 1.0 / c, dtype=torch.float64)
    w = torch.as_tensor(checkpoint_weights, dtype=torch.float64).flatten()
    if w.numel() != c:
        raise ValueError(f"got {w.numel()} checkpoint weights for {c} checkpoints")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"checkpoint weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w / w.sum()


def combine_subtask_similarities(
    similarities: Tensor, checkpoint_weights: Tensor | Sequence[float] | None = None
) -> Tensor:
    """Score(z) = max_j Σ_c w_c · sim[c, z, j] from per-checkpoint subtask similarities ``[C, N, J]``
    (or ``[N, J]`` for one checkpoint).

    The weighted sum over checkpoints comes first, the max over subtasks last (ALGORITHMS.md).
    """
    sims = torch.as_tensor(similarities).double()
    if sims.dim() == 2:
        sims = sims.unsqueeze(0)
    if sims.dim() != 3:
        raise ValueError(f"similarities must be [N, J] or [C, N, J], got shape {tuple(sims.shape)}")
    w = checkpoint_weight_vector(checkpoint_weights, sims.shape[0]).to(sims.device)
    return torch.einsum("c,cnj->nj", w, sims).max(dim=-1).values


def less_scores(
    train_features: Tensor,
    val_features: Tensor,
    val_groups: Tensor | Sequence[int] | None = None,
    checkpoint_weights: Tensor | Sequence[float] | None = None,
) -> Tensor:
    """The pure core: the LESS score of every training sample.

    Score(z) = max over validation subtasks j of Σ_c w_c · mean_{z' in val_j} cos(Γ_c(z), ∇ℓ_c(z')),
    with w normalised to sum 1. Features are L2-normalised here (cosine), so any positive rescaling
    of a row (e.g. a sample's loss multiplied by a constant, under SGD features) leaves the scores
    unchanged; an all-zero row has cosine 0 with everything.

    Args:
        train_features: ``[N, d]`` (one checkpoint) or ``[C, N, d]``.
        val_features: ``[M, d]`` or ``[C, M, d]`` (the same C and d).
        val_groups: a subtask id per validation row (the same for every checkpoint); None: one
            subtask.
        checkpoint_weights: ``[C]`` non-negative weights (None: uniform), normalised to sum 1.

    Returns:
        ``Tensor[N]`` (float64), each in [-1, 1].

    Raises:
        ValueError: shapes that do not fit together, or invalid weights.
    """
    train = normalize_features(as_checkpoints(train_features, "train_features").double(), NORM_EPS)
    centroids = subtask_centroids(as_checkpoints(val_features, "val_features"), val_groups, NORM_EPS)
    if centroids.shape[0] != train.shape[0] or centroids.shape[-1] != train.shape[-1]:
        raise ValueError(
            f"train features {tuple(train.shape)} and validation features (C={centroids.shape[0]}, "
            f"d={centroids.shape[-1]}) disagree on checkpoints or dimension"
        )
    sims = torch.einsum("cnd,cjd->cnj", train, centroids.to(train.device))
    return combine_subtask_similarities(sims, checkpoint_weights)


def epoch_learning_rates(
    log_history: Sequence[Mapping[str, Any]], checkpoint_steps: Sequence[int]
) -> list[float]:
    """The mean learning rate of the epoch ending at each checkpoint (the LESS checkpoint weights,
    before normalisation).

    The epoch ending at checkpoint ``c`` is the steps ``(previous checkpoint, c]`` (the first one
    starts after step 0). transformers logs, at step s, the rate the optimizer used FOR step s; with
    ``logging_steps=1`` (what the warm-up of :mod:`dataflex.cli.less_offline` uses) every step is
    logged and this is the exact mean; otherwise it is the mean of the logged steps.

    Args:
        log_history: the trainer's ``log_history`` (``trainer_state.json``): dicts with ``step`` and,
            on training logs, ``learning_rate``.
        checkpoint_steps: increasing global steps of the checkpoints.

    Returns:
        One mean learning rate per checkpoint.

    Raises:
        ValueError: steps not increasing, or an epoch with no logged learning rate.
    """
    steps = [int(s) for s in checkpoint_steps]
    if not steps or any(b <= a for a, b in zip(steps, steps[1:])) or steps[0] <= 0:
        raise ValueError(f"checkpoint steps must be positive and increasing, got {steps}")
    logged: dict[int, float] = {}
    for record in log_history:
        if "learning_rate" in record and "step" in record:
            logged[int(record["step"])] = float(record["learning_rate"])
    means, previous = [], 0
    for step in steps:
        window = [lr for s, lr in logged.items() if previous < s <= step]
        if not window:
            raise ValueError(
                f"no learning rate was logged between step {previous} and checkpoint-{step}; "
                "rerun the warm-up with trainer.logging_steps=1 or give selector.checkpoint_weights"
            )
        means.append(sum(window) / len(window))
        previous = step
    return means


def _check_hyperparameters(proj_dim, proj_kind, gradient_type, projection_cache_mb, validation_per_subtask=None) -> None:
    from dataflex.signals.projection import KINDS

    if validation_per_subtask is not None and (
        isinstance(validation_per_subtask, bool) or not isinstance(validation_per_subtask, int) or validation_per_subtask < 1
    ):
        raise ValueError(f"validation_per_subtask must be a positive int or null, got {validation_per_subtask!r}")

    if isinstance(proj_dim, bool) or not isinstance(proj_dim, int) or proj_dim < 1:
        raise ValueError(f"proj_dim must be a positive int, got {proj_dim!r}")
    if proj_kind not in KINDS:
        raise ValueError(f"proj_kind must be one of {KINDS}, got {proj_kind!r}")
    if gradient_type not in GRADIENT_TYPES:
        raise ValueError(f"gradient_type must be one of {GRADIENT_TYPES}, got {gradient_type!r}")
    if isinstance(projection_cache_mb, bool) or not isinstance(projection_cache_mb, (int, float)) or projection_cache_mb < 0:
        raise ValueError(f"projection_cache_mb must be a number >= 0, got {projection_cache_mb!r}")


def subtask_ids(validation: Any) -> Tensor | None:
    """The subtask id of every validation row (its ``domain_id``), or None (one subtask)."""
    if "domain_id" not in getattr(validation, "column_names", ()):
        return None
    return torch.as_tensor(validation["domain_id"], dtype=torch.long)


def check_labelled_rows(validation: Any, rows: Tensor | None, who: str = "less") -> None:
    """Refuse a validation row (of ``rows``, None: all) without a label token: its gradient would be
    0 and count as a cosine of 0 in its subtask's mean. Rows without a ``labels`` column pass (pt)."""
    if "labels" not in getattr(validation, "column_names", ()):
        return
    indices = range(len(validation)) if rows is None else [int(i) for i in rows]
    for i in indices:
        if all(t == IGNORE_INDEX for t in validation[i]["labels"]):
            subtask = validation[i]["domain_id"] if "domain_id" in validation.column_names else 0
            raise ConfigError(
                f"selector={who}: validation row {i} (subtask {subtask}) has no label token (an empty response, or a "
                "prompt that fills data.cutoff_len); raise data.cutoff_len or remove the row from data.validation"
            )


def validation_subset(groups: Tensor | None, size: int, per_subtask: int | None, seed: int) -> Tensor | None:
    """At most ``per_subtask`` validation rows of every subtask (the paper's few-shot targets): a
    seeded draw that depends only on ``seed``, the same in every round; sorted. None: all rows.

    Args:
        groups: the subtask id of every row (None: one subtask).
        size: the number of validation rows.
        per_subtask: rows kept per subtask (None: all).
        seed: the selector's seed.
    """
    if per_subtask is None:
        return None
    from dataflex.selectors.base import INITIAL, seeded_generator

    groups = torch.zeros(size, dtype=torch.long) if groups is None else torch.as_tensor(groups, dtype=torch.long)
    order = torch.randperm(size, generator=seeded_generator(seed, INITIAL, VALIDATION_STREAM))
    kept = []
    for g in torch.unique(groups).tolist():
        rows = order[groups[order] == g]
        kept.append(rows[:per_subtask])
    return torch.cat(kept).sort().values


def checkpoint_similarities(
    model: torch.nn.Module,
    pool: Any,
    collator: Any,
    candidates: Tensor,
    projector: Any,
    gradient_type: str = "adam",
    batch_size: int = 16,
    *,
    validation: Any,
    validation_indices: Tensor | None = None,
    optimizer: Any = None,
    adam: Mapping[str, tuple[Tensor, Tensor]] | None = None,
) -> Tensor:
    """One checkpoint's ``[n, J]`` mean cosine of every candidate with every validation subtask,
    under the model and optimizer state as they are now (or ``adam`` when given).

    Row i, column j is ``mean_{z' in val_j} cos(Γ(z_i), ∇ℓ(z'))`` (:func:`less_scores` before the
    checkpoint sum and the subtask max), computed against the subtask centroids so the pool pass
    never holds ``n x d``. Subtasks are the validation rows' ``domain_id``; ``validation_indices``
    restricts the validation rows (None: all).

    Args:
        model, pool, collator: the model, the training pool and its collator.
        candidates: the pool rows to score.
        projector, gradient_type, batch_size, optimizer, adam: as
            :func:`dataflex.signals.features.training_features`.
        validation: the target/validation rows.
        validation_indices: the validation rows scored against (None: all).
    """
    val = validation_features(model, validation, collator, projector, validation_indices, batch_size)
    groups = subtask_ids(validation)
    if groups is not None and validation_indices is not None:
        groups = groups[torch.as_tensor(validation_indices, dtype=torch.long)]
    centroids = subtask_centroids(val, groups, NORM_EPS)  # [J, d] float64

    def against_centroids(features: Tensor) -> Tensor:
        return features.double() @ centroids.to(features.device).T

    return training_features(
        model, pool, collator, candidates, projector, gradient_type, batch_size,
        optimizer=optimizer, adam=adam, reduce=against_centroids,
    )


# ------------------------------------------------------------------------------------- components
class LessComponent(PoolLossSelector):
    """What both LESS selectors share: the feature settings, the projector, the validation rows.

    Subtasks: the validation set's ``domain_id`` (one per name in ``data.validation``) or, with
    ``subtask_column`` (e.g. MMLU's ``subject``: 57 subtasks), the values of that column of the one
    set ``data.validation`` names (the run splits it by the column before tokenising; see
    :func:`dataflex.backend.llamafactory.resolve_validation_column`). A validation row without a label
    token is refused, naming it (its gradient would be 0: a silent cosine of 0 in its subtask's mean).
    """

    needs_validation = True

    def __init__(self, budget, warmup_steps, update_every, num_updates, seed, candidates, batch_size,
                 proj_dim, proj_kind, gradient_type, projection_cache_mb, validation_per_subtask,
                 subtask_column: str | None = None):
        super().__init__(budget, warmup_steps, update_every, num_updates, seed, candidates, batch_size)
        _check_hyperparameters(proj_dim, proj_kind, gradient_type, projection_cache_mb, validation_per_subtask)
        if subtask_column is not None and (not isinstance(subtask_column, str) or not subtask_column.strip()):
            raise ConfigError(f"selector=less: subtask_column must be a column name or null, got {subtask_column!r}")
        self.subtask_column = subtask_column
        self.proj_dim, self.proj_kind, self.gradient_type = int(proj_dim), proj_kind, gradient_type
        self.projection_cache_mb = projection_cache_mb
        self.validation_per_subtask = validation_per_subtask
        self._projector = None
        self._labels_checked = False
        # the scores of the latest round only (a full history would grow the checkpoint every round)
        self.last_scores: dict[str, Any] | None = None

    @property
    def projector(self):
        """The seeded projection (the same in every round, process and resumed run)."""
        if self._projector is None:
            self._projector = make_projector(self.proj_dim, self.seed, self.proj_kind, self.projection_cache_mb)
        return self._projector

    def validation(self, ctx: UpdateContext) -> tuple[Any, Tensor | None]:
        """The target set and the rows of it that are scored against (None: all)."""
        who = getattr(self, "config_name", "less")
        validation = ctx.require_validation(who)
        rows = validation_subset(subtask_ids(validation), len(validation), self.validation_per_subtask, self.seed)
        if not self._labels_checked:
            check_labelled_rows(validation, rows, who)
            self._labels_checked = True
        return validation, rows

    def similarities(self, ctx: UpdateContext, candidates: Tensor, adam=None) -> Tensor:
        """``[n, J]``: :func:`checkpoint_similarities` under the model as it is now."""
        validation, rows = self.validation(ctx)
        return checkpoint_similarities(
            ctx.model, ctx.pool, ctx.collator, candidates, self.projector, self.gradient_type, self.batch_size,
            validation=validation, validation_indices=rows, optimizer=ctx.optimizer, adam=adam,
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_scores": self.last_scores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_scores = state.get("last_scores")


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

    Args:
        proj_dim: d, the projected feature dimension.
        proj_kind: the random projection (``sjlt``, ``rademacher``, ``gaussian``, ``sparse``), seeded by ``seed``.
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
    #: decides through updates: one that could never update in the run is refused (dataflex.preflight)
    acts_through_updates = True

    def __init__(
        self,
        budget,
        warmup_steps=0,
        update_every=0,
        num_updates=0,
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
        super().__init__(budget, warmup_steps, update_every, num_updates, seed, candidates, batch_size,
                         proj_dim, proj_kind, gradient_type, projection_cache_mb, validation_per_subtask,
                         subtask_column=subtask_column)

    def select(self, ctx: UpdateContext) -> torch.Tensor:
        self.validation(ctx)  # a missing validation set fails before any pass
        candidates = self.candidate_indices(ctx)
        scores = combine_subtask_similarities(self.similarities(ctx, candidates))
        local = top_k_indices(scores, self.k(ctx))
        self.last_scores = {"update_index": ctx.update_index, "candidates": candidates, "scores": scores.float()}
        return self.record(ctx, candidates[local])
