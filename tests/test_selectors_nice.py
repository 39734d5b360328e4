"""NICE selector: rewards by hand, the REINFORCE validation feature against an independent autograd
computation, the ALGORITHMS.md invariants (r ≡ 1 on the reference = LESS-SGD with a summed loss;
r ≡ 0 gives score 0, never NaN), seeded on-policy sampling, and one end-to-end run on the tiny model."""

from __future__ import annotations

import math

import pytest
import test_eval
import torch

from dataflex.config import ConfigError
from dataflex.selectors import nice as N
from dataflex.signals.generation import sample_generations
from dataflex.signals.gradients import trainable_parameters
from dataflex.signals.losses import IGNORE_INDEX
from dataflex.signals.projection import Projector

# The eval tests' module fixtures: a tiny random Llama, a BPE tokenizer trained in-process, the default template.
tokenizer, template, model = test_eval.tokenizer, test_eval.template, test_eval.model


# -- rewards ---------------------------------------------------------------------------------------
def reward(fn, response, reference):
    return fn(["q"], [response], [reference])[0]


@pytest.mark.parametrize(
    "response, reference, exact, contains",
    [
        ("85", "85", 1.0, 1.0),
        (" 85.\nbecause 80 + 5", "85", 1.0, 1.0),  # first line, trailing period dropped
        ("B", "b", 1.0, 1.0),  # case
        ("The answer is 85.", "85", 0.0, 1.0),
        ("185", "85", 0.0, 0.0),  # whole words only
        ("an apple", "a", 0.0, 0.0),
        ("(A) the cat", "A", 0.0, 1.0),
        ("I like New   York a lot", "new york", 0.0, 1.0),  # whitespace collapsed
        ("New\nYork", "New York", 0.0, 1.0),  # contains reads the whole response
        ("", "85", 0.0, 0.0),
        ("anything", "", 0.0, 0.0),  # an empty reference matches nothing
        ("", "", 0.0, 0.0),
    ],
)
def test_rewards_by_hand(response, reference, exact, contains):
    assert reward(N.exact_match_reward, response, reference) == exact
    assert reward(N.contains_match_reward, response, reference) == contains


def test_reward_inputs_must_align():
    with pytest.raises(ValueError, match="length"):
        N.exact_match_reward(["q", "q"], ["a"], ["a"])


def constant_reward(value):
    """A reward factory (the reward-model path: ``reward_kwargs`` build the callable)."""
    return lambda prompts, responses, references: [value] * len(responses)


def always_one(prompts, responses, references):
    return [1.0] * len(responses)


def test_resolve_reward_by_name_path_and_factory():
    assert N.resolve_reward("exact_match") is N.exact_match_reward
    assert N.resolve_reward("contains") is N.contains_match_reward
    assert N.resolve_reward("dataflex.selectors.nice.contains_match_reward") is N.contains_match_reward
    assert N.resolve_reward("dataflex.selectors.nice:exact_match_reward") is N.exact_match_reward
    assert N.resolve_reward(always_one) is always_one
    built = N.resolve_reward("test_selectors_nice.constant_reward", {"value": 0.5})
    assert built(["p"] * 3, ["y"] * 3, ["r"] * 3) == [0.5, 0.5, 0.5]
    for bad in ("nope", "dataflex.selectors.nice.missing", "no_such_module.fn", "dataflex.selectors.nice.INITIAL"):
        with pytest.raises(ConfigError, match="reward"):
            N.resolve_reward(bad)


def test_compute_rewards_shape_and_checks():
    r = N.compute_rewards(N.exact_match_reward, ["p1", "p2"], [["7", "8"], ["x", "Paris."]], ["7", "paris"])
    assert r.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match="values"):
        N.compute_rewards(lambda p, y, r: [1.0], ["p"], [["a", "b"]], ["a"])
    with pytest.raises(ValueError, match="non-finite"):
        N.compute_rewards(lambda p, y, r: [math.nan] * len(y), ["p"], [["a"]], ["a"])


# -- pure core -------------------------------------------------------------------------------------
def test_reinforce_features_by_hand():
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[3.0, 4.0], [math.nan, math.nan]]])
    r = torch.tensor([[1.0, 0.5], [2.0, 0.0]])
    n = torch.tensor([[2.0, 4.0], [1.0, 5.0]])
    g = N.reinforce_features(f, r, n)
    # prompt 0: (2·1·[1,0] + 0.5·4·[0,1]) / 2 = [1, 1]; prompt 1: (2·1·[3,4] + 0) / 2 = [3, 4] (NaN row ignored)
    assert torch.allclose(g, torch.tensor([[1.0, 1.0], [3.0, 4.0]]))
    assert torch.allclose(N.normalize_features(g), torch.tensor([[2**-0.5, 2**-0.5], [0.6, 0.8]]))
    with pytest.raises(ValueError, match="shapes"):
        N.reinforce_features(f[0], r, n)


