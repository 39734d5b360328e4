"""The DataFlex layer over LLaMA-Factory's trainers.

The mixin overrides four hooks of HF's Trainer: ``get_train_dataloader`` and ``_get_train_sampler``
(decisions reach the data through the DynamicSampler, each row carrying its draw-time probability),
``get_batch_samples`` (no step past ``max_steps`` on resume; the loss owner sees a whole optimizer
step's micro-batches before its first backward) and ``compute_loss``
(batches carry each sample's pool index, domain id and draw probabilities, which the model must not
see; components that observe batches get the per-sample losses of the training forward's own
logits; a NaN/inf loss stops the run or skips the micro-batch, see ``dataflex.train.nan``, before
any component sees it). No LLaMA-Factory module is patched and no training loop is copied.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

from dataflex.errors import ConfigError
from dataflex.signals.losses import per_sample_losses_from_logits, shifted_token_nll
from dataflex.train.callback import DataFlexCallback
from dataflex.train.components import LossInputs
from dataflex.train.nan import NonFiniteGuard
from dataflex.train.sampler import Draw, DynamicSampler

META_KEYS = ("sample_index", "domain_id", "draw_probability", "draw_domain_probability")
#: meta keys collated as float64 (the others as int64)
FLOAT_META_KEYS = ("draw_probability", "draw_domain_probability")


class MetaCollator:
    """Wraps a collator: lifts the ``META_KEYS`` out of the features, collates the rest with the
    wrapped collator, and adds them back as tensors of shape [B] (int64; the draw probabilities float64)."""

    def __init__(self, base):
        self.base = base

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        features = [dict(f) for f in features]
        meta = {
            k: torch.tensor([f.pop(k) for f in features], dtype=torch.float64 if k in FLOAT_META_KEYS else torch.long)
            for k in META_KEYS
            if k in features[0]
        }
        batch = self.base(features)
        batch.update(meta)
        return batch


class DrawDataset(torch.utils.data.Dataset):
    """The pool as the DynamicSampler's data loader reads it: each row gets the probability its draw was
    made under (``draw_probability``, ``draw_domain_probability``, see :class:`Draw`)."""

    def __init__(self, pool):
        self.pool = pool

    def __len__(self) -> int:
        return len(self.pool)

    def __getitems__(self, draws: list) -> list[dict[str, Any]]:
        stray = [d for d in draws if not isinstance(d, Draw)]
        if stray:
            raise RuntimeError(
                "the data loader read a draw the trainer should have skipped on resume: the sampler's resume position "
                "and the trainer's batch skipping disagree"
            )
        rows = self.pool.__getitems__([int(d) for d in draws])
        for row, draw in zip(rows, draws):
            row["draw_probability"], row["draw_domain_probability"] = draw.probability, draw.domain_probability
        return rows

    def __getitem__(self, draw) -> dict[str, Any]:
        return self.__getitems__([draw])[0]


class DataFlexTrainerMixin:
    """Mixed in front of CustomSeq2SeqTrainer (sft) or CustomTrainer (pt).

    Extra keyword arguments:
        dataflex_callback: the run's DataFlexCallback (its selector/mixer decide the sampling).
        dataflex_domain_ids: domain id of every pool sample.
        dataflex_validation: the tokenised target/validation set (``domain_id`` = subtask), or None.
        dataflex_template: the LLaMA-Factory template of the run (None for the pt stage).
    """

    def __init__(
        self,
        *args,
        dataflex_callback: DataFlexCallback,
        dataflex_domain_ids,
        dataflex_validation=None,
        dataflex_template=None,
        **kwargs,
    ):
        callbacks = list(kwargs.pop("callbacks", None) or [])
        super().__init__(*args, callbacks=[*callbacks, dataflex_callback], **kwargs)
        self.dataflex_callback = dataflex_callback
        self.dataflex_domain_ids = torch.as_tensor(dataflex_domain_ids, dtype=torch.long)
        self.dataflex_validation = dataflex_validation
        self.dataflex_template = dataflex_template
        self.dataflex_sampler: DynamicSampler | None = None
        self.dataflex_nonfinite = NonFiniteGuard("stop")  # the run sets its `nonfinite_loss` policy
        dataflex_callback.trainer = self

    @property
    def dataflex_dynamic(self) -> bool:
        """True when a selector or a mixer decides what is sampled."""
        return any(c.decides for c in self.dataflex_callback.components.values())

    def dataflex_num_draws(self) -> int:
        """Draws of the whole run: every optimizer step on every rank."""
        args = self.args
        return args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # A run resumed from its last checkpoint (global_step == max_steps) must train no further, but
        # transformers' loop checks max_steps only after a step: with an epoch longer than max_steps
        # (plain training over a pool) it would train one step too many. No batches: no step.
        if self.args.max_steps > 0 and self.state.global_step >= self.args.max_steps:
            return [], None
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        # a loss owner that needs the whole optimizer step before its first backward (DoReMi's
        # once-per-step α under gradient accumulation) sees the step's micro-batches here
        callback = self.dataflex_callback
        owner = callback.loss_owner
        if batches and owner is not None:
            with callback.clock.measure(callback.kind_of(owner)):  # e.g. DoReMi's reference forwards
                owner.prepare_step(batches, self.model)
        return batches, num_items

    def dataflex_batch_draws(self) -> int:
        """Draws of one optimizer step over all ranks (the global batch)."""
        args = self.args
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size

    def get_train_dataloader(self):
        if not self.dataflex_dynamic:
            return super().get_train_dataloader()
        # the rows carry their draw-time probability (DrawDataset); batches are skipped on resume by
        # HF's skip_first_batches, which the sampler's placeholders line up with
        return self._get_dataloader(
            dataset=DrawDataset(self.train_dataset),
            description="Training",
            batch_size=self._train_batch_size,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    def _get_train_sampler(self, *args, **kwargs):
        if not self.dataflex_dynamic:
            return super()._get_train_sampler(*args, **kwargs)  # plain training stays exactly plain
        if self.dataflex_sampler is None:
            self.dataflex_sampler = DynamicSampler(
                self.dataflex_domain_ids,
                self.dataflex_num_draws(),
                self.args.seed,
                batch_size=self.dataflex_batch_draws(),
            )
            self.dataflex_sampler.skip_resumed = not self.args.ignore_data_skip
        return self.dataflex_sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        meta = {k: inputs.pop(k) for k in META_KEYS if k in inputs}
        callback = self.dataflex_callback
        owner = callback.loss_owner
        guard, step = self.dataflex_nonfinite, self.state.global_step + 1
        if not callback.observers and owner is None:
            result = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
            skip = guard.check(result[0] if return_outputs else result, step, meta, model)
            if skip is None:
                return result
            return (skip, result[1]) if return_outputs else skip
        labels = inputs.get("labels")  # HF's compute_loss may pop it from the dict
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        logits = getattr(outputs, "logits", None)
        if logits is None or labels is None:
            raise ConfigError(
                f"{callback.describe(owner or callback.observers[0])} needs per-sample losses, but the training forward "
                "returned no logits (a fused loss kernel such as the Liger kernel); set model.enable_liger_kernel=false"
            )
        # the per-sample losses the components read: counted as deciding (the loss owner's kind, else the first observer's)
        with callback.clock.measure(callback.kind_of(owner or callback.observers[0])):
            loss_inputs = (
                self._dataflex_loss_inputs(logits, labels, meta, inputs, model, num_items_in_batch)
                if owner is not None
                else None
            )
            if not callback.observers:
                per_sample = None
            elif loss_inputs is not None:  # the owner's per-token losses hold them already: no second pass
                per_sample = loss_inputs.sample_losses().detach()
            else:
                per_sample = per_sample_losses_from_logits(logits.detach(), labels)
        # checked BEFORE any component sees the batch: a NaN never reaches a component's state
        skip = guard.check(loss, step, meta, model, per_sample)
        if skip is None and callback.observers:
            callback.observe_batch(per_sample, meta)
        if skip is None and owner is not None:
            with callback.clock.measure(callback.kind_of(owner)):  # weights, their gathers across ranks
                loss = owner.training_loss(loss_inputs)
            skip = guard.check(loss, step, meta, model, what=f"the loss {callback.describe(owner)} returned")
        loss = loss if skip is None else skip
        return (loss, outputs) if return_outputs else loss

    def _dataflex_loss_inputs(self, logits, labels, meta, inputs, model, num_items_in_batch) -> LossInputs:
        """The micro-batch's per-token losses (with grad) and the factors that put a loss built from
        them on exactly the scale of the trainer's own loss (transformers' Trainer.compute_loss and
        training_step: a sum over label tokens divided by ``num_items_in_batch``, times the process
        count when tokens are averaged across devices, and no division by GA; or, without
        ``num_items_in_batch``, a micro-batch token mean that training_step divides by GA)."""
        if self.compute_loss_func is not None:
            raise ConfigError(
                f"{self.dataflex_callback.describe(self.dataflex_callback.loss_owner)} replaces the training loss and cannot "
                "be combined with a LLaMA-Factory custom loss (use_dft_loss, use_asft_loss, ...); turn that loss off"
            )
        token_losses, token_mask = shifted_token_nll(logits, labels)
        grad_accum = int(
            getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps
        )
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            processes = self.accelerator.num_processes if self.args.average_tokens_across_devices else 1
            token_scale = processes / num_items_in_batch
            mean_scale = 1.0 / grad_accum  # training_step will not divide by GA
        else:
            token_scale = 1.0 / token_mask.sum().clamp(min=1)
            mean_scale = 1.0
        return LossInputs(
            token_losses=token_losses,
            token_mask=token_mask,
            batch=meta,
            inputs=inputs,
            model=model,
            num_items_in_batch=num_items_in_batch,
            grad_accum_steps=grad_accum,
            world_size=self.args.world_size,
            token_scale=token_scale,
            mean_scale=mean_scale,
        )


@cache
def dataflex_trainer_class(base: type) -> type:
    """``DataFlex<Base>``: the mixin in front of a LLaMA-Factory trainer class."""
    return type(f"DataFlex{base.__name__}", (DataFlexTrainerMixin, base), {})
