"""NICE (Wang et al., ICML 2025): LESS with on-policy, reward-weighted validation gradients
(ALGORITHMS.md, nice).

Training features are LESS's (:func:`dataflex.selectors.less.training_features`: Adam-preconditioned,
projected, L2-normalised per-sample gradients). The validation feature of a target prompt x is the
REINFORCE estimate of the gradient of its expected NEGATIVE reward,

    g_val(x) = (1/M) · Σ_m r(x, y_m) · ∇θ[−log πθ(y_m | x)],   y_m ~ πθ(· | x) (the current model),

with log πθ summed over the response tokens. It is computed with the per-sample gradient engine:
the (prompt + sampled response) rows, labelled on the response tokens, give the projected
gradients f of their token-mean NLL ℓ; the summed NLL is n·ℓ (n response tokens), so by linearity
of the projection the projected g_val(x) is (1/M)·Σ_m r_m·n_m·f_m (:func:`reinforce_features`).
Rows with r = 0 contribute nothing and are never differentiated. Each g_val(x) is projected with
the same seeded projector as the training features and L2-normalised; a zero one stays zero
(:func:`normalize_features`), so r ≡ 0 gives score 0, never NaN. The score of a pool sample is
:func:`dataflex.selectors.less.less_scores` (max over subtasks of the mean cosine).

The reward is pluggable (:data:`RewardFn`): ``exact_match`` (default) or ``contains`` against the
reference answer (the labelled response of the validation row), or any callable named by import
path, e.g. a reward model.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from dataflex.eval.exact_match import normalize_answer
from dataflex.eval.mcq import pad_batch, pad_id_of
from dataflex.selectors.base import INITIAL, BudgetSelector, resolve_budget, seeded_generator
from dataflex.signals.distributed import broadcast_object, is_main_process
from dataflex.signals.generation import sample_generations
from dataflex.signals.gradients import project_per_sample_gradients
from dataflex.signals.pool import map_pool
from dataflex.signals.text import IGNORE_INDEX, split_row
from dataflex.train.components import UpdateContext

#: ``reward(prompts, responses, references) -> one float per triple``: the three sequences have equal
#: length (one entry per sampled response: its decoded prompt, the decoded response and the decoded
#: reference answer of the prompt's validation row). Called once per selection round with every
#: sample of the round (batch a reward model inside), on rank 0 only (the rewards are broadcast).
#: Values must be finite; any scale works (the cosine removes a common factor), 0 means "no signal".
RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], Sequence[float]]


# -- rewards ---------------------------------------------------------------------------------------
def _words(text: str) -> str:
    """Lower-cased, whitespace collapsed to single spaces, stripped."""
    return " ".join(str(text).lower().split())


def exact_match_reward(prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> list[float]:
    """1.0 where the response equals the reference after the project's exact-match normalisation
    (:func:`dataflex.eval.exact_match.normalize_answer`: first line, trailing periods dropped,
    lower case), else 0.0. An empty reference matches nothing."""
    _check_lengths(prompts, responses, references)
    return [
        float(bool(normalize_answer(ref)) and normalize_answer(resp) == normalize_answer(ref))
        for resp, ref in zip(responses, references)
    ]


def contains_match_reward(prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> list[float]:
    """1.0 where the reference occurs in the response as a whole-word phrase, else 0.0.

    Both are lower-cased with whitespace collapsed; the reference is first normalised as for exact
    match (first line, trailing periods dropped). Whole-word: no letter, digit or underscore right
    before or after the match, so "8" is not found in "18" nor "a" in "an". An empty reference
    matches nothing.
    """
    _check_lengths(prompts, responses, references)
    out = []
    for resp, ref in zip(responses, references):
        needle = _words(normalize_answer(ref))
        found = bool(needle) and re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", _words(resp)) is not None
        out.append(float(found))
    return out


def _check_lengths(prompts, responses, references) -> None:
    if not len(prompts) == len(responses) == len(references):
        raise ValueError(
            f"reward inputs differ in length: {len(prompts)} prompts, {len(responses)} responses, "
            f"{len(references)} references"
        )


#: short names accepted by ``reward`` (anything else is an import path)
REWARDS: dict[str, RewardFn] = {"exact_match": exact_match_reward, "contains": contains_match_reward}


def resolve_reward(reward: str | RewardFn, reward_kwargs: dict[str, Any] | None = None) -> RewardFn:
    """The reward callable that ``reward`` names.

    Args:
        reward: ``exact_match``, ``contains``, an import path (``package.module.name`` or
            ``package.module:name``) or a callable.
        reward_kwargs: when given (non-empty), the named object is a factory (e.g. a reward-model
            class) and ``obj(**reward_kwargs)`` is the reward callable.

    Raises:
        ValueError: a name that is neither a short name nor an importable callable.
    """
    from dataflex.config import ConfigError

    obj: Any = reward
    if isinstance(reward, str):
        if reward in REWARDS:
            obj = REWARDS[reward]
        else:
            module, sep, attr = reward.partition(":") if ":" in reward else reward.rpartition(".")
            if not sep or not module or not attr:
                raise ConfigError(
                    f"reward={reward!r}: use one of {sorted(REWARDS)} or an import path 'package.module.function'"
                )
            try:
                obj = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise ConfigError(f"reward={reward!r} cannot be imported ({err})") from None
    if reward_kwargs:
        obj = obj(**reward_kwargs)
    if not callable(obj):
        raise ConfigError(f"reward={reward!r} is not callable")
    return obj


def compute_rewards(reward: RewardFn, prompts: Sequence[str], responses: Sequence[Sequence[str]], references: Sequence[str]) -> torch.Tensor:
    """``[P, M]`` rewards of ``responses[x][m]`` to ``prompts[x]`` (one batched reward call).

    Raises:
        ValueError: the reward returns the wrong number of values or a non-finite one.
    """
    flat_p = [p for p, group in zip(prompts, responses) for _ in group]
    flat_y = [y for group in responses for y in group]
    flat_r = [ref for ref, group in zip(references, responses) for _ in group]
    values = [float(v) for v in reward(flat_p, flat_y, flat_r)]
    if len(values) != len(flat_y):
        raise ValueError(f"the reward returned {len(values)} values for {len(flat_y)} responses")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("the reward returned a non-finite value")
    m = len(responses[0]) if responses else 0
    return torch.tensor(values, dtype=torch.float64).reshape(len(prompts), m)


# -- pure core -------------------------------------------------------------------------------------
def reinforce_features(features: torch.Tensor, rewards: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
    """The REINFORCE validation feature of each prompt, unnormalised.

    ``g[x] = (1/M) · Σ_m rewards[x, m] · num_tokens[x, m] · features[x, m]``: with ``features`` the
    (projected) gradients of the token-mean NLL of the M sampled responses, ``num_tokens · features``
    is the gradient of their summed NLL −log πθ(y_m | x).

    Args:
        features: ``[P, M, d]`` per-sample gradients of ℓ (rows whose reward is 0 may hold anything
            finite, e.g. zeros: they are multiplied by 0).
        rewards: ``[P, M]`` r(x, y_m).
        num_tokens: ``[P, M]`` response tokens of each sample (the label tokens of its row).

    Returns:
        ``[P, d]`` float32.
    """
    if features.dim() != 3 or tuple(features.shape[:2]) != tuple(rewards.shape) or rewards.shape != num_tokens.shape:
        raise ValueError(
            f"shapes disagree: features {tuple(features.shape)} (want [P, M, d]), rewards {tuple(rewards.shape)}, "
            f"num_tokens {tuple(num_tokens.shape)} (want [P, M])"
        )
    weight = rewards.double() * num_tokens.double()
    # rows with weight 0 never reach the sum (0 * NaN would still be NaN)
    terms = torch.where(weight[..., None] != 0, weight[..., None] * features.double(), torch.zeros((), dtype=torch.float64))
    return (terms.sum(1) / max(1, features.shape[1])).float()


def normalize_features(features: torch.Tensor) -> torch.Tensor:
    """Each row divided by its L2 norm; an all-zero row stays all zero (never NaN)."""
    x = features.double()  # in float64 so a tiny but non-zero row does not underflow to a zero norm
    norms = x.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, x / norms.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x)).to(features.dtype)


def top_k_indices(scores: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The ``k`` highest scores, highest first; ties broken by a random order drawn from ``generator``.

    A seeded tie-break keeps a round without any signal (r ≡ 0: every score 0) from always picking
    the first k pool rows: it then degrades to a seeded random subset, like the warm-up.
    """
    scores = torch.as_tensor(scores).flatten()
    n = scores.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in [1, {n}], got {k}")
    perm = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    order = torch.sort(scores[perm], descending=True, stable=True).indices[:k]
    return perm[order]


