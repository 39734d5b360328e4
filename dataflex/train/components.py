"""The three component kinds (selector, mixer, weighter) and their update schedule.

A component owns WHAT is decided; the DataFlexCallback owns WHEN (the schedule); the signals
engine owns HOW model quantities are computed; the sampler and the loss own WHERE decisions land.
A new method is one subclass (a thin stateful shell around a pure core) plus one YAML file.

Components declare, they are not inspected: every subclass of :class:`Component` is a keyword-only
dataclass whose fields are its config keys (typed, with ranges from :func:`~dataflex.train.fields.param`,
checked before anything is built); the schedule keys are declared once by :class:`Scheduled`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from dataflex.errors import ConfigError
from dataflex.train.fields import accept_config_keys, check_values, coerce_floats, config_values, param

if TYPE_CHECKING:
    from dataflex.train.sampler import DynamicSampler


@dataclass(frozen=True)
class Schedule:
    """When a component updates: after ``warmup_steps`` optimizer steps, then every
    ``update_every`` steps, for ``num_updates`` rounds (<= 0: until the end of training).

    ``update_every`` <= 0 means the component never updates during training (it only decides
    once, at the start).

    ``restart_every`` > 0 repeats the schedule every that many steps (the original DataFlex's "Flex
    epoch" of ``warmup_step + update_step x update_times`` steps, which its selectors repeat): in each
    period the updates fall at the same offsets (``warmup_steps``, then every ``update_every``, at most
    ``num_updates`` of them), none at a period's first step. The decision in force carries over from
    one period to the next (the original returns to a random warm-up subset there; see the README).
    """

    warmup_steps: int = 0
    update_every: int = 0
    num_updates: int = 0
    restart_every: int = 0

    def __post_init__(self):
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def is_update_step(self, global_step: int, updates_done: int) -> bool:
        """True when an update is due at the end of optimizer step ``global_step`` (1-based)."""
        if self.restart_every > 0:
            offset = global_step % self.restart_every
            if offset == 0 or self.update_every <= 0 or offset < self.warmup_steps:
                return False
            index, rest = divmod(offset - self.warmup_steps, self.update_every)
            return rest == 0 and (self.num_updates <= 0 or index < self.num_updates)
        if self.update_every <= 0 or global_step < self.warmup_steps:
            return False
        if self.num_updates > 0 and updates_done >= self.num_updates:
            return False
        return (global_step - self.warmup_steps) % self.update_every == 0


def selection_due(schedule: Schedule, global_step: int, updates_done: int, max_steps: int) -> bool:
    """True when a selector's ``schedule`` has a round at the end of ``global_step``; never at
    ``max_steps``, the last step: nothing would train on that selection (a mixer's last update
    does run: DoReMi averages every update)."""
    return global_step < max_steps and schedule.is_update_step(global_step, updates_done)


@dataclass(kw_only=True)
class UpdateContext:
    """What a component may read when it decides (and nothing more: not the trainer).

    Attributes:
        model: the training model (DDP/DeepSpeed-unwrapped as the trainer holds it).
        optimizer: the trainer's optimizer (Adam state for LESS's preconditioning), None before it exists.
        pool: the tokenised training pool (rows with ``sample_index`` and ``domain_id``).
        collator: the collator of the pool's rows (LLaMA-Factory's, under DataFlex's MetaCollator).
        tokenizer: the run's tokenizer.
        template: the LLaMA-Factory template the backend built (None for the pt stage).
        validation: the tokenised target/validation set (rows like the pool's; ``domain_id`` = subtask
            id), or None when the data config names none (``data.validation``).
        sampler: the DynamicSampler (pool size, domain ids, the plan in force).
        global_step: optimizer steps done so far.
        update_index: 0-based index of this update (-1 for the decision at the start).
        max_steps: total optimizer steps of the run.
        run_dir: the run directory (files a component writes go under it), None outside a Run.
        domain_names: the name of every domain id (the data config's domains, or the values of a
            column-defined split), None when unknown.
    """

    model: torch.nn.Module | None = None
    optimizer: Any = None
    pool: Any = None
    collator: Any = None
    tokenizer: Any = None
    template: Any = None
    validation: Any = None
    sampler: DynamicSampler | None = None
    global_step: int = 0
    update_index: int = -1
    max_steps: int = 0
    run_dir: Path | None = None
    domain_names: list[str] | None = None

    def require_validation(self, who: str):
        """:attr:`validation`, or a ConfigError telling the user to name one."""
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


@dataclass
class LossInputs:
    """What a loss-owning component sees of one training micro-batch (see Component.training_loss).

    Attributes:
        token_losses: ``[b, T-1]`` next-token NLL of this rank's samples, fp32, WITH grad; 0 where
            ``token_mask`` is False (entry t predicts label t + 1).
        token_mask: ``[b, T-1]`` True on counted label tokens.
        batch: ``sample_index`` and ``domain_id`` of the samples (``[b]`` each).
        inputs: the model inputs of the micro-batch (input_ids, attention_mask, labels, ...).
        model: the training model (e.g. for a reference forward on the same inputs).
        num_items_in_batch: the label-token count the trainer normalises by (the whole optimizer
            step's, over gradient-accumulation micro-batches and, when tokens are averaged across
            devices, over ranks), or None when the trainer takes a per-micro-batch mean.
        grad_accum_steps: micro-batches per optimizer step.
        world_size: number of processes.
        token_scale: the factor the trainer puts on a summed token loss: its own loss is
            ``token_losses.sum() * token_scale``.
        mean_scale: the factor that puts a per-rank micro-batch mean on the trainer's scale (1/GA
            when the trainer itself does not divide by GA; otherwise 1).
    """

    token_losses: torch.Tensor
    token_mask: torch.Tensor
    batch: dict[str, torch.Tensor]
    inputs: dict[str, Any]
    model: torch.nn.Module
    num_items_in_batch: Any
    grad_accum_steps: int
    world_size: int
    token_scale: float | torch.Tensor
    mean_scale: float

    def sample_losses(self) -> torch.Tensor:
        """``[b]`` token-mean NLL per sample (with grad; 0 for a sample without label tokens)."""
        return self.token_losses.sum(-1) / self.token_mask.sum(-1).clamp(min=1).to(self.token_losses.dtype)

    def plain(self) -> torch.Tensor:
        """Exactly the loss the trainer would back-propagate without any component."""
        return self.token_losses.sum() * self.token_scale

    def from_local_mean(self, objective: torch.Tensor) -> torch.Tensor:
        """An objective defined as a mean over this rank's micro-batch, on the trainer's scale: the
        optimizer step then follows the mean of the objective over micro-batches and ranks (data
        parallelism averages gradients over ranks)."""
        return objective * self.mean_scale


#: the schedule of a component that never updates (it decides at the start only, or never)
NEVER = Schedule()


@dataclass(kw_only=True, eq=False)
class Component:
    """Base of all components: declared settings, a schedule and checkpointable state.

    Every subclass is made a keyword-only dataclass (no ``__init__`` to write): declare each config
    key as an annotated attribute, with :func:`~dataflex.train.fields.param` for a range or a set of
    choices; set up state that is not a setting in ``__post_init__`` (calling ``super().__post_init__()``
    first). Values are checked against the declarations before anything else runs.
    """

    # -- capability flags: what a component does, declared by the class (never read off its methods) --
    #: :meth:`training_loss` replaces the trainer's loss (weighters, DoReMi); at most one per run
    owns_loss: ClassVar[bool] = False
    #: :meth:`observe_batch` sees the per-sample losses of every training micro-batch (ODM)
    observes_batches: ClassVar[bool] = False
    #: reads the target/validation set (``ctx.require_validation``): a run without ``data.validation``
    #: is refused before the model loads instead of at the first decision
    needs_validation: ClassVar[bool] = False
    #: decides what is sampled (:meth:`decide_initial`, :meth:`decide`, :meth:`apply`): selectors, mixers
    decides: ClassVar[bool] = False
    #: the per-domain training loss is logged every step while it runs (mixers)
    logs_domain_losses: ClassVar[bool] = False
    #: acts through updates (not through its first decision alone): a run in which it could never
    #: update (``update_every=0``, ``warmup_steps >= max_steps``) is refused by :mod:`dataflex.preflight`
    acts_through_updates: ClassVar[bool] = False
    #: with ``warmup_steps=0`` its first decision is the method's own (one-shot NEAR/TSDS), not a warm-up
    first_decision_is_own: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclass(kw_only=True, eq=False)(cls)
        accept_config_keys(cls)

    def __post_init__(self) -> None:
        check_values(type(self), config_values(self))
        coerce_floats(self)

    @property
    def schedule(self) -> Schedule:
        """When the component updates (:class:`Scheduled` declares the keys; default: never)."""
        return NEVER

    # -- what the callback calls (the kinds define them) -------------------------------------------------
    def is_due(self, global_step: int, updates_done: int, max_steps: int) -> bool:
        """Whether a decision is due at the end of optimizer step ``global_step``."""
        return self.decides and self.schedule.is_update_step(global_step, updates_done)

    def decide_initial(self, ctx: UpdateContext) -> Any:
        """The decision in force from the start of training (only called when :attr:`decides`)."""
        return None

    def decide(self, ctx: UpdateContext) -> Any:
        """The decision of an update that :meth:`is_due`."""
        raise NotImplementedError

    def apply(self, decision: Any, ctx: UpdateContext, sink: DecisionSink) -> None:
        """Put ``decision`` (the same on every rank) in force through ``sink``."""

    def step_end(self, global_step: int) -> None:
        """Called after every optimizer step (``global_step`` steps done), e.g. for a temperature schedule."""

    def pop_stats(self) -> dict[str, float]:
        """Statistics since the last call, logged with the training loss (empty: nothing to log)."""
        return {}

    def observe_batch(self, per_sample_losses: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """Called for every training micro-batch when the component :attr:`observes_batches`.

        Args:
            per_sample_losses: ``[b]`` token-mean NLL of this rank's samples, read off the training
                forward's own logits (detached; no extra forward pass).
            batch: ``sample_index`` and ``domain_id`` of those samples (``[b]`` each).
        """

    def prepare_step(self, batches: list[dict[str, Any]], model: torch.nn.Module) -> None:
        """Called with all micro-batches of an optimizer step before its first backward, for the
        component that owns the loss (DoReMi moves α once per optimizer step from all of them)."""

    def training_loss(self, loss: LossInputs) -> torch.Tensor | None:
        """The loss to back-propagate for this micro-batch, when the component :attr:`owns_loss`
        (weighters; DoReMi's alpha-weighted proxy loss).

        At most one component of a run may own the loss. The returned value replaces the model's
        loss on the trainer's scale: build it with :meth:`LossInputs.from_local_mean` (an objective
        that is a mean over this rank's micro-batch) or start from :meth:`LossInputs.plain` (exactly
        the trainer's own loss).
        """
        return None

    def check_before_start(self) -> None:
        """Raise :class:`~dataflex.errors.ConfigError` for what the config alone shows this component
        cannot do (a missing reference model or file, incompatible sizes); called by
        :mod:`dataflex.preflight` before any process starts or any model loads."""

    def decision_stats(self) -> dict[str, float]:
        """Extra values logged with each decision of a selector or mixer (rank 0), beside the
        selection statistics or the proportions (e.g. DoReMi's domain weights, NICE's rewards);
        empty: nothing more to log."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything the component decided or accumulated, saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on resume."""


class Scheduled(Component):
    """The schedule keys, declared once for every component that updates during training.

    Attributes:
        warmup_steps: optimizer steps before the first update.
        update_every: steps between updates (<= 0: never update after the decision at the start).
        num_updates: number of updates (<= 0: until the end of training); per period with restart_every.
        restart_every: repeat the schedule every that many steps (0: never; :class:`Schedule`).
    """

    warmup_steps: int = param(0, ge=0)
    update_every: int = 0
    num_updates: int = 0
    restart_every: int = param(0, ge=0)

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.warmup_steps, self.update_every, self.num_updates, self.restart_every)


