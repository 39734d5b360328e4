"""Passes over a pool: apply a per-batch signal to many samples, sharded across ranks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from dataflex.signals.batching import model_device
from dataflex.signals.distributed import gather_by_index, progress, rank, world_size


def map_pool(
    fn: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor],
    model: Any,
    dataset: Sequence[dict[str, Any]],
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
    indices: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 16,
    desc: str = "signals",
    sort_window: int = 32,
) -> torch.Tensor:
    """``fn(model, batch) -> Tensor[b, ...]`` over the pool rows ``indices`` (default: all).

    Each rank takes every ``world_size``-th of the requested samples, batches them with
    ``collator``, and the per-sample results are all-gathered, so every rank returns the same
    tensor. The model is put in eval mode for the pass (no dropout noise in a signal) and its mode
    restored. A tqdm bar is shown on rank 0.

    Rows carrying ``input_ids`` are batched by length: each window of ``sort_window`` batches is
    sorted by sequence length before it is cut into batches, so a batch pads to a length close to
    its rows' own (on the planted SFT pool this halves the tokens a pass computes). Per-sample
    signals do not depend on their batch-mates, so the result is the same up to float rounding;
    the order is a pure function of the rows, so a resumed run reads the same batches.

    Args:
        fn: a batched signal such as ``dataflex.signals.losses.per_sample_losses``.
        model: the model to read.
        dataset: indexable rows (a tokenised ``datasets.Dataset``).
        collator: turns a list of rows into a batch (the trainer's data collator).
        indices: unique pool rows to compute, in the order the result should follow.
        batch_size: rows per forward pass.
        desc: progress bar label.
        sort_window: batches per length-sorted window (1: the requested order, no sorting).

    Returns:
        ``Tensor[len(indices), ...]`` aligned with ``indices``, on CPU.
    """
    indices = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long).flatten()
    if indices.unique().numel() != indices.numel():
        raise ValueError("map_pool needs unique indices")
    local = indices[rank() :: world_size()]
    device = model_device(model)
    was_training = model.training
    model.eval()
    outputs, positions = [], []  # per batch: its values, and its rows' positions in `local`
    bar = progress(None, total=-(-local.numel() // batch_size), desc=desc)
    try:
        for where, rows in pool_batches(dataset, local, batch_size, sort_window):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collator(rows).items()}
            outputs.append(fn(model, batch).detach().float().cpu())
            positions.extend(where)
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    # back to the order of `local`
    values = torch.cat(outputs)[torch.argsort(torch.tensor(positions))] if outputs else torch.empty(0)
    gathered, order = gather_by_index(values, local)
    # gathered rows follow increasing pool index; put them back in the caller's order
    return gathered[torch.searchsorted(order, indices)]


def pool_batches(
    dataset: Sequence[dict[str, Any]], local: torch.Tensor, batch_size: int, sort_window: int
) -> Iterator[tuple[list[int], list[dict[str, Any]]]]:
    """The batches ``map_pool`` computes over the pool rows ``local``: each as the positions of its rows in
    ``local`` and the rows. Each window of ``sort_window`` batches is sorted by length (1: ``local``'s order)."""
    window_size = batch_size * max(1, sort_window)
    for offset in range(0, local.numel(), window_size):
        rows = [dataset[int(i)] for i in local[offset : offset + window_size]]
        order = by_length(rows) if sort_window > 1 else list(range(len(rows)))
        for start in range(0, len(rows), batch_size):
            chunk = order[start : start + batch_size]
            yield [offset + j for j in chunk], [rows[j] for j in chunk]


def by_length(rows: Sequence[Any]) -> list[int]:
    """Positions of ``rows`` in increasing ``len(row["input_ids"])`` (stable); the given order when a row has none."""
    if not all(isinstance(row, dict) and "input_ids" in row for row in rows):
        return list(range(len(rows)))
    return sorted(range(len(rows)), key=lambda j: len(rows[j]["input_ids"]))
