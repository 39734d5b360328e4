"""The signals engine against the field's pipelines on the same model, samples and d (``make bench-signals``).

Run: ``.venv/bin/python benchmarks/anchors.py [--models tiny smollm2_135m] [--batch 16] [--seq 128] [--dim 8192]``.
Needs the ``bench`` extra (``pip install -e '.[bench]'``: traker, opacus, dattri-llm); a missing one
is reported as such and its rows are skipped.

Rows, on one batch (the same ``make_batch`` samples as ``benchmarks/signals.py``), LoRA r=8 on q/v:

* ``dataflex`` (each projection kind): :func:`project_per_sample_gradients`, one batched pass;
* ``reference``: the LESS pipeline's shape (princeton-nlp/LESS ``collect_grad_reps``): one
  batch-size-1 forward + backward per sample, the flattened gradients of the batch stacked, then
  TRAK's ``BasicProjector`` (rademacher, its matrix generated in blocks of 128 columns once for the
  batch and applied to all of its samples, as LESS does on a CPU);
* ``opacus``: ``GradSampleModule`` (hooks, ``loss_reduction="sum"``) for the per-sample gradients,
  then the same dataflex projector;
* ``dattri-llm``: ``HookManager`` (``capture_style="materialized"``) for the per-sample gradients,
  then the same dataflex projector;
* ``loop (lower bound)``: the old self-loop (:func:`project_per_sample_gradients_loop`), which
  regenerates the projection for every sample: the weakest baseline, labelled as such.

Every pipeline minimises the same per-sample loss (:func:`per_sample_losses`, token-mean NLL, summed
over the batch), so their per-sample gradients must agree: ``grad rel`` is the largest
``|g - g_dataflex| / |g_dataflex|`` over parameters (unprojected; target <= 1e-4). ``cos err`` is the
largest error of the projected features' pairwise cosines against the exact gradients' cosines (the
JL error; a dense or sparse projection to d gives ~ 1/sqrt(d) x a small constant). Times are the
median of ``--repeat`` runs, seconds per batch (wall, and CPU seconds of the process, the better measure
on a machine shared with other jobs: ``--cpu-ratios``); ``ratio`` = time / the dataflex row of the same
kind (features: the first ``--kinds``; grads: ``per_sample_gradients``). Peak RSS is above the RSS
before the call (sampled every 5 ms; memory the allocator already holds from an earlier row is not
seen again, so it is an upper bound only for the first rows).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from signals import PeakRSS, load, make_batch, train_step

from dataflex.signals.gradients import (
    iter_single_samples,
    per_sample_gradients,
    project_per_sample_gradients,
    project_per_sample_gradients_loop,
    trainable_parameters,
)
from dataflex.signals.losses import per_sample_losses
from dataflex.signals.projection import Projector

# ------------------------------------------------------------------------------------- pipelines


def flat_grads(model, grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """``{name: [B, ...]}`` over the trainable parameters -> ``[B, P]`` in parameter order."""
    names = list(trainable_parameters(model))
    b = next(iter(grads.values())).shape[0]
    return torch.cat([grads[n].reshape(b, -1) for n in names], dim=1)


def reference_features(model, batch, dim: int, seed: int = 0, block_size: int = 128) -> torch.Tensor:
    """LESS's shape: bs-1 forward/backward per sample, stack, TRAK ``BasicProjector`` once per batch."""
    from trak.projectors import BasicProjector, ProjectionType

    params = trainable_parameters(model)
    tensors = list(params.values())
    rows = []
    for single in iter_single_samples(batch):
        with torch.enable_grad():
            loss = per_sample_losses(model, single, grad=True)[0]
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(tensors, grads)]))
    stacked = torch.stack(rows)
    projector = BasicProjector(
        grad_dim=stacked.shape[1], proj_dim=dim, seed=seed, proj_type=ProjectionType.rademacher,
        device=torch.device("cpu"), block_size=block_size, dtype=torch.float32,
    )
    return projector.project(stacked, model_id=0) / dim**0.5  # TRAK leaves the 1/sqrt(d) scale out


class OpacusGrads:
    """opacus ``GradSampleModule``: per-sample gradients in ``p.grad_sample`` after a summed-loss backward."""

    def __init__(self, model) -> None:
        from opacus import GradSampleModule

        self.model = model
        self.gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
        self.gsm.train()  # opacus records activations in train mode only (no dropout in these models)

    def __call__(self, batch) -> dict[str, torch.Tensor]:
        per_sample_losses(self.gsm, batch, grad=True).sum().backward()
        out = {}
        for n, p in trainable_parameters(self.model).items():
            out[n] = p.grad_sample
            p.grad, p.grad_sample = None, None
        return out

    def close(self) -> None:
        self.gsm._close()
        self.model.eval()


class DattriGrads:
    """dattri-llm ``HookManager``: materialized per-sample gradients of every hooked linear layer."""

    def __init__(self, model) -> None:
        from dattri_llm import HookManager, HookManagerConfig

        self.model = model
        self.hm = HookManager(model, HookManagerConfig(capture_style="materialized"))
        self.layer_of = {}
        for n in trainable_parameters(model):
            layer, _, leaf = n.rpartition(".")
            self.layer_of[n] = (layer, leaf)

    def __call__(self, batch) -> dict[str, torch.Tensor]:
        with self.hm.collect():
            per_sample_losses(self.model, batch, grad=True).sum().backward()
            grad = self.hm.get_gradient()
        out = {}
        for n, p in trainable_parameters(self.model).items():
            layer, leaf = self.layer_of[n]
            if leaf != "weight" or layer not in grad.data:
                raise NotImplementedError(f"dattri-llm baseline: {n} is not a hooked linear weight")
            out[n] = grad.data[layer].reshape(-1, *p.shape)
            p.grad = None
        return out

    def close(self) -> None:
        self.hm.remove()