class DecisionSink(Protocol):
    """Where decisions land (the DataFlexCallback): the sampler, the logs and the selection files."""

    def set_indices(
        self, indices: torch.Tensor | None, ctx: UpdateContext, stats: Callable[[], dict[str, float]]
    ) -> None: ...

    def set_proportions(
        self, proportions: torch.Tensor, ctx: UpdateContext, stats: Callable[[], dict[str, float]]
    ) -> None: ...


class Selector(Component):
    """Chooses which pool samples train next (a LongTensor of pool indices).

    A selection is never made at the run's last step (nothing would train on it).
    """

    decides = True

    def initial_indices(self, ctx: UpdateContext) -> torch.Tensor | None:
        """Indices to train on before the first update (None: the whole pool)."""
        return None

    def select(self, ctx: UpdateContext) -> torch.Tensor:
        """Indices for the next window."""
        raise NotImplementedError

    def is_due(self, global_step: int, updates_done: int, max_steps: int) -> bool:
        return selection_due(self.schedule, global_step, updates_done, max_steps)

    def decide_initial(self, ctx: UpdateContext) -> torch.Tensor | None:
        return self.initial_indices(ctx)

    def decide(self, ctx: UpdateContext) -> torch.Tensor:
        return self.select(ctx)

    def apply(self, decision: torch.Tensor | None, ctx: UpdateContext, sink: DecisionSink) -> None:
        sink.set_indices(decision, ctx, self.decision_stats)


class Mixer(Component):
    """Sets the sampling proportions of the K domains (a FloatTensor on the simplex)."""

    decides = True
    logs_domain_losses = True

    def initial_proportions(self, ctx: UpdateContext) -> torch.Tensor:
        """Proportions before the first update."""
        raise NotImplementedError

    def update(self, ctx: UpdateContext) -> torch.Tensor:
        """Proportions for the next window."""
        raise NotImplementedError

    def decide_initial(self, ctx: UpdateContext) -> torch.Tensor:
        return self.initial_proportions(ctx)

    def decide(self, ctx: UpdateContext) -> torch.Tensor:
        return self.update(ctx)

    def apply(self, decision: torch.Tensor, ctx: UpdateContext, sink: DecisionSink) -> None:
        sink.set_proportions(decision, ctx, self.decision_stats)


class Weighter(Component):
    """Weights the per-sample losses of a batch (weights sum to 1 over the global batch), through
    :meth:`Component.training_loss`; :meth:`Component.pop_stats` gives the weight statistics."""

    owns_loss = True
