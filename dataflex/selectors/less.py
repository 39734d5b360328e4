"""LESS (Xia et al. 2024): select the training samples whose (Adam-preconditioned) gradients point
where the validation samples' gradients point (ALGORITHMS.md, less).

Three layers, each usable on its own:

* the pure cores, :func:`adam_feature` and :func:`less_scores` (tensors in, tensors out; the
  documented extension API), with :func:`epoch_learning_rates` for the checkpoint weights;
* the shared feature passes, :func:`training_features` (projected, L2-normalised Adam or SGD
  features of pool rows under the current model and optimizer state) and
  :func:`validation_features` (projected, L2-normalised plain gradients of the target rows), both
  batched, streamed through :func:`dataflex.signals.gradients.project_per_sample_gradients` and
  sharded over ranks by :func:`dataflex.signals.pool.map_pool`; other selectors (NICE) import
  :func:`training_features`;
* the components: :class:`LessSelector` (``selector=less``, online: every update, the current
  model and optimizer state, one checkpoint) and :class:`LessOfflineSelector`
  (``selector=less_offline``, the paper's recipe: the per-epoch checkpoints of a warm-up run,
  learning-rate-weighted, once before training; ``python -m dataflex.cli.less_offline`` runs the
  warm-up and then this).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dataflex.selectors.base import PoolLossSelector
from dataflex.signals.gradients import DEFAULT_CHUNK_SIZE
from dataflex.train.components import UpdateContext

GRADIENT_TYPES = ("adam", "sgd")

#: Adam hyperparameters of the training feature (ALGORITHMS.md: β = (0.9, 0.999), ε = 1e-8).
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8

#: What the offline selector writes into the run directory (besides selections/round_000.json).
OFFLINE_RECORD = "less_offline.json"

#: generator stream of the validation subset (stream 1 is the candidate subset's)
VALIDATION_STREAM = 2

#: elements per sample per streamed gradient chunk (the signals engine's default)
CHUNK_SIZE = DEFAULT_CHUNK_SIZE


# ------------------------------------------------------------------------------------ pure cores
def adam_feature(
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    beta1: float = BETA1,
    beta2: float = BETA2,
    eps: float = EPS,
) -> Tensor:
    """The Adam-preconditioned training feature Γ(g), elementwise.

    m' = β1·m + (1 − β1)·g, v' = β2·v + (1 − β2)·g², Γ = m' / sqrt(v' + ε): the update direction
    Adam would take if ``grad`` were the next gradient. ε sits INSIDE the square root and there is
    no bias correction (the LESS reference definition).

    Args:
        grad: ``g``, any shape; a leading batch dimension broadcasts against the state
            (``[B, *shape]`` with ``exp_avg`` of ``shape``).
        exp_avg: the optimizer's first moment ``m`` (broadcastable to ``grad``).
        exp_avg_sq: the optimizer's second moment ``v`` (same shape as ``exp_avg``).
        beta1: β1.
        beta2: β2.
        eps: ε.

    Returns:
        Γ(g), with ``grad``'s shape (the promoted float dtype).
    """
    m = beta1 * exp_avg + (1.0 - beta1) * grad
    v = beta2 * exp_avg_sq + (1.0 - beta2) * grad * grad
    return m / torch.sqrt(v + eps)


def _normalise(features: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm (an all-zero row stays zero, never NaN)."""
    return F.normalize(features, p=2.0, dim=-1)


def _as_checkpoints(features: Tensor, what: str) -> Tensor:
    features = torch.as_tensor(features)
    if features.dim() == 2:
        return features.unsqueeze(0)
    if features.dim() != 3:
        raise ValueError(f"{what} must be [N, d] or [C, N, d], got shape {tuple(features.shape)}")
    return features


