"""The layer hooks of the per-sample gradient engine: one batched forward and one backward whose
module hooks turn each trainable module's input activations and output gradients into per-sample
parameter gradient pieces (the method, its exactness and its limits: :mod:`dataflex.signals.gradients`).

* :func:`run_hooked`: the pass; every piece ``(name, [B, *chunk], flat offset)`` goes to a sink;
* :func:`trainable_parameters`: the parameters the pieces cover.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from dataflex.signals.losses import per_sample_losses

#: A piece of a per-sample gradient: (parameter name, ``[B, *chunk_shape]``, flat element offset).
Piece = tuple[str, Tensor, int]

DEFAULT_CHUNK_SIZE = 1 << 22  # elements per sample per chunk (16 MiB fp32 per sample)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that require grad, by name (shared/tied parameters appear once).

    Args:
        model: any module (plain or PEFT-wrapped; for LoRA only the adapters require grad).

    Returns:
        ``{name: parameter}`` in ``named_parameters`` order.
    """
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------ helpers
def _token_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the padding positions of a ``[B, T, ...]`` tensor (where() also removes NaN)."""
    if mask is None or x.dim() < 2 or tuple(x.shape[:2]) != tuple(mask.shape):
        return x
    m = mask.bool().reshape(*mask.shape, *([1] * (x.dim() - 2)))
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _row_step(row_elems: int, chunk_size: int, align: int | None) -> int:
    """Rows per chunk: <= chunk_size elements, a multiple of the projector block when possible."""
    rows = max(1, chunk_size // max(1, row_elems))
    if align:
        step = align // math.gcd(align, row_elems)  # smallest row count whose size is a multiple of align
        if rows >= step:
            rows = rows // step * step
    return rows


def _linear_pieces(
    names: dict[str, str],
    module: nn.Linear,
    x: Tensor,
    g: Tensor,
    chunk_size: int,
    align: int | None,
) -> Iterator[Piece]:
    b = g.shape[0]
    x = x.reshape(b, -1, x.shape[-1]).float()
    g = g.reshape(b, -1, g.shape[-1]).float()
    if "weight" in names:
        out_f, in_f = module.weight.shape
        step = _row_step(in_f, chunk_size, align)
        gt = g.transpose(1, 2)
        for r0 in range(0, out_f, step):
            r1 = min(out_f, r0 + step)
            # [B, rows, T] @ [B, T, in] -> [B, rows, in]: sum over tokens of gout^T x, per sample.
            yield names["weight"], torch.bmm(gt[:, r0:r1], x), r0 * in_f
    if "bias" in names:
        yield names["bias"], g.sum(1), 0


def _embedding_pieces(
    names: dict[str, str],
    module: nn.Embedding,
    ids: Tensor,
    g: Tensor,
    chunk_size: int,
    align: int | None,
) -> Iterator[Piece]:
    if "weight" not in names:
        return
    b = g.shape[0]
    vocab, hidden = module.weight.shape
    ids = ids.reshape(b, -1)
    g = g.reshape(b, -1, hidden).float()
    if module.padding_idx is not None:
        # nn.Embedding never sends gradient to its padding row.
        g = torch.where((ids == module.padding_idx).unsqueeze(-1), torch.zeros((), dtype=g.dtype), g)
    step = _row_step(hidden, chunk_size, align)
    for r0 in range(0, vocab, step):
        r1 = min(vocab, r0 + step)
        sel = (ids >= r0) & (ids < r1)
        if not bool(sel.any()):
            continue  # an all-zero chunk projects to zero (linearity): skip it
        bi, ti = sel.nonzero(as_tuple=True)
        out = torch.zeros(b, r1 - r0, hidden, dtype=g.dtype, device=g.device)
        out.index_put_((bi, ids[bi, ti] - r0), g[bi, ti], accumulate=True)
        yield names["weight"], out, r0 * hidden


def _generic_pieces(names: dict[str, str], module: nn.Module, args: tuple, g: Tensor) -> Iterator[Piece]:
    """Per-sample grads of a module's direct parameters by a module-local vmap(vjp)."""
    from torch.func import functional_call, vjp, vmap

    b = g.shape[0]
    params = {k: getattr(module, k).detach() for k in names}
    batched = [isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == b for a in args]

    def one(sample_args: tuple, gi: Tensor) -> dict[str, Tensor]:
        full = tuple(a.unsqueeze(0) if bt else a for a, bt in zip(sample_args, batched, strict=True))
        _, fn = vjp(lambda p: functional_call(module, p, full), params)
        return fn(gi.unsqueeze(0))[0]

    in_dims = (tuple(0 if bt else None for bt in batched), 0)
    with torch.enable_grad():
        try:
            grads = vmap(one, in_dims=in_dims)(tuple(args), g)
        except Exception:  # noqa: BLE001 - a module vmap cannot trace: exact per-sample loop instead
            per = [
                one(
                    tuple(a[i] if bt else a for a, bt in zip(args, batched, strict=True)),
                    g[i],
                )
                for i in range(b)
            ]
            grads = {k: torch.stack([p[k] for p in per]) for k in names}
    for k, full_name in names.items():
        yield full_name, grads[k].float(), 0


