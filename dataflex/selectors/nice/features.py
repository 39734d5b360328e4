"""NICE's validation features: REINFORCE gradients of sampled, rewarded responses (the pure core
:func:`reinforce_features` and the pass :func:`nice_validation_features`)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from dataflex.signals.batching import pad_batch
from dataflex.signals.features import (
    normalize_features,
)
from dataflex.signals.gradients import project_per_sample_gradients
from dataflex.signals.pool import map_pool
from dataflex.signals.text import IGNORE_INDEX


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
