"""NICE, online (``selector=nice``): a round every update under the current model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dataflex.errors import ConfigError
from dataflex.logs import get_logger
from dataflex.selectors.base import (
    COUNT_OR_FRACTION,
    PoolLossSelector,
    budget_problem,
    resolve_budget,
    seeded_generator,
)
from dataflex.selectors.nice.features import nice_validation_features
from dataflex.selectors.nice.rewards import (
    RewardFn,
    compute_rewards,
    resolve_reward,
)
from dataflex.signals.batching import pad_id_of
from dataflex.signals.distributed import (
    broadcast_object,
    is_main_process,
    main_process_result,
)
from dataflex.signals.features import (
    subtask_centroids,
    top_k_indices,
    training_features,
)
from dataflex.signals.generation import sample_generations
from dataflex.signals.text import prompt_response_texts, split_row
from dataflex.train.components import UpdateContext
from dataflex.train.fields import param

log = get_logger(__name__)


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
    M = 20, temperature 1.0, top_k 50, top_p 0.95). This is the online variant (one checkpoint: the
    current model); the paper's offline recipe (every step of a round under each warm-up checkpoint,
    learning-rate weighted, as ``selector=less_offline``) is :class:`NiceOfflineSelector`
    (``selector=nice_offline``, below).

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
        proj_kind: the random projection (``sjlt``, the default: sparse JL; ``rademacher``, its dense
            form; ``gaussian``, ``sparse``), seeded by ``seed``.
        gradient_type: ``adam`` (LESS's Γ, default) or ``sgd`` for the training features.
    """

    #: the original DataFlex's params with no counterpart here, and why (used by dataflex-cli)
    #: the original DataFlex's params (used by dataflex-cli): its Monte-Carlo samples and sampling temperature,
    #: and its reward-model block, which is the judge reward (dataflex.selectors.nice_judge)
    legacy_keys = {
        "mc_samples": "num_samples",
        "generation_temperature": "temperature",
        "reward_model_backend": "reward_kwargs.backend",
        "reward_backend_params": "reward_kwargs.backend_params",
        "reward_prompt_with_ref": "reward_kwargs.prompt_with_reference",
        "reward_prompt_without_ref": "reward_kwargs.prompt_without_reference",
        "reward_model_path": "reward_kwargs.model_path",
        "policy_model_path": "policy_model",
    }
    #: reward_model_path first: with it the original scores with that classifier (its judge block unused)
    legacy_implies = {
        "reward_model_path": {"reward": "dataflex.selectors.nice_classifier:ClassifierReward"},
        **{
            key: {"reward": "dataflex.selectors.nice_judge:JudgeReward"}
            for key in ("reward_model_backend", "reward_backend_params")
        },
    }
    #: original params that another one makes unused: the judge block when reward_model_path is given
    legacy_superseded = {"reward_model_path": ("reward_model_backend", "reward_backend_params")}
    legacy_unused = {
        "save_interval": "nothing is cached between rounds",
        "max_prompt_length": "the target prompts are the eval rows' prompts, already cut at cutoff_len",
        "prompt_template": "the target prompts are formatted by the model's chat template (template)",
    }

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
    proj_kind: str = "sjlt"
    gradient_type: str = param("adam", choices=("adam", "sgd"))
    # -- fidelity options (docs/ALGORITHMS.md "nice") --
    top_k: int = param(0, expects=TOP_K, check=lambda k: None if k >= 0 else f"must be {TOP_K}")
    # -- original DataFlex option (its policy_model_path): a fixed model samples the responses --
    policy_model: str | None = None

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
            self.policy(ctx),
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

    def policy(self, ctx: UpdateContext) -> torch.nn.Module:
        """The model that samples the responses: the current model, or with ``policy_model`` that fixed model
        (the original DataFlex's ``policy_model_path``; loaded once, on the training model's device and
        dtype; it must share the training tokenizer's vocabulary, the gradients are the training model's)."""
        if self.policy_model is None:
            return ctx.model
        if getattr(self, "_policy", None) is None:
            from transformers import AutoModelForCausalLM

            reference = next(ctx.model.parameters())
            model = AutoModelForCausalLM.from_pretrained(self.policy_model, torch_dtype=reference.dtype)
            if model.get_input_embeddings().num_embeddings < len(ctx.tokenizer):
                raise ConfigError(
                    f"selector=nice: policy_model {self.policy_model} has a smaller vocabulary than the training "
                    "tokenizer; the responses are scored under the training model, so they must share one"
                )
            self._policy = model.to(reference.device).eval().requires_grad_(False)
        return self._policy

    def rewards(
        self, prompts: Sequence[str], responses: Sequence[Sequence[str]], references: Sequence[str]
    ) -> torch.Tensor:
        """``[P, M]`` rewards, computed on rank 0 and broadcast (an error there is raised on every rank)."""

        def compute() -> torch.Tensor:
            try:
                return compute_rewards(self.reward_fn, prompts, responses, references)
            except Exception as err:
                raise ConfigError(f"reward={self.reward_name}: {err}") from err

        return main_process_result(compute)

    def similarities(
        self, ctx: UpdateContext, candidates: torch.Tensor, adam: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 1-5 of a round under the model as it is now (and ``adam``, saved Adam moments, when
        given): ``([n, J]`` mean cosine of every candidate with every subtask's validation features,
        the ``[P, M]`` rewards, the validation rows sampled``)``. No reward anywhere: every cosine is
        0 and the training pass is skipped."""
        validation = ctx.require_validation(getattr(self, "config_name", "nice"))
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
        if centroids.abs().sum() == 0:  # no reward anywhere: every cosine is 0, no pass needed
            return torch.zeros(candidates.numel(), centroids.shape[0], dtype=torch.float64), rewards, val_idx
        sims = training_features(
            ctx.model,
            ctx.pool,
            ctx.collator,
            candidates,
            self.projector,
            self.gradient_type,
            self.batch_size,
            optimizer=ctx.optimizer,
            adam=adam,
            reduce=lambda f: f.double() @ centroids.to(f.device).T,
            desc="NICE training features",
        )
        return sims.double().reshape(candidates.numel(), -1), rewards, val_idx

    def select(self, ctx: UpdateContext) -> torch.Tensor:
        candidates = self.candidate_indices(ctx)
        sims, rewards, val_idx = self.similarities(ctx, candidates)
        scores = sims.max(dim=-1).values
        if not rewards.any():
            log.warning(
                "NICE round at step %d: none of the %d validation prompts earned a reward in %d samples, so every "
                "score is 0 and this round keeps a seeded random subset. NICE needs the current model to solve some "
                "target prompts: sample more (selector=nice_reference), use reward=contains or a reward model, "
                "or warm up longer.",
                ctx.global_step,
                rewards.shape[0],
                rewards.shape[-1],
            )
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
        return {
            "selector/nice/reward_mean": float(rewards.mean()),
            "selector/nice/rewarded_prompts": float((rewards != 0).any(dim=-1).float().mean()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_scores": self.last_scores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_scores = state.get("last_scores")
