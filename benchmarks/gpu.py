"""GPU benchmark of the signals engine (``make bench-gpu``): needs only dataflex.signals, torch, transformers, peft.

Run: ``python benchmarks/gpu.py [--device cuda] [--config smollm2] [--out DIR]`` from the repository root
(``PYTHONPATH=.``; no llamafactory, hydra or deepspeed, no model weights: the models are built from a
config with random weights, which times the same work as trained ones). Writes ``gpu_bench.md`` and
``gpu_bench.json`` under ``--out`` (default ``$OUT``, else ``outputs/bench-gpu``).

On one batch (``--batch`` rows of ``--seq`` tokens, right-padded, loss on the last 3/4), LoRA r=8 on
q/v, weights in ``--dtype`` (bf16 on CUDA):

* ``train step``: one LoRA SFT step (forward, backward of the mean loss, AdamW step);
* ``dataflex <kind>``: :func:`project_per_sample_gradients` to ``--dim`` with each projection kind;
* ``reference shape``: LESS's pipeline (princeton-nlp/LESS with TRAK's BasicProjector): a batch-size-1
  forward + backward per row, the flattened gradients stacked, then ONE dense rademacher matrix
  generated on the device in blocks of 128 columns for the whole batch and applied to all its rows;
* ``per-sample grads``: :func:`per_sample_gradients` unprojected (LoRA only);
* ``less round``: one online LESS selection round as ``selector=less`` runs it: Adam training features
  (the optimizer's state after the train steps) of ``--pool`` rows and validation features of ``--val``
  rows, the subtask centroid, the top 10%.

Times are medians of ``--repeat`` runs after one warm-up, with the device synchronised; ``vs step`` is
the ratio to the train step, ``vs ref`` to the reference shape. ``cos err`` is the largest error of the
features' pairwise cosines against the exact per-sample gradients' (JL error).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from dataflex.signals.features import (
    subtask_centroids,
    top_k_indices,
    training_features,
    validation_features,
)
from dataflex.signals.gradients import (
    iter_single_samples,
    per_sample_gradients,
    project_per_sample_gradients,
    trainable_parameters,
)
from dataflex.signals.losses import model_inputs, per_sample_losses
from dataflex.signals.projection import Projector

#: Llama shapes: SmolLM2-135M's, one layer stack of a 7B (Llama-2-7B widths, ``--layers`` layers), a tiny one.
_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "vocab_size", "tie_word_embeddings")
CONFIGS = {
    "smollm2": dict(zip(_KEYS, (576, 1536, 30, 9, 3, 49152, True), strict=True)),
    "7b-layers": dict(zip(_KEYS, (4096, 11008, 2, 32, 32, 32000, False), strict=True)),
    "tiny": dict(zip(_KEYS, (64, 128, 2, 4, 2, 512, True), strict=True)),
}


def build(name: str, dtype: torch.dtype, device: str, layers: int | None):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    spec = dict(CONFIGS[name])
    if layers:
        spec["num_hidden_layers"] = layers
    config = LlamaConfig(**spec, max_position_embeddings=2048)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return model.eval(), config


def make_rows(vocab: int, n: int, t: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(t * 3 // 4, t + 1, (), generator=g))
        ids = torch.randint(5, vocab, (length,), generator=g)
        labels = ids.clone()
        labels[: length // 4] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    t = max(r["input_ids"].numel() for r in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    labels = torch.full((len(rows), t), -100)
    mask = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        n = r["input_ids"].numel()
        ids[i, :n], labels[i, :n], mask[i, :n] = r["input_ids"], r["labels"], 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def reference_shape(model, batch, dim: int, seed: int = 0, block: int = 128) -> torch.Tensor:
    """bs-1 forward/backward per row, stacked, one dense rademacher matrix per batch (TRAK BasicProjector's way)."""
    tensors = list(trainable_parameters(model).values())
    rows = []
    for single in iter_single_samples(batch):
        with torch.enable_grad():
            loss = per_sample_losses(model, single, grad=True)[0]
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float()
                               for p, g in zip(tensors, grads, strict=True)]))
    stacked = torch.stack(rows)
    out = torch.empty(stacked.shape[0], dim, device=stacked.device)
    gen = torch.Generator(device=stacked.device)
    matrix = torch.empty(stacked.shape[1], block, device=stacked.device)
    for k, start in enumerate(range(0, dim, block)):
        gen.manual_seed(seed + 1000 * k)
        matrix.bernoulli_(0.5, generator=gen).mul_(2).sub_(1)
        out[:, start : start + block] = stacked @ matrix[:, : min(block, dim - start)]
    return out / dim**0.5


