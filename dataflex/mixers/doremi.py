"""DoReMi (Xie et al. 2023): the pure cores of the domain-weight update and the DoReMi mixer.

Definitions (docs/ALGORITHMS.md, "doremi"):

- excess loss  λ[i] = Σ_{tokens of domain i} max(ℓ_θ − ℓ_ref, 0) / #tokens of domain i (0 if absent);
- update       α' = α ⊙ exp(η·λ);  α = (1 − c)·α'/Σα' + c/K;
- proxy loss   L(θ, α) = Σ_i α[i] · Σ_{tokens of domain i} ℓ_θ / #tokens of domain i;
- output       ᾱ = mean_t α_t, saved as JSON {domain: weight} (``doremi_weights.json``).

The three-step recipe (one ``dataflex-run`` each, all under ``doremi.root``, default
``outputs/doremi``; ``sweeps/doremi_pipeline.sh`` chains them)::

    dataflex-run experiment=doremi_reference   # (1) reference model on the reference mixture -> <root>/reference
    dataflex-run experiment=doremi_proxy       # (2) proxy beside the frozen reference -> <root>/proxy/doremi_weights.json
    dataflex-run experiment=doremi_final       # (3) mixer=static on ᾱ -> <root>/final
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dataflex.errors import ConfigError
from dataflex.signals.distributed import all_reduce_sum
from dataflex.train.components import Mixer, Schedule, UpdateContext
from dataflex.train.fields import param

#: the file the proxy run writes in its run directory (read by ``mixer=static`` in step 3)
WEIGHTS_FILE = "doremi_weights.json"
MODES = ("proxy", "online")


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
    sums, counts = domain_token_sums((losses - ref).clamp_min(0), domains, num_domains, mask)
    dtype = losses.dtype if losses.is_floating_point() else torch.float32
    # Absent domains: 0/1 = 0, as the definition asks (no NaN from 0/0).
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
    """The proxy's training objective L(θ, α) = Σ_i α[i] · Σ_{tokens of domain i} ℓ_θ / N_i.

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


