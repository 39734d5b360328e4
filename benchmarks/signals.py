"""Benchmark of the per-sample gradient engine (dataflex.signals) against the batch-size-1 loop.

Run: ``make bench-signals`` (or ``.venv/bin/python benchmarks/signals.py [--quick] [--models ...]``).

For each model (offline assets ``tiny`` and ``smollm2_135m``) and each mode (LoRA r=8 on q/v, full
fine-tuning) on the SAME model and samples:

1. projected per-sample gradient features: the batched engine
   (:func:`project_per_sample_gradients`) vs the loop (batch-size-1 forward, backward, flatten,
   project, per sample: :func:`project_per_sample_gradients_loop`), and the same without projection
   (:func:`per_sample_gradients` vs :func:`per_sample_gradients_loop`; LoRA only, since full-FT
   per-sample gradients of a 135M model do not fit B times in memory);
2. extraction time vs one plain training forward+backward over the same tokens;
3. peak memory of full-FT extraction vs the model + Adam footprint (params + grads + exp_avg +
   exp_avg_sq = 4 x parameter bytes). Peak memory is the peak resident set size (RSS, sampled every
   5 ms from /proc/self/statm by a thread) during the call, minus the RSS just before it. tracemalloc
   cannot be used: torch's CPU allocator bypasses Python's allocator.

Samples: random token ids (seeded) of lengths 96..128, right-padded to 128, labels -100 on the first
32 tokens (the "prompt"). Slow loops on the large full-FT case are timed on the first ``--loop-n``
samples and scaled to the batch (stated in the table).
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from typing import Self

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch

from dataflex.signals.gradients import (
    per_sample_gradients,
    per_sample_gradients_loop,
    project_per_sample_gradients,
    project_per_sample_gradients_loop,
    trainable_parameters,
)
from dataflex.signals.losses import model_inputs
from dataflex.signals.projection import Projector


class PeakRSS:
    """Peak RSS above the starting RSS while the context is open (sampled by a thread)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.base)
            time.sleep(self.interval)

    def __enter__(self) -> Self:
        self.base = self.rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss() - self.base)


def make_batch(vocab: int, b: int, t: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, t), generator=g)
    lengths = torch.randint(t * 3 // 4, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    ids = ids * mask
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    labels[:, : t // 4] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def subset(batch, n):
    return {k: v[:n] for k, v in batch.items()}


def train_step(model, batch) -> None:
    out = model(**model_inputs(batch), labels=batch["labels"])
    out.loss.backward()
    for p in model.parameters():
        p.grad = None


def load(name: str, mode: str):
    from transformers import AutoModelForCausalLM

    from dataflex.data.assets import asset_path

    model = AutoModelForCausalLM.from_pretrained(asset_path(name), dtype=torch.float32).eval()
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
        torch.manual_seed(0)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)
        model.eval()
    return model


def bench(name: str, mode: str, args) -> dict:
    model = load(name, mode)
    vocab = model.get_input_embeddings().weight.shape[0]
    batch = make_batch(vocab, args.batch, args.seq)
    nparams = sum(p.numel() for p in trainable_parameters(model).values())
    dim = args.dim_lora if mode == "lora" else args.dim_full
    proj = Projector(dim, seed=0, kind="rademacher")
    row = {"model": name, "mode": mode, "trainable": nparams, "dim": dim}

    with torch.no_grad():  # warm-up (allocator, lazy init)
        model(**model_inputs(subset(batch, 2)))
    row["train_step_s"], _ = timed(lambda: train_step(model, batch), args.repeat)
    with PeakRSS() as mem:
        row["engine_s"], feats = timed(lambda: project_per_sample_gradients(model, batch, proj), args.repeat)
    row["engine_peak_mb"] = mem.peak / 2**20
    loop_n = args.batch if (mode == "lora" or name == "tiny") else min(args.loop_n, args.batch)
    row["loop_n"] = loop_n
    t_loop, feats_loop = timed(lambda: project_per_sample_gradients_loop(model, subset(batch, loop_n), proj))
    row["loop_s"] = t_loop * args.batch / loop_n
    row["max_abs_diff"] = (feats[:loop_n] - feats_loop).abs().max().item()
    row["feat_scale"] = feats.abs().max().item()
    if mode == "lora" or name == "tiny":  # the unprojected dict holds B x all trainable params
        row["grads_engine_s"], _ = timed(lambda: per_sample_gradients(model, batch), args.repeat)
        row["grads_loop_s"], _ = timed(lambda: per_sample_gradients_loop(model, batch))
    # model + Adam footprint: params, grads, exp_avg, exp_avg_sq (fp32)
    row["model_opt_mb"] = (
        sum(p.numel() * p.element_size() for p in model.parameters())
        + 3 * sum(p.numel() * p.element_size() for p in trainable_parameters(model).values())
    ) / 2**20
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny only, batch 4, 64 tokens")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--modes", nargs="*", default=["lora", "full"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--dim-lora", type=int, default=8192)
    ap.add_argument(
        "--dim-full",
        type=int,
        default=16,
        help="small: the dense projection of 135M params costs ~numel*dim RNG draws",
    )
    ap.add_argument(
        "--loop-n",
        type=int,
        default=2,
        help="samples timed in the slow full-FT loop on large models",
    )
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        args.batch, args.seq = 4, 64
        args.models = args.models or ["tiny"]
    models = args.models or ["tiny", "smollm2_135m"]
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.machine()}")
    print(f"batch {args.batch}, seq {args.seq}; times in seconds (best of {args.repeat})\n")
    hdr = (
        f"{'model':<13}{'mode':<5}{'params':>11}{'dim':>6} | {'engine':>8}{'loop':>9}{'speedup':>8} | "
        f"{'grads':>7}{'g-loop':>8}{'speedup':>8} | {'train':>7}{'eng/trn':>8} | {'peakMB':>8}{'mdl+opt':>8}{'ratio':>6} | maxdiff"
    )
    print(hdr)
    print("-" * len(hdr))
    for name in models:
        for mode in args.modes:
            r = bench(name, mode, args)
            ge, gl = r.get("grads_engine_s"), r.get("grads_loop_s")
            g = f"{ge:7.2f}{gl:8.2f}{gl / ge:7.1f}x" if ge else f"{'-':>7}{'-':>8}{'-':>8}"
            loop_note = "" if r["loop_n"] == args.batch else f" (loop timed on {r['loop_n']}, scaled)"
            print(
                f"{r['model']:<13}{r['mode']:<5}{r['trainable']:>11,}{r['dim']:>6} | {r['engine_s']:8.2f}{r['loop_s']:9.2f}"
                f"{r['loop_s'] / r['engine_s']:7.1f}x | {g} | {r['train_step_s']:7.2f}{r['engine_s'] / r['train_step_s']:7.2f}x | "
                f"{r['engine_peak_mb']:8.0f}{r['model_opt_mb']:8.0f}{r['engine_peak_mb'] / r['model_opt_mb']:6.2f} | "
                f"{r['max_abs_diff']:.1e} (of {r['feat_scale']:.1e}){loop_note}",
                flush=True,
            )


if __name__ == "__main__":
    main()
