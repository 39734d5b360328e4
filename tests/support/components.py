"""Small test-only components, named in overrides as ``+selector._target_=support.components.HalfPoolSelector``
(``tests/`` is on the path: pytest's ``pythonpath``; a subprocess needs it on ``PYTHONPATH``)."""

from __future__ import annotations

import torch

from dataflex.train.components import Mixer, Scheduled, Selector, Weighter


class HalfPoolSelector(Scheduled, Selector):
    """Test-only selector: every update keeps a seeded random half of the pool.

    It exercises the schedule -> decision -> sampler -> checkpoint path without any method logic.
    """

    warmup_steps: int = 2
    update_every: int = 2
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        self.history: list[list[int]] = []

    def select(self, ctx):
        g = torch.Generator().manual_seed(self.seed * 1000 + ctx.update_index)
        indices = torch.randperm(ctx.pool_size, generator=g)[: max(ctx.pool_size // 2, 1)]
        self.history.append(indices.tolist())
        return indices

    def state_dict(self):
        return {"history": self.history}

    def load_state_dict(self, state):
        self.history = state["history"]


class RotatingMixer(Scheduled, Mixer):
    """Test-only mixer: puts most of the mass on domain (update_index mod K)."""

    update_every: int = 2

    def initial_proportions(self, ctx):
        k = int(ctx.domain_ids.max()) + 1
        return torch.full((k,), 1.0 / k)

    def update(self, ctx):
        k = int(ctx.domain_ids.max()) + 1
        p = torch.full((k,), 0.2 / k)
        p[ctx.update_index % k] += 0.8
        return p


from dataflex.train.components import Component  # noqa: E402


class BatchRecorder(Component):
    """Test-only observer: records what every training micro-batch showed it."""

    observes_batches = True

    def __post_init__(self):
        super().__post_init__()
        self.seen: list[tuple[list[float], list[int], list[int]]] = []

    def observe_batch(self, per_sample_losses, batch):
        self.seen.append((per_sample_losses.tolist(), batch["sample_index"].tolist(), batch["domain_id"].tolist()))


class PlainLossWeighter(Scheduled, Weighter):
    """Test-only weighter that owns the loss and hands back exactly the trainer's own loss."""

    def training_loss(self, loss):
        return loss.plain()


class MeanOfSamplesWeighter(PlainLossWeighter):
    """Test-only weighter: the mean of the per-sample token-mean losses of each micro-batch."""

    def training_loss(self, loss):
        return loss.from_local_mean(loss.sample_losses().mean())


class LossOwningMixer(RotatingMixer):
    """Test-only mixer that also owns the loss (to test that two loss owners are refused)."""

    owns_loss = True

    def training_loss(self, loss):
        return loss.plain()


class NonFiniteWeighter(PlainLossWeighter):
    """Test-only weighter: returns the trainer's own loss, but NaN on its ``nan_step``-th micro-batch
    (optimizer step ``nan_step`` without gradient accumulation)."""

    nan_step: int = 3

    def __post_init__(self):
        super().__post_init__()
        self.calls = 0

    def training_loss(self, loss):
        self.calls += 1
        plain = loss.plain()
        return plain * float("nan") if self.calls == self.nan_step else plain


class NeedsValidationSelector(Scheduled, Selector):
    """Test-only selector that declares it reads the target/validation set (as LESS, NICE, NEAR and
    TSDS do): a run without one is refused before the model loads."""

    needs_validation = True

    def initial_indices(self, ctx):
        ctx.require_validation(getattr(self, "config_name", "needs_validation"))
        return None


class LateValidationSelector(NeedsValidationSelector):
    """Test-only selector that reads the validation set without declaring it: refused when it asks."""

    needs_validation = False
