"""DoReMi: the proxy loss and the mixer component against hand-computed values and the ALGORITHMS.md
invariants (simplex, floor c/K, ℓ_ref ≡ ℓ_θ keeps α uniform, the largest λ gains, η = 0 stays
uniform, ᾱ equals the running mean), and end to end on the tiny model: the three steps chained
through the experiment configs, the online variant, a reference identical to the proxy, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from support.config import compose_config
from support.distributed import run_distributed

from dataflex.config import ConfigError
from dataflex.mixers.doremi import (
    WEIGHTS_FILE,
    DoReMiMixer,
    domain_token_sums,
    doremi_proxy_loss,
    doremi_token_mean_loss,
    resolve_reference_model,
)
from dataflex.mixers.static import StaticMixer
from dataflex.train.components import LossInputs

V = 4  # vocabulary of the fake reference: all-zero logits give ℓ_ref = ln 4 on every token
LN4 = math.log(V)
EARLIER = {"absent": "zero", "update": "micro_batch", "proxy_loss": "domain_mean"}


# -- pure parts ---------------------------------------------------------------------------------
def test_domain_token_sums_and_proxy_loss_hand_computed():
    losses = torch.tensor([[2.0, 1.0, 4.0], [3.0, 0.5, 9.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    domains = torch.tensor([[1], [0]])
    sums, counts = domain_token_sums(losses, domains, 3, mask)
    assert sums.tolist() == [12.5, 3.0, 0.0] and counts.tolist() == [3.0, 2.0, 0.0]
    alpha = torch.tensor([0.5, 0.3, 0.2])
    # Σ_i α_i · mean_i = 0.5 · 12.5/3 + 0.3 · 3/2 (domain 2 absent: 0)
    value = doremi_proxy_loss(losses, domains, alpha, mask)
    assert value.item() == pytest.approx(0.5 * 12.5 / 3 + 0.3 * 1.5)
    value.backward()
    expected = torch.tensor([[0.3 / 2, 0.3 / 2, 0.0], [0.5 / 3] * 3])
    torch.testing.assert_close(losses.grad, expected)
    # Given global token counts (other processes hold more tokens), each domain divides by them.
    value = doremi_proxy_loss(losses.detach(), domains, alpha, mask, domain_token_counts=torch.tensor([6.0, 4.0, 1.0]))
    assert value.item() == pytest.approx(0.5 * 12.5 / 6 + 0.3 * 3 / 4)


# -- the component on hand-made micro-batches ------------------------------------------------------
class ZeroLogits(torch.nn.Module):
    """A fake reference model: all-zero logits over V tokens, so ℓ_ref = ln V on every token."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        self.calls.append(input_ids)
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, V))


class Proxy(torch.nn.Linear):
    """Stands in for the training model (the component reads .training and a parameter's device)."""

    def __init__(self):
        super().__init__(1, 1)


def micro_batch(token_losses, mask, domains, mean_scale=1.0, world_size=1):
    token_losses = torch.as_tensor(token_losses, dtype=torch.float32).requires_grad_(True)
    mask = torch.as_tensor(mask)
    b, t = token_losses.shape
    labels = torch.ones(b, t + 1, dtype=torch.long)
    labels[:, 1:][~mask] = -100
    return LossInputs(
        token_losses=token_losses,
        token_mask=mask,
        batch={"domain_id": torch.as_tensor(domains), "sample_index": torch.arange(b)},
        inputs={"input_ids": torch.ones(b, t + 1, dtype=torch.long), "labels": labels},
        model=Proxy().train(),
        num_items_in_batch=None,
        grad_accum_steps=1,
        world_size=world_size,
        token_scale=1.0 / mask.sum(),
        mean_scale=mean_scale,
    )


def started(tmp_path, k=3, **kwargs):
    (tmp_path / "ref" / "model").mkdir(parents=True, exist_ok=True)
    (tmp_path / "ref" / "model" / "config.json").write_text("{}")
    mixer = DoReMiMixer(reference_dir=str(tmp_path / "ref"), domains=[f"d{i}" for i in range(k)], **kwargs)
    mixer.reference = ZeroLogits()
    ctx = SimpleNamespace(domain_ids=torch.arange(k), run_dir=tmp_path / "run", global_step=0)
    start = mixer.initial_proportions(ctx)
    return mixer, ctx, start


