"""NaN/inf training losses (issue 8): ``nonfinite_loss=stop`` stops with one line naming the step and
the samples; ``nonfinite_loss=skip`` skips the micro-batch; a NaN never reaches a component's state.

The NaN is injected for real: a forward hook on the tiny model's output layer turns the logits of
chosen training forwards into NaN, so the loss the trainer computes is NaN the ordinary way.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from support.config import compose_config

import dataflex.backend.llamafactory as backend
from dataflex.config import ConfigError
from dataflex.run import Run
from dataflex.train.nan import NonFiniteGuard, NonFiniteLossError, describe_samples, nonfinite_policy, zero_loss
from dataflex.train.trainer import DataFlexTrainerMixin

QUIET = ["eval.before=false", "eval.after=false"]
PT = ["data=offline_domains", "trainer=pt_full", "data.max_samples=16"]


@pytest.fixture
def poison(monkeypatch):
    """``poison(steps, rows=None)``: NaN logits on the training forwards of those optimizer steps
    (every row, or only ``rows`` of the micro-batch); returns a dict that receives the trainer and
    the sample indices of every training micro-batch (by step)."""
    seen: dict = {"batches": {}}

    def arm(steps, rows=None):
        real_build, real_loss = backend.build_trainer, DataFlexTrainerMixin.compute_loss

        def build_trainer(built, callback, extra=None):
            trainer = real_build(built, callback, extra)
            seen["trainer"] = trainer

            def hook(module, args, output):
                step = trainer.state.global_step + 1
                if module.training and torch.is_grad_enabled() and step in steps:
                    output = output.clone()
                    output[slice(None) if rows is None else rows] = float("nan")
                return output

            built.model.get_output_embeddings().register_forward_hook(hook)
            return trainer

        def spy(self, model, inputs, *args, **kwargs):
            seen["batches"].setdefault(self.state.global_step + 1, []).append(inputs["sample_index"].tolist())
            return real_loss(self, model, inputs, *args, **kwargs)

        monkeypatch.setattr(backend, "build_trainer", build_trainer)
        monkeypatch.setattr(DataFlexTrainerMixin, "compute_loss", spy)
        return seen

    return arm


def test_policy_values():
    assert nonfinite_policy(None) == "stop" and nonfinite_policy("skip") == "skip"
    with pytest.raises(ConfigError, match=r"nonfinite_loss must be one of stop, skip, got 'ignore'"):
        nonfinite_policy("ignore")
    assert compose_config()["nonfinite_loss"] == "stop"  # the shipped default


def test_zero_loss_has_an_exactly_zero_gradient_on_every_trainable_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[0].bias.requires_grad_(False)
    loss = zero_loss(model)
    loss.backward()
    assert loss.item() == 0.0
    assert model[0].bias.grad is None
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)) for p in trained)


def test_guard_names_the_non_finite_samples():
    batch = {"sample_index": torch.tensor([7, 3, 9])}
    per_sample = torch.tensor([0.5, float("inf"), 1.0])
    assert describe_samples(batch, per_sample) == "samples (sample_index) [7, 3, 9], non-finite per-sample loss on [3]"
    model = torch.nn.Linear(2, 1)
    assert NonFiniteGuard("stop").check(torch.tensor(1.0), 4, batch, model) is None
    with pytest.raises(
        NonFiniteLossError, match=r"training loss is inf at step 4 on samples \(sample_index\) \[7, 3, 9\]"
    ):
        NonFiniteGuard("stop").check(torch.tensor(float("inf")), 4, batch, model, per_sample)
    guard = NonFiniteGuard("skip")
    replaced = guard.check(torch.tensor(float("nan")), 4, batch, model)
    assert replaced.item() == 0.0 and guard.skipped == [{"step": 4, "samples": [7, 3, 9]}]


def test_stop_names_the_step_and_the_micro_batch(tmp_path, poison):
    seen = poison({3})
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        Run(compose_config(QUIET), run_dir).fit()
    message = str(err.value)
    samples = seen["batches"][3][0]
    assert "\n" not in message
    assert f"training loss is nan at step 3 on samples (sample_index) [{', '.join(map(str, samples))}]" in message
    assert "nonfinite_loss=skip" in message  # the way out is named
    assert not (run_dir / "metrics.json").exists()


def test_stop_happens_before_an_observer_sees_the_batch(tmp_path, poison):
    from support.components import BatchRecorder

    seen = poison({3}, rows=[1])  # one sample of the micro-batch: it is named
    run = Run(compose_config(QUIET), tmp_path / "run")
    recorder = run.components["recorder"] = BatchRecorder()
    with pytest.raises(NonFiniteLossError) as err:
        run.fit()
    bad = seen["batches"][3][0][1]
    assert f"non-finite per-sample loss on [{bad}]" in str(err.value)
    assert len(recorder.seen) == 2  # steps 1 and 2 only; step 3's NaN batch never reached it
    assert all(math.isfinite(x) for losses, _, _ in recorder.seen for x in losses)


def test_stop_checks_the_loss_a_weighter_returns(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"the loss weighter=\S+ returned is nan at step 2 on samples"):
        Run(
            compose_config([*QUIET, "+weighter._target_=support.components.NonFiniteWeighter", "+weighter.nan_step=2"]),
            tmp_path / "run",
        ).fit()


def test_skip_trains_to_the_end_and_keeps_the_mixer_and_weights_finite(tmp_path, poison):
    seen = poison({2, 4})
    run_dir = tmp_path / "run"
    metrics = Run(compose_config([*QUIET, *PT, "mixer=odm", "nonfinite_loss=skip"]), run_dir).fit()
    trainer = seen["trainer"]
    assert [s["step"] for s in trainer.dataflex_nonfinite.skipped] == [2, 4]
    assert [s["samples"] for s in trainer.dataflex_nonfinite.skipped] == [seen["batches"][2][0], seen["batches"][4][0]]
    assert metrics["global_step"] == 6 and math.isfinite(metrics["final_train_loss"])

    odm = torch.load(run_dir / "checkpoints" / "checkpoint-6" / "dataflex_state.pt", weights_only=False)["components"][
        "mixer"
    ]
    assert torch.isfinite(odm["rewards"]).all() and torch.isfinite(odm["probabilities"]).all()
    assert odm["probabilities"].sum().item() == pytest.approx(1.0)
    # the skipped steps' windows observed nothing: every domain counts as absent (NaN marks absent)
    for entry in odm["history"]:
        observed = [x for x in entry["domain_losses"] if not math.isnan(x)]
        assert (not observed) == (entry["global_step"] in (2, 4))
        assert all(math.isfinite(p) for p in entry["probabilities"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    proportions = [v for r in records for k, v in r.items() if k.startswith("mixer/proportion/")]
    assert proportions and all(math.isfinite(v) for v in proportions)
    weights = load_file(run_dir / "model" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_skip_in_a_lora_run_without_components(tmp_path, poison):
    seen = poison({1, 5})
    run_dir = tmp_path / "run"
    metrics = Run(compose_config([*QUIET, "nonfinite_loss=skip"]), run_dir).fit()
    assert [s["step"] for s in seen["trainer"].dataflex_nonfinite.skipped] == [1, 5]
    assert metrics["global_step"] == 6
    adapter = load_file(run_dir / "model" / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() for w in adapter.values())