def subtask_centroids(val_features: Tensor, val_groups: Tensor | Sequence[int] | None = None) -> Tensor:
    """The mean L2-normalised validation feature of every subtask: ``[C, J, d]`` (float64).

    Because the cosine is linear in the normalised validation feature, ``mean_{z' in j} cos(x, z')``
    equals ``normalise(x) · centroid_j``: scoring against J centroids costs N x J, not N x M.

    Args:
        val_features: ``[M, d]`` or ``[C, M, d]``.
        val_groups: a subtask id per validation row (any integers; None: one subtask). Subtasks are
            ordered by id; ids with no row do not appear.
    """
    val = _normalise(_as_checkpoints(val_features, "val_features").double())
    m = val.shape[1]
    if m == 0:
        raise ValueError("no validation feature to score against")
    if val_groups is None:
        return val.mean(dim=1, keepdim=True)
    groups = torch.as_tensor(val_groups, dtype=torch.long).flatten()
    if groups.numel() != m:
        raise ValueError(f"val_groups has {groups.numel()} entries for {m} validation rows")
    _, inverse = torch.unique(groups, sorted=True, return_inverse=True)
    j = int(inverse.max()) + 1
    sums = torch.zeros(val.shape[0], j, val.shape[2], dtype=val.dtype, device=val.device)
    sums.index_add_(1, inverse.to(val.device), val)
    counts = torch.bincount(inverse, minlength=j).to(val)
    return sums / counts[None, :, None]


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
    train = _normalise(_as_checkpoints(train_features, "train_features").double())
    centroids = subtask_centroids(val_features, val_groups)
    if centroids.shape[0] != train.shape[0] or centroids.shape[-1] != train.shape[-1]:
        raise ValueError(
            f"train features {tuple(train.shape)} and validation features (C={centroids.shape[0]}, "
            f"d={centroids.shape[-1]}) disagree on checkpoints or dimension"
        )
    sims = torch.einsum("cnd,cjd->cnj", train, centroids.to(train.device))
    return combine_subtask_similarities(sims, checkpoint_weights)


def top_k(scores: Tensor, k: int) -> Tensor:
    """The ``k`` highest scores' positions, best first; ties resolve to the lower index (stable)."""
    scores = torch.as_tensor(scores).flatten()
    if not 1 <= k <= scores.numel():
        raise ValueError(f"k must lie in [1, {scores.numel()}], got {k}")
    return torch.sort(scores, descending=True, stable=True).indices[:k]


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


# --------------------------------------------------------------------------- feature passes
def _trainer(ctx_or_trainer: Any) -> Any:
    return ctx_or_trainer.trainer if isinstance(ctx_or_trainer, UpdateContext) else ctx_or_trainer


def shared_trainable_parameters(model: torch.nn.Module) -> set[str]:
    """Names of trainable parameters owned by more than one module (tied weights, e.g. a tied
    ``lm_head``/``embed_tokens``): their per-sample gradient arrives in several pieces whose SUM
    is the gradient, so an elementwise nonlinear map (Γ) must wait for the whole of it."""
    from dataflex.signals.gradients import trainable_parameters

    names = {id(p): n for n, p in trainable_parameters(model).items()}
    owners = Counter(id(p) for module in model.modules() for _, p in module.named_parameters(recurse=False) if id(p) in names)
    return {names[i] for i, count in owners.items() if count > 1}


def adam_transform(
    state: Mapping[str, tuple[Tensor, Tensor]],
    beta1: float = BETA1,
    beta2: float = BETA2,
    eps: float = EPS,
    skip: set[str] | frozenset[str] = frozenset(),
) -> Callable[[str, Tensor, int], Tensor]:
    """The elementwise map ``(name, per-sample gradient chunk, flat offset) -> Γ(chunk)`` that
    :func:`~dataflex.signals.gradients.project_per_sample_gradients` applies before projecting.

    Args:
        state: ``{parameter name: (exp_avg, exp_avg_sq)}`` holding WHOLE parameters (parameter-shaped
            or flat), e.g. :func:`dataflex.signals.optimizer.adam_state` with ``full=True``.
        skip: names passed through unchanged (tied parameters, transformed once whole).
    """
    flat = {name: (m.reshape(-1), v.reshape(-1)) for name, (m, v) in state.items()}

    def transform(name: str, grad: Tensor, offset: int) -> Tensor:
        if name in skip:
            return grad
        if name not in flat:
            raise KeyError(f"no Adam state for trainable parameter {name!r}")
        m, v = flat[name]
        per_sample = math.prod(grad.shape[1:])
        if offset + per_sample > m.numel():
            raise ValueError(f"Adam state of {name!r} has {m.numel()} elements, a gradient chunk needs {offset + per_sample}")
        m = m[offset : offset + per_sample].to(grad.device, torch.float32).view(grad.shape[1:])
        v = v[offset : offset + per_sample].to(grad.device, torch.float32).view(grad.shape[1:])
        return adam_feature(grad, m, v, beta1, beta2, eps)

    return transform


