"""DataFlexCallback: owns WHEN components decide, and puts their state in every checkpoint."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from dataflex.errors import ConfigError
from dataflex.signals.distributed import all_reduce_sum, broadcast_object, is_main_process
from dataflex.train.checkpoints import STATE_FILE
from dataflex.train.components import Component, UpdateContext
from dataflex.train.timing import DecisionClock
from dataflex.utils import atomic_torch_save, atomic_write_json

if TYPE_CHECKING:
    from dataflex.tracking import Tracker

SELECTIONS_DIR = "selections"


def selection_stats(
    indices: torch.Tensor, previous: torch.Tensor | None, domain_ids: torch.Tensor, names: list[str]
) -> dict[str, float]:
    """What is logged for one selection round.

    ``selector/selected``: indices chosen (with repeats, as drawn); ``selector/unique``: distinct
    ones; ``selector/overlap``: the fraction of this round's distinct samples that the previous
    selection also held (absent for the first); ``selector/domain/<name>``: how many chosen
    samples (with repeats) come from each domain or task.
    """
    unique = torch.unique(indices)
    stats: dict[str, float] = {"selector/selected": int(indices.numel()), "selector/unique": int(unique.numel())}
    if previous is not None:
        stats["selector/overlap"] = float(torch.isin(unique, torch.unique(previous)).double().mean())
    counts = torch.bincount(domain_ids[indices], minlength=len(names))
    stats.update({f"selector/domain/{name}": int(c) for name, c in zip(names, counts.tolist())})
    return stats


class DomainLossTracker:
    """Per-domain training loss of every optimizer step (runs with a mixer): the mean of the
    per-sample losses of each domain over the step's micro-batches, summed over ranks.

    Args:
        num_domains: a callable giving K (resolved at the first batch, when the sampler exists).
    """

    def __init__(self, num_domains):
        self.num_domains = num_domains
        self.sums: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def observe_batch(self, per_sample_losses: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        if self.sums is None:
            k = self.num_domains()
            self.sums, self.counts = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
        losses, domains = per_sample_losses.detach().cpu().double(), batch["domain_id"].cpu().long()
        finite = torch.isfinite(losses)
        self.sums.index_add_(0, domains[finite], losses[finite])
        self.counts.index_add_(0, domains[finite], torch.ones_like(losses[finite]))

    def pop(self, names: list[str]) -> dict[str, float]:
        """``train/domain_loss/<name>`` for every domain seen since the last call (every rank must
        call: the sums are reduced over ranks); the accumulators restart."""
        if self.sums is None:  # no batch seen (yet) on this rank
            self.sums, self.counts = (
                torch.zeros(len(names), dtype=torch.float64),
                torch.zeros(len(names), dtype=torch.float64),
            )
        totals = all_reduce_sum(torch.cat([self.sums, self.counts]))
        k = self.sums.numel()
        sums, counts = totals[:k], totals[k:]
        self.sums, self.counts = torch.zeros_like(self.sums), torch.zeros_like(self.counts)
        return {f"train/domain_loss/{names[d]}": float(sums[d] / counts[d]) for d in range(k) if counts[d] > 0}


class DataFlexCallback(TrainerCallback):
    """Runs the component schedule, feeds decisions to the sampler, checkpoints everything.

    Args:
        components: the run's selector/mixer/weighter (None entries are skipped).
        tracker: where logs go (JSONL, W&B, ...).
        resume_from: checkpoint directory being resumed, if any.
        domain_names: names for the logged domain proportions (default: domain ids).
        run_dir: the run directory; each selection round is saved as
            ``selections/round_NNN.json`` (round 000 is the warm-up decision).
        run_id: identity of the run, stamped into every file it writes so no other run reads it
            as its own.

    Its :attr:`clock` (:class:`~dataflex.train.timing.DecisionClock`) times every component call
    (decisions, batch observations, the loss owner's work in the trainer) per kind, and the
    training loop; timings are never part of the state and never change a decision.
    """

    def __init__(
        self,
        components: dict[str, Component | None],
        tracker: Tracker,
        resume_from: str | None = None,
        domain_names: list[str] | None = None,
        run_dir: str | os.PathLike | None = None,
        run_id: str | None = None,
    ):
        self.components = {name: c for name, c in components.items() if c is not None}
        self.tracker = tracker
        self.resume_from = resume_from
        self.domain_names = domain_names
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run_id = run_id
        self.updates_done = {name: 0 for name in self.components}
        self.trainer = None  # set by the trainer mixin
        # with a mixer, the per-domain training loss is logged every step
        logging = any(c.logs_domain_losses for c in self.components.values())
        self.domain_losses = DomainLossTracker(lambda: len(self._names())) if logging else None
        self.clock = DecisionClock()
        self._decide_seconds: float | None = None  # of the decision being applied (logged with it)
        self._pool_domains: dict[str, int] | None = None

    @property
    def observers(self) -> list[Component | DomainLossTracker]:
        """What watches every training batch: the components that declare ``observes_batches``."""
        watching: list[Component | DomainLossTracker] = [c for c in self.components.values() if c.observes_batches]
        return watching + ([self.domain_losses] if self.domain_losses is not None else [])

    @property
    def loss_owner(self) -> Component | None:
        """The component that replaces the training loss (it declares ``owns_loss``), if any."""
        owners = [c for c in self.components.values() if c.owns_loss]
        return owners[0] if owners else None

    def describe(self, component: Component) -> str:
        """``kind=name`` of a component, for messages."""
        kind = next((k for k, c in self.components.items() if c is component), None)
        if kind is None:
            return "the per-domain training loss of a mixer run"
        return f"{kind}={getattr(component, 'config_name', type(component).__name__)}"

    def kind_of(self, component: Component | DomainLossTracker) -> str | None:
        """The kind (``selector``, ``mixer``, ``weighter``) a component's time is counted under; None
        for what is not a component (the per-domain loss logging of mixer runs: not deciding)."""
        return next((k for k, c in self.components.items() if c is component), None)

    def observe_batch(self, per_sample_losses: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        for component in self.observers:
            with self.clock.measure(self.kind_of(component)):
                component.observe_batch(per_sample_losses, batch)

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def sampler(self):
        return getattr(self.trainer, "dataflex_sampler", None)

    def _context(self, state, update_index: int) -> UpdateContext:
        trainer = self.trainer
        return UpdateContext(
            model=trainer.model,
            optimizer=trainer.optimizer,
            pool=trainer.train_dataset,
            collator=trainer.data_collator,
            tokenizer=trainer.processing_class,
            template=getattr(trainer, "dataflex_template", None),
            validation=getattr(trainer, "dataflex_validation", None),
            sampler=self.sampler,
            global_step=state.global_step,
            update_index=update_index,
            max_steps=state.max_steps,
            run_dir=self.run_dir,
            domain_names=self.domain_names,
        )

    def _decide(self, name: str, decide, ctx: UpdateContext):
        """A component's decision. A ConfigError (a setting that does not fit this data, e.g. a budget
        larger than the pool) is reported naming the component and the step; any other exception
        is a bug and propagates unchanged (a traceback)."""
        try:
            return decide(ctx)
        except ConfigError as err:
            label = f"{name}={getattr(self.components[name], 'config_name', type(self.components[name]).__name__)}"
            if str(err).startswith(label):  # it names the component already
                raise
            when = "at the start" if ctx.update_index < 0 else f"at step {ctx.global_step}"
            raise ConfigError(f"{label} {when}: {err}") from err

    def _names(self) -> list[str]:
        return self.domain_names or [str(d) for d in range(self.sampler.num_domains)]

    def _apply(self, component: Component, decision, ctx: UpdateContext) -> None:
        """Every rank puts rank 0's decision in force (the component's kind says how: :class:`DecisionSink`)."""
        component.apply(broadcast_object(decision), ctx, self)

    def _decide_and_apply(self, name: str, decide, ctx: UpdateContext) -> None:
        """A decision put in force, timed under the component's kind (the decision alone is logged
        with it as ``time/<kind>_decide_seconds``: timings stay out of the ``selector/`` and ``mixer/``
        values and out of the round records, which a resumed run reproduces exactly)."""
        with self.clock.measure(name):
            start = time.perf_counter()
            decision = self._decide(name, decide, ctx)
            self._decide_seconds = time.perf_counter() - start
            try:
                self._apply(self.components[name], decision, ctx)
            finally:
                self._decide_seconds = None

    # -- DecisionSink: where decisions land --------------------------------------------------------
    def set_indices(self, indices: torch.Tensor | None, ctx: UpdateContext, stats) -> None:
        """A selection: the sampler trains on ``indices`` (None: the whole pool); rank 0 logs it
        with the selector's ``stats()`` and saves it as a round file."""
        previous = self.sampler.current.indices if ctx.update_index >= 0 else None
        self.sampler.set_indices(indices)
        if indices is not None and is_main_process():
            self._record_selection(indices, previous, ctx.global_step, ctx.update_index, stats())

    def set_proportions(self, proportions: torch.Tensor, ctx: UpdateContext, stats) -> None:
        """A mixture: the sampler draws domains by ``proportions``; they are logged, then the
        mixer's ``stats()`` when it has any."""
        self.sampler.set_proportions(proportions)
        names = self._names()
        logged = {f"mixer/proportion/{names[d]}": float(p) for d, p in enumerate(proportions)}
        if self._decide_seconds is not None:
            logged["time/mixer_decide_seconds"] = round(self._decide_seconds, 4)
        self.tracker.log(logged, step=ctx.global_step)
        extra = stats()
        if extra:
            self.tracker.log(extra, step=ctx.global_step)

    def _record_selection(
        self, indices: torch.Tensor, previous, step: int, update_index: int, extra: dict[str, float] | None = None
    ) -> None:
        """Log a selection round (with the selector's ``extra`` decision statistics, each domain's
        share of the selected rows as ``selector/share/<name>`` and the decision's time) and save it
        as ``selections/round_NNN.json`` (rank 0), with the pool's rows per domain (``pool_domains``,
        the base rates of the composition)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        names = self._names()
        stats = selection_stats(indices, previous, self.sampler.domain_ids, names)
        if self._pool_domains is None:
            counts = torch.bincount(self.sampler.domain_ids, minlength=len(names)).tolist()
            self._pool_domains = {name: int(c) for name, c in zip(names, counts)}
        selected = max(int(stats["selector/selected"]), 1)
        shares = {f"selector/share/{n}": stats[f"selector/domain/{n}"] / selected for n in names}
        timing = (
            {} if self._decide_seconds is None else {"time/selector_decide_seconds": round(self._decide_seconds, 4)}
        )
        self.tracker.log({**stats, **shares, **timing, **(extra or {})}, step=step)
        if self.run_dir is not None:
            record = {
                "run_id": self.run_id,
                "round": update_index + 1,
                "update_index": update_index,
                "step": step,
                **{k.removeprefix("selector/"): v for k, v in stats.items() if "/domain/" not in k},
                "domains": {k.split("/", 2)[2]: v for k, v in stats.items() if "/domain/" in k},
                "pool_domains": self._pool_domains,
                **({"stats": extra} if extra else {}),
                "indices": indices.tolist(),
            }
            atomic_write_json(self.run_dir / SELECTIONS_DIR / f"round_{update_index + 1:03d}.json", record)

    # -- HF callback events ----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self.clock.start_loop()
        if self.resume_from is not None:
            self.load(self.resume_from)
            sampler = self.sampler
            expected = state.global_step * sampler.batch_size if sampler is not None else 0
            if sampler is not None and sampler.resume is not None and sampler.resume_position != expected:
                raise RuntimeError(
                    f"{self.resume_from}: the sampler state is for draw {sampler.resume_position}, but step "
                    f"{state.global_step} x {sampler.batch_size} draws per step resumes at draw {expected}"
                )
            return
        for name, component in self.components.items():
            if component.decides:
                self._decide_and_apply(name, component.decide_initial, self._context(state, update_index=-1))

    def on_step_end(self, args, state, control, **kwargs):
        if self.domain_losses is not None:  # every rank reduces; rank 0's tracker writes
            domain_losses = self.domain_losses.pop(self._names())
            if domain_losses:
                self.tracker.log(domain_losses, step=state.global_step)
        for name, component in self.components.items():
            with self.clock.measure(name):
                component.step_end(state.global_step)
        for name, component in self.components.items():
            done = self.updates_done[name]
            if not component.is_due(state.global_step, done, state.max_steps):
                continue
            self._decide_and_apply(name, component.decide, self._context(state, update_index=done))
            self.updates_done[name] += 1

    def on_train_end(self, args, state, control, **kwargs):
        self.clock.stop_loop()

    def on_log(self, args, state, control, logs=None, **kwargs):
        # statistics since the previous log (the weighters'), on every rank (identical weights), logged by rank 0
        stats = {k: v for c in self.components.values() for k, v in c.pop_stats().items()}
        names = self._names()  # per-domain statistics under the domain's name
        stats = {_named(k, names): v for k, v in stats.items()}
        if logs and state.is_world_process_zero:
            self.tracker.log(
                {**{f"train/{k}" if "/" not in k else k: v for k, v in logs.items()}, **stats, **self.clock.running()},
                step=state.global_step,
            )

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            atomic_torch_save(self.state_dict(state.global_step), checkpoint / STATE_FILE)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self, global_step: int | None = None) -> dict[str, Any]:
        """Everything to continue after ``global_step`` (the sampler's stream from that step's draw position;
        default: the sampler's live position)."""
        sampler = self.sampler
        position = global_step * sampler.batch_size if sampler is not None and global_step is not None else None
        return {
            "run_id": self.run_id,  # so no other run resumes from this checkpoint
            "sampler": sampler.state_dict(position) if sampler is not None else None,
            "updates_done": dict(self.updates_done),
            "components": {name: c.state_dict() for name, c in self.components.items()},
        }

    def load(self, checkpoint_dir: str | os.PathLike) -> None:
        state = torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=False)
        if state["sampler"] is not None and self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        missing = set(self.components) - set(state["components"])
        if missing:
            raise RuntimeError(f"checkpoint {checkpoint_dir} has no state for components {sorted(missing)}")
        self.updates_done.update(state["updates_done"])
        for name, component in self.components.items():
            component.load_state_dict(state["components"][name])


def _named(key: str, names: list[str]) -> str:
    """``weighter/domain_weight/2`` -> ``weighter/domain_weight/<name of domain 2>``."""
    head, _, last = key.rpartition("/")
    if head.endswith("/domain_weight") and last.isdigit() and int(last) < len(names):
        return f"{head}/{names[int(last)]}"
    return key
