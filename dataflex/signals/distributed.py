"""Distributed helpers for the signals engine: no-ops in one process, torch.distributed collectives otherwise.

Every component decision must be identical on all ranks: either computed on rank 0 and broadcast
(`broadcast_object`, `main_process_result`), or computed from signals all-gathered in dataset-index order (`gather_by_index`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from dataflex.errors import ConfigError

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a torch.distributed process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Whether this is rank 0: of the process group once it is initialised, else of the launcher
    (torchrun's ``RANK``; a run writes its config and opens its trackers before the group exists)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Synchronise all ranks (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    """Device collectives run on: the current CUDA device for NCCL, CPU otherwise (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: T, src: int = 0) -> T:
    """Return `obj` as held by rank `src`, on every rank (pickled; any picklable object).

    Args:
        obj: The value on `src` (ignored on other ranks, but every rank must call).
        src: Source rank.

    Returns:
        `src`'s object; `obj` itself in one process.
    """
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def main_process_result(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` computed on rank 0 only and returned on every rank (every rank must call).

    If it raises, every rank raises instead of waiting in the broadcast: rank 0 the original
    exception, the others a ConfigError (a setting that does not fit this data) or a ValueError
    with its message when it was one, otherwise a RuntimeError naming rank 0.
    """
    result, failure = None, None
    if rank() == 0:  # of the group: without one every process computes (broadcast_object is then a no-op)
        try:
            result = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised below, after the other ranks are told
            failure = err
    kind = next((k for k in (ConfigError, ValueError) if isinstance(failure, k)), RuntimeError)
    told = None if failure is None else (kind.__name__, str(failure))
    result, message = broadcast_object((result, told))
    if failure is not None:
        raise failure
    if message is not None:
        kind, text = message
        if kind == "ConfigError":
            raise ConfigError(text)
        raise ValueError(text) if kind == "ValueError" else RuntimeError(f"rank 0 failed: {text}")
    return result


def all_ranks_true(flag: bool) -> bool:
    """True when ``flag`` is True on every rank (``flag`` itself in one process)."""
    if not is_distributed():
        return flag
    box = torch.tensor([int(flag)], device=_comm_device())
    dist.all_reduce(box, op=dist.ReduceOp.MIN)
    return bool(box.item())


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of `tensor` over ranks (a new tensor; the input is unchanged).

    Args:
        tensor: Same shape on every rank.

    Returns:
        The mean over ranks, on `tensor`'s device and dtype (a float copy of `tensor` in one process).
    """
    out = tensor.detach().clone()
    if not out.is_floating_point():
        out = out.double()
    if not is_distributed():
        return out
    dev = _comm_device()
    buf = out.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return (buf / world_size()).to(tensor.device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of `tensor` over ranks (a new tensor, same dtype; the input is unchanged).

    Args:
        tensor: Same shape and dtype on every rank.

    Returns:
        The sum over ranks, on `tensor`'s device (a copy of `tensor` in one process).
    """
    out = tensor.detach().clone()
    if not is_distributed():
        return out
    buf = out.to(_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(tensor.device)


def gather_by_index(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather per-sample values from all ranks, sorted by dataset index, duplicates dropped.

    Ranks may hold different numbers of samples (each rank's block is padded to the maximum count for the
    collective and the padding removed afterwards). Samplers that pad the last batch by repeating samples
    produce duplicate indices; the first occurrence (lowest rank, then local order) is kept.

    Args:
        values: `[n_local, ...]` per-sample values (trailing shape and dtype equal on all ranks).
        indices: `[n_local]` dataset indices of those samples.

    Returns:
        `(values [N, ...], indices [N])` on every rank, with `indices` strictly increasing; on `values`'s
        device.

    Raises:
        ValueError: if `values` and `indices` disagree on the number of samples.
    """
    indices = torch.as_tensor(indices).reshape(-1).long()
    if values.shape[0] != indices.shape[0]:
        raise ValueError(f"values has {values.shape[0]} rows but indices has {indices.shape[0]}")
    if is_distributed():
        dev = _comm_device()
        n = torch.tensor([values.shape[0]], dtype=torch.long, device=dev)
        counts = [torch.zeros_like(n) for _ in range(world_size())]
        dist.all_gather(counts, n)
        counts = [int(c.item()) for c in counts]
        width = max(counts)
        pad_v = torch.zeros((width, *values.shape[1:]), dtype=values.dtype, device=dev)
        pad_v[: values.shape[0]] = values.detach().to(dev)
        pad_i = torch.full((width,), -1, dtype=torch.long, device=dev)
        pad_i[: indices.shape[0]] = indices.to(dev)
        all_v = [torch.empty_like(pad_v) for _ in counts]
        all_i = [torch.empty_like(pad_i) for _ in counts]
        dist.all_gather(all_v, pad_v)
        dist.all_gather(all_i, pad_i)
        values = torch.cat([v[:c] for v, c in zip(all_v, counts)]).to(values.device)
        indices = torch.cat([i[:c] for i, c in zip(all_i, counts)]).cpu()
    else:
        values = values.detach()
        indices = indices.cpu()
    # Stable sort keeps the first occurrence of a duplicate first; then keep the first of each run.
    order = torch.sort(indices, stable=True).indices
    sorted_idx = indices[order]
    keep = torch.ones_like(sorted_idx, dtype=torch.bool)
    keep[1:] = sorted_idx[1:] != sorted_idx[:-1]
    order = order[keep]
    return values[order.to(values.device)], sorted_idx[keep]


@contextmanager
def main_process_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the other ranks (e.g. to build a cache once)."""
    if is_distributed() and not is_main_process():
        dist.barrier()
    try:
        yield
    finally:
        if is_distributed() and is_main_process():
            dist.barrier()


def progress(iterable: Iterable[T], **kwargs: Any) -> Iterable[T]:
    """A tqdm progress bar over `iterable`, shown on rank 0 only.

    Args:
        iterable: What to iterate.
        **kwargs: Passed to `tqdm` (`desc`, `total`, `disable`, ...); `disable=True` also hides it on rank 0.

    Returns:
        The wrapped iterable (yields the same items on every rank).
    """
    kwargs["disable"] = bool(kwargs.get("disable", False)) or not is_main_process()
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
