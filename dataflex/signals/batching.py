"""Batching token id lists for a model: padding, the pad id of a tokenizer, the model's device.

The lowest layer of the engine: the signals, the evaluation and the selectors all pad through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def model_device(model: torch.nn.Module) -> torch.device:
    """Return the device of the model's first parameter (CPU for a parameterless model)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right", device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad token id lists into a batch.

    Args:
        seqs: Token id lists (each non-empty).
        pad_id: Id written into padded positions (always masked out).
        side: "right" or "left".
        device: Device for the returned tensors.

    Returns:
        `(input_ids, attention_mask, position_ids)`, each of shape `(batch, max_len)`. Position ids count
        real tokens only (0 on padding), so left and right padding give the same positions to real tokens.
    """
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, sl] = torch.tensor(list(s), dtype=torch.long)
        mask[i, sl] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0) * mask
    return ids.to(device), mask.to(device), pos.to(device)


def pad_id_of(tokenizer: Any) -> int:
    """Pad token id of the tokenizer, falling back to eos (then 0)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0
