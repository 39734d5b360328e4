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

Neither function leaves ``.grad`` on the model's parameters (``torch.autograd.grad`` is asked only for
the gradient of a 0-d zero added to every hooked module output, see :func:`run_hooked`, so no output
gradient is held past its hook) nor changes train/eval mode. Dropout, if active in train mode, makes
batched and per-sample runs draw different masks; Llama has none by default.

Gradient checkpointing: hooks are attached to module OUTPUTS during the forward that builds the
graph, so a recomputed forward (non-reentrant checkpointing) attaches its own hooks. Not tested
with reentrant checkpointing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from dataflex.signals.hooks import (
    DEFAULT_CHUNK_SIZE,
    Piece,
    run_hooked,
    trainable_parameters,
)
from dataflex.signals.losses import per_sample_losses

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "Piece",
    "iter_single_samples",
    "per_sample_gradients",
    "per_sample_gradients_loop",
    "project_per_sample_gradients",
    "project_per_sample_gradients_loop",
    "trainable_parameters",
]


# ---------------------------------------------------------------------------------- public API
def per_sample_gradients(model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
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
    out = {n: torch.zeros(b, *p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}

    def sink(piece: Piece) -> None:
        name, g, offset = piece
        # Accumulate: a tied parameter (lm_head = embed_tokens) receives pieces from two modules.
        out[name].view(b, -1)[:, offset : offset + g[0].numel()] += g.reshape(b, -1)

    run_hooked(model, batch, sink, chunk_size=1 << 62)
    return out


def per_sample_gradients_loop(model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
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

    run_hooked(
        model,
        batch,
        sink,
        chunk_size=chunk_size,
        align=getattr(projector, "block_size", None),
    )
    return feats


def project_per_sample_gradients_loop(model: nn.Module, batch: Mapping[str, Tensor], projector) -> Tensor:
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
