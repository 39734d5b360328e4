"""Exact batched per-sample gradients (and their streaming projection) for causal LMs.

Method: ONE batched forward and ONE backward of ``sum_i ℓ_i`` (``ℓ_i`` from
:func:`dataflex.signals.losses.per_sample_losses`), with layer hooks that turn each trainable
module's input activations and output gradients into per-sample parameter gradients:

* ``nn.Linear`` (full fine-tuning, and PEFT LoRA's ``lora_A``/``lora_B``, which are Linears):
  ``G_i = sum_t gout[i, t]^T x[i, t]`` (a batched matmul), bias ``sum_t gout[i, t]``;
* ``nn.Embedding``: ``G_i = index_add(rows = input_ids[i], gout[i])``;
* any other module with direct trainable parameters (e.g. ``LlamaRMSNorm.weight``): a
  module-local ``torch.func.vmap(vjp)`` over the samples, which is exact for any module whose
  forward is per-sample (no cross-sample interaction).

Why not ``torch.func`` over the whole model: ``vmap(grad(functional_call(model)))`` must trace the
Hugging Face mask/attention code per sample (data-dependent control flow, ``.item()``-style checks
in mask creation), and it materialises ``B x`` every parameter's gradient at once; the hook method
is exact, needs no tracing, costs about one ordinary backward pass plus one matmul per weight,
and lets :func:`project_per_sample_gradients` project each parameter chunk and drop it at once.

Exactness: the samples of a batch never interact in a causal LM forward (attention is masked to
each sample's own real tokens, position ids come from the mask), so the gradient of ``sum_i ℓ_i``
with respect to sample i's activations is the gradient of ``ℓ_i`` alone; the per-layer formulas
above are then exact. Activations and output gradients at padding positions are zeroed before
use (they are mathematically zero-weighted, but a fully masked pad query can hold NaN).

Neither function leaves ``.grad`` on the model's parameters (``torch.autograd.grad`` is used with
the module outputs as inputs) nor changes train/eval mode. Dropout, if active in train mode, makes
batched and per-sample runs draw different masks; Llama has none by default.

Gradient checkpointing: hooks are attached to module OUTPUTS during the forward that builds the
graph, so a recomputed forward (non-reentrant checkpointing) attaches its own hooks. Not tested
with reentrant checkpointing.
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
        step = align // math.gcd(
            align, row_elems
        )  # smallest row count whose size is a multiple of align
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
        g = torch.where(
            (ids == module.padding_idx).unsqueeze(-1), torch.zeros((), dtype=g.dtype), g
        )
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


def _generic_pieces(
    names: dict[str, str], module: nn.Module, args: tuple, g: Tensor
) -> Iterator[Piece]:
    """Per-sample grads of a module's direct parameters by a module-local vmap(vjp)."""
    from torch.func import functional_call, vjp, vmap

    b = g.shape[0]
    params = {k: getattr(module, k).detach() for k in names}
    batched = [isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == b for a in args]

    def one(sample_args: tuple, gi: Tensor) -> dict[str, Tensor]:
        full = tuple(
            a.unsqueeze(0) if bt else a
            for a, bt in zip(sample_args, batched, strict=True)
        )
        _, fn = vjp(lambda p: functional_call(module, p, full), params)
        return fn(gi.unsqueeze(0))[0]

    in_dims = (tuple(0 if bt else None for bt in batched), 0)
    with torch.enable_grad():
        try:
            grads = vmap(one, in_dims=in_dims)(tuple(args), g)
        except Exception:  # noqa: BLE001 - a module vmap cannot trace: exact per-sample loop instead
            per = [
                one(
                    tuple(
                        a[i] if bt else a for a, bt in zip(args, batched, strict=True)
                    ),
                    g[i],
                )
                for i in range(b)
            ]
            grads = {k: torch.stack([p[k] for p in per]) for k in names}
    for k, full_name in names.items():
        yield full_name, grads[k].float(), 0


