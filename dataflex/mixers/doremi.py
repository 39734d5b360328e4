"""DoReMi (Xie et al. 2023; reference code sangmichaelxie/doremi): the DoReMi mixer. The pure cores
(excess loss, absent rule, update, proxy objectives, running mean) are in :mod:`.doremi_core`.

Definitions (docs/ALGORITHMS.md, "doremi"), one α step per OPTIMIZER step by default:

- excess loss  λ_t[i] = Σ_{tokens of domain i in the step} max(ℓ_θ − ℓ_ref, 0) / #those tokens, over all
  gradient-accumulation micro-batches and all processes; a domain absent from the step keeps its last
  observed λ (λ = log V before its first observation; ``absent: zero`` gives 0);
- update       α' = α_{t−1} ⊙ exp(η·λ_t);  α_t = (1 − c)·α'/Σα' + c/K;
- proxy loss   the step trains on α_t (the paper's order): Σ_t α_{d(t)}·ℓ_t / Σ_t α_{d(t)} over the step's
  tokens (the reference code's, default) or ``proxy_loss: domain_mean``, the paper's Σ_i α_i·mean_{t∈i} ℓ_t;
- output       ᾱ = mean_t α_t, saved as JSON {domain: weight} (``doremi_weights.json``).

The three-step recipe (one ``dataflex-run`` each, all under ``doremi.root``, default
``outputs/doremi``; ``sweeps/doremi_pipeline.sh`` chains them)::

    dataflex-run experiment=doremi_reference   # (1) reference model on the reference mixture -> <root>/reference
    dataflex-run experiment=doremi_proxy       # (2) proxy beside the frozen reference -> <root>/proxy/doremi_weights.json
    dataflex-run experiment=doremi_final       # (3) mixer=static on ᾱ -> <root>/final
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dataflex.errors import ConfigError
from dataflex.mixers.doremi_core import (  # noqa: F401  (re-exported: the cores' historical home)
    ABSENT_RULES,
    carry_absent,
    domain_excess_loss,
    domain_token_sums,
    doremi_proxy_loss,
    doremi_token_mean_loss,
    doremi_update,
    load_reference_model,
    resolve_reference_model,
    running_mean,
)
from dataflex.signals.distributed import all_reduce_sum
from dataflex.train.components import Mixer, Schedule, UpdateContext
from dataflex.train.fields import param

#: the file the proxy run writes in its run directory (read by ``mixer=static`` in step 3)
WEIGHTS_FILE = "doremi_weights.json"
MODES = ("proxy", "online")
UPDATES = ("step", "micro_batch")
PROXY_LOSSES = ("token_mean", "domain_mean")
META_KEYS = ("sample_index", "domain_id")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model under DDP/DeepSpeed wrappers (their ``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


class DoReMiMixer(Mixer):
    """DoReMi step 2 (and the project's online variant): domain weights α from the excess loss over a
    frozen reference model.

    The reference model (step 1's trained model, loaded once beside the proxy: eval mode, no grad,
    same device and dtype; it must share the proxy's tokenizer, and its vocabulary size is checked)
    runs on the same inputs as the proxy; the per-token excess loss max(ℓ_θ − ℓ_ref, 0) is summed
    per domain over all processes, so every rank computes the same λ_t and the same α_t.

    ``update: step`` (default, the reference code's): α moves once per optimizer step, from all its
    micro-batches, and the whole step trains on α_t. With gradient accumulation (GA > 1) the trainer
    hands the step's micro-batches to :meth:`prepare_step` before the first backward; the excess loss
    is then computed there, which costs one extra no-grad forward of the proxy per micro-batch (in
    eval mode: no dropout, no random numbers consumed). GA g × micro-batch b gives the α (and the
    gradient) of one micro-batch of g·b. With GA = 1 nothing extra runs. ``update: micro_batch``
    (the earlier rule) steps α on every micro-batch, each micro-batch on its own objective.

    - ``mode: proxy`` (the recipe's step 2, the paper's and DataFlex's DoReMi): the batches are drawn
      uniformly over domains and the loss is the α_t-weighted proxy objective (``proxy_loss``).
      ᾱ = mean_t α_t is written to ``<run dir>/doremi_weights.json`` as {domain: weight} at every
      update (atomically; step 3 reads it with ``mixer=static``).
    - ``mode: online`` (this project's variant, in neither the paper nor DataFlex: one run, no
      separate final model): the sampling proportions follow α (refreshed every ``update_every``
      steps) and the loss is the trainer's own loss (the mixture is already in the batches; weighting
      the loss as well would count α twice). ᾱ is written too.

    α, ᾱ, the carried λ, the step count and the per-update history are in every checkpoint, so a
    resumed run continues the same trajectory.

    Attributes:
        reference_dir: the step-1 run directory (its ``model/``) or a model directory.
        mode: ``proxy`` or ``online``.
        eta: step size η.
        smoothing: c, the uniform mass mixed in (every α_i >= c/K); 1e-3 is the paper's (the reference
            code's default is 1e-4).
        clip: clamp λ to [−clip, clip] before the step (DataFlex uses 5); None: no clipping (the paper).
        domains: the data config's domain names (keys of the JSON and of the logged weights);
            default: the run's domain names (a column-defined split's values).
        update_every: optimizer steps between refreshes of the sampling proportions (online),
            the JSON and the logged weights.
        absent: ``last`` (default, the reference code's): a domain absent from the step keeps its
            last observed λ (log V before its first observation, V the model's vocabulary size);
            ``zero``: it gets λ = 0 (the earlier rule: rich-get-richer at small batches).
        update: ``step`` (default) or ``micro_batch`` (see above).
        proxy_loss: ``token_mean`` (default, the reference code's Σ_t α_{d(t)}·ℓ_t / Σ_t α_{d(t)}) or
            ``domain_mean`` (the paper's Σ_i α_i·mean_{t∈i} ℓ_t, whose scale drops when domains are absent).
    """

    acts_through_updates = True

    owns_loss = True

    reference_dir: str | None = None
    mode: str = param("proxy", choices=MODES)
    eta: float = 1.0
    smoothing: float = param(1e-3, ge=0, le=1)
    clip: float | None = param(None, gt=0)
    domains: Sequence[str] | None = None
    update_every: int = param(1, ge=1)
    # -- fidelity options (docs/ALGORITHMS.md "doremi") --
    absent: str = "last"
    update_rule: str = param("step", key="update")  # the key `update` would hide Mixer.update
    proxy_loss: str = "token_mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.eta >= 0 and self.eta != float("inf")):
            raise ValueError(f"eta must be finite and >= 0, got {self.eta}")
        for key, value, allowed in (("absent", self.absent, ABSENT_RULES), ("update", self.update_rule, UPDATES),
                                    ("proxy_loss", self.proxy_loss, PROXY_LOSSES)):
            if value not in allowed:
                raise ConfigError(f"mixer=doremi: {key} must be one of {', '.join(allowed)}, got {value!r}; "
                                  f"set mixer.{key}={allowed[0]} (the default)")
        self.domains = list(self.domains) if self.domains else None
        self.alpha: torch.Tensor | None = None  # α_t, float64 [K]
        self.alpha_mean: torch.Tensor | None = None  # ᾱ over α_1..α_t
        self.alpha_updates = 0  # t
        self.last_excess: torch.Tensor | None = None  # λ in force (absent: last); log V before the first step
        self.window_excess: torch.Tensor | None = None  # Σ λ since the last update (for the history)
        self.window_updates = 0
        self.history: list[dict[str, Any]] = []
        self.run_dir: Path | None = None
        self.reference: torch.nn.Module | None = None  # loaded at the first training micro-batch
        self._step_counts: torch.Tensor | None = None  # N_i of the prepared optimizer step (not state)

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

    def check_before_start(self) -> None:
        try:
            resolve_reference_model(self.reference_dir)
        except ValueError as err:
            raise ConfigError(str(err)) from None

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
        self.alpha_mean, self.alpha_updates, self.last_excess = None, 0, None
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

    # -- the α step ------------------------------------------------------------------------------
    def step_alpha(self, excess: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """One DoReMi step: λ_t (the ``absent`` rule applied where ``counts`` is 0), α_t, ᾱ, counters.

        Args:
            excess: per-domain mean excess loss of the present domains, shape [K].
            counts: counted tokens per domain (None: every domain present).
        """
        excess = torch.as_tensor(excess, dtype=torch.float64).cpu()
        if counts is not None:
            excess = carry_absent(excess, torch.as_tensor(counts).cpu(), self.last_excess, self.absent)
        self.last_excess = excess
        self.alpha = doremi_update(self.alpha, excess, eta=self.eta, smoothing=self.smoothing, clip=self.clip)
        self.alpha_mean = running_mean(self.alpha_mean, self.alpha, self.alpha_updates)
        self.alpha_updates += 1
        self.window_excess = self.window_excess + excess
        self.window_updates += 1
        return self.alpha

    def _step_from_sums(self, sums: torch.Tensor, counts: torch.Tensor, vocab: int) -> torch.Tensor:
        """Sum the per-domain excess sums and token counts over ranks, take the α step; the global counts."""
        k = self.num_domains
        totals = all_reduce_sum(torch.cat([sums, counts]).cpu())
        sums, counts = totals[:k], totals[k:].round()
        if self.last_excess is None:  # the reference code's start: λ = log V before any observation
            self.last_excess = torch.full((k,), math.log(vocab), dtype=torch.float64)
        self.step_alpha(sums / counts.clamp_min(1), counts)
        return counts

    def prepare_step(self, batches: Sequence[dict[str, Any]], model: torch.nn.Module) -> None:
        """Called by the trainer with the micro-batches of an optimizer step before the first one trains.

        With ``update: step`` and gradient accumulation, λ_t is computed here over all of them (one
        no-grad proxy forward in eval mode and one reference forward per micro-batch; micro-batches
        with a non-finite loss do not count) and α takes its one step; every micro-batch of the step
        then trains on α_t with the step's token counts. Otherwise (GA = 1 or ``update: micro_batch``)
        nothing happens here: the micro-batch's own training forward gives λ.
        """
        self._step_counts = None
        if self.update_rule != "step" or len(batches) <= 1 or self.alpha is None:
            return
        from dataflex.signals.losses import shifted_token_nll

        k, device = self.num_domains, next(model.parameters()).device
        sums = torch.zeros(k, dtype=torch.float64, device=device)
        counts = torch.zeros(k, dtype=torch.float64, device=device)
        vocab, was_training = 0, model.training
        model.eval()
        try:
            for batch in batches:
                inputs = {key: v.to(device) if torch.is_tensor(v) else v for key, v in batch.items() if key not in META_KEYS}
                with torch.no_grad():
                    out = model(**{key: v for key, v in inputs.items() if key != "labels"}, use_cache=False)
                    logits = out.logits if hasattr(out, "logits") else out[0]
                    losses, mask = shifted_token_nll(logits, inputs["labels"])
                ref_losses, vocab = self._reference_losses(inputs, inputs["labels"], model)
                excess = (losses - ref_losses).clamp_min(0)
                if not torch.isfinite(excess[mask]).all():
                    continue  # the trainer's non-finite guard stops the run or skips this micro-batch
                domains = batch["domain_id"].to(device).view(-1, 1)
                part_sums, part_counts = domain_token_sums(excess, domains, k, mask)
                sums, counts = sums + part_sums, counts + part_counts
        finally:
            model.train(was_training)
        self._step_counts = self._step_from_sums(sums, counts, vocab)

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

    def _reference_losses(self, inputs: dict[str, Any], labels: torch.Tensor, model: torch.nn.Module):
        """ℓ_ref per token on ``inputs`` (aligned with ``shifted_token_nll``) and the vocabulary size V."""
        from dataflex.signals.losses import shifted_token_nll

        reference = self._reference_model(model)
        with torch.no_grad():
            out = reference(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
            logits = out.logits if hasattr(out, "logits") else out[0]
            ref_losses, _ = shifted_token_nll(logits, labels)
        return ref_losses, logits.shape[-1]

    def reference_token_losses(self, loss) -> tuple[torch.Tensor, int]:
        """ℓ_ref per token on the micro-batch's own inputs (aligned with ``loss.token_losses``) and V."""
        labels = loss.inputs.get("labels")
        if labels is None:  # a trainer that popped them: the counted targets are the input ids
            counted = torch.nn.functional.pad(loss.token_mask, (1, 0), value=False)
            labels = loss.inputs["input_ids"].masked_fill(~counted, -100)
        return self._reference_losses(loss.inputs, labels, loss.model)

    # -- the training loss -----------------------------------------------------------------------
    def training_loss(self, loss) -> torch.Tensor:
        """α_t (from the prepared step, or from this micro-batch on all ranks), then the loss under α_t."""
        if self.alpha is None:
            raise RuntimeError("mixer=doremi: training_loss before initial_proportions/load_state_dict")
        if not (loss.model.training and torch.is_grad_enabled()):
            return loss.plain()  # an evaluation forward: no DoReMi step
        k = self.num_domains
        token_domains = loss.batch["domain_id"].to(loss.token_losses.device).view(-1, 1)
        per_step = self.update_rule == "step"
        if per_step and loss.grad_accum_steps > 1:
            if self._step_counts is None:
                raise RuntimeError("mixer=doremi update=step with gradient accumulation: the trainer did not call "
                                   "prepare_step with the step's micro-batches")
            counts = self._step_counts
        else:
            ref_losses, vocab = self.reference_token_losses(loss)
            excess = (loss.token_losses.detach() - ref_losses).clamp_min(0)
            sums, counts = domain_token_sums(excess, token_domains, k, loss.token_mask)
            counts = self._step_from_sums(sums, counts, vocab)
        if self.mode == "online":
            return loss.plain()
        proxy = doremi_token_mean_loss if self.proxy_loss == "token_mean" else doremi_proxy_loss
        # This rank's share of the objective of the global micro-batch (update: micro_batch) or of the
        # whole step (counts over all micro-batches and ranks); from_local_mean averages over
        # micro-batches and data parallelism over ranks, hence the factors.
        share = proxy(loss.token_losses, token_domains, self.alpha, loss.token_mask, domain_token_counts=counts)
        return loss.from_local_mean(share * loss.world_size * (loss.grad_accum_steps if per_step else 1))

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "domains": self.domains,
            "alpha": self.alpha,
            "alpha_mean": self.alpha_mean,
            "alpha_updates": self.alpha_updates,
            "last_excess": self.last_excess,
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
        self.last_excess = state.get("last_excess")
        self.window_excess, self.window_updates = state["window_excess"], int(state["window_updates"])
        self.history = [dict(h) for h in state["history"]]
