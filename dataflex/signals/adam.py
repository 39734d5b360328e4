"""LESS's Adam-preconditioned training feature Γ (ALGORITHMS.md, less), for the streamed
per-sample gradients of :func:`dataflex.signals.gradients.project_per_sample_gradients`.

* :func:`adam_feature`, the pure core: Γ(g) elementwise from the optimizer's moments;
* :func:`adam_transform`: Γ as the engine's elementwise map of gradient chunks;
* :class:`AdamProjector`: the projector proxy that makes the streamed pass equal Γ of each WHOLE
  per-sample gradient (tied weights, chunks the engine skips as all-zero);
* :func:`shared_trainable_parameters`: the tied parameters that need the proxy.

:func:`dataflex.signals.features.training_features` puts them together.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from dataflex.signals.gradients import trainable_parameters

#: Adam hyperparameters of the training feature (ALGORITHMS.md: β = (0.9, 0.999), ε = 1e-8).
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


def adam_feature(
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    beta1: float = BETA1,
    beta2: float = BETA2,
    eps: float = EPS,
) -> Tensor:
    """The Adam-preconditioned training feature Γ(g), elementwise.

    m' = β1·m + (1 − β1)·g, v' = β2·v + (1 − β2)·g², Γ = m' / sqrt(v' + ε): the update direction
    Adam would take if ``grad`` were the next gradient. ε sits INSIDE the square root and there is
    no bias correction (the LESS reference definition).

    Args:
        grad: ``g``, any shape; a leading batch dimension broadcasts against the state
            (``[B, *shape]`` with ``exp_avg`` of ``shape``).
        exp_avg: the optimizer's first moment ``m`` (broadcastable to ``grad``).
        exp_avg_sq: the optimizer's second moment ``v`` (same shape as ``exp_avg``).
        beta1: β1.
        beta2: β2.
        eps: ε.

    Returns:
        Γ(g), with ``grad``'s shape (the promoted float dtype).
    """
    m = beta1 * exp_avg + (1.0 - beta1) * grad
    v = beta2 * exp_avg_sq + (1.0 - beta2) * grad * grad
    return m / torch.sqrt(v + eps)


def shared_trainable_parameters(model: torch.nn.Module) -> set[str]:
    """Names of trainable parameters owned by more than one module (tied weights, e.g. a tied
    ``lm_head``/``embed_tokens``): their per-sample gradient arrives in several pieces whose SUM
    is the gradient, so an elementwise nonlinear map (Γ) must wait for the whole of it."""
    names = {id(p): n for n, p in trainable_parameters(model).items()}
    owners = Counter(
        id(p) for module in model.modules() for _, p in module.named_parameters(recurse=False) if id(p) in names
    )
    return {names[i] for i, count in owners.items() if count > 1}


def adam_transform(
    state: Mapping[str, tuple[Tensor, Tensor]],
    beta1: float = BETA1,
    beta2: float = BETA2,
    eps: float = EPS,
    skip: set[str] | frozenset[str] = frozenset(),
) -> Callable[[str, Tensor, int], Tensor]:
    """The elementwise map ``(name, per-sample gradient chunk, flat offset) -> Γ(chunk)`` that
    :func:`~dataflex.signals.gradients.project_per_sample_gradients` applies before projecting.

    Args:
        state: ``{parameter name: (exp_avg, exp_avg_sq)}`` holding WHOLE parameters (parameter-shaped
            or flat), e.g. :func:`dataflex.signals.optimizer.adam_state` with ``full=True``.
        skip: names passed through unchanged (tied parameters, transformed once whole).
    """
    flat = {name: (m.reshape(-1), v.reshape(-1)) for name, (m, v) in state.items()}

    def transform(name: str, grad: Tensor, offset: int) -> Tensor:
        if name in skip:
            return grad
        if name not in flat:
            raise KeyError(f"no Adam state for trainable parameter {name!r}")
        m, v = flat[name]
        per_sample = math.prod(grad.shape[1:])
        if offset + per_sample > m.numel():
            raise ValueError(
                f"Adam state of {name!r} has {m.numel()} elements, a gradient chunk needs {offset + per_sample}"
            )
        m = m[offset : offset + per_sample].to(grad.device, torch.float32).view(grad.shape[1:])
        v = v[offset : offset + per_sample].to(grad.device, torch.float32).view(grad.shape[1:])
        return adam_feature(grad, m, v, beta1, beta2, eps)

    return transform


class AdamProjector:
    """A projector proxy that makes the streamed Adam pass equal Γ of each WHOLE per-sample gradient.

    :func:`~dataflex.signals.gradients.project_per_sample_gradients` hands over elementwise-mapped
    chunks; two cases need more than that, because Γ(0) = β1·m / sqrt(β2·v + ε) is not 0:

    * tied parameters (in ``whole``): their pieces are summed into complete per-sample gradients
      (they count 0 when handed over) and mapped once, at :meth:`flush`;
    * chunks the engine skips as all-zero (embedding rows no sample of the batch uses): the ranges
      of each parameter no chunk covered get Γ(0) of their elements (the same for every sample),
      projected once and added to every row at :meth:`flush`.

    Holds ``B x numel`` for each tied parameter; nothing else.
    """

    def __init__(self, projector: Any, sizes: Mapping[str, int], whole: set[str] | frozenset[str]):
        self.projector, self.sizes, self.whole = projector, dict(sizes), set(whole)
        self.dim = projector.dim
        self.block_size = getattr(projector, "block_size", None)
        self.buffers: dict[str, Tensor] = {}
        self.covered: dict[str, list[tuple[int, int]]] = {n: [] for n in self.sizes}
        self.batch: tuple[int, torch.device] | None = None

    def project(self, grads: Mapping[str, Tensor], offsets: Mapping[str, int] | None = None) -> Tensor:
        offsets = dict(offsets or {})
        rest = {}
        first = next(iter(grads.values()))
        self.batch = (first.shape[0], first.device)
        for name, g in grads.items():
            flat = g.reshape(g.shape[0], -1)
            o = int(offsets.get(name, 0))
            if name not in self.whole:
                rest[name] = g
                self.covered.setdefault(name, []).append((o, o + flat.shape[1]))
                continue
            buf = self.buffers.get(name)
            if buf is None:
                buf = torch.zeros(g.shape[0], self.sizes[name], dtype=torch.float32, device=g.device)
                self.buffers[name] = buf
            buf[:, o : o + flat.shape[1]] += flat
        if rest:
            return self.projector.project(rest, offsets={k: offsets.get(k, 0) for k in rest})
        return torch.zeros(first.shape[0], self.dim, dtype=torch.float32, device=first.device)

    @staticmethod
    def gaps(intervals: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
        """The parts of ``[0, size)`` no interval covers."""
        out, at = [], 0
        for a, b in sorted(intervals):
            if a > at:
                out.append((at, a))
            at = max(at, b)
        if at < size:
            out.append((at, size))
        return out

    def flush(self, transform: Callable[[str, Tensor, int], Tensor]) -> Tensor | None:
        """What the pieces lacked (see the class), ``[B, dim]`` or ``[1, dim]`` to broadcast; None if nothing."""
        if self.batch is None:
            return None
        b, device = self.batch
        out = torch.zeros(b, self.dim, dtype=torch.float32, device=device)
        for name, buf in self.buffers.items():
            out += self.projector.project({name: transform(name, buf, 0)})
        for name, size in self.sizes.items():
            if name in self.whole:
                continue
            for a, z in self.gaps(self.covered.get(name, []), size):
                zero_grad = torch.zeros(1, z - a, dtype=torch.float32, device=device)
                out += self.projector.project({name: transform(name, zero_grad, a)}, offsets={name: a})
        return out
