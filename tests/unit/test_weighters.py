"""Weighters: the loss-weights core against hand values and the ALGORITHMS.md invariants, the loss
they build on the trainer's scale (hand-built LossInputs, two gloo processes), and end-to-end runs
on the tiny model (uniform = plain training with GA and ragged lengths, logged statistics, resume)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist
from support.distributed import run_distributed
from support.losses import micro_batch

from dataflex.config import ConfigError
from dataflex.train.build import build_component
from dataflex.train.components import LossInputs
from dataflex.weighters import gather_global_batch, weight_entropy
from dataflex.weighters.loss import (
    STRATEGIES,
    LossWeighter,
    inverse_temperature,
    loss_weights,
    normalised_losses,
    scheduled_inverse_temperature,
)
from dataflex.weighters.uniform import UniformWeighter

E = math.e


# -- the core: hand values ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "strategy, expected",
    [
        # l = [1, 2, 3], δ = 1: l~ = [-1, 0, 1]
        ("linupper", [1, E, E]),  # min(l~ + 1, 1) = [0, 1, 1]
        ("quadratic", [1, E, 1]),  # 1 - l~² = [0, 1, 0]
        ("extremes", [E, 1, E]),  # |l~| = [1, 0, 1]
        ("uniform", [1, 1, 1]),  # 0
    ],
)
def test_loss_weights_hand_values(strategy, expected):
    w = loss_weights(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), strategy, delta=1.0, temperature=1.0)
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(w, expected / expected.sum(), rtol=0, atol=1e-12)


def test_loss_weights_hand_values_delta_and_temperature():
    # l = [3, 1, 2], δ = 2: l~ = 2(2l - 4)/2 = [2, -2, 0]; linupper min(l~ + 2, 2) = [2, 0, 2]; r = 0.5: [4, 0, 4]
    w = loss_weights(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64), "linupper", delta=2.0, temperature=0.5)
    e4 = math.exp(4)
    torch.testing.assert_close(w, torch.tensor([e4, 1, e4], dtype=torch.float64) / (1 + 2 * e4), rtol=0, atol=1e-12)
    # quadratic with δ = 2: 1 - l~²/4 = [0, 0, 1]; r = 0.5: [0, 0, 2]
    w = loss_weights(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64), "quadratic", delta=2.0, temperature=0.5)
    torch.testing.assert_close(w, torch.tensor([1, 1, E**2], dtype=torch.float64) / (2 + E**2), rtol=0, atol=1e-12)


def test_normalised_losses_hand_values():
    torch.testing.assert_close(
        normalised_losses(torch.tensor([0.0, 1.0, 4.0]), delta=0.5),
        torch.tensor([-0.5, -0.25, 0.5], dtype=torch.float64),
    )
    assert normalised_losses(torch.tensor([2.5, 2.5, 2.5])).tolist() == [0.0, 0.0, 0.0]


# -- the core: invariants ----------------------------------------------------------------------
def batches():
    g = torch.Generator().manual_seed(0)
    yield torch.rand(16, generator=g, dtype=torch.float64) * 5
    yield torch.randn(7, generator=g, dtype=torch.float64)  # negative values too
    yield torch.tensor([1e30, -1e30, 0.0], dtype=torch.float64)  # a huge spread
    yield torch.tensor([4.2], dtype=torch.float64)  # one sample
    yield torch.tensor([1.0, 1.0 + 1e-15, 1.0], dtype=torch.float64)  # a spread at rounding level


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("temperature", [1e-300, 1e-3, 0.3, 1.0, 7.0, 1e12, math.inf])
def test_weights_on_the_simplex_and_never_nan(strategy, temperature):
    for losses in batches():
        for delta in (0.1, 1.0, 3.0):
            w = loss_weights(losses, strategy, delta, temperature)
            assert w.shape == losses.shape and w.dtype == torch.float64
            assert torch.isfinite(w).all() and (w >= 0).all()
            assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)


def test_fp32_losses_give_fp32_weights_summing_to_one():
    w = loss_weights(torch.rand(64) * 3, "linupper", 1.0, 0.2)
    assert w.dtype == torch.float32 and float(w.sum()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_infinite_temperature_is_exactly_uniform_and_large_is_close(strategy):
    losses = torch.tensor([0.3, 2.0, 5.0, 1.1, 0.9], dtype=torch.float64)
    uniform = UniformWeighter().batch_weights(losses)
    assert torch.equal(loss_weights(losses, strategy, 1.0, math.inf), uniform)
    assert torch.equal(uniform, torch.full((5,), 0.2, dtype=torch.float64))
    for r, tol in ((1e3, 1e-3), (1e6, 1e-6), (1e9, 1e-9)):
        torch.testing.assert_close(loss_weights(losses, strategy, 1.0, r), uniform, rtol=0, atol=tol)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_equal_losses_give_uniform_weights(strategy):
    for r in (1e-6, 1.0, math.inf):
        w = loss_weights(torch.full((6,), 3.7, dtype=torch.float64), strategy, 1.0, r)
        assert torch.equal(w, torch.full((6,), 1 / 6, dtype=torch.float64))


def test_linupper_non_decreasing_and_flat_above_the_midpoint():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        losses = torch.randn(33, generator=g, dtype=torch.float64) * 2
        for r in (0.05, 1.0, 10.0):
            w = loss_weights(losses, "linupper", 1.0, r)
            order = torch.argsort(losses)
            assert (w[order].diff() >= -1e-15).all()  # non-decreasing in l
            midpoint = (losses.max() + losses.min()) / 2
            above = w[losses >= midpoint]
            assert above.numel() >= 1 and torch.allclose(above, above[0].expand_as(above), rtol=0, atol=1e-15)
            below = w[losses < midpoint]
            assert (below < above[0]).all()  # strictly lower below the midpoint (r finite)


def test_strategies_favour_what_they_say():
    losses = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert int(loss_weights(losses, "quadratic", 1.0, 0.5).argmax()) == 2  # the middle
    ext = loss_weights(losses, "extremes", 1.0, 0.5)
    assert ext[0] == ext[4] and ext[0] > ext[1] > ext[2]  # both ends
    assert loss_weights(losses, "linupper", 1.0, 0.5)[4] > loss_weights(losses, "linupper", 1.0, 0.5)[0]


def test_tiny_temperature_concentrates_on_the_top_without_nan():
    w = loss_weights(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64), "linupper", 1.0, 1e-300)
    # linupper is flat above the midpoint 2.5: the mass splits between 3 and 4
    assert w.tolist() == [0.0, 0.0, 0.5, 0.5]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strategy": "linear"}, "strategy must be one of"),
        ({"delta": 0.0}, "delta must be"),
        ({"delta": math.inf}, "delta must be"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"temperature": math.nan}, "temperature must be > 0"),
    ],
)
def test_core_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loss_weights(torch.tensor([1.0, 2.0]), **kwargs)


def test_core_rejects_empty_and_non_finite_losses():
    with pytest.raises(ValueError, match="at least one"):
        loss_weights(torch.tensor([]))
    with pytest.raises(ValueError, match="finite"):
        loss_weights(torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match="finite"):
        loss_weights(torch.tensor([1.0, math.inf]))


def test_entropy_hand_values():
    assert weight_entropy(torch.full((8,), 1 / 8)) == pytest.approx(math.log(8))
    assert weight_entropy(torch.tensor([1.0, 0.0, 0.0])) == 0.0
    assert weight_entropy(torch.tensor([0.5, 0.5, 0.0])) == pytest.approx(math.log(2))


# -- the temperature schedule ------------------------------------------------------------------
def test_inverse_temperature_schedule():
    # from r = ∞ (1/r = 0) to r = 0.5 (1/r = 2) over 4 steps
    assert [inverse_temperature(s, 0.5, 4) for s in range(7)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    # from r = 10 to r = 1 over 3 steps: 1/r = 0.1, 0.4, 0.7, 1.0
    assert [inverse_temperature(s, 1.0, 3, 10.0) for s in range(5)] == pytest.approx([0.1, 0.4, 0.7, 1.0, 1.0])
    assert inverse_temperature(0, 2.0, 0) == 0.5  # no warm-up: the target at once
    w = LossWeighter(temperature=0.5, warmup_steps=4, schedule="linear")
    temps = []
    for step in range(6):
        w.step_end(step)
        temps.append(w.current_temperature())
    assert temps == [math.inf, 2.0, 1.0, pytest.approx(2 / 3), 0.5, 0.5]  # from large to the target
    assert LossWeighter(temperature=0.5, warmup_steps=0, schedule="linear").current_temperature() == 0.5


def test_constant_schedule_is_uniform_through_the_warmup_then_r():
    """schedule: constant (default, the reference trainer's): r = ∞ for the steps trained after 0..3
    steps done (warmup_steps = 4), then exactly r = 0.5; no ramp."""
    assert [scheduled_inverse_temperature(s, 0.5, 4) for s in range(7)] == [0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0]
    assert scheduled_inverse_temperature(0, 0.5, 0) == 2.0  # no warm-up: r at once
    w = LossWeighter(temperature=0.5, warmup_steps=4)
    assert w.schedule_name == "constant"
    temps = []
    for step in range(6):
        w.step_end(step)
        temps.append(w.current_temperature())
    assert temps == [math.inf] * 4 + [0.5, 0.5]
    w.step_end(1)  # during the warm-up the weights are exactly plain training's 1/B
    assert w.batch_weights(torch.tensor([1.0, 5.0, 2.0], dtype=torch.float64)).tolist() == [1 / 3] * 3
    w.step_end(4)  # after it, softmax(g/r) with r = 0.5: l~ = (2l - 6)/4 = (-1, 1, -0.5), linupper g = (0, 1, 0.5)
    g = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64) / 0.5
    torch.testing.assert_close(w.batch_weights(torch.tensor([1.0, 5.0, 2.0], dtype=torch.float64)), g.softmax(0))
    with pytest.raises(ConfigError, match="schedule must be one of constant, linear"):
        LossWeighter(schedule="cosine")


# -- config ------------------------------------------------------------------------------------
def test_shipped_configs_build():
    from support.config import compose_config

    for name, cls in (("loss", LossWeighter), ("uniform", UniformWeighter)):
        component = build_component("weighter", compose_config([f"weighter={name}"]).weighter)
        assert isinstance(component, cls) and component.reduction == "token"
    loss = build_component("weighter", compose_config(["weighter=loss"]).weighter)
    assert (loss.strategy, loss.delta, loss.temperature, loss.start_temperature) == ("linupper", 1.0, 1.0, math.inf)


@pytest.mark.parametrize(
    "override, match",
    [
        ("weighter.strategy=linear", "weighter=loss: strategy must be one of"),
        ("weighter.temperature=0", "weighter=loss: temperature must be > 0"),
        ("weighter.reduction=mean", "weighter=loss: reduction must be one of"),
        ("+weighter.temprature=2", "unknown key 'temprature' \\(did you mean 'temperature'\\?\\)"),
    ],
)
def test_bad_settings_are_config_errors(override, match):
    from support.config import compose_config

    with pytest.raises(ConfigError, match=match):
        build_component("weighter", compose_config(["weighter=loss", override]).weighter)


# -- the loss on the trainer's scale (hand-built micro-batches) ---------------------------------
@pytest.mark.parametrize("token_scale, mean_scale", [(1 / 20, 0.5), (1 / 9, 1.0)])
def test_token_reduction_hand_computed(token_scale, mean_scale):
    li, nll = micro_batch(token_scale, mean_scale)
    weighter = LossWeighter(temperature=0.7)
    out = weighter.training_loss(li)
    out.backward()
    lengths = torch.tensor([3.0, 1.0, 5.0])
    sums = nll.detach()[:3].sum(-1)
    w = loss_weights((sums / lengths).double(), "linupper", 1.0, 0.7).float()  # the empty sample is left out
    assert out.item() == pytest.approx(float((3 * w * sums).sum() * token_scale), rel=1e-6)
    expected_grad = torch.zeros_like(nll)
    expected_grad[:3] = (3 * w * token_scale)[:, None] * li.token_mask[:3]
    torch.testing.assert_close(nll.grad * li.token_mask, expected_grad)  # masked entries are zeroed by the NLL
    stats = weighter.pop_stats()
    assert stats["weighter/weight_min"] == pytest.approx(float(w.min())) and stats["weighter/batch"] == 3
    assert stats["weighter/weight_max"] == pytest.approx(float(w.max())) and stats["weighter/temperature"] == 0.7
    assert stats["weighter/entropy"] == pytest.approx(weight_entropy(w)) and weighter.pop_stats() == {}


def test_per_domain_relative_weights_hand_computed():
    li, _ = micro_batch(1 / 20, 0.5)
    li.batch["domain_id"] = torch.tensor([1, 0, 1, 0])  # the last sample has no label tokens: left out
    weighter = LossWeighter(temperature=0.7)
    weighter.training_loss(li)
    li2, _ = micro_batch(1 / 20, 0.5, seed=1)
    li2.batch["domain_id"] = torch.tensor([0, 0, 0, 1])
    weighter.training_loss(li2)
    w1 = loss_weights(
        (li.token_losses.detach()[:3].sum(-1) / torch.tensor([3.0, 1.0, 5.0])).double(), "linupper", 1.0, 0.7
    )
    w2 = loss_weights(
        (li2.token_losses.detach()[:3].sum(-1) / torch.tensor([3.0, 1.0, 5.0])).double(), "linupper", 1.0, 0.7
    )
    stats = weighter.pop_stats()
    # B·w per row (B = 3 valid rows each time), averaged over the rows of each domain across both batches
    assert stats["weighter/domain_weight/1"] == pytest.approx(float(3 * (w1[0] + w1[2]) / 2))
    assert stats["weighter/domain_weight/0"] == pytest.approx(float(3 * (w1[1] + w2.sum()) / 4))
    uniform = UniformWeighter()
    uniform.training_loss(li)
    assert uniform.pop_stats()["weighter/domain_weight/1"] == pytest.approx(1.0)


def test_sample_reduction_hand_computed():
    li, nll = micro_batch(1 / 20, 0.5)
    out = LossWeighter(temperature=0.7, reduction="sample").training_loss(li)
    out.backward()
    lengths = torch.tensor([3.0, 1.0, 5.0])
    means = nll.detach()[:3].sum(-1) / lengths
    w = loss_weights(means.double(), "linupper", 1.0, 0.7).float()
    assert out.item() == pytest.approx(float((w * means).sum() * 0.5), rel=1e-6)  # world_size 1, GA 2
    expected_grad = torch.zeros_like(nll)
    expected_grad[:3] = (0.5 * w / lengths)[:, None] * li.token_mask[:3]
    torch.testing.assert_close(nll.grad * li.token_mask, expected_grad)  # masked entries are zeroed by the NLL


@pytest.mark.parametrize(
    "weighter", [UniformWeighter(), LossWeighter(temperature=math.inf), LossWeighter(temperature=0.1, warmup_steps=5)]
)
def test_uniform_token_weights_are_plain_bit_for_bit(weighter):
    """w = 1/B: the loss and its gradient are exactly LossInputs.plain()'s (ragged, one empty sample);
    so is the loss weighter at r = ∞ and at step 0 of a warm-up from r = ∞."""
    li, nll = micro_batch(1 / 20, 0.5, lengths=(7, 2, 4, 0, 1, 3, 5))
    out = weighter.training_loss(li)
    (grad,) = torch.autograd.grad(out, nll)
    plain = li.plain()
    (plain_grad,) = torch.autograd.grad(plain, nll)
    mask = li.token_mask  # (masked entries are zeroed by the NLL itself; their gradient never reaches the model)
    assert torch.equal(out, plain) and torch.equal(grad * mask, plain_grad * mask)
    stats = weighter.pop_stats()
    assert stats["weighter/weight_min"] == stats["weighter/weight_max"] == pytest.approx(1 / 6)
    assert stats["weighter/entropy"] == pytest.approx(math.log(6))


def test_uniform_sample_reduction_is_the_mean_of_sample_means_not_plain():
    li, nll = micro_batch(1 / 20, 1.0)
    out = UniformWeighter(reduction="sample").training_loss(li)
    means = nll.detach()[:3].sum(-1) / torch.tensor([3.0, 1.0, 5.0])
    assert out.item() == pytest.approx(float(means.mean()), rel=1e-6)
    assert out.item() != pytest.approx(li.plain().item() * 20 / 9, rel=1e-3)  # the token mean differs


def test_weighter_state_round_trip():
    w = LossWeighter(temperature=0.5, warmup_steps=4, schedule="linear")
    li, _ = micro_batch(1 / 20, 0.5)
    w.step_end(3)
    w.training_loss(li)
    restored = LossWeighter(temperature=0.5, warmup_steps=4, schedule="linear")
    restored.load_state_dict(w.state_dict())
    assert restored.current_temperature() == w.current_temperature() == pytest.approx(2 / 3)
    assert restored.pop_stats() == w.pop_stats() != {}


def test_gather_in_one_process_is_the_identity():
    values = torch.tensor([[3.0, 1.0], [1.0, 0.0], [3.0, 1.0]])  # duplicates are kept
    gathered, offset = gather_global_batch(values)
    assert torch.equal(gathered, values) and offset == 0


# -- two gloo processes ------------------------------------------------------------------------
def _global_batch_weights():
    rank, world = dist.get_rank(), dist.get_world_size()
    # rank 0 holds 3 samples, rank 1 holds 2 (a ragged last batch); lengths differ
    lengths = {0: [2, 3, 1], 1: [4, 2]}[rank]
    g = torch.Generator().manual_seed(10 + rank)
    t = max(lengths)
    mask = torch.tensor([[j < n for j in range(t)] for n in lengths])
    nll = (torch.rand(len(lengths), t, generator=g) * 3 * mask).requires_grad_(True)
    results = {}
    for reduction in ("token", "sample"):
        # tokens averaged across devices: the trainer's loss is processes * local_sum / N_global
        li = LossInputs(
            token_losses=nll,
            token_mask=mask,
            batch={},
            inputs={},
            model=None,
            num_items_in_batch=12,
            grad_accum_steps=1,
            world_size=world,
            token_scale=world / 12,
            mean_scale=1.0,
        )
        weighter = LossWeighter(temperature=0.4, reduction=reduction)
        loss = weighter.training_loss(li)
        (grad,) = torch.autograd.grad(loss, nll)
        results[reduction] = {"loss": loss.item(), "grad": grad.tolist(), "stats": weighter.pop_stats()}
    return {"nll": nll.detach().tolist(), "lengths": lengths, **results}


def test_two_processes_gather_the_global_batch_with_identical_weights():
    res = run_distributed(_global_batch_weights, 2, timeout=180)
    nll = [torch.tensor(r["nll"]) for r in res]
    sums = torch.cat([n.sum(-1) for n in nll])
    lengths = torch.tensor(res[0]["lengths"] + res[1]["lengths"], dtype=torch.float32)
    w = loss_weights((sums / lengths).double(), "linupper", 1.0, 0.4).float()  # over all 5 samples, rank 0 first
    for reduction in ("token", "sample"):
        assert res[0][reduction]["stats"] == res[1][reduction]["stats"]  # identical weights on every rank
        assert res[0][reduction]["stats"]["weighter/batch"] == 5
        assert res[0][reduction]["stats"]["weighter/weight_max"] == pytest.approx(float(w.max()), rel=1e-6)
        # DDP averages the ranks' gradients: the mean of the two ranks' losses is the global objective
        mean_loss = (res[0][reduction]["loss"] + res[1][reduction]["loss"]) / 2
        if reduction == "token":
            assert mean_loss == pytest.approx(float((5 * w * sums).sum() / 12), rel=1e-5)
        else:
            assert mean_loss == pytest.approx(float((w * sums / lengths).sum()), rel=1e-5)
        for r, (lo, hi) in enumerate(((0, 3), (3, 5))):
            grad = torch.tensor(res[r][reduction]["grad"]) / 2  # averaged over 2 ranks
            mask = nll[r] != 0
            per_token = 5 * w[lo:hi] / 12 if reduction == "token" else w[lo:hi] / lengths[lo:hi]
            torch.testing.assert_close(grad * mask, per_token[:, None] * mask, rtol=1e-5, atol=1e-7)


# -- end to end on the tiny model --------------------------------------------------------------
E2E = [
    "eval.before=false",
    "eval.after=false",
    "trainer.max_steps=3",
    "trainer.per_device_train_batch_size=2",
    "trainer.gradient_accumulation_steps=2",
]


def fit_recording_gradients(tmp_path, monkeypatch, name, overrides):
    """Train; return the per-step losses and the gradients the optimizer stepped with."""
    from support.runs import fit, losses

    from dataflex.train.callback import DataFlexCallback

    grads: list[dict[str, torch.Tensor]] = []

    def record(self, args, state, control, model=None, **kwargs):
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    with monkeypatch.context() as patch:
        patch.setattr(DataFlexCallback, "on_pre_optimizer_step", record, raising=False)
        _, run_dir = fit(tmp_path, name, overrides)
    return losses(run_dir), grads


def test_uniform_weighter_reproduces_plain_training(tmp_path, monkeypatch):
    """weighter=uniform and weighter=loss at r = ∞ give plain training's losses and gradients, with
    gradient accumulation and ragged samples; the two weighters agree bit for bit."""
    from dataflex.train.trainer import DataFlexTrainerMixin

    plain_losses, plain_grads = fit_recording_gradients(tmp_path, monkeypatch, "plain", E2E)
    counts = []
    original = DataFlexTrainerMixin._dataflex_loss_inputs

    def spy(self, *args, **kwargs):
        li = original(self, *args, **kwargs)
        counts.append(li.token_mask.sum(-1).tolist())
        return li

    monkeypatch.setattr(DataFlexTrainerMixin, "_dataflex_loss_inputs", spy)
    uniform_losses, uniform_grads = fit_recording_gradients(
        tmp_path, monkeypatch, "uniform", [*E2E, "weighter=uniform"]
    )
    inf_losses, inf_grads = fit_recording_gradients(
        tmp_path, monkeypatch, "inf", [*E2E, "weighter=loss", "weighter.temperature=inf", "weighter.warmup_steps=0"]
    )
    assert len(counts) == 2 * 3 * 2 and any(len(set(c)) > 1 for c in counts)  # ragged label counts, GA = 2
    assert len(plain_losses) == len(plain_grads) == 3
    assert uniform_losses == pytest.approx(plain_losses, rel=1e-6)
    for plain, uniform, inf in zip(plain_grads, uniform_grads, inf_grads):
        assert plain.keys() == uniform.keys() == inf.keys() and plain
        for name in plain:
            torch.testing.assert_close(uniform[name], plain[name], rtol=1e-5, atol=1e-7)  # float noise of two NLL paths
            assert torch.equal(uniform[name], inf[name])
    assert uniform_losses == inf_losses


@pytest.mark.slow
def test_loss_weighter_logs_its_statistics_and_resumes_exactly(tmp_path, monkeypatch):
    """Weighter state (the temperature step) is checkpointed: a run killed after checkpoint-4 and
    resumed mid warm-up ends where an uninterrupted run ends; the statistics follow the schedule."""
    from support.runs import fit, kill_at_step, losses, same_state

    overrides = [
        "eval.before=false",
        "eval.after=false",
        "trainer.max_steps=8",
        "trainer.save_steps=2",
        "weighter=loss",
        "weighter.warmup_steps=6",
        "weighter.temperature=0.3",
        "weighter.schedule=linear",
    ]
    _, straight = fit(tmp_path, "straight", overrides)
    with monkeypatch.context() as patch:
        kill_at_step(patch, 5)
        with pytest.raises(KeyboardInterrupt):
            fit(tmp_path, "resumed", overrides)
    _, resumed = fit(tmp_path, "resumed", overrides)

    assert len(losses(straight)) == 8 and losses(resumed) == pytest.approx(losses(straight), abs=1e-6)

    def state(d):
        return torch.load(d / "checkpoints" / "checkpoint-8" / "dataflex_state.pt", weights_only=False)

    a, b = state(straight)["components"]["weighter"], state(resumed)["components"]["weighter"]
    assert a["steps_done"] == 8 and same_state(a, b)

    def stats(run_dir):  # per step, a resumed step's later line wins
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return {
            r["step"]: {k: v for k, v in r.items() if k.startswith("weighter/")} for r in lines if "weighter/batch" in r
        }

    by_step = stats(straight)
    assert sorted(by_step) == list(range(1, 9))
    # 1/r moves linearly from 0 to 1/0.3 over 6 steps: r = 1.8 / t for t = steps done < 6
    expected = ["inf", 1.8, 0.9, 0.6, 0.45, 0.36, 0.3, 0.3]
    assert [by_step[s]["weighter/temperature"] for s in range(1, 9)] == [
        e if isinstance(e, str) else pytest.approx(e) for e in expected
    ]
    assert by_step[1]["weighter/weight_min"] == by_step[1]["weighter/weight_max"] == pytest.approx(1 / 4)
    for s in range(2, 9):
        r = by_step[s]
        assert r["weighter/weight_min"] < 1 / 4 < r["weighter/weight_max"] and r["weighter/batch"] == 4
        assert 0 < r["weighter/entropy"] < math.log(4)
    assert by_step[8]["weighter/weight_max"] > by_step[2]["weighter/weight_max"]  # sharper at the target
    resumed_stats = stats(resumed)
    for s in range(1, 9):
        assert resumed_stats[s].keys() == by_step[s].keys()
        for key, value in by_step[s].items():  # the temperature "inf" is logged as a string
            assert resumed_stats[s][key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-5))
