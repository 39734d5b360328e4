"""NICE (Wang et al., ICML 2025): LESS with on-policy, reward-weighted validation gradients
(ALGORITHMS.md, nice).

Training features are LESS's (:func:`dataflex.signals.features.training_features`: Adam-preconditioned,
projected, L2-normalised per-sample gradients). The validation feature of a target prompt x is the
REINFORCE estimate of the gradient of its expected NEGATIVE reward,

    g_val(x) = (1/M) · Σ_m r(x, y_m) · ∇θ[−log πθ(y_m | x)],   y_m ~ πθ(· | x) (the current model),

with log πθ summed over the response tokens. It is computed with the per-sample gradient engine:
the (prompt + sampled response) rows, labelled on the response tokens, give the projected
gradients f of their token-mean NLL ℓ; the summed NLL is n·ℓ (n response tokens), so by linearity
of the projection the projected g_val(x) is (1/M)·Σ_m r_m·n_m·f_m (:func:`reinforce_features`).
Rows with r = 0 contribute nothing and are never differentiated. Each g_val(x) is projected with
the same seeded projector as the training features and L2-normalised; a zero one stays zero
(:func:`~dataflex.signals.features.normalize_features`), so r ≡ 0 gives score 0, never NaN. The
score of a pool sample is LESS's (max over subtasks of the mean cosine, against
:func:`~dataflex.signals.features.subtask_centroids`).

The reward is pluggable (:data:`RewardFn`): ``exact_match`` (default) or ``contains`` against the
reference answer (the labelled response of the validation row), or any callable named by import
path, e.g. a reward model.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from dataflex.errors import ConfigError
from dataflex.selectors.base import (
    COUNT_OR_FRACTION,
    PoolLossSelector,
    budget_problem,
    resolve_budget,
    seeded_generator,
)
from dataflex.selectors.nice_rewards import (  # noqa: F401  (re-exported: the rewards' historical home)
    REWARDS,
    RewardFn,
    compute_rewards,
    contains_match_reward,
    exact_match_reward,
    resolve_reward,
)
from dataflex.signals.batching import pad_batch, pad_id_of
from dataflex.signals.distributed import (
    broadcast_object,
    is_main_process,
    main_process_result,
)
from dataflex.signals.features import (
    normalize_features,
    subtask_centroids,
    top_k_indices,
    training_features,
)
from dataflex.signals.generation import sample_generations
from dataflex.signals.gradients import project_per_sample_gradients
from dataflex.signals.pool import map_pool
from dataflex.signals.text import IGNORE_INDEX, prompt_response_texts, split_row
from dataflex.train.components import UpdateContext
from dataflex.train.fields import param


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


# -- the component ---------------------------------------------------------------------------------
class _EosStop:
    """Stand-in template when the run has none (``ctx.template`` is None, the pt stage): stop at EOS only."""

    def get_stop_token_ids(self, tokenizer) -> list[int]:
        return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


#: what ``top_k`` takes (the sampling's top-k filter)
TOP_K = "an int >= 0 (0: off; the reference code uses 50)"


class NiceSelector(PoolLossSelector):
    """NICE, online: every update, sample responses to target prompts from the CURRENT model, reward
    them, turn the rewards into REINFORCE validation gradients, and keep the ``budget`` pool samples
    whose LESS training features (Adam-preconditioned by default) point where those gradients point.

    One round (ALGORITHMS.md, nice):

    1. prompts: the unlabelled prefix of (a seeded subset, ``val_prompts``, of) the validation rows
       (``data.validation``; their ``domain_id`` is the subtask), the labelled part decoded is the
       reference answer;
    2. ``num_samples`` responses per prompt from the current model (temperature sampling, seeded by
       ``(seed, update_index)``; every rank samples, rank 0's samples are used everywhere);
    3. rewards ``r(x, y_m)`` from the pluggable ``reward`` (rank 0, broadcast);
    4. validation features g_val(x) (:func:`nice_validation_features`), projected and L2-normalised;
    5. training features of (a seeded subset, ``candidates``, of) the pool from
       :func:`dataflex.signals.features.training_features` with the same projector;
    6. score = max over subtasks of the mean cosine (LESS's score), top k
       with a seeded tie-break: a round in which every reward is 0 scores every sample 0 and so picks a
       seeded random subset (the training pass is then skipped).

    Sampling defaults (M = 4, temperature 0.7, 128 new tokens, no top-k/top-p) are THIS PROJECT's cheap
    choice, not the paper's; ``selector=nice_reference`` uses the reference code's (JTWang2000/NICE:
    M = 20, temperature 1.0, top_k 50, top_p 0.95). The paper's offline recipe (features from the
    warm-up checkpoints, learning-rate weighted, as ``selector=less_offline``) is not implemented: this
    selector is the online variant (one checkpoint: the current model).

    The warm-up decision is a seeded random subset of ``budget`` samples. Everything random is seeded
    by ``(seed, update_index)`` and the model/optimizer are restored on resume, so a resumed run selects
    what the uninterrupted run selects; the checkpoint holds the latest round's candidates, scores
    and rewards (every round's indices are saved under ``selections/``).

    Args:
        budget: samples per round: an int count or a float fraction of the pool in (0, 1].
        warmup_steps, update_every, num_updates: the schedule (see the YAML).
        seed: seeds the warm-up subset, the candidate and validation subsets, the sampling, the
            tie-break and the projection.
        candidates: score only a seeded random subset of the pool per round (count or fraction; None: all).
        batch_size: rows per batched forward/backward of the gradient passes.
        num_samples: M, responses sampled per validation prompt.
        temperature: sampling temperature (> 0).
        max_new_tokens: generation budget per response.
        top_p: nucleus threshold of the sampling (1.0: plain temperature sampling).
        top_k: keep only the k likeliest tokens at each sampling step (0: off).
        generation_batch_size: prompts per ``generate`` call (part of the seeded result).
        val_prompts: validation prompts per round: None (all), an int count or a float fraction; a
            seeded random subset per round when smaller than the set.
        reward: ``exact_match`` (default), ``contains``, or an import path ``package.module:name``
            (see :func:`resolve_reward`, :data:`RewardFn`).
        reward_kwargs: when not None, ``reward`` names a factory (e.g. a reward-model class) and
            ``factory(**reward_kwargs)`` is the reward callable (built once, when the selector is built).
        proj_dim: d, the projected feature dimension.
        proj_kind: the random projection (``rademacher``, ``gaussian``, ``sparse``), seeded by ``seed``.
        gradient_type: ``adam`` (LESS's Γ, default) or ``sgd`` for the training features.
    """

    #: the original DataFlex's params with no counterpart here, and why (used by dataflex-cli)
    legacy_unused = {"save_interval": "nothing is cached between rounds"}

    needs_validation = True

    acts_through_updates = True

    #: generator streams of a round (0: the tie-break, 1: the candidate subset)
    VALIDATION_STREAM = 2
    SAMPLING_STREAM = 3

    num_samples: int = param(4, ge=1)
    temperature: float = param(0.7, gt=0)
    max_new_tokens: int = param(128, ge=1)
    top_p: float = param(1.0, gt=0, le=1)
    generation_batch_size: int = param(8, ge=1)
    val_prompts: int | float | None = param(None, check=budget_problem, expects=f"{COUNT_OR_FRACTION}, or null")
    reward: str | RewardFn = "exact_match"
    reward_kwargs: dict[str, Any] | None = None
    proj_dim: int = 8192
    proj_kind: str = "rademacher"
    gradient_type: str = param("adam", choices=("adam", "sgd"))
    # -- fidelity options (docs/ALGORITHMS.md "nice") --
    top_k: int = param(0, expects=TOP_K, check=lambda k: None if k >= 0 else f"must be {TOP_K}")

    def __post_init__(self) -> None:
        from dataflex.signals.projection import Projector

        super().__post_init__()
        reward = self.reward
        self.reward_name = reward if isinstance(reward, str) else getattr(reward, "__qualname__", repr(reward))
        self.reward_fn = resolve_reward(self.reward, self.reward_kwargs)  # fails now, before any model loads
        self.projector = Projector(self.proj_dim, seed=self.seed, kind=self.proj_kind)  # validates dim and kind
        # the latest round only (a full history would grow the checkpoint every round)
        self.last_scores: dict[str, Any] | None = None

    # -- one round, step by step (each usable on its own) ----------------------------------------------
    def validation_indices(self, ctx: UpdateContext, size: int) -> torch.Tensor:
        """The validation rows whose prompts are sampled this round (sorted; all when ``val_prompts`` is None)."""
        if self.val_prompts is None:
            return torch.arange(size)
        m = resolve_budget(self.val_prompts, size, "val_prompts")
        g = seeded_generator(self.seed, ctx.update_index, self.VALIDATION_STREAM)
        return torch.randperm(size, generator=g)[:m].sort().values

    def sampling_seed(self, ctx: UpdateContext) -> int:
        return int(seeded_generator(self.seed, ctx.update_index, self.SAMPLING_STREAM).initial_seed())

    def sample(self, ctx: UpdateContext, prompt_ids: Sequence[Sequence[int]]) -> list[list[Any]]:
        """``num_samples`` on-policy responses per prompt (``SampledResponse``), identical on every rank.

        Every rank calls ``generate`` (a sharded model needs all of them), rank 0's result is kept.
        """
        template = ctx.template if ctx.template is not None else _EosStop()
        groups = sample_generations(
            ctx.model,
            ctx.tokenizer,
            template,
            prompt_ids,
            num_samples=self.num_samples,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            seed=self.sampling_seed(ctx),
            batch_size=self.generation_batch_size,
            top_p=self.top_p,
            top_k=self.top_k,
            progress=is_main_process(),
        )
        return broadcast_object(groups)

    def rewards(self, prompts: Sequence[str], responses: Sequence[Sequence[str]], references: Sequence[str]) -> torch.Tensor:
        """``[P, M]`` rewards, computed on rank 0 and broadcast (an error there is raised on every rank)."""
        def compute() -> torch.Tensor:
            try:
                return compute_rewards(self.reward_fn, prompts, responses, references)
            except Exception as err:  # noqa: BLE001 - a user's reward: name it, whatever it raised
                raise ConfigError(f"reward={self.reward_name}: {err}") from err

        return main_process_result(compute)

    def select(self, ctx: UpdateContext) -> torch.Tensor:
        validation = ctx.require_validation("nice")
        tokenizer = ctx.tokenizer
        val_idx = self.validation_indices(ctx, len(validation))
        rows = validation.select(val_idx.tolist())
        prompt_ids = [split_row(r["input_ids"], r.get("labels"))[0] for r in rows]
        prompts, references = prompt_response_texts(rows, tokenizer)
        groups = self.sample(ctx, prompt_ids)
        responses = [[s.response_ids for s in group] for group in groups]
        rewards = self.rewards(prompts, [[s.text for s in group] for group in groups], references)

        val_features = nice_validation_features(
            ctx.model, prompt_ids, responses, rewards, self.projector, self.batch_size, pad_id_of(tokenizer)
        )
        subtasks = torch.as_tensor(rows["domain_id"], dtype=torch.long) if "domain_id" in rows.column_names else None
        centroids = subtask_centroids(val_features, subtasks)  # [J, d]
        candidates = self.candidate_indices(ctx)
        if centroids.abs().sum() == 0:  # no reward anywhere: every cosine is 0, no pass needed
            scores = torch.zeros(candidates.numel(), dtype=torch.float64)
        else:
            sims = training_features(
                ctx.model, ctx.pool, ctx.collator, candidates, self.projector, self.gradient_type, self.batch_size,
                optimizer=ctx.optimizer, reduce=lambda f: f.double() @ centroids.to(f.device).T,
                desc="NICE training features",
            )
            scores = sims.double().reshape(candidates.numel(), -1).max(dim=-1).values
        local = top_k_indices(scores, self.k(ctx), seeded_generator(self.seed, ctx.update_index))
        self.last_scores = {
            "update_index": ctx.update_index,
            "candidates": candidates,
            "scores": scores.float(),
            "validation_indices": val_idx,
            "rewards": rewards.float(),
        }
        return self.record(ctx, candidates[local])

    def decision_stats(self) -> dict[str, float]:
        """The round's on-policy rewards: their mean over all samples and the fraction of prompts
        with a non-zero reward (a prompt without one contributes no validation gradient)."""
        if self.last_scores is None:
            return {}
        rewards = self.last_scores["rewards"]
        return {"selector/nice/reward_mean": float(rewards.mean()),
                "selector/nice/rewarded_prompts": float((rewards != 0).any(dim=-1).float().mean())}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_scores": self.last_scores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_scores = state.get("last_scores")
