"""Shared helpers for the selectors: budget resolution, seeded generators, a stateful shell.

Every selector draws its randomness from a generator seeded by ``(seed, update_index[, stream])``
rather than from a long-lived RNG: the decision of round ``u`` then depends only on the seed, the
round and the model, so a resumed run re-draws exactly what the uninterrupted run drew without
having to checkpoint any RNG state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from dataflex.errors import ConfigError
from dataflex.signals.knn import EXACT_MAX, KnnIndex
from dataflex.signals.losses import per_sample_losses
from dataflex.signals.pool import map_pool
from dataflex.train.checkpoints import (
    check_checkpoint_choice,
    for_each_warmup_checkpoint,
    warmup_checkpoint_weights,
    warmup_checkpoints,
)
from dataflex.train.components import Scheduled, Selector, UpdateContext
from dataflex.train.fields import param

#: ``update_index`` of the decision made at the start of training (as in UpdateContext).
INITIAL = -1


def resolve_budget(budget: int | float, pool_size: int, what: str = "budget") -> int:
    """The number of samples ``k`` that ``budget`` asks for out of ``pool_size``.

    Args:
        budget: an ``int`` count, or a ``float`` fraction of the pool in ``(0, 1]``.
        pool_size: the number of samples to choose from.
        what: the setting's name, for the error message.

    Returns:
        ``k`` with ``1 <= k <= pool_size``.

    Raises:
        ValueError: a fraction outside ``(0, 1]``, or a ``k`` that is ``<= 0`` or larger than the pool.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ConfigError(f"{what} must be an int count or a float fraction in (0, 1], got {budget!r}")
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            raise ConfigError(f"{what} as a fraction must lie in (0, 1], got {budget}")
        # floor, with a tolerance so 0.3 * 10 (= 3.0000000000000004 or 2.9999...) gives 3
        k = int(math.floor(budget * pool_size + 1e-9))
    else:
        k = int(budget)
    if k <= 0:
        raise ConfigError(f"{what}={budget!r} selects {k} of {pool_size} samples; it must select at least 1")
    if k > pool_size:
        raise ConfigError(f"{what}={budget!r} asks for {k} samples but the pool has only {pool_size}")
    return k


