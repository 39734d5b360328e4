"""Weighters: how much each sample of a batch counts in the training loss.

A weighter owns the training loss (``Component.training_loss``): for every training micro-batch it
gets the per-token NLL with grad, gathers the per-sample losses of the whole micro-batch over all
ranks, turns them into weights that sum to 1 over that global micro-batch (identical on every rank)
and returns the weighted loss on the trainer's own scale.

Decisions pinned here (README "Weighters"):

- **Normalisation over the global micro-batch.** The weights are normalised over the samples of one
  micro-batch on all ranks (``per_device_train_batch_size x processes``), not over the
  gradient-accumulation micro-batches of an optimizer step: the trainer back-propagates each
  micro-batch before the next one is read, so the step's later losses are not known yet. Each
  micro-batch then contributes to the step exactly as in plain training. For the paper's
  normalisation over the whole optimizer step, raise ``per_device_train_batch_size`` and lower
  ``gradient_accumulation_steps`` (same effective batch).
- **The weighted objective** (``reduction``):

  * ``token`` (default): sample i's label tokens are multiplied by ``B·w_i`` inside the trainer's
    own token-mean loss, ``Loss = Σ_i B·w_i · Σ_t nll_it / N`` (B samples in the global
    micro-batch, N the label tokens the trainer normalises by). With ``w_i = 1/B`` this IS the
    trainer's loss, bit for bit, with ragged lengths, gradient accumulation and several processes;
    when every sample has the same number of label tokens (packed pretraining) it equals the
    paper's ``Σ_i w_i·l_i`` up to the trainer's constant scale.
  * ``sample``: the paper's form literally, ``Loss = world_size · Σ_local w_i·l_i`` per
    micro-batch with ``l_i`` the token-mean NLL of sample i, averaged over micro-batches and
    ranks (``LossInputs.from_local_mean``). With ``w_i = 1/B`` this is the mean of per-sample
    means, which differs from the trainer's token mean whenever lengths differ.
- Weights are computed from the detached losses (no gradient flows through a weight).
- Samples without label tokens (e.g. a prompt cut off at ``cutoff_len``) get weight 0 and are left
  out of the normalisation; a non-finite loss is left out the same way (the loss itself is then
  non-finite, as in plain training).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dataflex.signals import distributed
from dataflex.train.components import LossInputs, Weighter
from dataflex.train.fields import param

REDUCTIONS = ("token", "sample")

# Gather keys: rank * _RANK_STRIDE + position keeps the samples in (rank, position) order and makes
# every key unique (the same pool sample may appear twice in one global batch).
_RANK_STRIDE = 1 << 32


def gather_global_batch(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather per-sample values over ranks in (rank, local position) order.

    Args:
        values: ``[b, ...]`` this rank's values (detached; same trailing shape on every rank).

    Returns:
        ``(global_values [B, ...], offset)``: the values of every rank, rank 0's first, identical on
        every rank, and the position of this rank's first sample in them.
    """
    keys = torch.arange(values.shape[0], dtype=torch.long) + distributed.rank() * _RANK_STRIDE
    gathered, gathered_keys = distributed.gather_by_index(values.detach(), keys)
    offset = int((gathered_keys < distributed.rank() * _RANK_STRIDE).sum())
    return gathered, offset


def weight_entropy(weights: torch.Tensor) -> float:
    """Shannon entropy (nats) of a weight vector on the simplex (0·log 0 = 0); log B when uniform."""
    w = weights[weights > 0].double()
    return float(-(w * w.log()).sum())