def test_one_step_hand_computed(tmp_path):
    # the earlier rules, now options: absent domains get λ = 0, one step per micro-batch, the paper's objective
    mixer, ctx, start = started(tmp_path, **EARLIER)
    torch.testing.assert_close(start, torch.full((3,), 1 / 3, dtype=torch.float64))
    # domain 0: tokens 2.0, 1.0 -> excess (2 - ln4, 0); domain 1: tokens 3.0, 0.5, 9.0 (9.0 masked out)
    li = micro_batch(
        [[2.0, 1.0, 9.0], [3.0, 0.5, 9.0]], [[True, True, False], [True, True, False]], [0, 1], mean_scale=0.5
    )
    loss = mixer.training_loss(li)
    lam = [(2 - LN4) / 2, (3 - LN4) / 2, 0.0]
    c = 1e-3
    raw = [math.exp(x) / 3 for x in lam]
    alpha = [(1 - c) * r / sum(raw) + c / 3 for r in raw]
    torch.testing.assert_close(mixer.alpha, torch.tensor(alpha, dtype=torch.float64))
    # the micro-batch trains on α_1 (the paper's order), on the trainer's scale (mean_scale)
    expected = 0.5 * (alpha[0] * (2 + 1) / 2 + alpha[1] * (3 + 0.5) / 2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(
        li.token_losses.grad, torch.tensor([[alpha[0] / 4, alpha[0] / 4, 0], [alpha[1] / 4, alpha[1] / 4, 0]])
    )
    assert len(mixer.reference.calls) == 1 and torch.equal(mixer.reference.calls[0], li.inputs["input_ids"])
    # proxy mode samples uniformly; the update records α and writes ᾱ (= α_1 after one step)
    ctx.global_step = 1
    torch.testing.assert_close(mixer.update(ctx), start)
    written = json.loads((tmp_path / "run" / WEIGHTS_FILE).read_text())
    assert list(written) == ["d0", "d1", "d2"] and list(written.values()) == pytest.approx(alpha)
    stats = mixer.decision_stats()
    assert stats["mixer/doremi/alpha/d1"] == pytest.approx(alpha[1])
    assert stats["mixer/doremi/excess/d0"] == pytest.approx(lam[0])


def run_steps(mixer, ctx, batches):
    alphas = []
    for step, (losses, domains) in enumerate(batches, 1):
        mixer.training_loss(micro_batch(losses, torch.ones_like(torch.as_tensor(losses), dtype=torch.bool), domains))
        alphas.append(mixer.alpha.clone())
        ctx.global_step = step
        mixer.update(ctx)
    return alphas


def random_batches(n, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        ((torch.rand(4, 5, generator=g) * 4).tolist(), torch.randint(0, k, (4,), generator=g).tolist())
        for _ in range(n)
    ]


def test_invariants_simplex_floor_running_mean(tmp_path):
    mixer, ctx, _ = started(tmp_path, k=4, eta=5.0, smoothing=0.02)
    alphas = run_steps(mixer, ctx, random_batches(12, k=4))
    for a in alphas:
        assert abs(float(a.sum()) - 1) < 1e-12 and (a >= 0.02 / 4 - 1e-15).all()
    assert not torch.allclose(alphas[-1], torch.full((4,), 0.25, dtype=torch.float64))
    mean = torch.stack(alphas).mean(0)
    torch.testing.assert_close(mixer.alpha_mean, mean)
    written = json.loads((tmp_path / "run" / WEIGHTS_FILE).read_text())
    torch.testing.assert_close(torch.tensor(list(written.values()), dtype=torch.float64), mean)
    assert [h["alpha"] for h in mixer.history] == [a.tolist() for a in alphas]


def test_reference_equal_to_proxy_keeps_alpha_uniform(tmp_path):
    # absent: zero (a never-seen domain would otherwise carry λ = log V, the reference code's start)
    mixer, ctx, _ = started(tmp_path, absent="zero")
    alphas = run_steps(mixer, ctx, [([[LN4] * 3] * 2, [0, 2]), ([[LN4] * 3] * 2, [1, 1])])
    for a in alphas:
        torch.testing.assert_close(a, torch.full((3,), 1 / 3, dtype=torch.float64), rtol=0, atol=1e-15)
    # the default rule: once every domain has been seen, ℓ_ref ≡ ℓ_θ keeps α uniform as well
    mixer, ctx, _ = started(tmp_path / "default")
    alphas = run_steps(mixer, ctx, [([[LN4] * 3] * 3, [0, 1, 2]), ([[LN4] * 3] * 2, [1, 1])])
    for a in alphas:
        torch.testing.assert_close(a, torch.full((3,), 1 / 3, dtype=torch.float64), rtol=0, atol=1e-15)


def test_largest_excess_gains_and_eta_zero_stays_uniform(tmp_path):
    mixer, ctx, _ = started(tmp_path, absent="zero")
    # excess: domain 0 gets 0.5, domain 1 gets 2.0, domain 2 is absent (0)
    alpha = run_steps(mixer, ctx, [([[LN4 + 0.5] * 2, [LN4 + 2.0] * 2], [0, 1])])[0]
    assert int(alpha.argmax()) == 1 and alpha[1] > 1 / 3 and alpha[0] > alpha[2]
    frozen, ctx0, _ = started(tmp_path / "eta0", eta=0.0)
    for a in run_steps(frozen, ctx0, random_batches(3)):
        torch.testing.assert_close(a, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_clip_option_bounds_the_step(tmp_path):
    clipped, ctx, _ = started(tmp_path / "a", clip=0.5, smoothing=0.0, absent="zero")
    alpha = run_steps(clipped, ctx, [([[LN4 + 3.0] * 2], [0])])[0]
    raw = [math.exp(0.5), 1.0, 1.0]
    torch.testing.assert_close(alpha, torch.tensor([r / sum(raw) for r in raw], dtype=torch.float64))


def test_online_mode_samples_by_alpha_and_trains_the_plain_loss(tmp_path):
    mixer, ctx, _ = started(tmp_path, mode="online", absent="zero")  # the others: λ = 0, not log V
    li = micro_batch([[LN4 + 1.0, LN4 + 1.0]], [[True, True]], [2])
    loss = mixer.training_loss(li)
    assert loss.item() == pytest.approx(li.plain().item())
    assert mixer.alpha[2] > 1 / 3
    ctx.global_step = 1
    torch.testing.assert_close(mixer.update(ctx), mixer.alpha)


def test_evaluation_forward_takes_no_step(tmp_path):
    mixer, _, start = started(tmp_path)
    li = micro_batch([[LN4 + 1.0]], [[True]], [0])
    li.model.eval()
    assert mixer.training_loss(li).item() == pytest.approx(li.plain().item())
    assert mixer.alpha_updates == 0 and torch.equal(mixer.alpha, start)


def test_state_round_trip_continues_the_trajectory(tmp_path):
    batches = random_batches(6)
    straight, ctx, _ = started(tmp_path / "a")
    expected = run_steps(straight, ctx, batches)
    first, ctx1, _ = started(tmp_path / "b")
    run_steps(first, ctx1, batches[:3])
    resumed = DoReMiMixer(reference_dir=first.reference_dir, domains=first.domains)
    resumed.load_state_dict(torch.load(_save(first.state_dict(), tmp_path / "s.pt"), weights_only=False))
    resumed.reference = ZeroLogits()
    for step, (losses, domains) in enumerate(batches[3:], 4):
        resumed.training_loss(micro_batch(losses, torch.ones_like(torch.as_tensor(losses), dtype=torch.bool), domains))
        ctx1.global_step = step
        resumed.update(ctx1)
    assert torch.equal(resumed.alpha, expected[-1]) and torch.equal(resumed.alpha_mean, straight.alpha_mean)
    assert resumed.history == straight.history and resumed.alpha_updates == 6
    with pytest.raises(ValueError, match="online"):
        DoReMiMixer(mode="online").load_state_dict(first.state_dict())


def _save(obj, path):
    torch.save(obj, path)
    return path


def test_absent_domain_keeps_its_last_excess_hand_computed(tmp_path):
    """absent: last (default): a domain without a token keeps its last λ, log V before its first one."""
    mixer, ctx, _ = started(tmp_path, smoothing=0.0)
    # step 1: only domain 0 (excess 1.0 on both tokens); domains 1, 2 never seen: λ = ln V = ln 4
    a1 = run_steps(mixer, ctx, [([[LN4 + 1.0] * 2], [0])])[0]
    raw = [math.exp(1.0), math.exp(LN4), math.exp(LN4)]
    expected1 = [r / sum(raw) for r in raw]
    torch.testing.assert_close(a1, torch.tensor(expected1, dtype=torch.float64))
    # step 2: only domain 1 (excess 0.5): domain 0 keeps 1.0, domain 2 keeps ln 4
    a2 = run_steps(mixer, ctx, [([[LN4 + 0.5] * 3], [1])])[0]
    raw = [expected1[0] * math.exp(1.0), expected1[1] * math.exp(0.5), expected1[2] * math.exp(LN4)]
    torch.testing.assert_close(a2, torch.tensor([r / sum(raw) for r in raw], dtype=torch.float64))
    assert mixer.last_excess.tolist() == pytest.approx([1.0, 0.5, LN4])
    # absent: zero (the earlier rule): the same two steps give absent domains λ = 0
    zero, ctx0, _ = started(tmp_path / "zero", smoothing=0.0, absent="zero")
    b1 = run_steps(zero, ctx0, [([[LN4 + 1.0] * 2], [0])])[0]
    raw = [math.exp(1.0), 1.0, 1.0]
    torch.testing.assert_close(b1, torch.tensor([r / sum(raw) for r in raw], dtype=torch.float64))


def test_token_mean_objective_hand_computed():
    losses = torch.tensor([[2.0, 1.0, 4.0], [3.0, 0.5, 9.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    domains = torch.tensor([[1], [0]])
    # uniform α: exactly the plain token mean (2 + 1 + 3 + 0.5 + 9) / 5
    uniform = doremi_token_mean_loss(losses, domains, torch.full((3,), 1 / 3), mask)
    assert uniform.item() == pytest.approx(15.5 / 5, rel=1e-7)
    value = doremi_token_mean_loss(losses, domains, torch.tensor([0.5, 0.3, 0.2]), mask)
    assert value.item() == pytest.approx((0.5 * 12.5 + 0.3 * 3.0) / (0.5 * 3 + 0.3 * 2), rel=1e-7)
    value.backward()
    z = 0.5 * 3 + 0.3 * 2
    torch.testing.assert_close(losses.grad, torch.tensor([[0.3 / z, 0.3 / z, 0.0], [0.5 / z] * 3]))
    # half of K = 4 domains absent, every token's loss 2: the token mean stays 2, the paper's form halves
    flat, ones = torch.full((2, 3), 2.0), torch.ones(2, 3, dtype=torch.bool)
    alpha = torch.full((4,), 0.25)
    assert doremi_token_mean_loss(flat, torch.tensor([[0], [1]]), alpha, ones).item() == pytest.approx(2.0)
    assert doremi_proxy_loss(flat, torch.tensor([[0], [1]]), alpha, ones).item() == pytest.approx(1.0)


class EmbeddingLM(torch.nn.Module):
    """A causal LM small enough to reason about: the logits of a position are its token's embedding row."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, V)
        torch.nn.init.normal_(self.emb.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.emb(input_ids))


def ga_step(mixer, model, micro_batches, lr=0.5):
    """One optimizer step the way the trainer runs it: prepare_step, then forward + backward per
    micro-batch (the trainer does not divide by GA: mean_scale = 1/GA), then plain SGD."""
    from dataflex.signals.losses import shifted_token_nll

    ga = len(micro_batches)
    mixer.prepare_step(micro_batches, model)
    model.zero_grad()
    for mb in micro_batches:
        token_losses, mask = shifted_token_nll(model(mb["input_ids"]).logits, mb["labels"])
        li = LossInputs(
            token_losses=token_losses,
            token_mask=mask,
            batch={"domain_id": mb["domain_id"], "sample_index": mb["sample_index"]},
            inputs={k: mb[k] for k in ("input_ids", "attention_mask", "labels")},
            model=model,
            num_items_in_batch=None,
            grad_accum_steps=ga,
            world_size=1,
            token_scale=1.0,
            mean_scale=1 / ga,
        )
        mixer.training_loss(li).backward()
    grad = model.emb.weight.grad.clone()
    with torch.no_grad():
        model.emb.weight -= lr * grad
    return grad


def test_gradient_accumulation_gives_the_alpha_of_one_large_micro_batch(tmp_path):
    """update: step (default): GA 2 × micro-batch 2 gives the α and the gradient of GA 1 × micro-batch 4,
    step after step; update: micro_batch (the earlier rule) does not."""
    g = torch.Generator().manual_seed(1)
    steps = []
    for _ in range(3):
        ids = torch.randint(0, V, (4, 6), generator=g)
        labels = ids.clone()
        labels[:, :2] = -100
        labels[3, 4:] = -100  # a ragged sample
        steps.append(
            {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "labels": labels,
                "domain_id": torch.randint(0, 3, (4,), generator=g),
                "sample_index": torch.arange(4),
            }
        )

    def run(ga, **kwargs):
        mixer, _, _ = started(tmp_path / f"ga{ga}{kwargs}", eta=3.0, **kwargs)
        model = EmbeddingLM().train()
        alphas, grads = [], []
        for batch in steps:
            parts = [{k: v[i * 4 // ga : (i + 1) * 4 // ga] for k, v in batch.items()} for i in range(ga)]
            grads.append(ga_step(mixer, model, parts))
            alphas.append(mixer.alpha.clone())
        return alphas, grads, mixer

    one, one_grads, m1 = run(1)
    two, two_grads, m2 = run(2)
    assert m1.alpha_updates == m2.alpha_updates == 3  # one α step per optimizer step
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    for a, b in zip(one_grads, two_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(one[-1], torch.full((3,), 1 / 3, dtype=torch.float64))
    per_micro_batch, _, m3 = run(2, update="micro_batch")
    assert m3.alpha_updates == 6 and not torch.allclose(per_micro_batch[-1], one[-1])


def test_static_mixer_reads_the_weights_file(tmp_path):
    mixer, ctx, _ = started(tmp_path)
    run_steps(mixer, ctx, random_batches(3))
    static = StaticMixer(proportions_file=str(tmp_path / "run" / WEIGHTS_FILE), domains=mixer.domains)
    torch.testing.assert_close(static.initial_proportions(ctx), mixer.alpha_mean / mixer.alpha_mean.sum())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "offline"}, "mode must be one of"),
        ({"eta": -1.0}, "eta"),
        ({"smoothing": 1.5}, "smoothing"),
        ({"clip": 0.0}, "clip"),
        ({"update_every": 0}, "update_every"),
        ({"absent": "keep"}, "absent must be one of last, zero"),
        ({"update": "epoch"}, "update must be one of step, micro_batch"),
        ({"proxy_loss": "sum"}, "proxy_loss must be one of token_mean, domain_mean"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DoReMiMixer(**kwargs)


def test_reference_dir_is_checked(tmp_path):
    with pytest.raises(ValueError, match="mixer.reference_dir"):
        resolve_reference_model(None)
    with pytest.raises(ValueError, match="holds no trained model"):
        resolve_reference_model(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert resolve_reference_model(tmp_path) == tmp_path / "model"
    assert resolve_reference_model(tmp_path / "model") == tmp_path / "model"


def test_reference_with_another_vocabulary_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    def tiny(vocab):
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
        return LlamaForCausalLM(config)

    tiny(32).save_pretrained(tmp_path / "ref" / "model")
    mixer = DoReMiMixer(reference_dir=str(tmp_path / "ref"))
    mixer.initial_proportions(SimpleNamespace(domain_ids=torch.arange(2), run_dir=None))
    li = micro_batch([[1.0]], [[True]], [0])
    li.model = tiny(48).train()
    with pytest.raises(ConfigError, match="vocabulary of 32 tokens, the proxy 48"):
        mixer.training_loss(li)


# -- per-domain training loss (any mixer run) -------------------------------------------------------
def test_domain_loss_tracker_means_per_domain_and_restarts():
    from dataflex.train.callback import DomainLossTracker

    tracker = DomainLossTracker(lambda: 3)
    tracker.observe_batch(torch.tensor([2.0, 4.0, float("nan")]), {"domain_id": torch.tensor([0, 2, 2])})
    tracker.observe_batch(torch.tensor([1.0, 3.0]), {"domain_id": torch.tensor([0, 2])})
    # domain 0: (2 + 1)/2; domain 1 absent (not logged); domain 2: (4 + 3)/2, the NaN sample left out
    assert tracker.pop(["a", "b", "c"]) == {"train/domain_loss/a": 1.5, "train/domain_loss/c": 3.5}
    assert tracker.pop(["a", "b", "c"]) == {}  # the next step starts from nothing
    tracker.observe_batch(torch.tensor([5.0]), {"domain_id": torch.tensor([1])})
    assert tracker.pop(["a", "b", "c"]) == {"train/domain_loss/b": 5.0}


# -- two gloo processes ------------------------------------------------------------------------
def _doremi_step_on_two_ranks():
    rank = torch.distributed.get_rank()
    # rank 0: two samples of domain 0 and one of domain 1; rank 1: one sample of domain 1 (ragged)
    losses = {0: [[3.0, 2.0], [1.0, 2.5], [4.0, 0.0]], 1: [[2.0, 3.5]]}[rank]
    mask = torch.tensor({0: [[True, True], [True, True], [True, False]], 1: [[True, True]]}[rank])
    domains = {0: [0, 0, 1], 1: [1]}[rank]
    token_losses = torch.tensor(losses).requires_grad_(True)
    labels = torch.ones(len(losses), 3, dtype=torch.long)
    labels[:, 1:][~mask] = -100
    li = LossInputs(
        token_losses=token_losses,
        token_mask=mask,
        batch={"domain_id": torch.tensor(domains)},
        inputs={"input_ids": torch.ones(len(losses), 3, dtype=torch.long), "labels": labels},
        model=torch.nn.Linear(1, 1).train(),
        num_items_in_batch=None,
        grad_accum_steps=1,
        world_size=2,
        token_scale=1.0,
        mean_scale=1.0,
    )
    result = {}
    for proxy_loss in ("domain_mean", "token_mean"):
        mixer = DoReMiMixer(reference_dir="unused", domains=["x", "y"], proxy_loss=proxy_loss)
        mixer.reference = ZeroLogits()
        mixer.alpha = torch.tensor([0.5, 0.5], dtype=torch.float64)
        mixer.window_excess = torch.zeros(2, dtype=torch.float64)
        loss = mixer.training_loss(li)
        (grad,) = torch.autograd.grad(loss, token_losses)
        result[proxy_loss] = {"alpha": mixer.alpha.tolist(), "loss": loss.item(), "grad": grad.tolist()}
    return result


def test_two_processes_hold_the_same_alpha_from_the_global_batch():
    both = run_distributed(_doremi_step_on_two_ranks, 2, timeout=180)
    res = [b["domain_mean"] for b in both]
    # the global micro-batch: domain 0 tokens 3, 2, 1, 2.5; domain 1 tokens 4 (rank 0), 2, 3.5 (rank 1)
    excess = [((3 - LN4) + (2 - LN4) + 0 + (2.5 - LN4)) / 4, ((4 - LN4) + (2 - LN4) + (3.5 - LN4)) / 3]
    raw = [0.5 * math.exp(x) for x in excess]
    alpha = [(1 - 1e-3) * r / sum(raw) + 1e-3 / 2 for r in raw]
    assert res[0]["alpha"] == res[1]["alpha"]  # bit for bit on every rank
    assert res[0]["alpha"] == pytest.approx(alpha, rel=1e-6)  # (the losses are fp32)
    # DDP averages the two ranks' gradients: the mean of their losses is the global objective
    objective = alpha[0] * (3 + 2 + 1 + 2.5) / 4 + alpha[1] * (4 + 2 + 3.5) / 3
    assert (res[0]["loss"] + res[1]["loss"]) / 2 == pytest.approx(objective, rel=1e-6)
    grads = [torch.tensor(r["grad"]) / 2 for r in res]
    torch.testing.assert_close(grads[0], torch.tensor([[alpha[0] / 4] * 2, [alpha[0] / 4] * 2, [alpha[1] / 3, 0.0]]))
    torch.testing.assert_close(grads[1], torch.tensor([[alpha[1] / 3] * 2]))
    # the default objective: Σ_t α_d(t) ℓ_t / Σ_t α_d(t) over the global batch's 7 tokens
    res = [b["token_mean"] for b in both]
    assert res[0]["alpha"] == res[1]["alpha"] == both[0]["domain_mean"]["alpha"]
    z = 4 * alpha[0] + 3 * alpha[1]
    objective = (alpha[0] * (3 + 2 + 1 + 2.5) + alpha[1] * (4 + 2 + 3.5)) / z
    assert (res[0]["loss"] + res[1]["loss"]) / 2 == pytest.approx(objective, rel=1e-6)
    grads = [torch.tensor(r["grad"]) / 2 for r in res]
    torch.testing.assert_close(grads[0], torch.tensor([[alpha[0] / z] * 2, [alpha[0] / z] * 2, [alpha[1] / z, 0.0]]))
    torch.testing.assert_close(grads[1], torch.tensor([[alpha[1] / z] * 2]))


# -- end to end on the tiny model -----------------------------------------------------------------
SMALL = ["data.max_samples=16", "eval.before=false", "eval.after=false", "trainer.max_steps=3", "trainer.save_steps=3"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_state(run_dir: Path, step: int) -> dict:
    return torch.load(run_dir / "checkpoints" / f"checkpoint-{step}" / "dataflex_state.pt", weights_only=False)


def domain_loss_steps(run_dir: Path) -> list[int]:
    return sorted({r["step"] for r in records(run_dir) if any(k.startswith("train/domain_loss/") for k in r)})


def test_e2e_three_steps_chained(tmp_path):
    """reference -> proxy (beside the frozen reference) -> final on ᾱ, through the experiment configs."""
    from dataflex.run import Run

    root = tmp_path / "doremi"
    for step in ("reference", "proxy", "final"):
        Run(compose_config([f"experiment=doremi_{step}", f"doremi.root={root}", *SMALL]), root / step).fit()
        assert domain_loss_steps(root / step) == [1, 2, 3]  # per-domain training loss every step
    assert (root / "reference" / "model" / "model.safetensors").is_file()

    proxy = final_state(root / "proxy", 3)
    doremi = proxy["components"]["mixer"]
    alphas = torch.tensor([h["alpha"] for h in doremi["history"]], dtype=torch.float64)
    assert doremi["alpha_updates"] == 3 and alphas.shape == (3, 7)  # GA = 1: one α step per optimizer step
    assert torch.allclose(alphas.sum(1), torch.ones(3, dtype=torch.float64)) and (alphas >= 1e-3 / 7).all()
    assert not torch.allclose(alphas[-1], torch.full((7,), 1 / 7, dtype=torch.float64))  # the excess moved α
    weights = json.loads((root / "proxy" / WEIGHTS_FILE).read_text())
    names = compose_config(["data=offline_domains"]).data.domains
    assert list(weights) == sorted(names)
    torch.testing.assert_close(torch.tensor([weights[n] for n in names], dtype=torch.float64), alphas.mean(0))
    # the proxy samples uniformly; α and ᾱ are logged by domain name at every step
    logged = [r for r in records(root / "proxy") if "mixer/doremi/alpha/offline_domains_code" in r]
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert logged[-1]["mixer/doremi/alpha_mean/offline_domains_code"] == pytest.approx(weights["offline_domains_code"])
    torch.testing.assert_close(
        proxy["sampler"]["history"][-1]["proportions"], torch.full((7,), 1 / 7, dtype=torch.float64)
    )

    final = final_state(root / "final", 3)
    expected = torch.tensor([weights[n] for n in names], dtype=torch.float64)
    torch.testing.assert_close(final["sampler"]["history"][-1]["proportions"], expected / expected.sum())


def test_e2e_reference_equal_to_the_proxy_keeps_alpha_uniform(tmp_path):
    """The proxy's own initial weights as the reference and no learning: ℓ_ref ≡ ℓ_θ on every token
    (same batch, same alignment), so every λ is 0 and α stays uniform through the whole run."""
    from dataflex.data.assets import asset_path
    from dataflex.run import Run

    # absent=zero: a domain no batch has held yet would otherwise carry λ = log V (the reference's start)
    cfg = compose_config(
        [
            "data=offline_domains",
            "trainer=pt_full",
            "mixer=doremi",
            "trainer.learning_rate=0",
            "mixer.absent=zero",
            f"mixer.reference_dir={asset_path('tiny')}",
            *SMALL,
        ]
    )
    Run(cfg, tmp_path / "same").fit()
    doremi = final_state(tmp_path / "same", 3)["components"]["mixer"]
    for h in doremi["history"]:
        assert h["excess"] == pytest.approx([0.0] * 7, abs=1e-6)
        assert h["alpha"] == pytest.approx([1 / 7] * 7, abs=1e-9)


def test_e2e_online_mode_proportions_follow_alpha(tmp_path):
    from dataflex.data.assets import asset_path
    from dataflex.run import Run

    cfg = compose_config(
        [
            "data=offline_domains",
            "trainer=pt_full",
            "mixer=doremi",
            "mixer.mode=online",
            "mixer.eta=20",
            f"mixer.reference_dir={asset_path('tiny')}",
            *SMALL,
        ]
    )
    Run(cfg, tmp_path / "online").fit()
    state = final_state(tmp_path / "online", 3)
    doremi = state["components"]["mixer"]
    last = torch.tensor(doremi["history"][-1]["alpha"], dtype=torch.float64)
    assert not torch.allclose(last, torch.full((7,), 1 / 7, dtype=torch.float64))
    torch.testing.assert_close(state["sampler"]["history"][-1]["proportions"], last)
    assert (tmp_path / "online" / WEIGHTS_FILE).is_file()


def test_e2e_doremi_resume_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch):
    from support.runs import fit, kill_at_step, losses, same_state

    from dataflex.data.assets import asset_path

    overrides = [
        "data=offline_domains",
        "trainer=pt_full",
        "mixer=doremi",
        "data.max_samples=16",
        f"mixer.reference_dir={asset_path('tiny')}",
        "eval.before=false",
        "eval.after=false",
        "trainer.max_steps=4",
        "trainer.save_steps=2",
    ]
    _, straight = fit(tmp_path, "straight", overrides)
    with monkeypatch.context() as patch:
        kill_at_step(patch, 3)  # after checkpoint-2, before checkpoint-4
        with pytest.raises(KeyboardInterrupt):
            fit(tmp_path, "resumed", overrides)
    _, resumed = fit(tmp_path, "resumed", overrides)
    assert len(losses(straight)) == 4 and losses(resumed) == pytest.approx(losses(straight), abs=1e-6)
    a, b = final_state(straight, 4), final_state(resumed, 4)
    assert same_state(a["components"], b["components"]) and a["components"]["mixer"]["alpha_updates"] == 4
    assert not torch.allclose(a["components"]["mixer"]["alpha"], torch.full((7,), 1 / 7, dtype=torch.float64))
    assert (straight / WEIGHTS_FILE).read_text() == (resumed / WEIGHTS_FILE).read_text()


# -- the pipeline script --------------------------------------------------------------------------
PIPELINE = Path(__file__).resolve().parents[2] / "sweeps" / "doremi_pipeline.sh"


def test_pipeline_script_runs_the_three_steps_in_order(tmp_path):
    import shlex
    import subprocess

    result = subprocess.run(
        ["bash", str(PIPELINE), "slurm", "--dry-run", f"doremi.root={tmp_path}", "trainer.max_steps=5"],
        capture_output=True,
        text=True,
        check=True,
    )
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    assert [c[c.index("-m") + 1 :][3] for c in commands] == [
        f"experiment=doremi_{s}" for s in ("reference", "proxy", "final")
    ]
    for command, step in zip(commands, ("reference", "proxy", "final")):
        assert command[0].endswith("dataflex-run") and "hydra/launcher=slurm" in command
        assert f"hydra.sweep.dir={tmp_path}/{step}" in command and f"doremi.root={tmp_path}" in command
        assert command[-1] == "trainer.max_steps=5"
        # each step's overrides compose: step 2 reads step 1's directory, step 3 step 2's weights
        cfg = compose_config([o for o in command[2:] if not o.startswith("hydra")], tiny=False)
        assert cfg.trainer.max_steps == 5
    proxy = compose_config(["experiment=doremi_proxy", f"doremi.root={tmp_path}"], tiny=False)
    final = compose_config(["experiment=doremi_final", f"doremi.root={tmp_path}"], tiny=False)
    assert proxy.mixer.reference_dir == f"{tmp_path}/reference"
    assert final.mixer.proportions_file == f"{tmp_path}/proxy/{WEIGHTS_FILE}"
    bad = subprocess.run(["bash", str(PIPELINE), "cluster"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "unknown launcher 'cluster'" in bad.stderr


@pytest.mark.slow
def test_e2e_sft_lora_tasks_as_domains_with_a_lora_reference(tmp_path):
    """SFT with the tasks as domains: step 1 is a LoRA run (its model/ is an adapter), loaded as the
    reference merged into its base; the excess loss counts response tokens only."""
    from dataflex.run import Run

    small = ["eval.before=false", "eval.after=false", "trainer.max_steps=2", "trainer.save_steps=2"]
    Run(compose_config(["mixer=static", *small]), tmp_path / "reference").fit()
    assert (tmp_path / "reference" / "model" / "adapter_config.json").is_file()
    run = Run(
        compose_config(["mixer=doremi", f"mixer.reference_dir={tmp_path / 'reference'}", *small]), tmp_path / "proxy"
    )
    run.fit()
    mixer = run.components["mixer"]
    assert mixer.alpha_updates == 2 and type(mixer.reference).__name__ == "LlamaForCausalLM"  # merged, no adapter
    weights = json.loads((tmp_path / "proxy" / WEIGHTS_FILE).read_text())
    assert sorted(weights) == sorted(compose_config().data.domains) and sum(weights.values()) == pytest.approx(1.0)
