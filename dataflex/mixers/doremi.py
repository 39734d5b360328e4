"""DoReMi (Xie et al. 2023): the pure cores of the domain-weight update.

Only the cores live here for now: the stateful DoReMi mixer needs a frozen reference model and the
per-token losses of the training batch, which the training loop does not expose yet.

Definitions (docs/ALGORITHMS.md, "doremi"):

- excess loss  λ[i] = Σ_{tokens of domain i} max(ℓ_θ − ℓ_ref, 0) / #tokens of domain i (0 if absent);
- update       α' = α ⊙ exp(η·λ);  α = (1 − c)·α'/Σα' + c/K.
"""

from __future__ import annotations

import torch


def doremi_update(
    weights: torch.Tensor,
    excess_loss: torch.Tensor,
    eta: float = 1.0,
    smoothing: float = 1e-3,
    clip: float | None = None,
) -> torch.Tensor:
    """One DoReMi domain-weight step.

    α' = α ⊙ exp(η·λ); α_new = (1 − c)·α'/Σα' + c/K. The multiplicative step is done in log space
    (log α + η·λ, then a softmax), so large η·λ never overflows ``exp``.

    Args:
        weights: current domain weights α, shape [K], on the simplex (zeros allowed, not all zero).
        excess_loss: per-domain excess loss λ, shape [K] (see :func:`domain_excess_loss`).
        eta: step size η (0: no multiplicative step, only the smoothing toward uniform).
        smoothing: c in [0, 1], the mass mixed in uniformly; every output entry is >= c/K.
        clip: if set, λ is clamped to [−clip, clip] before the step (DataFlex uses 5); None (the
            paper's choice and the default) does not clip.

    Returns:
        The new weights, shape [K], in the dtype of ``weights`` (computed in float64).
    """
    weights = torch.as_tensor(weights)
    excess = torch.as_tensor(excess_loss, dtype=torch.float64).flatten()
    alpha = weights.to(torch.float64).flatten()
    if alpha.numel() != excess.numel():
        raise ValueError(
            f"got {alpha.numel()} weights and {excess.numel()} excess losses"
        )
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must lie in [0, 1], got {smoothing}")
    if (alpha < 0).any() or not torch.isfinite(alpha).all() or alpha.sum() <= 0:
        raise ValueError(
            f"weights must be finite, >= 0 and not all 0, got {alpha.tolist()}"
        )
    if clip is not None:
        excess = excess.clamp(-clip, clip)
    k = alpha.numel()
    # log(0) = -inf is fine: a zero weight stays zero before smoothing (softmax gives exp(-inf) = 0).
    normalized = torch.softmax(alpha.log() + eta * excess, dim=0)
    new = (1.0 - smoothing) * normalized + smoothing / k
    out_dtype = weights.dtype if weights.is_floating_point() else torch.float32
    return new.to(out_dtype)


def domain_excess_loss(
    token_losses: torch.Tensor,
    ref_token_losses: torch.Tensor,
    token_domains: torch.Tensor,
    num_domains: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-domain mean clipped excess loss of a batch.

    λ[i] = Σ_{tokens t of domain i} max(ℓ_θ(t) − ℓ_ref(t), 0) / (number of tokens of domain i).

    Args:
        token_losses: per-token NLL under the model being trained, any shape (e.g. [B, T]).
        ref_token_losses: per-token NLL under the reference model, same shape.
        token_domains: domain id of every token, same shape (broadcastable: a [B, 1] per-sample id
            works). A token with id -1 does not count (padding, prompt tokens labelled -100, ...).
        num_domains: K.
        mask: optional boolean tensor of the same shape; tokens where it is False do not count
            either (an alternative to writing -1 into ``token_domains``).

    Returns:
        λ, shape [K], float32 or the losses' floating dtype; domains with no counted token get 0.
    """
    losses = torch.as_tensor(token_losses)
    ref = torch.as_tensor(ref_token_losses)
    if losses.shape != ref.shape:
        raise ValueError(
            f"token_losses {tuple(losses.shape)} and ref_token_losses {tuple(ref.shape)} differ"
        )
    domains = torch.as_tensor(
        token_domains, dtype=torch.long, device=losses.device
    ).expand_as(losses)
    counted = domains >= 0
    if mask is not None:
        counted = counted & torch.as_tensor(
            mask, dtype=torch.bool, device=losses.device
        ).expand_as(losses)
    if (domains[counted] >= num_domains).any():
        raise ValueError(f"token_domains has ids >= num_domains={num_domains}")
    excess = (losses - ref).clamp_min(0)[counted]
    ids = domains[counted]
    dtype = losses.dtype if losses.is_floating_point() else torch.float32
    sums = torch.zeros(
        num_domains, dtype=torch.float64, device=losses.device
    ).index_add_(0, ids, excess.to(torch.float64))
    counts = torch.bincount(ids, minlength=num_domains).to(torch.float64)
    # Absent domains: 0/1 = 0, as the definition asks (no NaN from 0/0).
    return (sums / counts.clamp_min(1)).to(dtype)


def running_mean(
    mean: torch.Tensor | None, value: torch.Tensor, count: int
) -> torch.Tensor:
    """Incremental mean: the mean of ``count`` values so far updated with one more ``value``.

    DoReMi's output ᾱ = mean_t α_t is kept this way so the whole history need not be stored.

    Args:
        mean: the mean of the first ``count`` values (ignored, may be None, when ``count`` is 0).
        value: the new value.
        count: how many values ``mean`` averages (>= 0).

    Returns:
        The mean of ``count + 1`` values.
    """
    value = torch.as_tensor(value)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count == 0 or mean is None:
        return value.clone()
    return mean + (value - mean) / (count + 1)
