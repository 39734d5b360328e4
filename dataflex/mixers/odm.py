"""Online Data Mixing (Albalak et al. 2023): EXP3 over domains, the pure cores.

Only the cores live here for now: the stateful ODM mixer needs the per-domain losses of every
training batch, which the training loop does not expose yet.

Definitions (docs/ALGORITHMS.md, "odm"):

- ε_t = min{1/K, sqrt(ln K / (K·t))} for t >= 1, ε_0 := 1/K;
- π_t(i) = (1 − K·ε_t)·softmax(ε_{t−1}·R̂)_i + ε_t;
- for every domain i present in the batch, R̂_i ← α·R̂_i + (1 − α)·L_i / π_t(i).
"""

from __future__ import annotations

import math

import torch

REWARDS = ("importance", "exp_loss")


def exp3_epsilon(step: int, num_domains: int) -> float:
    """ε_t = min{1/K, sqrt(ln K / (K·t))} for t >= 1, and ε_0 := 1/K (non-increasing in t)."""
    if num_domains < 1:
        raise ValueError(f"num_domains must be >= 1, got {num_domains}")
    if step <= 0:
        return 1.0 / num_domains
    return min(
        1.0 / num_domains, math.sqrt(math.log(num_domains) / (num_domains * step))
    )


def exp3_probabilities(rewards: torch.Tensor, step: int) -> torch.Tensor:
    """EXP3 sampling probabilities π_t from the smoothed rewards R̂.

    π_t(i) = (1 − K·ε_t)·softmax(ε_{t−1}·R̂)_i + ε_t, so π is on the simplex with π_i >= ε_t.

    Args:
        rewards: R̂, shape [K].
        step: t >= 1 (the step the probabilities are for).

    Returns:
        π_t, shape [K], in the rewards' floating dtype (computed in float64).
    """
    if step < 1:
        raise ValueError(
            f"step must be >= 1 (ε_0 is only used as ε_{{t-1}} at t = 1), got {step}"
        )
    rewards = torch.as_tensor(rewards)
    r = rewards.to(torch.float64).flatten()
    k = r.numel()
    eps_t, eps_prev = exp3_epsilon(step, k), exp3_epsilon(step - 1, k)
    pi = (1.0 - k * eps_t) * torch.softmax(eps_prev * r, dim=0) + eps_t
    return pi.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def odm_update_rewards(
    rewards: torch.Tensor,
    domain_losses: torch.Tensor,
    probabilities: torch.Tensor,
    present: torch.Tensor,
    alpha: float = 0.9,
    reward: str = "importance",
) -> torch.Tensor:
    """Smoothed importance-weighted reward update after one step.

    For every present domain i: R̂_i ← α·R̂_i + (1 − α)·r_i / π_t(i), with r_i = L_i
    (``reward="importance"``, the paper's definition, default) or r_i = exp(L_i)
    (``reward="exp_loss"``, the reference code's form: the batch perplexity of the domain). Absent
    domains keep their reward (their loss entry is ignored and may be anything, NaN included).

    Args:
        rewards: R̂, shape [K].
        domain_losses: L, the mean loss of each domain in the batch, shape [K].
        probabilities: π_t used to draw the batch, shape [K] (all present entries > 0).
        present: boolean [K], True for domains with at least one sample in the batch.
        alpha: smoothing α in [0, 1].
        reward: ``"importance"`` or ``"exp_loss"``.

    Returns:
        The new R̂, shape [K], in the rewards' floating dtype.
    """
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    rewards = torch.as_tensor(rewards)
    r = rewards.to(torch.float64).flatten()
    losses = torch.as_tensor(domain_losses, dtype=torch.float64).flatten()
    pi = torch.as_tensor(probabilities, dtype=torch.float64).flatten()
    present = torch.as_tensor(present, dtype=torch.bool).flatten()
    if not (r.numel() == losses.numel() == pi.numel() == present.numel()):
        raise ValueError(
            "rewards, domain_losses, probabilities and present must all have K entries"
        )
    if (pi[present] <= 0).any():
        raise ValueError(
            "a present domain has probability <= 0 (it could not have been drawn)"
        )
    observed = losses.exp() if reward == "exp_loss" else losses
    # torch.where, not arithmetic masking: an absent domain's NaN/inf loss must not leak in.
    updated = torch.where(
        present, alpha * r + (1.0 - alpha) * observed / torch.where(present, pi, 1.0), r
    )
    return updated.to(rewards.dtype if rewards.is_floating_point() else torch.float32)