def resolve_reference_model(reference_dir: str | Path | None) -> Path:
    """The trained model of DoReMi step 1: ``<run dir>/model``, or a model directory itself.

    Raises:
        ValueError: no directory given, or it holds no model (config or adapter), with the fix.
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


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model under DDP/DeepSpeed wrappers (their ``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


class DoReMiMixer(Mixer):
    """DoReMi step 2 (and its online variant): domain weights α from the excess loss over a frozen
    reference model.

    Every training micro-batch, the reference model (step 1's trained model, loaded once beside
    the proxy: eval mode, no grad, same device and dtype; it must share the proxy's tokenizer, and
    its vocabulary size is checked) runs on the same inputs;
    the per-token excess loss max(ℓ_θ − ℓ_ref, 0) is summed per domain over all processes, so every
    rank computes the same λ_t and the same α_t = :func:`doremi_update` (α_{t−1}, λ_t). Then, in
    the paper's order, the micro-batch trains with α_t:

    - ``mode: proxy`` (the recipe's step 2): the batches are drawn uniformly over domains and the
      loss is the α_t-weighted proxy loss :func:`doremi_proxy_loss` over the global micro-batch.
      ᾱ = mean_t α_t is written to ``<run dir>/doremi_weights.json`` as {domain: weight} at every
      update (atomically; step 3 reads it with ``mixer=static``).
    - ``mode: online`` (DataFlex-style, no separate final run): the sampling proportions follow α
      (refreshed every ``update_every`` steps) and the loss is the trainer's own loss (the mixture
      is already in the batches; weighting the loss as well would count α twice). ᾱ is written too.

    One α step per micro-batch: with gradient accumulation α moves GA times per optimizer step
    (each step on the global micro-batch, over all ranks); with GA = 1 it is exactly one step per
    optimizer step, as in the paper. α, ᾱ, the step count and the per-update history are in every
    checkpoint, so a resumed run continues the same trajectory.

    Args:
        reference_dir: the step-1 run directory (its ``model/``) or a model directory.
        mode: ``proxy`` or ``online``.
        eta: step size η.
        smoothing: c, the uniform mass mixed in (every α_i >= c/K).
        clip: clamp λ to [−clip, clip] before the step (DataFlex uses 5); None: no clipping.
        domains: the data config's domain names (keys of the JSON and of the logged weights);
            default: the run's domain names (a column-defined split's values).
        update_every: optimizer steps between refreshes of the sampling proportions (online),
            the JSON and the logged weights.
    """

    owns_loss = True

    reference_dir: str | None = None
    mode: str = param("proxy", choices=MODES)
    eta: float = 1.0
    smoothing: float = param(1e-3, ge=0, le=1)
    clip: float | None = param(None, gt=0)
    domains: Sequence[str] | None = None
    update_every: int = param(1, ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.eta >= 0 and self.eta != float("inf")):
            raise ValueError(f"eta must be finite and >= 0, got {self.eta}")
        self.domains = list(self.domains) if self.domains else None
        self.alpha: torch.Tensor | None = None  # α_t, float64 [K]
        self.alpha_mean: torch.Tensor | None = None  # ᾱ over α_1..α_t
        self.alpha_updates = 0  # t
        self.window_excess: torch.Tensor | None = None  # Σ λ since the last update (for the history)
        self.window_updates = 0
        self.history: list[dict[str, Any]] = []
        self.run_dir: Path | None = None
        self.reference: torch.nn.Module | None = None  # loaded at the first training micro-batch

    @property
    def schedule(self) -> Schedule:
        """Every ``update_every`` steps from the start, until the end (only this schedule key is declared)."""
        return Schedule(update_every=self.update_every)

    # -- decisions -------------------------------------------------------------------------------
    @property
    def num_domains(self) -> int:
        return self.alpha.numel()

    def names(self) -> list[str]:
        return self.domains or [str(d) for d in range(self.num_domains)]

    def _proportions(self) -> torch.Tensor:
        if self.mode == "online":
            return self.alpha.clone()
        return torch.full_like(self.alpha, 1.0 / self.num_domains)

    def initial_proportions(self, ctx: UpdateContext) -> torch.Tensor:
        """α_0 uniform; checks that the reference model exists before training starts."""
        resolve_reference_model(self.reference_dir)
        if not self.domains and getattr(ctx, "domain_names", None):  # e.g. a column-defined split
            self.domains = list(ctx.domain_names)
        present = int(ctx.domain_ids.max()) + 1
        k = len(self.domains) if self.domains else present
        if present > k:
            raise ConfigError(f"the pool has domain ids up to {present - 1} but {k} domain names {self.domains}")
        self.alpha = torch.full((k,), 1.0 / k, dtype=torch.float64)
        self.alpha_mean, self.alpha_updates = None, 0
        self.window_excess, self.window_updates = torch.zeros(k, dtype=torch.float64), 0
        self.run_dir = ctx.run_dir
        return self._proportions()

    def update(self, ctx: UpdateContext) -> torch.Tensor:
        """Record the α steps taken since the last update, write ᾱ, and return the proportions
        (α online, uniform for the proxy)."""
        if ctx.run_dir is not None:
            self.run_dir = ctx.run_dir
        excess = self.window_excess / self.window_updates if self.window_updates else None
        self.history.append({
            "global_step": ctx.global_step,
            "alpha_updates": self.alpha_updates,
            "alpha": self.alpha.tolist(),
            "alpha_mean": None if self.alpha_mean is None else self.alpha_mean.tolist(),
            "excess": None if excess is None else excess.tolist(),
        })
        self.window_excess, self.window_updates = torch.zeros_like(self.alpha), 0
        self.write_weights()
        return self._proportions()

    def averaged_weights(self) -> dict[str, float]:
        """ᾱ as the JSON mapping {domain: weight} (α_0 when no step was taken yet)."""
        mean = self.alpha_mean if self.alpha_mean is not None else self.alpha
        return {name: float(w) for name, w in zip(self.names(), mean.tolist())}

    def write_weights(self) -> Path | None:
        """Write ᾱ to ``<run dir>/doremi_weights.json`` (rank 0, atomically); its path, or None."""
        from dataflex.signals.distributed import is_main_process
        from dataflex.utils import atomic_write_json

        if self.run_dir is None or self.alpha_mean is None or not is_main_process():
            return None
        return atomic_write_json(self.run_dir / WEIGHTS_FILE, self.averaged_weights())

    def decision_stats(self) -> dict[str, float]:
        """α_t, ᾱ and the mean excess loss of the last window, by domain name."""
        if not self.history:
            return {}
        last, out = self.history[-1], {}
        for key in ("alpha", "alpha_mean", "excess"):
            if last[key] is not None:
                out.update({f"mixer/doremi/{key}/{n}": float(v) for n, v in zip(self.names(), last[key])})
        return out

    # -- the training loss -----------------------------------------------------------------------
    def step_alpha(self, excess: torch.Tensor) -> torch.Tensor:
        """One DoReMi step from the excess loss λ_t: α_t, the running mean ᾱ and the counters."""
        excess = torch.as_tensor(excess, dtype=torch.float64).cpu()
        self.alpha = doremi_update(self.alpha, excess, eta=self.eta, smoothing=self.smoothing, clip=self.clip)
        self.alpha_mean = running_mean(self.alpha_mean, self.alpha, self.alpha_updates)
        self.alpha_updates += 1
        self.window_excess = self.window_excess + excess
        self.window_updates += 1
        return self.alpha

    def _reference_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.reference is None:
            try:
                path = resolve_reference_model(self.reference_dir)
            except ValueError as err:
                raise ConfigError(f"mixer=doremi: {err}") from None
            param = next(model.parameters())
            reference = load_reference_model(path, param.dtype, param.device)
            ref_vocab = getattr(reference.config, "vocab_size", None)
            proxy_vocab = getattr(getattr(_unwrap(model), "config", None), "vocab_size", None)
            if ref_vocab is not None and proxy_vocab is not None and ref_vocab != proxy_vocab:
                raise ConfigError(
                    f"mixer=doremi: the reference model {path} has a vocabulary of {ref_vocab} tokens, the proxy "
                    f"{proxy_vocab}; train step 1 with the same model/tokenizer (the same model=...)"
                )
            self.reference = reference
        return self.reference

    def reference_token_losses(self, loss) -> torch.Tensor:
        """ℓ_ref per token on the micro-batch's own inputs, aligned with ``loss.token_losses``."""
        from dataflex.signals.losses import shifted_token_nll

        inputs = loss.inputs
        labels = inputs.get("labels")
        if labels is None:  # a trainer that popped them: the counted targets are the input ids
            counted = torch.nn.functional.pad(loss.token_mask, (1, 0), value=False)
            labels = inputs["input_ids"].masked_fill(~counted, -100)
        reference = self._reference_model(loss.model)
        with torch.no_grad():
            out = reference(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
            logits = out.logits if hasattr(out, "logits") else out[0]
            ref_losses, _ = shifted_token_nll(logits, labels)
        return ref_losses

    def training_loss(self, loss) -> torch.Tensor:
        """λ_t from this micro-batch (all ranks), α_t, then the micro-batch's loss under α_t."""
        if self.alpha is None:
            raise RuntimeError("mixer=doremi: training_loss before initial_proportions/load_state_dict")
        if not (loss.model.training and torch.is_grad_enabled()):
            return loss.plain()  # an evaluation forward: no DoReMi step
        k = self.num_domains
        token_domains = loss.batch["domain_id"].to(loss.token_losses.device).view(-1, 1)
        ref_losses = self.reference_token_losses(loss)
        excess = (loss.token_losses.detach() - ref_losses).clamp_min(0)
        sums, counts = domain_token_sums(excess, token_domains, k, loss.token_mask)
        totals = all_reduce_sum(torch.cat([sums, counts]).cpu())
        sums, counts = totals[:k], totals[k:].round()
        self.step_alpha(sums / counts.clamp_min(1))  # λ_t; absent domains get 0
        if self.mode == "online":
            return loss.plain()
        # This rank's share of the global micro-batch's objective (counts over all ranks); data
        # parallelism averages gradients over ranks, hence the factor world_size.
        objective = doremi_proxy_loss(loss.token_losses, token_domains, self.alpha, loss.token_mask,
                                      domain_token_counts=counts) * loss.world_size
        return loss.from_local_mean(objective)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "domains": self.domains,
            "alpha": self.alpha,
            "alpha_mean": self.alpha_mean,
            "alpha_updates": self.alpha_updates,
            "window_excess": self.window_excess,
            "window_updates": self.window_updates,
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mode", self.mode) != self.mode:
            raise ValueError(f"checkpoint holds a DoReMi {state['mode']} run, this run is {self.mode}")
        self.domains = self.domains or state.get("domains")
        self.alpha, self.alpha_mean = state["alpha"], state["alpha_mean"]
        self.alpha_updates = int(state["alpha_updates"])
        self.window_excess, self.window_updates = state["window_excess"], int(state["window_updates"])
        self.history = [dict(h) for h in state["history"]]