def _run(
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
    outputs: list[Tensor] = []
    handles = []
    # False while a hook re-runs a module locally (the generic vmap path), so the forward hooks do
    # not fire on that recomputation.
    recording = [True]

    def make_hook(module: nn.Module, names: dict[str, str]):
        def on_grad(args: tuple, g: Tensor) -> None:
            g = _token_mask(g, mask)
            if isinstance(module, nn.Linear):
                pieces = _linear_pieces(
                    names, module, _token_mask(args[0], mask), g, chunk_size, align
                )
            elif isinstance(module, nn.Embedding):
                pieces = _embedding_pieces(names, module, args[0], g, chunk_size, align)
            else:
                masked = tuple(
                    _token_mask(a, mask) if isinstance(a, Tensor) else a for a in args
                )
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
            output.register_hook(lambda g: on_grad(saved, g))
            outputs.append(output)

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
            if outputs:
                # Gradients w.r.t. the module outputs only: the hooks see every output gradient, the
                # engine skips the (batch-summed) weight gradients, and no parameter's .grad is touched.
                torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        outputs.clear()
    return losses.detach()


# ---------------------------------------------------------------------------------- public API
def per_sample_gradients(
    model: nn.Module, batch: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """The gradient of each sample's ℓ_i w.r.t. every trainable parameter, computed batched.

    Equal (to float rounding) to :func:`per_sample_gradients_loop`, padded batches included.
    Holds ``B x`` every trainable parameter: for full fine-tuning of a large model use
    :func:`project_per_sample_gradients` instead.

    Args:
        model: a causal LM (plain, or PEFT-wrapped: then only the adapters are trainable).
        batch: ``input_ids``, ``attention_mask``, ``labels``; extra keys ignored.

    Returns:
        ``{name: Tensor[B, *param.shape]}`` (fp32) over :func:`trainable_parameters`. A sample
        without label tokens has an all-zero gradient.
    """
    params = trainable_parameters(model)
    b = batch["input_ids"].shape[0]
    out = {
        n: torch.zeros(b, *p.shape, dtype=torch.float32, device=p.device)
        for n, p in params.items()
    }

    def sink(piece: Piece) -> None:
        name, g, offset = piece
        # Accumulate: a tied parameter (lm_head = embed_tokens) receives pieces from two modules.
        out[name].view(b, -1)[:, offset : offset + g[0].numel()] += g.reshape(b, -1)

    _run(model, batch, sink, chunk_size=1 << 62)
    return out


def per_sample_gradients_loop(
    model: nn.Module, batch: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Reference: one batch-size-1 forward/backward per sample, padding stripped.

    Args:
        model: as :func:`per_sample_gradients`.
        batch: as :func:`per_sample_gradients`.

    Returns:
        ``{name: Tensor[B, *param.shape]}`` (fp32); ``.grad`` is never populated.
    """
    params = trainable_parameters(model)
    names, tensors = list(params), list(params.values())
    rows: list[list[Tensor]] = []
    for single in iter_single_samples(batch):
        with torch.enable_grad():
            loss = per_sample_losses(model, single, grad=True)[0]
            if loss.requires_grad:
                grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            else:
                grads = (None,) * len(tensors)
        rows.append(
            [
                torch.zeros_like(p, dtype=torch.float32) if g is None else g.float()
                for p, g in zip(tensors, grads, strict=True)
            ]
        )
    return {n: torch.stack([r[k] for r in rows]) for k, n in enumerate(names)}


def iter_single_samples(batch: Mapping[str, Tensor]) -> Iterator[dict[str, Tensor]]:
    """Each sample of a padded batch alone, as a batch of one with its padding removed.

    Args:
        batch: ``input_ids``, ``attention_mask`` (optional), ``labels``.

    Yields:
        ``{"input_ids", "attention_mask", "labels"}`` with shape ``[1, real length]``.
    """
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    for i in range(ids.shape[0]):
        keep = mask[i].bool()
        yield {
            "input_ids": ids[i][keep][None],
            "attention_mask": mask[i][keep][None],
            "labels": batch["labels"][i][keep][None],
        }


def project_per_sample_gradients(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    projector,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    transform: Callable[[str, Tensor, int], Tensor] | None = None,
) -> Tensor:
    """Batch -> projected per-sample gradient features, streaming over parameter chunks.

    Each parameter's per-sample gradient is produced in row chunks of at most ``chunk_size``
    elements per sample, projected with its flat element offset (``projector.project(..,
    offsets=...)``) and dropped, so the peak memory is about the model, the forward activations
    and one ``B x chunk_size`` chunk (plus the projector's own block), never ``B x`` all
    parameters. Because the projection is linear and depends only on (seed, name, offset), the
    result equals ``projector.project(per_sample_gradients(model, batch))``.

    Args:
        model: as :func:`per_sample_gradients`.
        batch: as :func:`per_sample_gradients`.
        projector: an object with ``project(grads, offsets) -> Tensor[B, dim]`` and ``dim``
            (:class:`dataflex.signals.projection.Projector`); its ``block_size``, if any, is used
            to align chunks so no random block is generated twice.
        chunk_size: elements per sample per chunk.
        transform: optional elementwise map ``(name, grad_chunk, offset) -> chunk`` applied before
            projecting (e.g. LESS's Adam preconditioning with the matching slice of m, v). It must
            act elementwise for the streaming result to be well defined.

    Returns:
        ``[B, projector.dim]`` fp32 features.
    """
    b = batch["input_ids"].shape[0]
    device = next(iter(trainable_parameters(model).values())).device
    feats = torch.zeros(b, projector.dim, dtype=torch.float32, device=device)

    def sink(piece: Piece) -> None:
        name, g, offset = piece
        if transform is not None:
            g = transform(name, g, offset)
        feats.add_(projector.project({name: g}, offsets={name: offset}))

    _run(
        model,
        batch,
        sink,
        chunk_size=chunk_size,
        align=getattr(projector, "block_size", None),
    )
    return feats


def project_per_sample_gradients_loop(
    model: nn.Module, batch: Mapping[str, Tensor], projector
) -> Tensor:
    """Baseline: per sample, forward, backward, flatten and project (the original LESS recipe).

    Args:
        model: as :func:`per_sample_gradients`.
        batch: as :func:`per_sample_gradients`.
        projector: as :func:`project_per_sample_gradients`.

    Returns:
        ``[B, projector.dim]`` fp32 features.
    """
    params = trainable_parameters(model)
    names, tensors = list(params), list(params.values())
    rows = []
    for single in iter_single_samples(batch):
        with torch.enable_grad():
            loss = per_sample_losses(model, single, grad=True)[0]
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        flat = {
            n: (torch.zeros_like(p) if g is None else g).float().unsqueeze(0)
            for n, p, g in zip(names, tensors, grads, strict=True)
        }
        rows.append(projector.project(flat))
    return torch.cat(rows)