def test_zero_feature_normalises_to_zero_not_nan():
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 4.0], [1e-30, 0.0, 0.0]])
    y = N.normalize_features(x)
    assert torch.equal(y[0], torch.zeros(3)) and torch.allclose(y[1], torch.tensor([0.0, 0.6, 0.8]))
    assert torch.allclose(y[2], torch.tensor([1.0, 0.0, 0.0])) and torch.isfinite(y).all()
    assert torch.equal(N.reinforce_features(torch.randn(2, 3, 4), torch.zeros(2, 3), torch.ones(2, 3)), torch.zeros(2, 4))


def test_top_k_highest_first_ties_seeded():
    assert N.top_k_indices(torch.tensor([0.1, 0.9, -0.3, 0.5]), 2).tolist() == [1, 3]
    g = lambda s: torch.Generator().manual_seed(s)
    assert N.top_k_indices(torch.tensor([0.1, 0.9, -0.3, 0.5]), 3, g(0)).tolist() == [1, 3, 0]
    flat = torch.zeros(50)
    a, b = N.top_k_indices(flat, 10, g(1)), N.top_k_indices(flat, 10, g(1))
    assert torch.equal(a, b) and a.unique().numel() == 10
    assert not torch.equal(a, N.top_k_indices(flat, 10, g(2)))
    assert a.tolist() != list(range(10))  # no signal does not mean "the first k rows"
    with pytest.raises(ValueError):
        N.top_k_indices(flat, 51)


# -- the validation feature on a real model --------------------------------------------------------
def encode(tokenizer, template, question, answer):
    """Prompt ids and the labelled response ids of a (question, answer) turn, as LLaMA-Factory tokenises it."""
    msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    prompt, response = template.encode_oneturn(tokenizer, msgs)
    return list(prompt), list(response)


QA = [("What is 3 + 4?", "7."), ("Name the capital of paris", "rome"), ("the cat sat on the", "mat under the table")]


def projected_summed_nll_gradient(model, prompt_ids, responses, weights, projector):
    """Independent reference: autograd of Σ_m w_m · (summed NLL of y_m) / M, flattened and projected."""
    params = trainable_parameters(model)
    total = 0.0
    for y, w in zip(responses, weights):
        ids = torch.tensor([prompt_ids + y])
        out = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
        total = total + w * torch.nn.functional.cross_entropy(out, torch.tensor(y), reduction="sum")
    grads = torch.autograd.grad(total / len(responses), list(params.values()))
    return projector.project({n: g.unsqueeze(0) for n, g in zip(params, grads)})[0]


def test_validation_feature_equals_reward_weighted_summed_nll_gradient(model, tokenizer, template):
    projector = Projector(64, seed=3, block_size=512)
    encoded = [encode(tokenizer, template, q, a) for q, a in QA]
    prompts = [p for p, _ in encoded]
    # M = 2 responses per prompt of different lengths; rewards with a zero, a negative and a fraction
    responses = [[resp, resp[: max(1, len(resp) // 2)]] for _, resp in encoded]
    rewards = torch.tensor([[1.0, 0.0], [0.5, 2.0], [-1.0, 1.0]])
    feats = N.nice_validation_features(model, prompts, responses, rewards, projector, batch_size=4, pad_id=tokenizer.pad_token_id)
    assert feats.shape == (3, 64)
    for x in range(3):
        ref = projected_summed_nll_gradient(model, prompts[x], responses[x], rewards[x].tolist(), projector)
        assert torch.allclose(feats[x], ref / ref.norm(), atol=1e-5)
        assert feats[x].norm() == pytest.approx(1.0, abs=1e-5)
    assert not any(p.grad is not None for p in model.parameters())


def test_zero_rewards_give_zero_features_without_any_backward(model, tokenizer, template, monkeypatch):
    projector = Projector(32, seed=0, block_size=512)
    p, y = encode(tokenizer, template, *QA[0])
    monkeypatch.setattr(N, "project_per_sample_gradients", lambda *a, **k: pytest.fail("differentiated a zero-reward row"))
    feats = N.nice_validation_features(model, [p, p], [[y, y], [y, y]], torch.zeros(2, 2), projector)
    assert torch.equal(feats, torch.zeros(2, 32))


def test_reinforce_row_labels_only_the_response():
    row = N.reinforce_row([5, 6, 7], [8, 9])
    assert row == {"input_ids": [5, 6, 7, 8, 9], "attention_mask": [1] * 5, "labels": [IGNORE_INDEX] * 3 + [8, 9]}
    batch = N.RowCollator(pad_id=0)([row, N.reinforce_row([1], [2])])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [1, 2, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100] * 3 + [8, 9], [-100, 2, -100, -100, -100]]


# -- sampling --------------------------------------------------------------------------------------
def test_sampling_from_prompt_ids_equals_sampling_from_text(model, tokenizer, template):
    kw = {"num_samples": 2, "temperature": 1.0, "max_new_tokens": 5, "seed": 4}
    text = sample_generations(model, tokenizer, template, [q for q, _ in QA], **kw)
    ids = sample_generations(model, tokenizer, template, [encode(tokenizer, template, q, "")[0] for q, _ in QA], **kw)
    assert [[r.response_ids for r in g] for g in text] == [[r.response_ids for r in g] for g in ids]
