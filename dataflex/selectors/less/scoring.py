"""LESS's scoring, shared by the online and the offline selector (ALGORITHMS.md, less).

Each part usable on its own:

* the pure core :func:`less_scores` (tensors in, tensors out; the documented extension API), with
  :func:`combine_subtask_similarities` and :func:`epoch_learning_rates` for the checkpoint weights
  (re-exported: they live in :mod:`dataflex.signals.features` and :mod:`dataflex.train.checkpoints`,
  which offline NICE shares);
* :func:`checkpoint_similarities`: one checkpoint's mean cosine of every candidate with every
  validation subtask, from the signals engine's feature passes
  (:func:`dataflex.signals.features.training_features`, :func:`~dataflex.signals.features.validation_features`);
* :class:`LessComponent`, the selector base of :class:`~dataflex.selectors.less.online.LessSelector`
  (``selector=less``) and :class:`~dataflex.selectors.less.offline.LessOfflineSelector`
  (``selector=less_offline``): the feature settings, the seeded projector, the validation rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from dataflex.errors import ConfigError
from dataflex.selectors.base import INITIAL, PoolLossSelector, seeded_generator
from dataflex.signals.features import (  # noqa: F401  (checkpoint_weight_vector, combine_...: re-exported)
    GRADIENT_TYPES,
    NORM_EPS,
    as_checkpoints,
    checkpoint_weight_vector,
    combine_subtask_similarities,
    make_projector,
    normalize_features,
    subtask_centroids,
    training_features,
    validation_features,
)
from dataflex.signals.text import IGNORE_INDEX
from dataflex.train.checkpoints import epoch_learning_rates  # noqa: F401  (re-exported: LESS's historical home)
from dataflex.train.components import UpdateContext

#: generator stream of the validation subset (stream 1 is the candidate subset's)
VALIDATION_STREAM = 2


# ------------------------------------------------------------------------------------ pure cores
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


def _check_hyperparameters(
    proj_dim, proj_kind, gradient_type, projection_cache_mb, validation_per_subtask=None
) -> None:
    from dataflex.signals.projection import KINDS

    if validation_per_subtask is not None and (
        isinstance(validation_per_subtask, bool)
        or not isinstance(validation_per_subtask, int)
        or validation_per_subtask < 1
    ):
        raise ValueError(f"validation_per_subtask must be a positive int or null, got {validation_per_subtask!r}")

    if isinstance(proj_dim, bool) or not isinstance(proj_dim, int) or proj_dim < 1:
        raise ValueError(f"proj_dim must be a positive int, got {proj_dim!r}")
    if proj_kind not in KINDS:
        raise ValueError(f"proj_kind must be one of {KINDS}, got {proj_kind!r}")
    if gradient_type not in GRADIENT_TYPES:
        raise ValueError(f"gradient_type must be one of {GRADIENT_TYPES}, got {gradient_type!r}")
    if (
        isinstance(projection_cache_mb, bool)
        or not isinstance(projection_cache_mb, (int, float))
        or projection_cache_mb < 0
    ):
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
        model,
        pool,
        collator,
        candidates,
        projector,
        gradient_type,
        batch_size,
        optimizer=optimizer,
        adam=adam,
        reduce=against_centroids,
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

    proj_dim: int = 8192
    proj_kind: str = "sjlt"
    gradient_type: str = "adam"
    projection_cache_mb: float = 0
    validation_per_subtask: int | None = None
    # -- fidelity options (docs/ALGORITHMS.md "less") --
    subtask_column: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_hyperparameters(
            self.proj_dim, self.proj_kind, self.gradient_type, self.projection_cache_mb, self.validation_per_subtask
        )
        column = self.subtask_column
        if column is not None and (not isinstance(column, str) or not column.strip()):
            raise ConfigError(f"selector=less: subtask_column must be a column name or null, got {column!r}")
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
            ctx.model,
            ctx.pool,
            ctx.collator,
            candidates,
            self.projector,
            self.gradient_type,
            self.batch_size,
            validation=validation,
            validation_indices=rows,
            optimizer=ctx.optimizer,
            adam=adam,
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_scores": self.last_scores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_scores = state.get("last_scores")
