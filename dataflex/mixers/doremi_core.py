"""DoReMi's pure cores (Xie et al. 2023; docs/ALGORITHMS.md, "doremi"): tensors in, tensors out.

- excess loss  λ[i] = Σ_{tokens of domain i} max(ℓ_θ − ℓ_ref, 0) / #tokens of domain i;
- absent rule  a domain without a token keeps its last observed λ (:func:`carry_absent`; the
  reference code's ``perdomain_scores``, λ = log V before the first observation) or gets 0;
- update       α' = α ⊙ exp(η·λ);  α = (1 − c)·α'/Σα' + c/K;
- proxy loss   Σ_t α_{d(t)}·ℓ_t / Σ_t α_{d(t)} (:func:`doremi_token_mean_loss`, the reference code's) or
  Σ_i α[i] · Σ_{tokens of domain i} ℓ_θ / #tokens of domain i (:func:`doremi_proxy_loss`, the paper's);
- output       ᾱ = mean_t α_t (:func:`running_mean`).

Also the two stateless helpers of step 2's frozen reference model (:func:`resolve_reference_model`,
:func:`load_reference_model`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dataflex.errors import ConfigError

ABSENT_RULES = ("last", "zero")


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
        raise ValueError(f"got {alpha.numel()} weights and {excess.numel()} excess losses")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must lie in [0, 1], got {smoothing}")
    if (alpha < 0).any() or not torch.isfinite(alpha).all() or alpha.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {alpha.tolist()}")
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
        λ, shape [K], float32 or the losses' floating dtype; domains with no counted token get 0
        here (the mixer then applies its ``absent`` rule, see :func:`carry_absent`).
    """
    losses = torch.as_tensor(token_losses)
    ref = torch.as_tensor(ref_token_losses)
    if losses.shape != ref.shape:
        raise ValueError(f"token_losses {tuple(losses.shape)} and ref_token_losses {tuple(ref.shape)} differ")
    domains = torch.as_tensor(token_domains, dtype=torch.long, device=losses.device).expand_as(losses)
    sums, counts = domain_token_sums((losses - ref).clamp_min(0), domains, num_domains, mask)
    dtype = losses.dtype if losses.is_floating_point() else torch.float32
    # Absent domains: 0/1 = 0 (no NaN from 0/0); carry_absent replaces them by the last observed λ.
    return (sums / counts.clamp_min(1)).to(dtype)


