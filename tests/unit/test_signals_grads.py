"""Batched per-sample losses/gradients vs the batch-size-1 loop (fp32, 1e-5), LoRA and full."""

from __future__ import annotations

import copy

import pytest
import torch

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


def _tiny_llama(tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg).float()
    # Non-trivial norm weights, so their gradients test the per-sample formula properly.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _lora(model):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:  # B = 0 at init would make every gradient of A zero
                p.normal_(0, 0.1)
    return lora.eval()


def _batch(lengths=(11, 7, 16, 4), prompt=(3, 2, 5, 4), pad_side="right", seed=0):
    """Padded batch; labels -100 on each prompt (the last sample is all prompt: no label token)."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    b = len(lengths)
    ids = torch.zeros(b, t, dtype=torch.long)
    mask = torch.zeros(b, t, dtype=torch.long)
    labels = torch.full((b, t), -100, dtype=torch.long)
    for i, (n, p) in enumerate(zip(lengths, prompt, strict=True)):
        seq = torch.randint(1, 96, (n,), generator=g)
        sl = slice(0, n) if pad_side == "right" else slice(t - n, t)
        ids[i, sl] = seq
        mask[i, sl] = 1
        lab = seq.clone()
        lab[:p] = -100
        labels[i, sl] = lab
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "sample_index": torch.arange(b),
        "domain_id": torch.zeros(b),
    }


@pytest.fixture(scope="module")
def full():
    return _tiny_llama()


@pytest.fixture(scope="module")
def lora(full):
    return _lora(full)


def _singles(model, batch):
    out = []
    for i in range(batch["input_ids"].shape[0]):
        keep = batch["attention_mask"][i].bool()
        one = {
            k: batch[k][i][keep][None]
            for k in ("input_ids", "attention_mask", "labels")
        }
        out.append(per_sample_losses(model, one)[0])
    return torch.stack(out)


@pytest.mark.parametrize("pad_side", ["right", "left"])
@pytest.mark.parametrize("which", ["full", "lora"])
def test_losses_match_single_runs(request, which, pad_side):
    model = request.getfixturevalue(which)
    batch = _batch(pad_side=pad_side)
    batched = per_sample_losses(model, batch)
    assert batched.shape == (4,) and not batched.requires_grad
    torch.testing.assert_close(batched, _singles(model, batch), atol=ATOL, rtol=RTOL)
    assert batched[3].item() == 0.0  # no label token -> 0.0, not NaN
    # per_token_losses aligns with labels[:, 1:] and averages to per_sample_losses
    tok = per_token_losses(model, batch)
    valid = batch["labels"][:, 1:] != -100
    assert tok.shape == valid.shape and bool((tok[~valid] == 0).all())
    torch.testing.assert_close(
        tok.sum(1) / valid.sum(1).clamp(min=1), batched, atol=ATOL, rtol=RTOL
    )


def _assert_no_grad_left(model):
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("pad_side", ["right", "left"])
@pytest.mark.parametrize("which", ["full", "lora"])
def test_per_sample_gradients_match_loop(request, which, pad_side):
    model = request.getfixturevalue(which)
    batch = _batch(pad_side=pad_side)
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
    model = _tiny_llama(tie=True)
    batch = _batch()
    batched = per_sample_gradients(model, batch)
    loop = per_sample_gradients_loop(model, batch)
    assert "lm_head.weight" not in batched  # tied: one entry, both uses summed
    for n in batched:
        torch.testing.assert_close(batched[n], loop[n], atol=ATOL, rtol=RTOL, msg=n)


def test_gradients_sum_to_batch_gradient(full):
    """sum_i g_i equals the ordinary gradient of sum_i ℓ_i (a check independent of the loop)."""
    batch = _batch()
    batched = per_sample_gradients(full, batch)
    params = trainable_parameters(full)
    loss = per_sample_losses(full, batch, grad=True).sum()
    ref = torch.autograd.grad(loss, list(params.values()))
    for (n, _), r in zip(params.items(), ref, strict=True):
        torch.testing.assert_close(batched[n].sum(0), r, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("which", ["full", "lora"])
def test_streaming_projection_equals_full_projection(request, which):
    model = request.getfixturevalue(which)
    batch = _batch()
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
    batch = _batch()
    c = 3.5
    names = list(trainable_parameters(full))
    params = list(trainable_parameters(full).values())
    batched = per_sample_gradients(full, batch)
    one = {
        k: batch[k][:1, : int(batch["attention_mask"][0].sum())]
        for k in ("input_ids", "attention_mask", "labels")
    }
    g_scaled = torch.autograd.grad(
        c * per_sample_losses(full, one, grad=True)[0], params
    )
    for n, g in zip(names, g_scaled, strict=True):
        torch.testing.assert_close(g, c * batched[n][0], atol=ATOL, rtol=RTOL)
    proj = Projector(32, seed=0)
    f_plain = proj.project({n: batched[n][:1] for n in names})
    f_scaled = proj.project(
        {n: g.unsqueeze(0) for n, g in zip(names, g_scaled, strict=True)}
    )
    v = torch.randn(1, 32)
    cos = torch.nn.functional.cosine_similarity
    torch.testing.assert_close(cos(f_scaled, v), cos(f_plain, v), atol=ATOL, rtol=RTOL)
    _assert_no_grad_left(full)
