"""Gradient features of samples for LESS-like selection (LESS, NICE): the batched feature passes and
the small tensor helpers that score with them.

* :func:`training_features`: projected, L2-normalised Adam (:mod:`dataflex.signals.adam`) or SGD
  features of pool rows under the current model (and optimizer state);
* :func:`validation_features`: projected, L2-normalised plain gradients of target rows;
* :func:`make_projector`: the seeded projection both passes share;
* :func:`normalize_features`, :func:`subtask_centroids`, :func:`top_k_indices`: row normalisation,
  the mean normalised feature of every subtask, the k best scores;
* :func:`checkpoint_weight_vector`, :func:`combine_subtask_similarities`: several checkpoints'
  similarities, weighted (the offline recipes of LESS and NICE).

The passes are batched, streamed through
:func:`dataflex.signals.gradients.project_per_sample_gradients` and sharded over ranks by
:func:`dataflex.signals.pool.map_pool`. They take the model, the rows and their collator
explicitly (never a trainer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dataflex.errors import ConfigError
from dataflex.signals.adam import BETA1, BETA2, EPS, AdamProjector, adam_transform, shared_trainable_parameters
from dataflex.signals.gradients import DEFAULT_CHUNK_SIZE, project_per_sample_gradients, trainable_parameters
from dataflex.signals.pool import map_pool

GRADIENT_TYPES = ("adam", "sgd")

#: elements per sample per streamed gradient chunk (the signals engine's default)
CHUNK_SIZE = DEFAULT_CHUNK_SIZE

#: the norm floor of LESS's row normalisation (``F.normalize``'s default)
NORM_EPS = 1e-12


# -------------------------------------------------------------------------------- tensor helpers
def normalize_features(features: Tensor, eps: float | None = None) -> Tensor:
    """Each row divided by its L2 norm; an all-zero row stays all zero (never NaN).

    Args:
        features: ``[..., d]``.
        eps: None (exact): computed in float64 so a tiny but non-zero row does not underflow to a
            zero norm, and every non-zero row gets unit norm (NICE's REINFORCE features); the
            result in the input dtype. A float: ``F.normalize`` in the input dtype, norms below
            ``eps`` taken as ``eps`` (LESS's features, with :data:`NORM_EPS`).
    """
    if eps is not None:
        return F.normalize(features, p=2.0, dim=-1, eps=eps)
    x = features.double()
    norms = x.norm(dim=-1, keepdim=True)
    scaled = x / norms.clamp_min(torch.finfo(x.dtype).tiny)
    return torch.where(norms > 0, scaled, torch.zeros_like(x)).to(features.dtype)


def as_checkpoints(features: Tensor, what: str) -> Tensor:
    """``features`` as ``[C, N, d]`` (a ``[N, d]`` tensor is one checkpoint)."""
    features = torch.as_tensor(features)
    if features.dim() == 2:
        return features.unsqueeze(0)
    if features.dim() != 3:
        raise ValueError(f"{what} must be [N, d] or [C, N, d], got shape {tuple(features.shape)}")
    return features


def subtask_centroids(
    val_features: Tensor, val_groups: Tensor | Sequence[int] | None = None, eps: float | None = None
) -> Tensor:
    """The mean L2-normalised validation feature of every subtask (float64): ``[J, d]`` for ``[M, d]``
    features, ``[C, J, d]`` for ``[C, M, d]`` (one set per checkpoint).

    Because the cosine is linear in the normalised validation feature, ``mean_{z' in j} cos(x, z')``
    equals ``normalise(x) · centroid_j``: scoring against J centroids costs N x J, not N x M, and a
    pool pass keeps ``[N, J]`` similarities, never ``N x d``. A zero validation feature (e.g. no
    reward signal) counts as cosine 0 in its subtask's mean.

    Args:
        val_features: ``[M, d]`` or ``[C, M, d]``.
        val_groups: a subtask id per validation row (any integers; None: one subtask). Subtasks are
            ordered by id; ids with no row do not appear.
        eps: the row normalisation's (:func:`normalize_features`).
    """
    features = torch.as_tensor(val_features)
    val = normalize_features(as_checkpoints(features, "val_features").double(), eps)
    m = val.shape[1]
    if m == 0:
        raise ValueError("no validation feature to score against")
    if val_groups is None:
        centroids = val.mean(dim=1, keepdim=True)
    else:
        groups = torch.as_tensor(val_groups, dtype=torch.long).flatten()
        if groups.numel() != m:
            raise ValueError(f"val_groups has {groups.numel()} entries for {m} validation rows")
        _, inverse = torch.unique(groups, sorted=True, return_inverse=True)
        j = int(inverse.max()) + 1
        sums = torch.zeros(val.shape[0], j, val.shape[2], dtype=val.dtype, device=val.device)
        sums.index_add_(1, inverse.to(val.device), val)
        counts = torch.bincount(inverse, minlength=j).to(val)
        centroids = sums / counts[None, :, None]
    return centroids if features.dim() == 3 else centroids[0]


def top_k_indices(scores: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """The ``k`` highest scores' positions, highest first.

    Ties resolve to the lower index (a stable sort) without ``generator``; with one, by a random
    order drawn from it. A seeded tie-break keeps a round without any signal (NICE with r ≡ 0:
    every score 0) from always picking the first k rows: it then degrades to a seeded random subset.
    """
    scores = torch.as_tensor(scores).flatten()
    n = scores.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in [1, {n}], got {k}")
    perm = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    order = torch.sort(scores[perm], descending=True, stable=True).indices[:k]
    return perm[order]


def make_projector(dim: int, seed: int, kind: str = "sjlt", cache_mb: float = 0):
    """The projection shared by training and validation features (``Projector(dim, seed, kind)``),
    optionally keeping up to ``cache_mb`` MiB of generated random blocks between calls."""
    from dataflex.signals.projection import Projector

    return Projector(int(dim), seed=int(seed), kind=kind, cache_bytes=int(cache_mb * 2**20))


# ---------------------------------------------------------------------------------- feature passes
def _feature_pass(
    model, dataset, collator, indices, projector, transform, batch_size, reduce, desc, adam=None
) -> Tensor:
    """``adam``: ``(sizes, tied names, full transform)`` for :class:`AdamProjector` (Adam features)."""

    def features(model, batch):
        if adam is not None:
            proxy = AdamProjector(projector, adam[0], adam[1])
            out = project_per_sample_gradients(model, batch, proxy, chunk_size=CHUNK_SIZE, transform=transform)
            extra = proxy.flush(adam[2])
            out = out if extra is None else out + extra
        else:
            out = project_per_sample_gradients(model, batch, projector, chunk_size=CHUNK_SIZE, transform=transform)
        out = normalize_features(out, NORM_EPS)
        return reduce(out) if reduce is not None else out

    return map_pool(features, model, dataset, collator, indices=indices, batch_size=batch_size, desc=desc)


def training_features(
    model: torch.nn.Module,
    dataset: Any,
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
    indices: Sequence[int] | Tensor | None,
    projector: Any,
    gradient_type: str = "adam",
    batch_size: int = 16,
    *,
    optimizer: Any = None,
    adam: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    beta1: float = BETA1,
    beta2: float = BETA2,
    eps: float = EPS,
    desc: str = "LESS training features",
) -> Tensor:
    """LESS training features of pool rows: projected, L2-normalised Γ(∇ℓ_i) (or ∇ℓ_i).

    The shared training-feature pass (LESS and NICE). For every row i: the per-sample gradient of
    ℓ_i (token-mean NLL over its label tokens) w.r.t. the trainable parameters under the CURRENT
    model; with ``gradient_type="adam"`` mapped elementwise through
    :func:`~dataflex.signals.adam.adam_feature` with the optimizer's current
    ``exp_avg``/``exp_avg_sq`` (zeros before the first step) over the WHOLE gradient (a tied
    weight's pieces summed first; embedding rows a sample never touches get
    Γ(0) = β1·m/sqrt(β2·v + ε), not 0); projected to ``projector.dim`` dimensions and
    L2-normalised. Batched and streamed (never ``B x`` all parameters, except a tied parameter's
    ``B x numel``), sharded over ranks: every rank must call, every rank gets the same result.
    Equal to the batch-size-1 loop over single samples. The model is in eval mode during the pass
    (no dropout), its mode restored after.

    Args:
        model: the model whose trainable parameters are the gradient's coordinates.
        dataset: the rows (the training pool).
        collator: turns a list of rows into a batch (the trainer's data collator).
        indices: rows of ``dataset`` in the order of the result; unique; None: every row.
        projector: a :class:`dataflex.signals.projection.Projector` (the SAME one as the validation
            features'; its seed fixes the projection).
        gradient_type: ``adam`` (Γ, LESS's training feature) or ``sgd`` (the plain gradient).
        batch_size: rows per batched forward/backward.
        optimizer: the training optimizer, whose Adam state Γ reads (``adam`` without ``adam=``).
        adam: ``{parameter name: (exp_avg, exp_avg_sq)}`` of whole parameters to use instead of
            the optimizer's state (e.g. the state saved in a warm-up checkpoint,
            :func:`dataflex.train.checkpoints.checkpoint_adam_state`).
        reduce: optional map applied to each batch's normalised ``[b, d]`` features before they are
            gathered (e.g. ``lambda f: f @ centroids.T`` to keep ``[N, J]`` scores, never ``N x d``).
        beta1, beta2, eps: Adam's β1, β2, ε of :func:`~dataflex.signals.adam.adam_feature`.
        desc: progress bar label.

    Returns:
        ``[len(indices), projector.dim]`` float32 on CPU, rows of unit norm (a zero row where the
        feature is 0: a zero gradient under ``sgd`` or before Adam's first step); the ``reduce``d
        rows when ``reduce`` is given.

    Raises:
        ValueError: an unknown ``gradient_type``, no optimizer, or an optimizer without Adam state.
    """
    if gradient_type not in GRADIENT_TYPES:
        raise ValueError(f"gradient_type must be one of {GRADIENT_TYPES}, got {gradient_type!r}")
    transform, adam_pass = None, None
    if gradient_type == "adam":
        if adam is None:
            from dataflex.signals.optimizer import adam_state

            if optimizer is None:
                raise ConfigError("gradient_type=adam needs the trainer's optimizer (created at the start of training)")
            try:
                adam = adam_state(optimizer, model, full=True)  # whole parameters (a collective under ZeRO)
            except ValueError as err:
                raise ConfigError(f"{err}; or use gradient_type=sgd") from None
        tied = frozenset(shared_trainable_parameters(model))
        sizes = {n: int(getattr(p, "ds_numel", p.numel())) for n, p in trainable_parameters(model).items()}
        adam_pass = (sizes, tied, adam_transform(adam, beta1, beta2, eps))
        transform = adam_transform(adam, beta1, beta2, eps, skip=tied)
    return _feature_pass(model, dataset, collator, indices, projector, transform, batch_size, reduce, desc, adam_pass)


def validation_features(
    model: torch.nn.Module,
    dataset: Any,
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
    projector: Any,
    indices: Sequence[int] | Tensor | None = None,
    batch_size: int = 16,
    *,
    reduce: Callable[[Tensor], Tensor] | None = None,
    desc: str = "LESS validation features",
) -> Tensor:
    """LESS validation features: projected, L2-normalised plain gradients ∇ℓ of target rows.

    Args:
        model: as :func:`training_features`.
        dataset: the target/validation rows.
        collator: as :func:`training_features`.
        projector: the same projector as the training features'.
        indices: rows of ``dataset`` (None: all).
        batch_size: rows per batched forward/backward.
        reduce: as :func:`training_features`.
        desc: progress bar label.

    Returns:
        ``[len(indices), projector.dim]`` float32 on CPU (unit rows), or the ``reduce``d rows.
    """
    return _feature_pass(model, dataset, collator, indices, projector, None, batch_size, reduce, desc)


# -- several checkpoints (the offline recipes of LESS and NICE) -----------------------------------
def checkpoint_weight_vector(checkpoint_weights: Tensor | Sequence[float] | None, c: int) -> Tensor:
    """``w_c`` normalised to sum 1 (float64; None: uniform over ``c`` checkpoints)."""
    if checkpoint_weights is None:
        return torch.full((c,), 1.0 / c, dtype=torch.float64)
    w = torch.as_tensor(checkpoint_weights, dtype=torch.float64).flatten()
    if w.numel() != c:
        raise ConfigError(f"got {w.numel()} checkpoint weights for {c} checkpoints")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"checkpoint weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w / w.sum()


def combine_subtask_similarities(
    similarities: Tensor, checkpoint_weights: Tensor | Sequence[float] | None = None
) -> Tensor:
    """Score(z) = max_j Σ_c w_c · sim[c, z, j] from per-checkpoint subtask similarities ``[C, N, J]``
    (or ``[N, J]`` for one checkpoint).

    The weighted sum over checkpoints comes first, the max over subtasks last (ALGORITHMS.md, less and
    nice: LESS and NICE aggregate their warm-up checkpoints alike).
    """
    sims = torch.as_tensor(similarities).double()
    if sims.dim() == 2:
        sims = sims.unsqueeze(0)
    if sims.dim() != 3:
        raise ValueError(f"similarities must be [N, J] or [C, N, J], got shape {tuple(sims.shape)}")
    w = checkpoint_weight_vector(checkpoint_weights, sims.shape[0]).to(sims.device)
    return torch.einsum("c,cnj->nj", w, sims).max(dim=-1).values