# ---------------------------------------------------------------------------------------- helpers
def cosine_error(features: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest |cos(f_i, f_j) - cos(g_i, g_j)| over pairs (i < j)."""

    def cos(x):
        x = torch.nn.functional.normalize(x.double(), dim=1)
        return x @ x.T

    err = (cos(features) - cos(exact)).abs()
    return float(err.triu(1).max())


def grad_rel(grads: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    worst = 0.0
    for n, r in ref.items():
        g = grads[n].reshape(r.shape)
        worst = max(worst, float((g - r).norm() / r.norm().clamp_min(1e-30)))
    return worst


def measure(fn, repeat: int):
    """(median wall seconds, median CPU seconds of the process, peak RSS MiB over the runs, last result)."""
    times, cpu, peak, out = [], [], 0, None
    for _ in range(repeat):
        out = None
        with PeakRSS() as mem:
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        peak = max(peak, mem.peak)
    return statistics.median(times), statistics.median(cpu), peak / 2**20, out


def available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ------------------------------------------------------------------------------------------ bench
def bench(name: str, args) -> list[dict]:
    model = load(name, "lora")
    vocab = model.get_input_embeddings().weight.shape[0]
    batch = make_batch(vocab, args.batch, args.seq)
    with torch.no_grad():
        model(input_ids=batch["input_ids"][:2])
    exact = per_sample_gradients(model, batch)
    exact_flat = flat_grads(model, exact)
    rows: list[dict] = []

    def add(label, what, fn, feats_of=None, grads_of=None):
        t, c, mb, out = measure(fn, args.repeat)
        row = {"model": name, "pipeline": label, "what": what, "s": t, "cpu": c, "peak_mb": mb}
        if grads_of is not None:
            row["grad_rel"] = grad_rel(grads_of(out), exact)
        if feats_of is not None:
            row["cos_err"] = cosine_error(feats_of(out), exact_flat)
        rows.append(row)
        print(f"  {name:<13} {label:<46} {what:<9} {t:8.2f} s {c:8.2f} CPU-s  peak {mb:7.0f} MB", flush=True)
        return row

    add("train step (fwd+bwd, mean loss)", "step", lambda: train_step(model, batch))
    projectors = {k: Projector(args.dim, seed=0, kind=k) for k in args.kinds}
    for kind, proj in projectors.items():
        add(f"dataflex {kind}", "features", lambda p=proj: project_per_sample_gradients(model, batch, p),
            feats_of=lambda f: f)
    add("dataflex per_sample_gradients", "grads", lambda: per_sample_gradients(model, batch),
        grads_of=lambda g: g)
    default = projectors[args.kinds[0]]
    if available("trak"):
        add("reference (bs-1 + TRAK BasicProjector)", "features",
            lambda: reference_features(model, batch, args.dim), feats_of=lambda f: f)
    else:
        print("  traker not installed: reference row skipped (pip install -e '.[bench]')")
    for label, cls, mod in (("opacus GradSampleModule", OpacusGrads, "opacus"),
                            ("dattri-llm HookManager", DattriGrads, "dattri_llm")):
        if not available(mod):
            print(f"  {mod} not installed: {label} rows skipped (pip install -e '.[bench]')")
            continue
        engine = cls(model)
        try:
            add(label, "grads", lambda e=engine: e(batch), grads_of=lambda g: g)
            add(f"{label} + dataflex {args.kinds[0]}", "features",
                lambda e=engine: default.project(e(batch)), feats_of=lambda f: f)
        finally:
            engine.close()
    if not args.no_loop:
        add("loop (lower bound: regenerates R per sample)", "features",
            lambda: project_per_sample_gradients_loop(model, batch, default), feats_of=lambda f: f)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=["tiny", "smollm2_135m"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--kinds", nargs="*", default=["sjlt", "rademacher"], help="the first is the ratios' base")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-loop", action="store_true", help="skip the (slow) lower-bound loop")
    ap.add_argument("--cpu-ratios", action="store_true", help="ratios of CPU seconds (a machine shared with other jobs)")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.machine()}; batch {args.batch} x {args.seq} tokens, LoRA r=8 q/v, d = {args.dim}, "
          f"median of {args.repeat}")
    for name in args.models:
        rows = bench(name, args)
        key = "cpu" if args.cpu_ratios else "s"
        base = next(r for r in rows if r["pipeline"] == f"dataflex {args.kinds[0]}")[key]
        gbase = next(r for r in rows if r["pipeline"] == "dataflex per_sample_gradients")[key]
        step = rows[0][key]
        print(f"\n| {name} | what | s/batch | CPU-s | ratio ({key}) | vs train step | peak RSS MB | grad rel | cos err |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            ref = gbase if r["what"] == "grads" else base  # grads rows vs dataflex grads, features vs default
            rel = f"{r['grad_rel']:.1e}" if "grad_rel" in r else "-"
            cos = f"{r['cos_err']:.3f}" if "cos_err" in r else "-"
            print(f"| {r['pipeline']} | {r['what']} | {r['s']:.2f} | {r['cpu']:.2f} | {r[key] / ref:.2f}x "
                  f"| {r[key] / step:.2f}x "
                  f"| {r['peak_mb']:.0f} | {rel} | {cos} |", flush=True)
        print()


if __name__ == "__main__":
    main()
