"""The three component kinds (selector, mixer, weighter) and their update schedule.

A component owns WHAT is decided; the DataFlexCallback owns WHEN (the schedule); the signals
engine owns HOW model quantities are computed; the sampler and the loss own WHERE decisions land.
A new method is one subclass (a thin stateful shell around a pure core) plus one YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import Trainer

    from dataflex.train.sampler import DynamicSampler


@dataclass(frozen=True)
class Schedule:
    """When a component updates: after ``warmup_steps`` optimizer steps, then every
    ``update_every`` steps, for ``num_updates`` rounds (<= 0: until the end of training).

    ``update_every`` <= 0 means the component never updates during training (it only decides
    once, at the start).
    """

    warmup_steps: int = 0
    update_every: int = 0
    num_updates: int = 0

    def __post_init__(self):
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def is_update_step(self, global_step: int, updates_done: int) -> bool:
        """True when an update is due at the end of optimizer step ``global_step`` (1-based)."""
        if self.update_every <= 0 or global_step < self.warmup_steps:
            return False
        if self.num_updates > 0 and updates_done >= self.num_updates:
            return False
        return (global_step - self.warmup_steps) % self.update_every == 0


@dataclass
class UpdateContext:
    """What a component sees when it decides.

    Attributes:
        trainer: the running trainer (model, optimizer, datasets, accelerator).
        sampler: the DynamicSampler (pool size, domain ids, the plan in force).
        global_step: optimizer steps done so far.
        update_index: 0-based index of this update (-1 for the decision at the start).
        max_steps: total optimizer steps of the run.
        run_dir: the run directory (files a component writes go under it), None outside a Run.
    """

    trainer: Trainer
    sampler: DynamicSampler
    global_step: int
    update_index: int
    max_steps: int
    run_dir: Path | None = None

    @property
    def tokenizer(self):
        return self.trainer.processing_class

    @property
    def validation(self):
        """The tokenised target/validation set (rows like the pool's; ``domain_id`` = subtask id),
        or None when the data config names none (``data.validation``)."""
        return getattr(self.trainer, "dataflex_validation", None)

    def require_validation(self, who: str):
        """:attr:`validation`, or a ConfigError telling the user to name one."""
        from dataflex.config import ConfigError

        if self.validation is None or len(self.validation) == 0:
            raise ConfigError(
                f"selector={who} needs a target/validation set: set data.validation=<registered dataset name(s)> "
                "(offline_sft uses offline_sft_val_mcq)"
            )
        return self.validation

    @property
    def pool_size(self) -> int:
        return self.sampler.pool_size

    @property
    def domain_ids(self) -> torch.Tensor:
        return self.sampler.domain_ids


class Component:
    """Base of all components: a schedule plus checkpointable state."""

    def __init__(self, warmup_steps: int = 0, update_every: int = 0, num_updates: int = 0):
        self.schedule = Schedule(warmup_steps, update_every, num_updates)

    def observe_batch(self, per_sample_losses: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """Called for every training micro-batch when a component overrides it.

        Args:
            per_sample_losses: ``[b]`` token-mean NLL of this rank's samples, read off the training
                forward's own logits (detached; no extra forward pass).
            batch: ``sample_index`` and ``domain_id`` of those samples (``[b]`` each).
        """

    def training_loss(
        self,
        token_losses: torch.Tensor,
        token_mask: torch.Tensor,
        batch: dict[str, torch.Tensor],
        inputs: dict[str, Any],
        model: torch.nn.Module,
    ) -> torch.Tensor | None:
        """The loss to back-propagate for this micro-batch, when the component owns it (weighters;
        DoReMi's alpha-weighted proxy loss). Default None: the trainer's own loss.

        Args:
            token_losses: ``[b, T]`` next-token NLL of this rank's samples (with grad; 0 where
                ``token_mask`` is False).
            token_mask: ``[b, T]`` True on label tokens (labels != -100, shifted).
            batch: ``sample_index`` and ``domain_id`` of those samples (``[b]`` each).
            inputs: the model inputs of the micro-batch (input_ids, attention_mask, labels, ...).
            model: the training model (e.g. for a component's own forward of a reference model).
        """
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything the component decided or accumulated, saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on resume."""


class Selector(Component):
    """Chooses which pool samples train next (a LongTensor of pool indices)."""

    def initial_indices(self, ctx: UpdateContext) -> torch.Tensor | None:
        """Indices to train on before the first update (None: the whole pool)."""
        return None

    def select(self, ctx: UpdateContext) -> torch.Tensor:
        """Indices for the next window."""
        raise NotImplementedError


class Mixer(Component):
    """Sets the sampling proportions of the K domains (a FloatTensor on the simplex)."""

    def initial_proportions(self, ctx: UpdateContext) -> torch.Tensor:
        """Proportions before the first update."""
        raise NotImplementedError

    def update(self, ctx: UpdateContext) -> torch.Tensor:
        """Proportions for the next window."""
        raise NotImplementedError


class Weighter(Component):
    """Weights the per-sample losses of a batch (weights sum to 1 over the global batch).

    The weighted ``compute_loss`` path is not in place yet: ``Run`` refuses any weighter but
    ``none`` until it is.
    """
