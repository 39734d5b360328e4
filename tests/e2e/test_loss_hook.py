"""The loss-owning hook (Component.training_loss): a component that hands back the trainer's own
loss trains exactly like plain training; the scale factors match the trainer's under gradient
accumulation; two loss owners are refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from support.config import compose_config
from support.runs import fit, losses

from dataflex.config import ConfigError
from dataflex.run import Run

BASE = [
    "eval.before=false",
    "eval.after=false",
    "trainer.max_steps=4",
    "trainer.per_device_train_batch_size=2",
    "trainer.gradient_accumulation_steps=2",
]


def adapter(run_dir):
    return load_file(run_dir / "model" / "adapter_model.safetensors")


def test_owning_the_loss_with_the_plain_loss_changes_nothing(tmp_path):
    """Same losses and same trained weights as the run without the component (GA=2, ragged lengths)."""
    _, plain = fit(tmp_path, "plain", BASE)
    _, owned = fit(tmp_path, "owned", [*BASE, "+weighter._target_=support.components.PlainLossWeighter"])
    assert losses(owned) == pytest.approx(losses(plain), abs=1e-6)
    a, b = adapter(plain), adapter(owned)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)


def test_a_different_objective_changes_training(tmp_path):
    """The mean of per-sample means is not the token mean: owning the loss must reach the gradients."""
    _, plain = fit(tmp_path, "plain", BASE)
    _, owned = fit(tmp_path, "owned", [*BASE, "+weighter._target_=support.components.MeanOfSamplesWeighter"])
    a, b = adapter(plain), adapter(owned)
    assert any(not torch.allclose(a[k], b[k], atol=1e-7) for k in a)


def test_loss_inputs_scales_match_the_trainer(tmp_path):
    """plain() equals the model's own loss on the trainer's scale and from_local_mean divides by GA
    exactly when the trainer does not."""
    from dataflex.train.components import LossInputs
    from dataflex.train.trainer import DataFlexTrainerMixin

    seen = []

    def spy(self, logits, labels, meta, inputs, model, num_items_in_batch):
        li = original(self, logits, labels, meta, inputs, model, num_items_in_batch)
        seen.append((li, logits.detach(), labels, num_items_in_batch, self.model_accepts_loss_kwargs))
        return li

    original = DataFlexTrainerMixin._dataflex_loss_inputs
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DataFlexTrainerMixin, "_dataflex_loss_inputs", spy)
        fit(tmp_path, "owned", [*BASE, "+weighter._target_=support.components.PlainLossWeighter"])
    assert len(seen) == 8  # 4 steps x 2 micro-batches
    for li, logits, labels, num_items, accepts in seen:
        assert isinstance(li, LossInputs) and li.grad_accum_steps == 2
        shift = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), shift.clamp(min=0), reduction="none"
        )
        total = (nll * (shift != -100)).sum()
        if accepts and num_items is not None:
            assert li.plain().item() == pytest.approx((total / num_items).item(), rel=1e-5)
            assert li.from_local_mean(torch.tensor(1.0)).item() == 0.5
        else:
            assert li.plain().item() == pytest.approx((total / (shift != -100).sum()).item(), rel=1e-5)
            assert li.from_local_mean(torch.tensor(1.0)).item() == 1.0
        per_sample = li.sample_losses().detach()
        expected = (nll * (shift != -100)).sum(-1) / (shift != -100).sum(-1).clamp(min=1)
        assert torch.allclose(per_sample, expected, atol=1e-6)


def test_two_loss_owners_are_refused(tmp_path):
    cfg = compose_config(
        [
            "+weighter._target_=support.components.PlainLossWeighter",
            "+mixer._target_=support.components.LossOwningMixer",
        ]
    )
    with pytest.raises(ConfigError, match="both replace the training loss"):
        Run(cfg, tmp_path / "run")
