"""Adam optimizer state (`exp_avg`, `exp_avg_sq`) of the trainable parameters, by parameter name.

Works for a plain torch optimizer (optionally wrapped by accelerate's `AcceleratedOptimizer` or
`DeepSpeedOptimizerWrapper`: the wrapper's `.optimizer` is unwrapped) and under DeepSpeed ZeRO-1/2/3, where
the state lives in fp32 flat partitions owned by the data-parallel ranks:

* ZeRO-3 parameters (they carry `ds_id`): the local state is this rank's partition of the flattened
  parameter, `[rank * partition_numel, (rank + 1) * partition_numel)`, zero-padded at the end of the last
  partition (`deepspeed.utils.safe_get_local_optimizer_state`, no communication).
* ZeRO-1/2 (and the bf16 optimizer) parameters (they carry `_hp_mapping`): the local state is the fragment
  of the flattened parameter this rank's optimizer partition covers, at `_hp_mapping.lp_fragment_address`
  (possibly empty when this rank owns no part of the parameter); no communication.
* `full=True` assembles the whole state of every parameter with `safe_get_full_optimizer_state`, which is
  a collective (an all-reduce or all-gather over the data-parallel group): every rank must call it, for
  the same parameters, in the same order.

`adam_state_shards` returns the shards with their element offsets in the flattened parameter, which is
what a projection that depends only on (seed, parameter name, element offset) needs to project shards
separately and sum them across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

ADAM_KEYS = ("exp_avg", "exp_avg_sq")


@dataclass
class AdamShard:
    """Adam state of one parameter, or of the part of it this rank holds.

    Attributes:
        exp_avg: First moment; the parameter's shape when `offset == 0` and the shard is whole, otherwise a
            1-D fragment of the flattened parameter.
        exp_avg_sq: Second moment, same shape as `exp_avg`.
        offset: Element offset of the shard's first element in the flattened parameter.
        numel: Number of valid (non-padding) elements of the shard; `exp_avg.numel()` may be larger under
            ZeRO-3, whose last partition is zero-padded.
        shape: Full shape of the parameter.
    """

    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    offset: int
    numel: int
    shape: torch.Size

    @property
    def is_full(self) -> bool:
        """Whether the shard covers the whole parameter."""
        return self.offset == 0 and self.numel == int(torch.Size(self.shape).numel())


def unwrap_optimizer(optimizer: Any) -> Any:
    """Return the innermost optimizer under accelerate / DeepSpeed wrappers (`.optimizer` chains).

    A DeepSpeed ZeRO optimizer itself also has an `.optimizer` (the inner fp32 torch optimizer over flat
    partitions); unwrapping stops at the ZeRO optimizer because its parameters are read through the model's
    parameters, not through its `.optimizer`.
    """
    seen = set()
    while hasattr(optimizer, "optimizer") and id(optimizer) not in seen and not _is_deepspeed_optimizer(optimizer):
        seen.add(id(optimizer))
        inner = optimizer.optimizer
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    return optimizer


def _is_deepspeed_optimizer(optimizer: Any) -> bool:
    module = type(optimizer).__module__ or ""
    return module.startswith("deepspeed.")


def _zero_kind(param: torch.nn.Parameter) -> str | None:
    if hasattr(param, "ds_id"):
        return "zero3"
    if hasattr(param, "_hp_mapping"):
        return "zero12"
    return None


def _trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _torch_state(optimizer: Any, name: str, param: torch.nn.Parameter) -> AdamShard:
    state = optimizer.state.get(param, {}) if hasattr(optimizer, "state") else {}
    if not state:  # no step yet (or the parameter never received a gradient)
        m = torch.zeros_like(param, dtype=torch.float32)
        v = torch.zeros_like(param, dtype=torch.float32)
    else:
        missing = [k for k in ADAM_KEYS if k not in state]
        if missing:
            raise ValueError(
                f"optimizer {type(optimizer).__name__} has no {missing} state for parameter {name!r} "
                f"(state keys: {sorted(state)}); adam_state needs an Adam-family optimizer"
            )
        m, v = state["exp_avg"].detach(), state["exp_avg_sq"].detach()
    return AdamShard(m, v, 0, param.numel(), param.shape)


def _zero3_shard(name: str, param: torch.nn.Parameter, full: bool, has_state: bool) -> AdamShard:
    from deepspeed.utils import (
        safe_get_full_optimizer_state,
        safe_get_local_optimizer_state,
    )

    shape = torch.Size(param.ds_shape)
    total = int(param.ds_numel)
    part = int(param.partition_numel())
    offset = _dp_rank(param) * part
    valid = max(0, min(part, total - offset))
    if not has_state:
        zeros = torch.zeros(
            shape if full else (part,),
            dtype=torch.float32,
            device=param.ds_tensor.device,
        )
        return AdamShard(zeros, zeros.clone(), 0 if full else offset, total if full else valid, shape)
    if full:
        m = safe_get_full_optimizer_state(param, "exp_avg")
        v = safe_get_full_optimizer_state(param, "exp_avg_sq")
        return AdamShard(m.reshape(shape), v.reshape(shape), 0, total, shape)
    m = safe_get_local_optimizer_state(param, "exp_avg")
    v = safe_get_local_optimizer_state(param, "exp_avg_sq")
    return AdamShard(m.reshape(-1), v.reshape(-1), offset, valid, shape)


def _zero12_shard(name: str, param: torch.nn.Parameter, full: bool, has_state: bool) -> AdamShard:
    from deepspeed.utils import safe_get_full_optimizer_state

    mapping = param._hp_mapping
    if not has_state:
        if full:
            zeros = torch.zeros(param.shape, dtype=torch.float32, device=param.device)
            return AdamShard(zeros, zeros.clone(), 0, param.numel(), param.shape)
        address = mapping.lp_fragment_address if mapping is not None else None
        zeros = torch.zeros(address.numel if address else 0, dtype=torch.float32, device=param.device)
        return AdamShard(
            zeros,
            zeros.clone(),
            int(address.start) if address else 0,
            zeros.numel(),
            param.shape,
        )
    if full:
        m = safe_get_full_optimizer_state(param, "exp_avg")
        v = safe_get_full_optimizer_state(param, "exp_avg_sq")
        return AdamShard(m, v, 0, param.numel(), param.shape)
    if mapping is None:  # this rank's optimizer partition holds no part of the parameter
        empty = torch.zeros(0, dtype=torch.float32, device=param.device)
        return AdamShard(empty, empty.clone(), 0, 0, param.shape)
    m = mapping.get_hp_fragment("exp_avg")
    v = mapping.get_hp_fragment("exp_avg_sq")
    address = mapping.lp_fragment_address
    return AdamShard(
        m.reshape(-1),
        v.reshape(-1),
        int(address.start),
        int(address.numel),
        param.shape,
    )


def _zero_has_state(zero_optimizer: Any) -> bool:
    """Whether a DeepSpeed ZeRO optimizer has Adam state yet (False before its first step).

    Decided from the inner fp32 optimizer over the flat partitions, which every rank holds, so all ranks
    agree and never enter a `full=True` collective on one rank only.
    """
    inner = getattr(zero_optimizer, "optimizer", None)
    state = getattr(inner, "state", None)
    if state is None:
        return True  # unknown layout: let DeepSpeed's own accessors decide
    return any("exp_avg" in st for st in state.values())


def _dp_rank(param: torch.nn.Parameter) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0
    group = getattr(param, "ds_process_group", None)
    return dist.get_rank(group=group) if group is not None else dist.get_rank()


def adam_state_shards(optimizer: Any, model: torch.nn.Module, full: bool = False) -> dict[str, AdamShard]:
    """Adam state of every trainable parameter, as shards with their offsets.

    Args:
        optimizer: A torch Adam-family optimizer, possibly wrapped (accelerate), or a DeepSpeed ZeRO
            optimizer (the state is then read through the model's ZeRO-annotated parameters).
        model: The model whose `named_parameters()` (requires_grad only) name the result.
        full: Under ZeRO, assemble the whole state of each parameter (a collective: all ranks must call).
            Ignored for a plain torch optimizer, whose state is always whole.

    Returns:
        `{name: AdamShard}` in `named_parameters()` order. Zeros (fp32, parameter-shaped) for a parameter
        with no state yet (before the first step).

    Raises:
        ValueError: if a plain optimizer has state without `exp_avg` / `exp_avg_sq` (not Adam-like).
    """
    inner = unwrap_optimizer(optimizer)
    out: dict[str, AdamShard] = {}
    zero_state: bool | None = None
    for name, param in _trainable(model):
        kind = _zero_kind(param)
        if kind is not None and zero_state is None:
            zero_opt = getattr(param, "_z3_optimizer", None) if kind == "zero3" else None
            zero_state = _zero_has_state(zero_opt if zero_opt is not None else inner)
        if kind == "zero3":
            out[name] = _zero3_shard(name, param, full, bool(zero_state))
        elif kind == "zero12":
            out[name] = _zero12_shard(name, param, full, bool(zero_state))
        else:
            out[name] = _torch_state(inner, name, param)
    return out


def adam_state(
    optimizer: Any, model: torch.nn.Module, full: bool = False
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`(exp_avg, exp_avg_sq)` of every trainable parameter, by name.

    For a plain torch optimizer the tensors are the optimizer's own state tensors (detached views, not
    copies), parameter-shaped. Under DeepSpeed ZeRO with `full=False` they are this rank's 1-D fragment of
    the flattened parameter (see `adam_state_shards` for the offsets); with `full=True` the whole state.

    Args:
        optimizer: Torch optimizer (possibly accelerate-wrapped) or DeepSpeed ZeRO optimizer.
        model: Model whose trainable parameter names key the result.
        full: Under ZeRO, gather the full state (collective on all ranks).

    Returns:
        `{name: (exp_avg, exp_avg_sq)}`; zeros before the first optimizer step.
    """
    return {n: (s.exp_avg, s.exp_avg_sq) for n, s in adam_state_shards(optimizer, model, full=full).items()}