def seeded_generator(seed: int, update_index: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, update_index, stream)``.

    ``stream`` separates independent draws of the same round (e.g. the candidate subset and the
    selection itself) so they do not share random numbers.
    """
    # distinct (seed, update_index, stream) give distinct seeds for any realistic range of values
    mixed = (int(seed) * 1_000_003 + (int(update_index) + 2)) * 101 + int(stream)
    return torch.Generator().manual_seed(mixed % (2**63 - 1))


def random_subset(pool_size: int, k: int, generator: torch.Generator, replacement: bool = False) -> torch.Tensor:
    """``k`` uniform pool indices, without replacement unless ``replacement`` (LongTensor[k])."""
    if replacement:
        return torch.randint(pool_size, (k,), generator=generator)
    return torch.randperm(pool_size, generator=generator)[:k]


def budget_problem(value: int | float) -> str | None:
    """What is wrong with a budget-like setting (an int count >= 1 or a float fraction in (0, 1]),
    before the pool size is known; None when nothing is."""
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        return "as a fraction must lie in (0, 1]"
    if isinstance(value, int) and value < 1:
        return "must select at least 1 sample (an int count >= 1 or a float fraction in (0, 1])"
    return None


#: how a budget-like setting is declared: :func:`resolve_budget` turns it into a count once the pool is known
COUNT_OR_FRACTION = "an int count or a float fraction in (0, 1]"


class BudgetSelector(Scheduled, Selector):
    """A selector with a budget, a seed and the schedule.

    Subclasses implement :meth:`select`; the warm-up (:meth:`initial_indices`) is a seeded random
    subset of ``budget`` samples (ALGORITHMS.md, Online schedule: "warmup_steps of training on a
    random subset").

    Attributes:
        budget: samples per round: an int count or a float fraction of the pool in (0, 1].
        seed: seed of every random draw (combined with the round index).
        (the schedule keys as :class:`~dataflex.train.components.Scheduled`)
    """

    budget: int | float = param(check=budget_problem, expects=COUNT_OR_FRACTION)
    seed: int = 0

    def k(self, ctx: UpdateContext) -> int:
        return resolve_budget(self.budget, ctx.pool_size)

    def initial_indices(self, ctx: UpdateContext) -> torch.Tensor | None:
        indices = random_subset(ctx.pool_size, self.k(ctx), seeded_generator(self.seed, INITIAL))
        return self.record(ctx, indices)

    def record(self, ctx: UpdateContext, indices: torch.Tensor) -> torch.Tensor:
        """The decision as a flat LongTensor of pool indices (the callback logs every round and saves
        it as ``selections/round_NNN.json``; the sampler's plan history is in every checkpoint)."""
        return torch.as_tensor(indices, dtype=torch.long).flatten()


class PoolLossSelector(BudgetSelector):
    """A budget selector that reads per-sample losses of (a candidate subset of) the pool.

    Attributes:
        candidates: score only a seeded random subset of the pool each round (int count or float
            fraction; None: the whole pool). Bounds the cost of a round on large pools; it must be
            at least the budget.
        batch_size: samples per forward pass of the scoring pass.
        (others as :class:`BudgetSelector`)
    """

    #: generator stream for the candidate subset (the selection draw uses stream 0)
    CANDIDATE_STREAM = 1

    candidates: int | float | None = param(None, check=budget_problem, expects=f"{COUNT_OR_FRACTION}, or null")
    batch_size: int = param(16, ge=1)

    def check_before_start(self) -> None:
        # both counts, or both fractions of the same pool: comparable before the pool is built
        same_kind = isinstance(self.candidates, int) == isinstance(self.budget, int)
        if self.candidates is not None and same_kind and self.candidates < self.budget:
            raise ConfigError(
                f"candidates ({self.candidates}) must be at least the budget ({self.budget}): a round "
                "scores the candidates and keeps the budget's worth; raise selector.candidates or lower selector.budget"
            )

    def candidate_indices(self, ctx: UpdateContext) -> torch.Tensor:
        """The pool rows scored this round, sorted (all of them when ``candidates`` is None)."""
        n = ctx.pool_size
        if self.candidates is None:
            return torch.arange(n)
        m = resolve_budget(self.candidates, n, "candidates")
        if m < self.k(ctx):
            raise ConfigError(f"candidates ({m}) must be at least the budget ({self.k(ctx)})")
        g = seeded_generator(self.seed, ctx.update_index, self.CANDIDATE_STREAM)
        return random_subset(n, m, g).sort().values

    def decision_stats(self) -> dict[str, float]:
        """How many pool samples the round scored (a finite loss, or Δ, for each): the whole pool
        unless ``candidates`` is set."""
        scores = getattr(self, "last_scores", None)
        if not scores:
            return {}
        values = scores.get("losses", scores.get("delta"))
        return {} if values is None else {"selector/scored": float(torch.isfinite(values).sum())}

    def pool_losses(self, ctx: UpdateContext, indices: torch.Tensor) -> torch.Tensor:
        """ℓ_i under the current model for the pool rows ``indices`` (through the signals engine)."""
        return map_pool(
            per_sample_losses,
            ctx.model,
            ctx.pool,
            ctx.collator,
            indices=indices,
            batch_size=self.batch_size,
            desc=f"{type(self).__name__} losses",
        )


# -- embedding selectors (NEAR, TSDS) ------------------------------------------------------------------

EMBEDDINGS = ("sentence", "model")
QUERIES = ("example", "prompt")  # what a query embeds: the whole validation example, or its prompt


def interleave_groups(groups: torch.Tensor) -> torch.Tensor:
    """An order of rows: the first row of every group, then the second of every group, ...

    Groups go in increasing id, rows within a group in their order. Used to order the validation
    prompts by subtask, so that a round robin whose budget ends within one rank spreads over the
    subtasks instead of taking the first subtask's queries only.

    Returns:
        LongTensor[len(groups)], a permutation.
    """
    groups = torch.as_tensor(groups, dtype=torch.long).flatten()
    by_group = torch.sort(groups, stable=True).indices
    sorted_groups = groups[by_group]
    within = torch.arange(groups.numel()) - torch.searchsorted(sorted_groups, sorted_groups)
    position = torch.empty_like(groups)
    position[by_group] = within
    # by position within the group, then by group (two stable sorts)
    return by_group[torch.sort(position[by_group], stable=True).indices]


class EmbeddingSelector(BudgetSelector):
    """A budget selector over embeddings of the pool (candidates) and the validation examples (queries).

    Candidates are the pool rows' texts (prompt and response, decoded from their own tokens).
    Queries (``ctx.require_validation``: ``data.validation`` must name a set), ordered by
    :func:`interleave_groups` over their subtasks, are embedded like candidates: the whole validation
    example, prompt and response (``query: example``, the default, as RDS+ and DataFlex do), or its
    prompt only (``query: prompt``, the earlier behaviour).

    ``embedding``:

    * ``sentence`` (default): all-MiniLM-L6-v2 (:class:`~dataflex.signals.embeddings.SentenceEncoder`),
      each rank encoding its share of the texts. These embeddings and the kNN index over them do
      not change during training, so they are computed once and kept in memory; the pool's
      embeddings are also saved under the run directory (``cache/``, named by a hash of the texts
      and the encoder) so a resumed run reads them back instead of encoding the pool again. None
      of it goes into the checkpoint, which holds the decisions.
    * ``model``: the training model's mean-pooled last hidden state
      (:func:`~dataflex.signals.embeddings.mean_pooled_hidden_states`) of the whole pool row and of
      the validation prompt tokens, recomputed every round (the model changes).

    Every rank takes part in computing the embeddings (they are sharded); rank 0 alone builds the
    index and decides (:meth:`choose`), and its decision is broadcast, so every rank records and
    trains on the same selection.

    Schedule: with ``warmup_steps > 0`` the warm-up trains on a seeded random subset of ``budget``
    samples (as every budget selector); with ``warmup_steps: 0`` the first decision, at the start
    of training, is already this selector's own selection (with ``update_every: 0`` it is then the
    only one: the papers' one-shot recipe).

    Attributes:
        embedding: ``sentence`` or ``model``.
        batch_size: texts (sentence) or rows (model) per forward pass when embedding.
        exact_max: pools up to this size are searched exactly, larger ones through IVF
            (:mod:`dataflex.signals.knn`).
        nprobe: IVF cells scanned per query.
        query: ``example`` (default: prompt + response, like the candidates) or ``prompt``.
        (others as :class:`~dataflex.selectors.base.BudgetSelector`)
    """

    needs_validation = True

    acts_through_updates = True
    first_decision_is_own = True

    method = "embedding"

    embedding: str = param("sentence", choices=EMBEDDINGS)
    batch_size: int = param(32, ge=1)
    exact_max: int = param(EXACT_MAX, ge=0)
    nprobe: int = param(32, ge=1)
    # -- fidelity options (docs/ALGORITHMS.md "near") --
    query: str = "example"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.query not in QUERIES:
            raise ConfigError(f"selector={self.method}: query must be one of {', '.join(QUERIES)}, "
                              f"got {self.query!r}; set selector.query=example (the whole validation example, "
                              "the default) or prompt")
        self._memo: dict[str, Any] = {}  # sentence embeddings and index: in memory only, never checkpointed
        self.last_round: dict[str, Any] | None = None  # a small summary of the last decision (checkpointed)

    @property
    def name(self) -> str:
        return getattr(self, "config_name", self.method)

    def initial_indices(self, ctx: UpdateContext) -> torch.Tensor | None:
        if self.schedule.warmup_steps == 0:
            return self.select(ctx)
        return super().initial_indices(ctx)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_round": self.last_round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_round = state.get("last_round")

    def select(self, ctx: UpdateContext) -> torch.Tensor:
        """Embed (every rank takes part), decide on rank 0 (:meth:`choose`), broadcast the decision,
        so every rank records and trains on the same selection."""
        from dataflex.signals.distributed import main_process_result

        candidates, queries = self.embeddings(ctx)
        indices, summary = main_process_result(self.choose, ctx, candidates, queries)
        if summary is not None:
            self.last_round = summary
        return self.record(ctx, indices)

    def choose(
        self, ctx: UpdateContext, candidates: torch.Tensor, queries: torch.Tensor
    ) -> tuple[torch.Tensor, dict | None]:
        """``(pool indices, a small summary kept as last_round or None)`` for this round (rank 0)."""
        raise NotImplementedError

    def index(self, candidates: torch.Tensor) -> KnnIndex:
        """The kNN index over ``candidates`` (built once and kept for sentence embeddings)."""
        if self.embedding == "sentence" and self._memo.get("index") is not None:
            return self._memo["index"]
        index = KnnIndex(candidates, exact_max=self.exact_max, nprobe=self.nprobe, seed=self.seed)
        if self.embedding == "sentence":
            self._memo["index"] = index
        return index

    def embeddings(self, ctx: UpdateContext) -> tuple[torch.Tensor, torch.Tensor]:
        """``(candidates [N, d], queries [M, d])`` for this round (collective: every rank calls it)."""
        from dataflex.signals.embeddings import (
            cached_sentence_embeddings,
            model_pool_embeddings,
            model_prompt_embeddings,
            pool_texts,
        )
        from dataflex.signals.text import prompt_response_texts

        validation = ctx.require_validation(self.name)
        order = interleave_groups(validation["domain_id"]) if "domain_id" in validation.column_names else None
        if self.embedding == "model":
            candidates = model_pool_embeddings(
                ctx.model, ctx.pool, ctx.collator, self.batch_size, f"{self.name} pool embeddings"
            )
            if self.query == "example":  # the whole rows, exactly as the candidates
                queries = model_pool_embeddings(ctx.model, validation, ctx.collator, self.batch_size,
                                                f"{self.name} query embeddings")
            else:
                queries = model_prompt_embeddings(
                    ctx.model, validation, ctx.tokenizer, self.batch_size, f"{self.name} prompt embeddings"
                )
            return candidates, queries if order is None else queries[order]
        if "candidates" not in self._memo:
            texts = pool_texts(ctx.pool, ctx.tokenizer)
            candidates = cached_sentence_embeddings(texts, lambda texts: self._encode(ctx, texts), ctx.run_dir)
            if self.query == "example":
                queries = self._encode(ctx, pool_texts(validation, ctx.tokenizer))
            else:
                queries = self._encode(ctx, prompt_response_texts(validation, ctx.tokenizer)[0])
            self._memo.update(candidates=candidates, queries=queries if order is None else queries[order])
            self._memo.pop("encoder", None)  # not needed again
        return self._memo["candidates"], self._memo["queries"]

    def _encode(self, ctx: UpdateContext, texts: list[str]) -> torch.Tensor:
        """Sentence embeddings of ``texts``, each rank encoding every world_size-th text, gathered."""
        from dataflex.signals.batching import model_device
        from dataflex.signals.embeddings import SentenceEncoder, encode_sharded

        if "encoder" not in self._memo:
            self._memo["encoder"] = SentenceEncoder(device=model_device(ctx.model))
        return encode_sharded(self._memo["encoder"], texts, self.batch_size)


@dataclass(kw_only=True, eq=False)
class WarmupRecipe:
    """The offline recipes' settings and loop (offline LESS and NICE; a mixin before the selector's
    base): decide once, before training, from every complete checkpoint of a warm-up run, each
    weighted (by default) by its epoch's mean learning rate. No schedule keys."""

    warmup_steps: ClassVar[int] = 0
    update_every: ClassVar[int] = 0
    num_updates: ClassVar[int] = 0
    acts_through_updates: ClassVar[bool] = False
    budget: int | float = param(0.05, check=budget_problem, expects=COUNT_OR_FRACTION)
    warmup_dir: str | None = None
    checkpoints: Sequence[int] | None = None
    checkpoint_weights: Sequence[float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.checkpoints, self.checkpoint_weights = check_checkpoint_choice(self.checkpoints, self.checkpoint_weights)

    def over_warmup_checkpoints(self, ctx: UpdateContext, command: str, score: Callable[[Any], Any]):
        """``(found, weights, [score(adam) under each checkpoint])``: every warm-up checkpoint's
        weights (and, for Adam features, its saved moments) loaded in turn into ``ctx.model``, which
        gets its own weights back afterwards; ``command`` is the one that trains the warm-up first."""
        name = getattr(self, "config_name", "selector")
        if not self.warmup_dir:
            raise ConfigError(
                f"selector={name} needs selector.warmup_dir=<a warm-up run directory with one checkpoint per epoch>; "
                f"`{command}` trains the warm-up and then this run"
            )
        ctx.require_validation(name)  # a missing validation set fails before any pass
        found = warmup_checkpoints(self.warmup_dir, self.checkpoints)
        weights = warmup_checkpoint_weights(found, self.checkpoint_weights)
        results = for_each_warmup_checkpoint(
            ctx.model, found, lambda _step, _path, adam: score(adam),
            optimizer=ctx.optimizer, adam=self.gradient_type == "adam",
        )
        return found, weights, results