def domain_token_sums(
    values: torch.Tensor,
    token_domains: torch.Tensor,
    num_domains: int,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-domain sums of token values and per-domain token counts (the parts of a per-domain mean).

    Kept apart so that several processes can add their parts up before dividing (the global batch's
    per-domain mean is Σ_ranks sums / Σ_ranks counts, not a mean of means).

    Args:
        values: a value per token, any shape (e.g. ``[B, T]``); differentiable.
        token_domains: domain id of every token, broadcastable to ``values`` (``[B, 1]`` works);
            -1 marks a token that does not count.
        num_domains: K.
        mask: optional boolean, broadcastable to ``values``; False tokens do not count.

    Returns:
        ``(sums [K], counts [K])``: sums in float64 (carrying ``values``' autograd graph), counts in
        float64, both on ``values``' device.
    """
    values = torch.as_tensor(values)
    domains = torch.as_tensor(token_domains, dtype=torch.long, device=values.device).expand_as(values)
    counted = domains >= 0
    if mask is not None:
        counted = counted & torch.as_tensor(mask, dtype=torch.bool, device=values.device).expand_as(values)
    ids = domains[counted]
    if ids.numel() and int(ids.max()) >= num_domains:
        raise ValueError(f"token_domains has ids >= num_domains={num_domains}")
    sums = torch.zeros(num_domains, dtype=torch.float64, device=values.device).index_add(
        0, ids, values[counted].to(torch.float64)
    )
    counts = torch.bincount(ids, minlength=num_domains).to(torch.float64)
    return sums, counts


def doremi_proxy_loss(
    token_losses: torch.Tensor,
    token_domains: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor | None = None,
    domain_token_counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's proxy objective (``proxy_loss: domain_mean``): L(θ, α) = Σ_i α[i] · Σ_{tokens of
    domain i} ℓ_θ / N_i. Its scale depends on which domains are present (half of them absent roughly
    halves it); the default objective is :func:`doremi_token_mean_loss`.

    A domain without a token in the batch contributes 0. With ``domain_token_counts`` given (N_i
    summed over all processes), the value is this process's share of the global objective: summed
    over processes it equals the objective of the whole global batch.

    Args:
        token_losses: per-token NLL ``[B, T]`` (differentiable).
        token_domains: domain ids broadcastable to ``token_losses``; -1 does not count.
        weights: α, shape [K].
        mask: optional boolean mask of counted tokens.
        domain_token_counts: N_i, shape [K]; default: this batch's own counts.

    Returns:
        A scalar in ``token_losses``' dtype.
    """
    weights = torch.as_tensor(weights, dtype=torch.float64, device=token_losses.device).flatten()
    sums, counts = domain_token_sums(token_losses, token_domains, weights.numel(), mask)
    if domain_token_counts is not None:
        counts = torch.as_tensor(domain_token_counts, dtype=torch.float64, device=token_losses.device)
    return (weights * sums / counts.clamp_min(1)).sum().to(token_losses.dtype)


def running_mean(mean: torch.Tensor | None, value: torch.Tensor, count: int) -> torch.Tensor:
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


def carry_absent(
    excess: torch.Tensor, counts: torch.Tensor, last: torch.Tensor | None, rule: str = "last"
) -> torch.Tensor:
    """λ with the ``absent`` rule applied to the domains without a counted token.

    ``rule="last"`` (the default; the reference code's ``perdomain_scores``): an absent domain keeps
    ``last[i]``, its last observed λ (log V before its first observation). ``rule="zero"``: an absent
    domain gets 0 (every present domain then gains on it at every step: rich-get-richer when a
    micro-batch holds few domains).

    Args:
        excess: λ of the present domains, shape [K] (absent entries are ignored).
        counts: counted tokens per domain, shape [K] (0: absent).
        last: the λ in force before this step, shape [K] (ignored by ``"zero"``).
        rule: ``"last"`` or ``"zero"``.

    Returns:
        λ, shape [K], float64.
    """
    if rule not in ABSENT_RULES:
        raise ValueError(f"absent must be one of {ABSENT_RULES}, got {rule!r}")
    excess = torch.as_tensor(excess, dtype=torch.float64).flatten()
    present = torch.as_tensor(counts).flatten() > 0
    fill = torch.zeros_like(excess) if rule == "zero" or last is None else torch.as_tensor(last, dtype=torch.float64)
    return torch.where(present, excess, fill)


def doremi_token_mean_loss(
    token_losses: torch.Tensor,
    token_domains: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor | None = None,
    domain_token_counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """The default proxy objective (the reference code's): a weighted token mean
    L = Σ_t α_{d(t)}·ℓ_t / Σ_t α_{d(t)}.

    Uniform α gives exactly the plain token mean, and the scale does not depend on which domains
    are present. With ``domain_token_counts`` given (N_i over the whole optimizer step: all
    micro-batches, all processes), the normaliser is Σ_i α_i·N_i and the value is this micro-batch's
    share of the step's objective: summed over micro-batches and processes it equals L of the step.

    Args:
        token_losses: per-token NLL ``[B, T]`` (differentiable).
        token_domains: domain ids broadcastable to ``token_losses``; -1 does not count.
        weights: α, shape [K].
        mask: optional boolean mask of counted tokens.
        domain_token_counts: N_i, shape [K]; default: this batch's own counts.

    Returns:
        A scalar in ``token_losses``' dtype (0 when no token counts).
    """
    weights = torch.as_tensor(weights, dtype=torch.float64, device=token_losses.device).flatten()
    sums, counts = domain_token_sums(token_losses, token_domains, weights.numel(), mask)
    if domain_token_counts is not None:
        counts = torch.as_tensor(domain_token_counts, dtype=torch.float64, device=token_losses.device)
    normaliser = (weights * counts).sum().clamp_min(1e-30)
    return ((weights * sums).sum() / normaliser).to(token_losses.dtype)


def resolve_reference_model(reference_dir: str | Path | None) -> Path:
    """The trained model of DoReMi step 1: ``<run dir>/model``, or a model directory itself.

    Raises:
        ConfigError: no directory given, or it holds no model (config or adapter), with the fix.
    """
    if not reference_dir:
        raise ConfigError(
            "needs the reference model of step 1: set mixer.reference_dir=<run dir of "
            "`dataflex-run experiment=doremi_reference`> (or run experiment=doremi_proxy, which sets it)"
        )
    path = Path(reference_dir)
    for candidate in (path / "model", path):
        if (candidate / "config.json").is_file() or (candidate / "adapter_config.json").is_file():
            return candidate
    raise ConfigError(
        f"reference_dir {path} holds no trained model (expected {path / 'model'} from step 1); "
        "run `dataflex-run experiment=doremi_reference` first or point mixer.reference_dir at its run directory"
    )


def load_reference_model(path: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The frozen reference: loaded from ``path`` (full weights, or a LoRA adapter merged into its
    base model), in eval mode, without gradients, on ``device``."""
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=dtype).merge_and_unload()
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device).eval().requires_grad_(False)