class _AdamProjector:
    """A projector proxy that makes the streamed Adam pass equal Γ of each WHOLE per-sample gradient.

    :func:`~dataflex.signals.gradients.project_per_sample_gradients` hands over elementwise-mapped
    chunks; two cases need more than that, because Γ(0) = β1·m / sqrt(β2·v + ε) is not 0:

    * tied parameters (in ``whole``): their pieces are summed into complete per-sample gradients
      (they count 0 when handed over) and mapped once, at :meth:`flush`;
    * chunks the engine skips as all-zero (embedding rows no sample of the batch uses): the ranges
      of each parameter no chunk covered get Γ(0) of their elements (the same for every sample),
      projected once and added to every row at :meth:`flush`.

    Holds ``B x numel`` for each tied parameter; nothing else.
    """

    def __init__(self, projector: Any, sizes: Mapping[str, int], whole: set[str] | frozenset[str]):
        self.projector, self.sizes, self.whole = projector, dict(sizes), set(whole)
        self.dim = projector.dim
        self.block_size = getattr(projector, "block_size", None)
        self.buffers: dict[str, Tensor] = {}
        self.covered: dict[str, list[tuple[int, int]]] = {n: [] for n in self.sizes}
        self.batch: tuple[int, torch.device] | None = None

    def project(self, grads: Mapping[str, Tensor], offsets: Mapping[str, int] | None = None) -> Tensor:
        offsets = dict(offsets or {})
        rest = {}
        first = next(iter(grads.values()))
        self.batch = (first.shape[0], first.device)
        for name, g in grads.items():
            flat = g.reshape(g.shape[0], -1)
            o = int(offsets.get(name, 0))
            if name not in self.whole:
                rest[name] = g
                self.covered.setdefault(name, []).append((o, o + flat.shape[1]))
                continue
            buf = self.buffers.get(name)
            if buf is None:
                buf = self.buffers[name] = torch.zeros(g.shape[0], self.sizes[name], dtype=torch.float32, device=g.device)
            buf[:, o : o + flat.shape[1]] += flat
        if rest:
            return self.projector.project(rest, offsets={k: offsets.get(k, 0) for k in rest})
        return torch.zeros(first.shape[0], self.dim, dtype=torch.float32, device=first.device)

    @staticmethod
    def gaps(intervals: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
        """The parts of ``[0, size)`` no interval covers."""
        out, at = [], 0
        for a, b in sorted(intervals):
            if a > at:
                out.append((at, a))
            at = max(at, b)
        if at < size:
            out.append((at, size))
        return out

    def flush(self, transform: Callable[[str, Tensor, int], Tensor]) -> Tensor | None:
        """What the pieces lacked (see the class), ``[B, dim]`` or ``[1, dim]`` to broadcast; None if nothing."""
        if self.batch is None:
            return None
        b, device = self.batch
        out = torch.zeros(b, self.dim, dtype=torch.float32, device=device)
        for name, buf in self.buffers.items():
            out += self.projector.project({name: transform(name, buf, 0)})
        for name, size in self.sizes.items():
            if name in self.whole:
                continue
            for a, z in self.gaps(self.covered.get(name, []), size):
                zero_grad = torch.zeros(1, z - a, dtype=torch.float32, device=device)
                out += self.projector.project({name: transform(name, zero_grad, a)}, offsets={name: a})
        return out


def _feature_pass(model, dataset, collator, indices, projector, transform, batch_size, reduce, desc, adam=None) -> Tensor:
    """``adam``: ``(sizes, tied names, full transform)`` for :class:`_AdamProjector` (Adam features)."""
    from dataflex.signals.gradients import project_per_sample_gradients
    from dataflex.signals.pool import map_pool

    def features(model, batch):
        if adam is not None:
            proxy = _AdamProjector(projector, adam[0], adam[1])
            out = project_per_sample_gradients(model, batch, proxy, chunk_size=CHUNK_SIZE, transform=transform)
            extra = proxy.flush(adam[2])
            out = out if extra is None else out + extra
        else:
            out = project_per_sample_gradients(model, batch, projector, chunk_size=CHUNK_SIZE, transform=transform)
        out = _normalise(out)
        return reduce(out) if reduce is not None else out

    return map_pool(features, model, dataset, collator, indices=indices, batch_size=batch_size, desc=desc)


def training_features(
    ctx_or_trainer: Any,
    indices: Sequence[int] | Tensor | None,
    projector: Any,
    gradient_type: str = "adam",
    batch_size: int = 16,
    *,
    adam: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    dataset: Any = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    beta1: float = BETA1,
    beta2: float = BETA2,
    eps: float = EPS,
    desc: str = "LESS training features",
) -> Tensor:
    """LESS training features of pool rows: projected, L2-normalised Γ(∇ℓ_i) (or ∇ℓ_i).

    The shared training-feature pass (NICE imports it; the signature is stable). For every row i:
    the per-sample gradient of ℓ_i (token-mean NLL over its label tokens) w.r.t. the trainable
    parameters under the CURRENT model; with ``gradient_type="adam"`` mapped elementwise through
    :func:`adam_feature` with the optimizer's current ``exp_avg``/``exp_avg_sq`` (zeros before the
    first step) over the WHOLE gradient (a tied weight's pieces summed first; embedding rows a
    sample never touches get Γ(0) = β1·m/sqrt(β2·v + ε), not 0); projected to ``projector.dim``
    dimensions and L2-normalised. Batched and streamed (never ``B x`` all parameters, except a
    tied parameter's ``B x numel``), sharded over ranks: every rank must call, every rank gets the
    same result. Equal to the batch-size-1 loop over single samples. The model is in eval mode
    during the pass (no dropout), its mode restored after.

    Args:
        ctx_or_trainer: an :class:`UpdateContext` or a trainer-like object with ``model``,
            ``optimizer`` (for ``adam`` without ``adam=``), ``train_dataset`` and ``data_collator``.
        indices: rows of ``dataset`` in the order of the result; unique; None: every row.
        projector: a :class:`dataflex.signals.projection.Projector` (the SAME one as the validation
            features'; its seed fixes the projection).
        gradient_type: ``adam`` (Γ, LESS's training feature) or ``sgd`` (the plain gradient).
        batch_size: rows per batched forward/backward.
        adam: ``{parameter name: (exp_avg, exp_avg_sq)}`` of whole parameters to use instead of
            the trainer's optimizer state (e.g. the state saved in a warm-up checkpoint,
            :func:`checkpoint_adam_state`).
        dataset: rows to read instead of ``trainer.train_dataset``.
        reduce: optional map applied to each batch's normalised ``[b, d]`` features before they are
            gathered (e.g. ``lambda f: f @ centroids.T`` to keep ``[N, J]`` scores, never ``N x d``).
        beta1, beta2, eps: Adam's β1, β2, ε of :func:`adam_feature`.
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
    trainer = _trainer(ctx_or_trainer)
    model = trainer.model
    transform, adam_pass = None, None
    if gradient_type == "adam":
        if adam is None:
            from dataflex.signals.optimizer import adam_state

            if getattr(trainer, "optimizer", None) is None:
                raise ValueError("gradient_type=adam needs the trainer's optimizer (created at the start of training)")
            try:
                adam = adam_state(trainer.optimizer, model, full=True)  # whole parameters (a collective under ZeRO)
            except ValueError as err:
                raise ValueError(f"{err}; or use gradient_type=sgd") from None
        from dataflex.signals.gradients import trainable_parameters

        tied = frozenset(shared_trainable_parameters(model))
        sizes = {n: int(getattr(p, "ds_numel", p.numel())) for n, p in trainable_parameters(model).items()}
        adam_pass = (sizes, tied, adam_transform(adam, beta1, beta2, eps))
        transform = adam_transform(adam, beta1, beta2, eps, skip=tied)
    dataset = trainer.train_dataset if dataset is None else dataset
    return _feature_pass(model, dataset, trainer.data_collator, indices, projector, transform, batch_size, reduce, desc, adam_pass)


def validation_features(
    ctx_or_trainer: Any,
    projector: Any,
    indices: Sequence[int] | Tensor | None = None,
    batch_size: int = 16,
    *,
    dataset: Any = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    desc: str = "LESS validation features",
) -> Tensor:
    """LESS validation features: projected, L2-normalised plain gradients ∇ℓ of target rows.

    Args:
        ctx_or_trainer: an :class:`UpdateContext` (its ``require_validation("less")`` set) or a
            trainer-like object (its ``dataflex_validation``).
        projector: the same projector as the training features'.
        indices: validation rows (None: all).
        batch_size: rows per batched forward/backward.
        dataset: rows to read instead of the validation set.
        reduce: as :func:`training_features`.
        desc: progress bar label.

    Returns:
        ``[len(indices), projector.dim]`` float32 on CPU (unit rows), or the ``reduce``d rows.
    """
    trainer = _trainer(ctx_or_trainer)
    if dataset is None:
        if isinstance(ctx_or_trainer, UpdateContext):
            dataset = ctx_or_trainer.require_validation("less")
        else:
            dataset = getattr(trainer, "dataflex_validation", None)
            if dataset is None:
                raise ValueError("no validation set: pass dataset=... or a trainer with dataflex_validation")
    return _feature_pass(trainer.model, dataset, trainer.data_collator, indices, projector, None, batch_size, reduce, desc)


def make_projector(dim: int, seed: int, kind: str = "rademacher", cache_mb: float = 0):
    """The projection shared by training and validation features (``Projector(dim, seed, kind)``),
    optionally keeping up to ``cache_mb`` MiB of generated random blocks between calls."""
    from dataflex.signals.projection import Projector

    return Projector(int(dim), seed=int(seed), kind=kind, cache_bytes=int(cache_mb * 2**20))


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
    ctx_or_trainer: Any,
    candidates: Tensor,
    projector: Any,
    gradient_type: str = "adam",
    batch_size: int = 16,
    *,
    validation: Any = None,
    validation_indices: Tensor | None = None,
    adam: Mapping[str, tuple[Tensor, Tensor]] | None = None,
) -> Tensor:
    """One checkpoint's ``[n, J]`` mean cosine of every candidate with every validation subtask,
    under the model and optimizer state as they are now (or ``adam`` when given).

    Row i, column j is ``mean_{z' in val_j} cos(Γ(z_i), ∇ℓ(z'))`` (:func:`less_scores` before the
    checkpoint sum and the subtask max), computed against the subtask centroids so the pool pass
    never holds ``n x d``. Subtasks are the validation rows' ``domain_id``; ``validation_indices``
    restricts the validation rows (None: all).
    """
    trainer = _trainer(ctx_or_trainer)
    if validation is None:
        validation = (
            ctx_or_trainer.require_validation("less")
            if isinstance(ctx_or_trainer, UpdateContext)
            else getattr(trainer, "dataflex_validation", None)
        )
    val = validation_features(trainer, projector, validation_indices, batch_size, dataset=validation)
    groups = subtask_ids(validation)
    if groups is not None and validation_indices is not None:
        groups = groups[torch.as_tensor(validation_indices, dtype=torch.long)]
    centroids = subtask_centroids(val, groups)[0]  # [J, d] float64

    def against_centroids(features: Tensor) -> Tensor:
        return features.double() @ centroids.to(features.device).T

    return training_features(
        trainer, candidates, projector, gradient_type, batch_size, adam=adam, reduce=against_centroids
    )


# ------------------------------------------------------------------------------------- components
class _LessComponent(PoolLossSelector):
    """What both LESS selectors share: the feature settings, the projector, the validation rows."""

    def __init__(self, budget, warmup_steps, update_every, num_updates, seed, candidates, batch_size,
                 proj_dim, proj_kind, gradient_type, projection_cache_mb, validation_per_subtask):
        super().__init__(budget, warmup_steps, update_every, num_updates, seed, candidates, batch_size)
        _check_hyperparameters(proj_dim, proj_kind, gradient_type, projection_cache_mb, validation_per_subtask)
        self.proj_dim, self.proj_kind, self.gradient_type = int(proj_dim), proj_kind, gradient_type
        self.projection_cache_mb = projection_cache_mb
        self.validation_per_subtask = validation_per_subtask
        self._projector = None
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
        validation = ctx.require_validation(getattr(self, "config_name", "less"))
        rows = validation_subset(subtask_ids(validation), len(validation), self.validation_per_subtask, self.seed)
        return validation, rows

    def similarities(self, ctx: UpdateContext, candidates: Tensor, adam=None) -> Tensor:
        """``[n, J]``: :func:`checkpoint_similarities` under the model as it is now."""
        validation, rows = self.validation(ctx)
        return checkpoint_similarities(
            ctx.trainer, candidates, self.projector, self.gradient_type, self.batch_size,
            validation=validation, validation_indices=rows, adam=adam,
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_scores": self.last_scores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_scores = state.get("last_scores")


class LessSelector(_LessComponent):
    """Online LESS (``selector=less``): every update, score (a candidate subset of) the pool by the
    cosine of its Adam-preconditioned gradient features with the target set's gradient features,
    under the current model and optimizer state, and keep the top k.

    One checkpoint (now), so Score(z) = max_j mean_{z' in val_j} cos(Γ(z), ∇ℓ(z')); the subtasks
    are the validation set's ``domain_id`` (one per name in ``data.validation``). Warm-up: a seeded
    random subset of ``budget`` samples (the Adam state is empty before the first optimizer step),
    so the first real selection happens after ``warmup_steps``. A round depends only on the model,
    the optimizer state, the seed and the round index, so a resumed run selects what the
    uninterrupted run selects.

    Args:
        proj_dim: d, the projected feature dimension.
        proj_kind: the random projection (``rademacher``, ``gaussian``, ``sparse``), seeded by ``seed``.
        gradient_type: ``adam`` (Γ) or ``sgd`` (the plain gradient) for the training features.
        projection_cache_mb: keep up to this many MiB of the projection's random blocks between
            batches and rounds (0: regenerate them every batch). Worth it for LoRA, whose
            projection matrix (trainable parameters x d x 4 bytes) may be small enough to keep.
        validation_per_subtask: score against at most this many rows of every validation subtask
            (a seeded subset fixed for the run, as the paper's few-shot targets; None: all rows).
        batch_size: rows per batched forward/backward of the feature passes.
        (others as :class:`~dataflex.selectors.base.PoolLossSelector`)
    """

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
        proj_kind: str = "rademacher",
        gradient_type: str = "adam",
        projection_cache_mb: float = 0,
        validation_per_subtask: int | None = None,
    ):
        super().__init__(budget, warmup_steps, update_every, num_updates, seed, candidates, batch_size,
                         proj_dim, proj_kind, gradient_type, projection_cache_mb, validation_per_subtask)

    def select(self, ctx: UpdateContext) -> torch.Tensor:
        self.validation(ctx)  # a missing validation set fails before any pass
        candidates = self.candidate_indices(ctx)
        scores = combine_subtask_similarities(self.similarities(ctx, candidates))
        local = top_k(scores, self.k(ctx))
        self.last_scores = {"update_index": ctx.update_index, "candidates": candidates, "scores": scores.float()}
        return self.record(ctx, candidates[local])


# ------------------------------------------------------------------------------------ offline
def warmup_checkpoints(warmup_dir: str | Path, steps: Sequence[int] | None = None) -> list[tuple[int, Path]]:
    """The complete checkpoints of a warm-up run directory, ``[(step, path)]`` by step.

    Args:
        warmup_dir: a run directory (its ``checkpoints/checkpoint-N``) or a checkpoints directory.
        steps: keep only these steps (None: all complete checkpoints).

    Raises:
        ConfigError: no such directory, no complete checkpoint, or a requested step missing.
    """
    from dataflex.config import ConfigError
    from dataflex.train.callback import has_dataflex_state

    root = Path(warmup_dir)
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    if not root.is_dir():
        raise ConfigError(f"selector.warmup_dir={warmup_dir} is not a directory; point it at a finished warm-up run")
    found = {}
    for path in root.glob("checkpoint-*"):
        suffix = path.name.rsplit("-", 1)[-1]
        if suffix.isdigit() and has_dataflex_state(path):
            found[int(suffix)] = path
    if not found:
        raise ConfigError(f"selector.warmup_dir={warmup_dir} holds no complete checkpoint; run the warm-up first")
    if steps is not None:
        missing = [int(s) for s in steps if int(s) not in found]
        if missing:
            raise ConfigError(f"selector.checkpoints: no checkpoint at step(s) {missing} in {root}; found {sorted(found)}")
        found = {int(s): found[int(s)] for s in steps}
    return sorted(found.items())


def load_trainable_weights(model: torch.nn.Module, checkpoint_dir: str | Path) -> None:
    """Load a checkpoint's trained weights into ``model`` in place: a LoRA adapter
    (``adapter_model.safetensors``) into the PEFT model, or full weights (``model.safetensors``,
    sharded or not). Every trainable parameter must be in the file."""
    from safetensors.torch import load_file

    from dataflex.config import ConfigError
    from dataflex.signals.gradients import trainable_parameters

    ckpt = Path(checkpoint_dir)
    adapter, full, index = ckpt / "adapter_model.safetensors", ckpt / "model.safetensors", ckpt / "model.safetensors.index.json"
    if adapter.is_file():
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        if not hasattr(model, "peft_config"):
            raise ConfigError(f"{ckpt} holds a LoRA adapter but this run trains no adapter; use the warm-up's trainer")
        state = load_file(adapter)
        expected = set(get_peft_model_state_dict(model))
        if set(state) != expected:
            odd = sorted(set(state) ^ expected)[:3]
            raise ConfigError(f"{ckpt}: the adapter's weights differ from this run's LoRA layout ({odd}); use the warm-up's trainer settings")
        set_peft_model_state_dict(model, state)
        return
    if full.is_file():
        state = load_file(full)
    elif index.is_file():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(ckpt / shard))
    else:
        raise ConfigError(f"{ckpt} has no adapter_model.safetensors or model.safetensors to load")
    missing = [n for n in trainable_parameters(model) if n not in state]
    if missing:
        raise ConfigError(f"{ckpt} lacks trainable weight(s) {missing[:3]}; the warm-up trained another model")
    model.load_state_dict(state, strict=False)


def checkpoint_adam_state(checkpoint_dir: str | Path, optimizer: Any, model: torch.nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
    """``{trainable parameter name: (exp_avg, exp_avg_sq)}`` saved in a checkpoint's ``optimizer.pt``.

    The saved state is keyed by position in the optimizer's parameter groups; ``optimizer`` (this
    run's, built by the same trainer for the same model) maps those positions to parameters, as
    ``Optimizer.load_state_dict`` does. A parameter with no saved state gets zeros.

    Raises:
        ConfigError: no ``optimizer.pt`` (DeepSpeed or weights-only checkpoints), no optimizer, a
            different parameter layout, or a state without Adam moments.
    """
    from dataflex.config import ConfigError
    from dataflex.signals.gradients import trainable_parameters
    from dataflex.signals.optimizer import unwrap_optimizer

    path = Path(checkpoint_dir) / "optimizer.pt"
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: offline LESS with gradient_type=adam reads the warm-up's torch optimizer state "
            "(warm up without DeepSpeed and without save_only_model), or use selector.gradient_type=sgd"
        )
    if optimizer is None:
        raise ConfigError("offline LESS needs the trainer's optimizer to read the warm-up's optimizer state")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    live = unwrap_optimizer(optimizer)
    saved_groups, live_groups = saved["param_groups"], live.param_groups
    if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in live_groups]:
        raise ConfigError(
            f"{path}: the warm-up's optimizer groups {[len(g['params']) for g in saved_groups]} differ from this run's "
            f"{[len(g['params']) for g in live_groups]}; use the same model and trainer settings for both runs"
        )
    names = {id(p): n for n, p in trainable_parameters(model).items()}
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for saved_group, live_group in zip(saved_groups, live_groups):
        for position, param in zip(saved_group["params"], live_group["params"]):
            name = names.get(id(param))
            if name is None:
                continue
            state = saved["state"].get(position) or {}
            if not state:
                zeros = torch.zeros(param.shape, dtype=torch.float32)
                out[name] = (zeros, zeros.clone())
                continue
            if "exp_avg" not in state or "exp_avg_sq" not in state:
                raise ConfigError(f"{path}: no Adam moments for {name!r} (state keys {sorted(state)}); use selector.gradient_type=sgd")
            m, v = state["exp_avg"], state["exp_avg_sq"]
            if m.numel() != param.numel():
                raise ConfigError(f"{path}: saved state of {name!r} has {m.numel()} elements, the parameter {param.numel()}")
            out[name] = (m, v)
    missing = sorted(set(names.values()) - set(out))
    if missing:
        raise ConfigError(f"trainable parameter(s) {missing[:3]} are not in the optimizer; cannot read their warm-up state")
    return out


class LessOfflineSelector(_LessComponent):
    """The LESS paper's offline selection (``selector=less_offline``): once, before training, score
    the pool with the per-epoch checkpoints of a warm-up run and keep the top k for the whole run.

    For every warm-up checkpoint c (``checkpoint-N`` of ``warmup_dir`` holding a LoRA adapter or
    full weights, and ``optimizer.pt``): its weights are loaded into this run's model, the
    validation features ∇ℓ_c and the candidates' training features Γ_c (with c's saved Adam
    moments) are computed, and their mean cosine per validation subtask is kept (``[N, J]``).
    Score(z) = max_j Σ_c w_c · sim_c[z, j] with w_c the mean learning rate of the epoch ending at c
    (:func:`epoch_learning_rates`, from the last checkpoint's ``trainer_state.json``), normalised
    to sum 1. The model's own weights are restored before training starts (it trains from where
    it was built, as in the paper), and never updates afterwards.

    The decision is logged like every selection (``selections/round_000.json``) and written with
    the checkpoints, their weights and the chosen samples' scores to ``less_offline.json`` in the
    run directory. ``python -m dataflex.cli.less_offline`` trains the warm-up and then runs this.

    Args:
        budget: k, an int count or a float fraction of the pool (the paper: 5%).
        warmup_dir: the warm-up run directory (or its ``checkpoints``).
        checkpoints: the warm-up steps to use (None: every complete checkpoint).
        checkpoint_weights: explicit w_c, one per checkpoint (None: the epochs' mean learning rates).
        (others as :class:`LessSelector`)
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
        proj_kind: str = "rademacher",
        gradient_type: str = "adam",
        projection_cache_mb: float = 0,
        validation_per_subtask: int | None = None,
    ):
        super().__init__(budget, 0, 0, 0, seed, candidates, batch_size,
                         proj_dim, proj_kind, gradient_type, projection_cache_mb, validation_per_subtask)
        if checkpoints is not None and (not list(checkpoints) or any(int(s) <= 0 for s in checkpoints)):
            raise ValueError(f"checkpoints must list positive warm-up steps (or be null), got {checkpoints!r}")
        if checkpoint_weights is not None:
            checkpoint_weight_vector(checkpoint_weights, len(list(checkpoint_weights)))  # finite, >= 0, not all 0
            if checkpoints is not None and len(list(checkpoint_weights)) != len(list(checkpoints)):
                raise ValueError(f"{len(list(checkpoint_weights))} checkpoint_weights for {len(list(checkpoints))} checkpoints")
        self.warmup_dir = warmup_dir
        self.checkpoints = None if checkpoints is None else sorted(int(s) for s in checkpoints)
        self.checkpoint_weights = None if checkpoint_weights is None else [float(w) for w in checkpoint_weights]

    def _weights(self, found: list[tuple[int, Path]]) -> list[float]:
        from dataflex.config import ConfigError

        if self.checkpoint_weights is not None:
            if len(self.checkpoint_weights) != len(found):
                raise ConfigError(f"selector.checkpoint_weights has {len(self.checkpoint_weights)} entries for {len(found)} checkpoints")
            return list(self.checkpoint_weights)
        state_file = found[-1][1] / "trainer_state.json"
        if not state_file.is_file():
            raise ConfigError(f"{state_file} not found; give selector.checkpoint_weights explicitly")
        return epoch_learning_rates(json.loads(state_file.read_text())["log_history"], [s for s, _ in found])

    def initial_indices(self, ctx: UpdateContext) -> torch.Tensor:
        from dataflex.config import ConfigError
        from dataflex.signals.distributed import is_main_process
        from dataflex.signals.gradients import trainable_parameters
        from dataflex.utils import atomic_write_json

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
        trainer = ctx.trainer
        model = trainer.model
        own = {n: p.detach().clone() for n, p in trainable_parameters(model).items()}
        sims = []
        try:
            for _, path in found:
                load_trainable_weights(model, path)
                adam = checkpoint_adam_state(path, trainer.optimizer, model) if self.gradient_type == "adam" else None
                sims.append(self.similarities(ctx, candidates, adam=adam))
        finally:
            with torch.no_grad():
                for n, p in trainable_parameters(model).items():
                    p.copy_(own[n])
        scores = combine_subtask_similarities(torch.stack(sims), weights)
        local = top_k(scores, self.k(ctx))
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