# -- model-facing helpers --------------------------------------------------------------------------
def reinforce_row(prompt_ids: Sequence[int], response_ids: Sequence[int]) -> dict[str, list[int]]:
    """A (prompt + response) row labelled on the response tokens only."""
    prompt_ids, response_ids = [int(t) for t in prompt_ids], [int(t) for t in response_ids]
    return {
        "input_ids": prompt_ids + response_ids,
        "attention_mask": [1] * (len(prompt_ids) + len(response_ids)),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
    }


class RowCollator:
    """Right-pads ``input_ids``/``attention_mask``/``labels`` rows (pad id masked, labels -100)."""

    def __init__(self, pad_id: int = 0):
        self.pad_id = int(pad_id)

    def __call__(self, rows: list[dict[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        ids, mask, _ = pad_batch([r["input_ids"] for r in rows], self.pad_id, "right")
        labels = torch.full_like(ids, IGNORE_INDEX)
        for i, r in enumerate(rows):
            labels[i, : len(r["labels"])] = torch.tensor(list(r["labels"]), dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def nice_validation_features(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    responses: Sequence[Sequence[Sequence[int]]],
    rewards: torch.Tensor,
    projector: Any,
    batch_size: int = 16,
    pad_id: int = 0,
) -> torch.Tensor:
    """Projected, L2-normalised REINFORCE validation features ``[P, d]``.

    Args:
        model: the current model (its trainable parameters are the gradient's coordinates).
        prompt_ids: ``P`` template-encoded prompts.
        responses: ``responses[x][m]``: the token ids of the m-th sampled response to prompt x (as
            the model emitted them, stop token included).
        rewards: ``[P, M]`` r(x, y_m).
        projector: the seeded projector of the training features.
        batch_size: rows per batched forward/backward.
        pad_id: padding id of the batches (always masked).

    Returns:
        ``[P, projector.dim]`` float32 on CPU; a prompt whose rewards are all 0 gets a zero row.
    """
    p = len(prompt_ids)
    m = len(responses[0]) if p else 0
    if any(len(group) != m for group in responses) or tuple(rewards.shape) != (p, m):
        raise ValueError(f"every prompt needs the same number of responses; rewards must be [{p}, {m}]")
    rows = [reinforce_row(x, y) for x, group in zip(prompt_ids, responses) for y in group]
    num_tokens = torch.tensor([[len(y) for y in group] for group in responses], dtype=torch.float64).reshape(p, m)
    weight = rewards.reshape(-1).double() * num_tokens.reshape(-1)
    features = torch.zeros(p * m, projector.dim, dtype=torch.float32)
    needed = torch.nonzero(weight != 0).flatten()
    if needed.numel():
        fn = partial(project_per_sample_gradients, projector=projector)
        features[needed] = map_pool(fn, model, rows, RowCollator(pad_id), indices=needed, batch_size=batch_size, desc="NICE validation gradients")
    g = reinforce_features(features.reshape(p, m, -1), rewards, num_tokens)
    return normalize_features(g)