def run_hooked(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    sink: Callable[[Piece], None],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    align: int | None = None,
) -> Tensor:
    """One batched forward/backward; every per-sample gradient piece goes to ``sink``.

    Returns:
        The per-sample losses ``[B]`` (detached).
    """
    trainable = trainable_parameters(model)
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    name_of = {id(p): n for n, p in trainable.items()}
    mask = batch.get("attention_mask")
    if mask is not None and bool(mask.bool().all()):
        mask = None  # no padding: skip the masking copies
    # Every hooked module output becomes ``output + anchor`` (anchor: a 0-d zero leaf per device and
    # dtype; adding it changes no value), and the backward asks for the gradient of the anchors only:
    # each output is then on a path to a requested input, so its hook fires with its output gradient,
    # and nothing but the 0-d anchors' gradients is returned. (Asking for the gradients of the outputs
    # themselves would hold every module's output gradient until the end of the backward: ~2 GB for
    # smollm2_135m full fine-tuning at 16 x 128 tokens, more than one chunk.)
    anchors: dict[tuple[torch.device, torch.dtype], Tensor] = {}
    handles = []
    # False while a hook re-runs a module locally (the generic vmap path), so the forward hooks do
    # not fire on that recomputation.
    recording = [True]

    def make_hook(module: nn.Module, names: dict[str, str]):
        def on_grad(args: tuple, g: Tensor) -> None:
            g = _token_mask(g, mask)
            if isinstance(module, nn.Linear):
                pieces = _linear_pieces(names, module, _token_mask(args[0], mask), g, chunk_size, align)
            elif isinstance(module, nn.Embedding):
                pieces = _embedding_pieces(names, module, args[0], g, chunk_size, align)
            else:
                masked = tuple(_token_mask(a, mask) if isinstance(a, Tensor) else a for a in args)
                recording[0] = False
                try:
                    pieces = list(_generic_pieces(names, module, masked, g))
                finally:
                    recording[0] = True
            for piece in pieces:
                sink(piece)

        def forward_hook(mod: nn.Module, args: tuple, output) -> None:
            if not recording[0]:
                return
            if not isinstance(output, Tensor):
                raise NotImplementedError(
                    f"per-sample gradients: module {type(mod).__name__} with trainable parameters "
                    "returns a non-tensor output"
                )
            if not output.requires_grad:
                return  # e.g. the no-grad first pass of reentrant checkpointing
            saved = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
            key = (output.device, output.dtype)
            if key not in anchors:
                anchors[key] = torch.zeros((), device=output.device, dtype=output.dtype, requires_grad=True)
            anchored = output + anchors[key]
            anchored.register_hook(lambda g: on_grad(saved, g))
            return anchored

        return forward_hook

    for module in model.modules():
        direct = {
            local: name_of[id(p)]
            for local, p in module.named_parameters(recurse=False)
            if p.requires_grad and id(p) in name_of
        }
        if direct:
            handles.append(module.register_forward_hook(make_hook(module, direct)))
    try:
        with torch.enable_grad():
            losses = per_sample_losses(model, batch, grad=True)
            if anchors:
                # Gradients w.r.t. the anchors only: the hooks see every output gradient, the engine
                # skips the (batch-summed) weight gradients, and no parameter's .grad is touched.
                torch.autograd.grad(losses.sum(), list(anchors.values()), allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        anchors.clear()
    return losses.detach()
