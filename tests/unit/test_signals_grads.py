"""Batched per-sample losses/gradients vs the batch-size-1 loop (fp32, 1e-5), LoRA and full."""

from __future__ import annotations

import pytest
import torch
from support.tiny import padded_batch, tiny_llama, with_lora

from dataflex.signals.gradients import (
    per_sample_gradients,
    per_sample_gradients_loop,
    project_per_sample_gradients,
    project_per_sample_gradients_loop,
    trainable_parameters,
)
from dataflex.signals.losses import per_sample_losses, per_token_losses
from dataflex.signals.projection import Projector

ATOL = 1e-5
RTOL = 1e-4


@pytest.fixture(scope="module")
def full():
    return tiny_llama()


@pytest.fixture(scope="module")
def lora(full):
    return with_lora(full)


def _singles(model, batch):
    out = []
    for i in range(batch["input_ids"].shape[0]):
        keep = batch["attention_mask"][i].bool()
        one = {k: batch[k][i][keep][None] for k in ("input_ids", "attention_mask", "labels")}
        out.append(per_sample_losses(model, one)[0])
    return torch.stack(out)


@pytest.mark.parametrize("pad_side", ["right", "left"])
@pytest.mark.parametrize("which", ["full", "lora"])
def test_losses_match_single_runs(request, which, pad_side):
    model = request.getfixturevalue(which)
    batch = padded_batch(pad_side=pad_side)
    batched = per_sample_losses(model, batch)
    assert batched.shape == (4,) and not batched.requires_grad
    torch.testing.assert_close(batched, _singles(model, batch), atol=ATOL, rtol=RTOL)
    assert batched[3].item() == 0.0  # no label token -> 0.0, not NaN
    # per_token_losses aligns with labels[:, 1:] and averages to per_sample_losses
    tok = per_token_losses(model, batch)
    valid = batch["labels"][:, 1:] != -100
    assert tok.shape == valid.shape and bool((tok[~valid] == 0).all())
    torch.testing.assert_close(tok.sum(1) / valid.sum(1).clamp(min=1), batched, atol=ATOL, rtol=RTOL)


def _assert_no_grad_left(model):
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("pad_side", ["right", "left"])
@pytest.mark.parametrize("which", ["full", "lora"])
def test_per_sample_gradients_match_loop(request, which, pad_side):
    model = request.getfixturevalue(which)
    batch = padded_batch(pad_side=pad_side)
    was_training = model.training
    batched = per_sample_gradients(model, batch)
    loop = per_sample_gradients_loop(model, batch)
    params = trainable_parameters(model)
    assert set(batched) == set(loop) == set(params)
    if which == "lora":
        assert all("lora_" in n for n in params) and len(params) == 8
    for n, p in params.items():
        assert batched[n].shape == (4, *p.shape)
        torch.testing.assert_close(batched[n], loop[n], atol=ATOL, rtol=RTOL, msg=n)
        assert batched[n][:3].abs().sum() > 0, n  # not trivially zero
        assert bool((batched[n][3] == 0).all())  # no label token -> zero gradient
    _assert_no_grad_left(model)
    assert model.training == was_training


def test_tied_embeddings_full():
    model = tiny_llama(tie=True)
    batch = padded_batch()
    batched = per_sample_gradients(model, batch)
    loop = per_sample_gradients_loop(model, batch)
    assert "lm_head.weight" not in batched  # tied: one entry, both uses summed
    for n in batched:
        torch.testing.assert_close(batched[n], loop[n], atol=ATOL, rtol=RTOL, msg=n)


def test_gradients_sum_to_batch_gradient(full):
    """sum_i g_i equals the ordinary gradient of sum_i ℓ_i (a check independent of the loop)."""
    batch = padded_batch()
    batched = per_sample_gradients(full, batch)
    params = trainable_parameters(full)
    loss = per_sample_losses(full, batch, grad=True).sum()
    ref = torch.autograd.grad(loss, list(params.values()))
    for (n, _), r in zip(params.items(), ref, strict=True):
        torch.testing.assert_close(batched[n].sum(0), r, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("which", ["full", "lora"])
def test_streaming_projection_equals_full_projection(request, which):
    model = request.getfixturevalue(which)
    batch = padded_batch()
    proj = Projector(64, seed=0, kind="rademacher", block_size=256)
    ref = proj.project(per_sample_gradients(model, batch))
    # a tiny chunk size forces many chunks per parameter (and chunk boundaries inside blocks)
    for chunk in (50, 1 << 22):
        got = project_per_sample_gradients(model, batch, proj, chunk_size=chunk)
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)
    loop = project_per_sample_gradients_loop(model, batch, proj)
    torch.testing.assert_close(loop, ref, atol=ATOL, rtol=RTOL)
    _assert_no_grad_left(model)


def test_scaling_a_loss_scales_its_gradient_cosine_unchanged(full):
    """LESS invariant: ℓ_0 -> c·ℓ_0 gives g_0 -> c·g_0, so its cosine to any feature is unchanged."""
    batch = padded_batch()
    c = 3.5
    names = list(trainable_parameters(full))
    params = list(trainable_parameters(full).values())
    batched = per_sample_gradients(full, batch)
    one = {k: batch[k][:1, : int(batch["attention_mask"][0].sum())] for k in ("input_ids", "attention_mask", "labels")}
    g_scaled = torch.autograd.grad(c * per_sample_losses(full, one, grad=True)[0], params)
    for n, g in zip(names, g_scaled, strict=True):
        torch.testing.assert_close(g, c * batched[n][0], atol=ATOL, rtol=RTOL)
    proj = Projector(32, seed=0)
    f_plain = proj.project({n: batched[n][:1] for n in names})
    f_scaled = proj.project({n: g.unsqueeze(0) for n, g in zip(names, g_scaled, strict=True)})
    v = torch.randn(1, 32)
    cos = torch.nn.functional.cosine_similarity
    torch.testing.assert_close(cos(f_scaled, v), cos(f_plain, v), atol=ATOL, rtol=RTOL)
    _assert_no_grad_left(full)
