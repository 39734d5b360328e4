"""Passes over a pool: apply a per-batch signal to many samples, sharded across ranks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
) -> torch.Tensor:
    """``fn(model, batch) -> Tensor[b, ...]`` over the pool rows ``indices`` (default: all).

    Each rank takes every ``world_size``-th of the requested samples, batches them with
    ``collator``, and the per-sample results are all-gathered, so every rank returns the same
    tensor. The model is put in eval mode for the pass (no dropout noise in a signal) and its mode
    restored. A tqdm bar is shown on rank 0.

    Args:
        fn: a batched signal such as ``dataflex.signals.losses.per_sample_losses``.
        model: the model to read.
        dataset: indexable rows (a tokenised ``datasets.Dataset``).
        collator: turns a list of rows into a batch (the trainer's data collator).
        indices: unique pool rows to compute, in the order the result should follow.
        batch_size: rows per forward pass.
        desc: progress bar label.

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
    outputs = []
    try:
        for chunk in progress(local.split(batch_size), desc=desc, total=-(-local.numel() // batch_size)):
            batch = collator([dataset[int(i)] for i in chunk])
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            outputs.append(fn(model, batch).detach().float().cpu())
    finally:
        model.train(was_training)
    values = torch.cat(outputs) if outputs else torch.empty(0)
    gathered, order = gather_by_index(values, local)
    # gathered rows follow increasing pool index; put them back in the caller's order
    return gathered[torch.searchsorted(order, indices)]
