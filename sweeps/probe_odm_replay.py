"""Replays ODM's pinned update on a run's own logged per-domain training losses and compares the result with
the proportions the run logged (docs/results.md, "Mixture with planted domains"): a re-check that
`mixer=odm` computes docs/ALGORITHMS.md's EXP3 on real signals, and a view of why its proportions move
as little as they do (the rewards R̂ and the exponent ε_t·R̂ at the last step).

    python sweeps/probe_odm_replay.py [--root outputs/paper_small/planted] [--arm odm] [--seeds 1,2]

The replay takes the draw-time proportions to be those logged one step earlier (the loader prefetches),
so it matches the run to about 1e-3, not exactly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dataflex.mixers.odm import exp3_epsilon, exp3_probabilities, odm_update_rewards

PROPORTION, DOMAIN_LOSS = "mixer/proportion/", "train/domain_loss/"


def logged_series(path: Path) -> tuple[dict[int, dict[str, float]], dict[int, dict[str, float]]]:
    """The proportions and the per-domain training losses a run logged, by global step."""
    proportions: dict[int, dict[str, float]] = {}
    losses: dict[int, dict[str, float]] = {}
    for line in path.open():
        row = json.loads(line)
        for key, value in row.items():
            for prefix, into in ((PROPORTION, proportions), (DOMAIN_LOSS, losses)):
                if key.startswith(prefix):
                    into.setdefault(row["step"], {})[key[len(prefix) :]] = value
    return proportions, losses


def replay(proportions: dict, losses: dict, alpha: float = 0.9) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Runs the importance-reward update over the logged losses.

    Returns:
        (R̂ after the last step, π after the last step, max |π_replay − π_logged| over the logged steps,
        the last step).
    """
    names = list(proportions[0])
    k = len(names)
    rewards = torch.zeros(k, dtype=torch.float64)
    pi = torch.full((k,), 1.0 / k, dtype=torch.float64)
    worst, last = 0.0, 0
    for step in sorted(losses):
        loss = torch.tensor([losses[step].get(n, float("nan")) for n in names], dtype=torch.float64)
        drawn = (
            torch.tensor([proportions[step - 1][n] for n in names], dtype=torch.float64)
            if step - 1 in proportions
            else pi
        )
        rewards = odm_update_rewards(rewards, loss, drawn, ~loss.isnan(), alpha=alpha)
        pi = exp3_probabilities(rewards, step)
        if step in proportions:
            logged = torch.tensor([proportions[step][n] for n in names], dtype=torch.float64)
            worst = max(worst, (pi - logged).abs().max().item())
        last = step
    return rewards, pi, worst, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="outputs/paper_small/planted")
    parser.add_argument("--arm", default="odm")
    parser.add_argument("--seeds", default="1,2")
    args = parser.parse_args()
    print(
        "| seed | max abs(π_replay − π_logged) | last step | ε_t | R̂ (min / noise / max) | ε_t·R̂ spread | π noise | π repeat |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for seed in args.seeds.split(","):
        path = Path(args.root) / f"experiment=paper_small_planted_{args.arm}" / f"seed={seed}" / "metrics.jsonl"
        if not path.exists():
            raise SystemExit(f"{path} does not exist: run sweeps/paper_small_planted.sh --arms {args.arm} seed={seed}")
        proportions, losses = logged_series(path)
        names = [n.split("_")[-1] for n in proportions[0]]
        rewards, pi, worst, last = replay(proportions, losses)
        eps = exp3_epsilon(last, len(names))
        share = dict(zip(names, pi.tolist()))
        noise_r = rewards[names.index("noise")].item()
        print(
            f"| {seed} | {worst:.4f} | {last} | {eps:.4f} | {rewards.min():.1f} / {noise_r:.1f} / {rewards.max():.1f} "
            f"| {eps * (rewards.max() - rewards.min()):.2f} | {share['noise']:.3f} | {share['repeat']:.3f} |"
        )


if __name__ == "__main__":
    main()