class BatchWeighter(Weighter):
    """Shared shell of the weighters: gather, weigh, build the loss, keep statistics.

    Subclasses implement :meth:`batch_weights` (the pure decision over the global micro-batch).

    Attributes:
        reduction: ``token`` (default; ``w = 1/B`` is exactly the trainer's loss) or ``sample``
            (the paper's ``world_size · Σ_local w_i·l_i``); see the module docstring.
    """

    reduction: str = param("token", choices=REDUCTIONS)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.steps_done = 0  # optimizer steps finished (set by the callback after every step)
        self._reset_stats()

    # -- the decision ------------------------------------------------------------------------------
    def batch_weights(self, losses: torch.Tensor) -> torch.Tensor:
        """Weights (float64, summing to 1) for the per-sample losses ``[B]`` (float64, finite) of the
        global micro-batch."""
        raise NotImplementedError

    def extra_stats(self) -> dict[str, float]:
        """Values logged with the weight statistics (e.g. the temperature in force)."""
        return {}

    # -- the loss ----------------------------------------------------------------------------------
    def training_loss(self, loss: LossInputs) -> torch.Tensor:
        per_sample = loss.sample_losses()
        domains = (loss.batch or {}).get("domain_id")
        domains = torch.full_like(per_sample, -1.0) if domains is None else domains
        columns = [per_sample.detach(), loss.token_mask.sum(-1) > 0, domains]
        local = torch.stack([c.double().cpu().flatten() for c in columns], dim=1)
        gathered, offset = gather_global_batch(local)
        losses, valid = gathered[:, 0], (gathered[:, 1] > 0) & torch.isfinite(gathered[:, 0])
        weights = torch.zeros_like(losses)
        n_valid = int(valid.sum())
        if n_valid:
            weights[valid] = self.batch_weights(losses[valid])
            self._record(weights[valid], gathered[valid, 2].long())
        local_weights = weights[offset : offset + per_sample.shape[0]]
        dtype, device = loss.token_losses.dtype, loss.token_losses.device
        if self.reduction == "token":
            # B·w_i is exactly 1.0 in float32 for w = 1/B, so uniform weights reproduce plain() bit for bit.
            scale = (local_weights * n_valid).to(dtype=dtype, device=device)
            return (loss.token_losses * scale[:, None]).sum() * loss.token_scale
        w = local_weights.to(dtype=dtype, device=device)
        return loss.from_local_mean(distributed.world_size() * (w * per_sample).sum())

    # -- schedule and statistics -------------------------------------------------------------------
    def step_end(self, global_step: int) -> None:
        self.steps_done = int(global_step)

    def _reset_stats(self) -> None:
        self._stats = {
            "batches": 0,
            "min": math.inf,
            "max": -math.inf,
            "entropy": 0.0,
            "size": 0,
            "extra": {},
            "domains": {},  # domain id -> [sum of B·w, rows]
        }

    def _record(self, weights: torch.Tensor, domains: torch.Tensor) -> None:
        s = self._stats
        s["batches"] += 1
        s["min"] = min(s["min"], float(weights.min()))
        s["max"] = max(s["max"], float(weights.max()))
        s["entropy"] += weight_entropy(weights)
        s["size"] += int(weights.numel())
        s["extra"] = self.extra_stats()  # as in force for this batch (the step counter moves on before logging)
        relative = weights * weights.numel()  # B·w: 1 for every row under uniform weights
        for d in domains.unique().tolist():
            if d >= 0:
                total = s["domains"].setdefault(str(d), [0.0, 0])
                total[0] += float(relative[domains == d].sum())
                total[1] += int((domains == d).sum())

    def pop_stats(self) -> dict[str, float]:
        """Statistics of the weights since the last call (empty when no batch was weighted):
        ``weighter/weight_min``, ``weighter/weight_max`` (over the micro-batches),
        ``weighter/entropy`` (mean over micro-batches, nats; log B for uniform weights),
        ``weighter/batch`` (mean global micro-batch size B), ``weighter/domain_weight/<domain id>`` (the
        mean relative weight B·w of the domain's rows: 1 under uniform weights, > 1 when its rows count more
        than the batch's average; the callback logs it under the domain's name), plus :meth:`extra_stats`
        as they were for the last weighted micro-batch."""
        s = self._stats
        if not s["batches"]:
            return {}
        stats = {
            "weighter/weight_min": s["min"],
            "weighter/weight_max": s["max"],
            "weighter/entropy": s["entropy"] / s["batches"],
            "weighter/batch": s["size"] / s["batches"],
            **{f"weighter/{k}": v for k, v in s["extra"].items()},
            **{f"weighter/domain_weight/{d}": total / n for d, (total, n) in sorted(s["domains"].items())},
        }
        self._reset_stats()
        return stats

    # -- checkpoint --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        stats = {**self._stats, "extra": dict(self._stats["extra"])}
        return {
            "steps_done": self.steps_done,
            "stats": {**stats, "domains": {d: list(v) for d, v in stats["domains"].items()}},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        stats = state["stats"]
        self._stats = {
            **stats,
            "extra": dict(stats["extra"]),
            "domains": {d: list(v) for d, v in stats.get("domains", {}).items()},
        }
