"""Non-finite training losses: stop with one line naming the step and the samples, or skip the batch.

The run-level setting ``nonfinite_loss`` (``conf/train.yaml``) chooses what happens when a training
micro-batch's loss is NaN or infinite:

- ``stop`` (default): raise :class:`NonFiniteLossError` (a DataFlexError: ``dataflex-run`` prints one
  line and exits 2) naming the optimizer step and the micro-batch's ``sample_index`` values;
- ``skip``: back-propagate an exact zero instead (this micro-batch contributes nothing to the step),
  print one line naming the step and the samples, and go on.

The trainer mixin checks the loss BEFORE any component sees the micro-batch (``observe_batch``,
``training_loss``): a NaN never reaches a mixer's or weighter's state. A loss that a loss-owning
component returns is checked too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dataflex.errors import (
    ConfigError,
    NonFiniteLossError,  # noqa: F401  (re-exported)
)
from dataflex.logs import ALL_RANKS, get_logger
from dataflex.signals.distributed import all_ranks_true

#: the run-level config key and its values
CONFIG_KEY = "nonfinite_loss"
log = get_logger(__name__)
POLICIES = ("stop", "skip")


def _zero_stage(trainer_cfg: Mapping[str, Any] | None) -> int:
    """The DeepSpeed ZeRO stage of a trainer config (0 without DeepSpeed)."""
    ds = (trainer_cfg or {}).get("deepspeed")
    if isinstance(ds, str) and Path(ds).is_file():
        ds = json.loads(Path(ds).read_text())
    if not isinstance(ds, Mapping):
        return 0
    return int((ds.get("zero_optimization") or {}).get("stage") or 0)


def nonfinite_policy(value: Any, trainer_cfg: Mapping[str, Any] | None = None) -> str:
    """Check the ``nonfinite_loss`` setting (None means the default, ``stop``) against the trainer.

    ``skip`` is refused under DeepSpeed ZeRO-3: the zero loss of a skipped micro-batch would have to
    reach parameters that are partitioned outside the module's own forward.
    """
    if value is None:
        return "stop"
    if value not in POLICIES:
        raise ConfigError(
            f"{CONFIG_KEY} must be one of {', '.join(POLICIES)}, got {value!r}; "
            f"set {CONFIG_KEY}=stop to stop at the first NaN/inf loss or {CONFIG_KEY}=skip to skip such micro-batches"
        )
    if value == "skip" and _zero_stage(trainer_cfg) == 3:
        raise ConfigError(
            f"{CONFIG_KEY}=skip is not supported with DeepSpeed ZeRO-3 (partitioned parameters); "
            f"use {CONFIG_KEY}=stop or a ZeRO-2 trainer (trainer=deepspeed_z2)"
        )
    return value


def _finite(t: torch.Tensor | None) -> bool:
    return t is None or bool(torch.isfinite(t.detach()).all())


def zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """An exact 0.0 that depends on every trainable parameter (gradient exactly zero).

    Touching every trainable parameter keeps DDP's and ZeRO-2's per-parameter gradient reduction in
    step with the ranks that did not skip (a loss with no path to the parameters would leave their
    reduction waiting).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("the model has no trainable parameter")
    return sum(p.sum() * 0.0 for p in params)


def describe_samples(batch: Mapping[str, torch.Tensor], per_sample: torch.Tensor | None = None, limit: int = 16) -> str:
    """``samples [i, j, ...]`` of the micro-batch, with the non-finite ones named when known."""
    indices = batch.get("sample_index")
    if indices is None:
        return "samples unknown (the batch carries no sample_index)"
    indices = [int(i) for i in torch.as_tensor(indices).flatten().tolist()]

    def shown(values: list[int]) -> str:
        return "[" + ", ".join(map(str, values[:limit])) + (", ...]" if len(values) > limit else "]")

    text = f"samples (sample_index) {shown(indices)}"
    if per_sample is not None and per_sample.numel() == len(indices):
        bad = [i for i, ok in zip(indices, torch.isfinite(per_sample.detach()).tolist()) if not ok]
        if bad:
            text += f", non-finite per-sample loss on {shown(bad)}"
    return text


class NonFiniteGuard:
    """Applies the ``nonfinite_loss`` policy to each training micro-batch's loss.

    Args:
        policy: ``stop`` or ``skip`` (see the module docstring).

    Attributes:
        skipped: ``{"step", "samples"}`` for every micro-batch skipped on this process.
    """

    def __init__(self, policy: str | None = "stop"):
        self.policy = nonfinite_policy(policy)
        self.skipped: list[dict[str, Any]] = []

    def check(
        self,
        loss: torch.Tensor,
        step: int,
        batch: Mapping[str, torch.Tensor],
        model: torch.nn.Module,
        per_sample: torch.Tensor | None = None,
        what: str = "training loss",
    ) -> torch.Tensor | None:
        """None when ``loss`` (and ``per_sample``, if given) is finite; otherwise raise (``stop``) or
        return the zero loss to back-propagate in its place (``skip``).

        Args:
            loss: the micro-batch's loss.
            step: the optimizer step being computed (1-based).
            batch: the micro-batch's ``sample_index``/``domain_id``.
            model: the training model (for the zero loss).
            per_sample: the micro-batch's per-sample losses, when computed.
            what: what ``loss`` is, for the message.
        """
        local = _finite(loss) and _finite(per_sample)
        # under skip every rank skips together: a rank that skipped alone would leave the others
        # waiting in a component's collective (a weighter's gather)
        if all_ranks_true(local) if self.policy == "skip" else local:
            return None
        if local:
            return self._skip(step, batch, model, f"{what} is not finite on another rank at step {step}")
        value = float(loss.detach().float().flatten()[0]) if loss.numel() else float("nan")
        where = f"{what} is {value} at step {step} on {describe_samples(batch, per_sample)}"
        if self.policy == "stop":
            raise NonFiniteLossError(
                f"{where}; lower the learning rate or check those samples, or set {CONFIG_KEY}=skip to skip such micro-batches"
            )
        return self._skip(step, batch, model, where)

    def _skip(self, step: int, batch: Mapping[str, torch.Tensor], model: torch.nn.Module, where: str) -> torch.Tensor:
        samples = [int(i) for i in torch.as_tensor(batch.get("sample_index", [])).flatten().tolist()]
        self.skipped.append({"step": step, "samples": samples})
        log.warning("%s; micro-batch skipped on every rank (%s=skip)", where, CONFIG_KEY, extra=ALL_RANKS)
        return zero_loss(model)
