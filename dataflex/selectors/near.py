"""NEAR selector: the pool samples nearest to the validation/target prompts, taken round-robin by
rank (RDS+-style; ALGORITHMS.md, near). Also home of :class:`EmbeddingSelector`, the shell NEAR and
TSDS share: pool and validation embeddings, their cache, the kNN index.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch

from dataflex.selectors.base import BudgetSelector
from dataflex.signals.knn import EXACT_MAX, KnnIndex
from dataflex.train.components import UpdateContext

EMBEDDINGS = ("sentence", "model")
#: where the pool's sentence embeddings are kept across a resume (under the run directory)
CACHE_DIR = "cache"


def round_robin(neighbors: torch.Tensor, k: int) -> torch.Tensor:
    """The pure core: ``k`` distinct candidates, every query's rank-1 neighbour, then every rank-2, ...

    Within a rank, queries go in their row order; a candidate already taken is skipped. Entries < 0
    (padding) are skipped too.

    Args:
        neighbors: ``[M, K]`` candidate indices per query, best first.
        k: how many to take (>= 1).

    Returns:
        LongTensor[k], in the order taken.

    Raises:
        ValueError: fewer than ``k`` distinct candidates in ``neighbors``.
    """
    neighbors = torch.as_tensor(neighbors, dtype=torch.long)
    if neighbors.ndim != 2:
        raise ValueError(f"neighbors must be [M, K], got shape {tuple(neighbors.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    flat = neighbors.T.reshape(-1)  # rank-major: (rank 1 of every query), (rank 2 of every query), ...
    flat = flat[flat >= 0]
    distinct, inverse = torch.unique(flat, return_inverse=True)
    if distinct.numel() < k:
        raise ValueError(f"round_robin: {distinct.numel()} distinct candidates among the neighbours, {k} asked")
    positions = torch.arange(flat.numel())
    # the first position at which each distinct candidate appears; taking them in that order is the
    # round robin with duplicates skipped
    first = torch.full((distinct.numel(),), flat.numel(), dtype=torch.long).scatter_reduce(0, inverse, positions, "amin")
    return flat[torch.sort(first).values[:k]]


def near_indices(index: KnnIndex, queries: torch.Tensor, k: int, info: dict[str, Any] | None = None) -> torch.Tensor:
    """NEAR on an index: :func:`round_robin` over each query's ``4·ceil(k/M)`` nearest candidates,
    searching four times as deep until they hold ``k`` distinct ones (the result is the round robin
    over the full neighbour lists: ranks beyond the depth searched are never reached). A search
    costs about the same at any moderate depth (scanning the candidates dominates), so it starts
    deep (neighbour lists of different queries overlap) and grows fast.

    ``info``, if given, gets ``depth``: the neighbours per query of the last search.
    """
    m = len(queries)
    if not 1 <= k <= index.n:
        raise ValueError(f"k must lie in [1, {index.n}], got {k}")
    depth = min(index.n, 4 * math.ceil(k / m))
    while True:
        _, neighbors = index.search(queries, depth)
        try:
            picked = round_robin(neighbors, k)
        except ValueError:
            if depth >= index.n:
                raise
            depth = min(index.n, 4 * depth)
            continue
        if info is not None:
            info["depth"] = depth
        return picked


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
    """A budget selector over embeddings of the pool (candidates) and the validation prompts (queries).

    Candidates are the pool rows' texts (prompt and response, decoded from their own tokens),
    queries the validation rows' prompts (``ctx.require_validation``: ``data.validation`` must name
    a set), ordered by :func:`interleave_groups` over their subtasks.

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

    Args:
        embedding: ``sentence`` or ``model``.
        batch_size: texts (sentence) or rows (model) per forward pass when embedding.
        exact_max: pools up to this size are searched exactly, larger ones through IVF
            (:mod:`dataflex.signals.knn`).
        nprobe: IVF cells scanned per query.
        (others as :class:`~dataflex.selectors.base.BudgetSelector`)
    """

    method = "embedding"

    def __init__(
        self,
        budget,
        warmup_steps=0,
        update_every=0,
        num_updates=0,
        seed=0,
        embedding: str = "sentence",
        batch_size: int = 32,
        exact_max: int = EXACT_MAX,
        nprobe: int = 32,
    ):
        super().__init__(budget, warmup_steps, update_every, num_updates, seed)
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(nprobe) < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        if int(exact_max) < 0:
            raise ValueError(f"exact_max must be >= 0, got {exact_max}")
        self.embedding = embedding
        self.batch_size, self.exact_max, self.nprobe = int(batch_size), int(exact_max), int(nprobe)
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

    def choose(self, ctx: UpdateContext, candidates: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, dict | None]:
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
        validation = ctx.require_validation(self.name)
        order = interleave_groups(validation["domain_id"]) if "domain_id" in validation.column_names else None
        if self.embedding == "model":
            candidates = self._model_pool_embeddings(ctx)
            queries = self._model_prompt_embeddings(ctx, validation)
            return candidates, queries if order is None else queries[order]
        if "candidates" not in self._memo:
            candidates = self._sentence_pool_embeddings(ctx)
            prompts, _ = _texts(validation, ctx.tokenizer)
            queries = self._encode(ctx, prompts)
            self._memo.update(candidates=candidates, queries=queries if order is None else queries[order])
            self._memo.pop("encoder", None)  # not needed again
        return self._memo["candidates"], self._memo["queries"]

    # -- sentence embeddings ---------------------------------------------------------------------
    def _encoder(self, ctx: UpdateContext):
        from dataflex.eval.mcq import model_device
        from dataflex.signals.embeddings import SentenceEncoder

        if "encoder" not in self._memo:
            self._memo["encoder"] = SentenceEncoder(device=model_device(ctx.trainer.model))
        return self._memo["encoder"]

    def _encode(self, ctx: UpdateContext, texts: list[str]) -> torch.Tensor:
        """Sentence embeddings of ``texts``, each rank encoding every world_size-th text, gathered."""
        from dataflex.signals.distributed import gather_by_index, is_main_process, rank, world_size

        local = torch.arange(len(texts))[rank() :: world_size()]
        encoded = self._encoder(ctx).encode([texts[i] for i in local], batch_size=self.batch_size, progress=is_main_process())
        gathered, _ = gather_by_index(encoded, local)
        return gathered.cpu()

    def _sentence_pool_embeddings(self, ctx: UpdateContext) -> torch.Tensor:
        from dataflex.signals.distributed import broadcast_object, is_main_process
        from dataflex.utils import atomic_torch_save

        prompts, responses = _texts(ctx.trainer.train_dataset, ctx.tokenizer)
        texts = [f"{p}\n{r}".strip() for p, r in zip(prompts, responses)]
        path = None
        if ctx.run_dir is not None:
            from dataflex.signals.embeddings import sentence_model_dir

            digest = hashlib.sha256("\0".join([str(sentence_model_dir()), *texts]).encode()).hexdigest()[:16]
            path = Path(ctx.run_dir) / CACHE_DIR / f"pool_sentence_{digest}.pt"
        # rank 0 decides whether the cache is usable, so every rank takes the same (collective) path
        cached = None
        if path is not None and is_main_process() and path.is_file():
            cached = torch.load(path, weights_only=True)
            if cached.shape[0] != len(texts):
                cached = None
        if broadcast_object(cached is not None):
            return cached if cached is not None else torch.load(path, weights_only=True)
        embeddings = self._encode(ctx, texts)
        if path is not None and is_main_process():
            atomic_torch_save(embeddings, path)
        return embeddings

    # -- training-model embeddings ---------------------------------------------------------------
    def _model_pool_embeddings(self, ctx: UpdateContext) -> torch.Tensor:
        from dataflex.signals.embeddings import mean_pooled_hidden_states
        from dataflex.signals.pool import map_pool

        trainer = ctx.trainer
        return map_pool(
            mean_pooled_hidden_states,
            trainer.model,
            trainer.train_dataset,
            trainer.data_collator,
            batch_size=self.batch_size,
            desc=f"{self.name} pool embeddings",
        )

    def _model_prompt_embeddings(self, ctx: UpdateContext, validation) -> torch.Tensor:
        from dataflex.eval.mcq import pad_batch, pad_id_of
        from dataflex.signals.embeddings import mean_pooled_hidden_states
        from dataflex.signals.pool import map_pool
        from dataflex.signals.text import split_row

        has_labels = "labels" in validation.column_names
        rows = []
        for row in validation:
            prompt, _ = split_row(row["input_ids"], row["labels"] if has_labels else None)
            rows.append({"input_ids": prompt or list(row["input_ids"])})
        pad_id = pad_id_of(ctx.tokenizer)

        def collate(batch):
            ids, mask, _ = pad_batch([r["input_ids"] for r in batch], pad_id)
            return {"input_ids": ids, "attention_mask": mask}

        return map_pool(
            mean_pooled_hidden_states,
            ctx.trainer.model,
            rows,
            collate,
            batch_size=self.batch_size,
            desc=f"{self.name} prompt embeddings",
        )


def _texts(dataset, tokenizer) -> tuple[list[str], list[str]]:
    from dataflex.signals.text import prompt_response_texts

    return prompt_response_texts(dataset, tokenizer)


class NearSelector(EmbeddingSelector):
    """Every round, the ``budget`` pool samples nearest to the validation prompts, round-robin by rank.

    With sentence embeddings the selection is the same every round (nothing it reads changes);
    with ``embedding: model`` it follows the training model.

    Args: as :class:`EmbeddingSelector`.
    """

    method = "near"

    def choose(self, ctx: UpdateContext, candidates: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, dict | None]:
        info: dict[str, Any] = {}
        picked = near_indices(self.index(candidates), queries, self.k(ctx), info)
        return picked, {"update_index": ctx.update_index, **info}
