"""NICE (Wang et al., ICML 2025): LESS with on-policy, reward-weighted validation gradients
(ALGORITHMS.md, nice).

Training features are LESS's (:func:`dataflex.signals.features.training_features`: Adam-preconditioned,
projected, L2-normalised per-sample gradients). The validation feature of a target prompt x is the
REINFORCE estimate of the gradient of its expected NEGATIVE reward,

    g_val(x) = (1/M) · Σ_m r(x, y_m) · ∇θ[−log πθ(y_m | x)],   y_m ~ πθ(· | x) (the current model),

with log πθ summed over the response tokens. It is computed with the per-sample gradient engine:
the (prompt + sampled response) rows, labelled on the response tokens, give the projected
gradients f of their token-mean NLL ℓ; the summed NLL is n·ℓ (n response tokens), so by linearity
of the projection the projected g_val(x) is (1/M)·Σ_m r_m·n_m·f_m (:func:`reinforce_features`).
Rows with r = 0 contribute nothing and are never differentiated. Each g_val(x) is projected with
the same seeded projector as the training features and L2-normalised; a zero one stays zero
(:func:`~dataflex.signals.features.normalize_features`), so r ≡ 0 gives score 0, never NaN. The
score of a pool sample is LESS's (max over subtasks of the mean cosine, against
:func:`~dataflex.signals.features.subtask_centroids`).

The reward is pluggable (:data:`RewardFn`): ``exact_match`` (default) or ``contains`` against the
reference answer (the labelled response of the validation row), or any callable named by import
path, e.g. a reward model.


One method, four modules: :mod:`.rewards` (the pluggable rewards), :mod:`.features` (the REINFORCE
validation features), :mod:`.online` (:class:`NiceSelector`) and :mod:`.offline`
(:class:`NiceOfflineSelector`); everything is importable from here (the ``_target_`` of the configs).
"""

from dataflex.selectors.nice.features import RowCollator, nice_validation_features, reinforce_features, reinforce_row
from dataflex.selectors.nice.offline import OFFLINE_RECORD, NiceOfflineSelector
from dataflex.selectors.nice.online import TOP_K, NiceSelector
from dataflex.selectors.nice.rewards import (
    REWARDS,
    RewardFn,
    compute_rewards,
    contains_match_reward,
    exact_match_reward,
    resolve_reward,
)

__all__ = [
    "OFFLINE_RECORD",
    "REWARDS",
    "TOP_K",
    "NiceOfflineSelector",
    "NiceSelector",
    "RewardFn",
    "RowCollator",
    "compute_rewards",
    "contains_match_reward",
    "exact_match_reward",
    "nice_validation_features",
    "reinforce_features",
    "reinforce_row",
    "resolve_reward",
]