def cosine_error(features: torch.Tensor, exact: torch.Tensor) -> float:
    def cos(x):
        x = torch.nn.functional.normalize(x.double(), dim=1)
        return x @ x.T

    return float((cos(features) - cos(exact)).abs().triu(1).max())


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="smollm2")
    ap.add_argument("--layers", type=int, default=None, help="override the config's layer count")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--kinds", nargs="*", default=["sjlt", "rademacher"])
    ap.add_argument("--pool", type=int, default=256, help="rows scored in the LESS round")
    ap.add_argument("--val", type=int, default=64, help="validation rows of the LESS round")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=os.environ.get("OUT") or "outputs/bench-gpu")
    args = ap.parse_args(argv)
    device = args.device
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.startswith("cuda") else "fp32")]
    model, config = build(args.config, dtype, device, args.layers)
    batch = {k: v.to(device) for k, v in collate(make_rows(config.vocab_size, args.batch, args.seq, 0)).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(fn):
        fn()  # warm-up: kernels, allocator, lazy init
        sync()
        times, out = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = fn()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out

    def step():
        model.train()
        out = model(**model_inputs(batch), labels=batch["labels"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    results: list[dict] = []
    t_step, _ = timed(step)
    results.append({"row": "train step (LoRA SFT: fwd, bwd, AdamW)", "s": t_step})
    t_grads, exact = timed(lambda: per_sample_gradients(model, batch))
    exact_flat = torch.cat([exact[n].reshape(args.batch, -1) for n in trainable_parameters(model)], 1)
    for kind in args.kinds:
        proj = Projector(args.dim, seed=0, kind=kind)
        t, feats = timed(lambda p=proj: project_per_sample_gradients(model, batch, p))
        results.append({"row": f"dataflex {kind}", "s": t, "cos_err": cosine_error(feats, exact_flat)})
    results.append({"row": "dataflex per-sample grads (unprojected)", "s": t_grads})
    t_ref, feats = timed(lambda: reference_shape(model, batch, args.dim))
    results.append({"row": "reference shape (bs-1 + dense matrix per batch)", "s": t_ref,
                    "cos_err": cosine_error(feats, exact_flat)})

    pool = make_rows(config.vocab_size, args.pool, args.seq, 1)
    val = make_rows(config.vocab_size, args.val, args.seq, 2)
    proj = Projector(args.dim, seed=0, kind=args.kinds[0])

    def less_round():
        v = validation_features(model, val, collate, proj, batch_size=args.batch, desc="val")
        centroid = subtask_centroids(v, eps=1e-12).float()
        scores = training_features(model, pool, collate, None, proj, "adam", args.batch, optimizer=optimizer,
                                   reduce=lambda f: f @ centroid.T.to(f.device), desc="pool")
        return top_k_indices(scores.max(dim=1).values, max(1, len(pool) // 10))

    t_less, _ = timed(less_round)
    results.append({"row": f"less round ({args.pool} pool + {args.val} val rows, {args.kinds[0]})", "s": t_less})
    for r in results:
        r["vs_step"] = r["s"] / t_step
        r["vs_ref"] = r["s"] / t_ref
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    head = (f"device {device} ({name}), torch {torch.__version__}, {args.config} "
            f"({config.num_hidden_layers} layers, hidden {config.hidden_size}) {str(dtype).removeprefix('torch.')}, "
            f"LoRA r=8 q/v ({exact_flat.shape[1]:,} trainable), batch {args.batch} x {args.seq}, d = {args.dim}, "
            f"median of {args.repeat}" + (f", peak GPU memory {peak:.1f} GiB" if peak is not None else ""))
    lines = [head, "", "| row | s | vs train step | vs reference | cos err |", "|---|---|---|---|---|"]
    for r in results:
        cos = f"{r['cos_err']:.3f}" if "cos_err" in r else "-"
        lines.append(f"| {r['row']} | {r['s']:.4f} | {r['vs_step']:.2f}x | {r['vs_ref']:.3f}x | {cos} |")
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.md").write_text(text)
    (out / "gpu_bench.json").write_text(json.dumps({"header": head, "rows": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
