"""LESS (Xia et al. 2024): select the training samples whose (Adam-preconditioned) gradients point
where the validation samples' gradients point (ALGORITHMS.md, less).

One method, three modules:

* :mod:`~dataflex.selectors.less.scoring`: the scoring both selectors share (the pure core
  :func:`less_scores`, checkpoint weights, one checkpoint's similarities) and their base
  :class:`LessComponent`;
* :mod:`~dataflex.selectors.less.online`: :class:`LessSelector` (``selector=less``: every update,
  the current model and optimizer state, one checkpoint);
* :mod:`~dataflex.selectors.less.offline`: :class:`LessOfflineSelector` (``selector=less_offline``,
  the paper's recipe: once, before training, the per-epoch checkpoints of a warm-up run).

Everything is importable from here (``dataflex.selectors.less.LessSelector``, the ``_target_`` of
the shipped configs).
"""

from dataflex.selectors.less.offline import OFFLINE_RECORD, LessOfflineSelector
from dataflex.selectors.less.online import LessSelector
from dataflex.selectors.less.scoring import (
    VALIDATION_STREAM,
    LessComponent,
    check_labelled_rows,
    checkpoint_similarities,
    checkpoint_weight_vector,
    combine_subtask_similarities,
    epoch_learning_rates,
    less_scores,
    subtask_ids,
    validation_subset,
)

__all__ = [
    "OFFLINE_RECORD",
    "VALIDATION_STREAM",
    "LessComponent",
    "LessOfflineSelector",
    "LessSelector",
    "check_labelled_rows",
    "checkpoint_similarities",
    "checkpoint_weight_vector",
    "combine_subtask_similarities",
    "epoch_learning_rates",
    "less_scores",
    "subtask_ids",
    "validation_subset",
]
