"""Per-sample and per-token causal-LM losses, batched and padding-exact.

Definitions (docs/ALGORITHMS.md, notation): ℓ_i is the token-mean negative log-likelihood of sample
i over its label tokens. As in Hugging Face causal LMs, the logit at position t predicts the label at
position t + 1 (shift by one); labels equal to -100 do not count. A sample with no label token has
ℓ_i := 0.0 (never NaN), so it contributes nothing to any gradient.

Padding (right or left) never changes a value: the attention mask hides pad keys and the position
ids are derived from the mask, so each real token sees exactly the positions and context it would
see if its sample ran alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100

#: The batch keys forwarded to the model; anything else (sample_index, domain_id, ...) is dropped.
MODEL_KEYS = ("input_ids", "attention_mask")


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that count only real tokens, so left padding does not shift positions.

    Args:
        attention_mask: ``[B, T]`` with 1 for real tokens and 0 for padding.

    Returns:
        ``[B, T]`` long tensor: 0, 1, 2, ... over the real tokens of each row (0 on padding).
    """
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).clamp(min=0) * mask


def model_inputs(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The keyword arguments for the model's forward: ids, mask, mask-derived position ids.

    Args:
        batch: a dict with at least ``input_ids``; ``attention_mask`` defaults to all ones. Extra
            keys are ignored.

    Returns:
        ``input_ids``, ``attention_mask``, ``position_ids`` and ``use_cache=False``.
    """
    input_ids = batch["input_ids"]
    attention_mask = batch.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "use_cache": False,
    }


def shifted_token_nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """NLL per predicted position (fp32) and the mask of counted positions, both ``[B, T-1]``."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    valid = shift_labels != IGNORE_INDEX
    # -100 is replaced by 0 for the gather, then zeroed: cross_entropy's ignore_index would give the
    # same, but the explicit mask also removes any NaN that a fully masked pad row could produce.
    safe = torch.where(valid, shift_labels, torch.zeros_like(shift_labels))
    # flattened to [B*(T-1), V] as the trainer's own loss does: the class dimension contiguous
    # (cross_entropy over a transposed [B, V, T-1] view is several times slower on CPU)
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), safe.reshape(-1), reduction="none").view_as(
        safe
    )
    nll = torch.where(valid, nll, torch.zeros_like(nll))
    return nll, valid


def _forward_logits(model: torch.nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    out = model(**model_inputs(batch))
    return out.logits if hasattr(out, "logits") else out[0]


def per_token_losses(model: torch.nn.Module, batch: Mapping[str, Tensor], *, grad: bool = False) -> Tensor:
    """The NLL of every predicted position, in one batched forward.

    Alignment: entry ``[i, t]`` is ``-log p(labels[i, t + 1] | input_ids[i, :t + 1])``, i.e. the
    prediction made at position ``t`` of the label at position ``t + 1`` (the usual one-token
    shift of Hugging Face causal LMs). It is 0.0 wherever ``labels[i, t + 1] == -100``. So
    ``per_token_losses(...)[:, t]`` lines up with ``labels[:, 1:][:, t]``, and
    ``per_sample_losses = sum over t / number of labels != -100 in labels[:, 1:]``.

    Args:
        model: a causal LM (plain or PEFT-wrapped) returning ``.logits``.
        batch: ``input_ids``, ``attention_mask``, ``labels`` (``[B, T]``); extra keys ignored.
        grad: build the autograd graph (default: no grad).

    Returns:
        ``[B, T-1]`` fp32 tensor.
    """
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    with ctx:
        logits = _forward_logits(model, batch)
        nll, _ = shifted_token_nll(logits, batch["labels"])
    return nll


def per_sample_losses(model: torch.nn.Module, batch: Mapping[str, Tensor], *, grad: bool = False) -> Tensor:
    """ℓ_i: the token-mean NLL of each sample over its label tokens, in one batched forward.

    Equal (to float rounding) to running each sample alone without padding, whatever the padding
    side. A sample without any label token (after the one-token shift) gets 0.0, not NaN.

    Args:
        model: a causal LM (plain or PEFT-wrapped) returning ``.logits``.
        batch: ``input_ids``, ``attention_mask``, ``labels`` (``[B, T]``); extra keys such as
            ``sample_index`` or ``domain_id`` are ignored.
        grad: build the autograd graph so the result can be differentiated (default: no grad).

    Returns:
        ``[B]`` fp32 tensor.
    """
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    with ctx:
        return per_sample_losses_from_logits(_forward_logits(model, batch), batch["labels"])


def per_sample_losses_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """ℓ_i from logits a forward pass already produced (e.g. the training step's own forward).

    Args:
        logits: ``[B, T, V]`` causal-LM logits.
        labels: ``[B, T]`` labels, -100 where a token does not count.

    Returns:
        ``[B]`` fp32 tensor, 0.0 for a sample without label tokens.
    """
    nll, valid = shifted_token_nll(logits, labels)
    return nll.sum(-1) / valid.sum(-1).clamp(min=1).to(nll.dtype)
