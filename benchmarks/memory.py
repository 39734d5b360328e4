"""Full fine-tuning feature extraction: peak memory against a training step's (``make bench-signals``).

Run: ``.venv/bin/python benchmarks/memory.py [--model smollm2_135m] [--batch 16] [--seq 128] [--dim 8192]``.

Each measurement runs in a FRESH process (the peak RSS of a process, ``VmHWM``, never goes down, and
torch's allocator keeps what an earlier call freed), on the same full fine-tuning model and batch
(``benchmarks/signals.py``'s ``make_batch``), after one no-grad warm-up forward:

* ``train step``: one AdamW step of the mean loss (forward, backward, ``optimizer.step()``: the
  parameters' gradients and both Adam moments are allocated), the footprint extraction is held to;
* ``extract <kind> d=<dim>``: :func:`project_per_sample_gradients` of the batch (per-sample gradients
  produced in chunks of ``--chunk`` elements per sample, projected and dropped chunk by chunk).

Reported: the process's RSS after loading and warming up the model (``base``), its peak (``VmHWM``),
and the peak minus ``base`` (what the step or the extraction added). The target (issue 21) is
extraction peak <= model + optimizer + one chunk: ``model + optimizer`` is the training step's peak
(parameters, their gradients, the Adam moments, and the activations every step holds), ``one chunk``
is ``B x chunk`` fp32 (256 MiB at the defaults) plus the projector's block (dense kinds:
``block_size x d`` fp32, 128 MiB at d = 8192; sjlt: ``block_size x 2 nnz``, negligible).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def status_mb(key: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def child(args) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import torch
    from signals import load, make_batch

    from dataflex.signals.gradients import project_per_sample_gradients, trainable_parameters
    from dataflex.signals.losses import model_inputs
    from dataflex.signals.projection import Projector

    torch.manual_seed(0)
    model = load(args.model, "full")
    params = trainable_parameters(model)
    vocab = model.get_input_embeddings().weight.shape[0]
    batch = make_batch(vocab, args.batch, args.seq)
    with torch.no_grad():
        model(**model_inputs({k: v[:2] for k, v in batch.items()}))
    base = status_mb("VmRSS")
    # VmHWM is the process's peak so far, which loading may have set above base: reset it (Linux >= 4.0)
    Path("/proc/self/clear_refs").write_text("5")
    t0, c0 = time.perf_counter(), time.process_time()
    if args.one == "train":
        opt = torch.optim.AdamW(params.values(), lr=1e-5)
        out = model(**model_inputs(batch), labels=batch["labels"])
        out.loss.backward()
        opt.step()
    else:
        kind, dim = args.one.split(":")
        proj = Projector(int(dim), seed=0, kind=kind)
        project_per_sample_gradients(model, batch, proj, chunk_size=args.chunk)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    numel = sum(p.numel() for p in params.values())
    print(
        json.dumps(
            {
                "what": args.one,
                "base_mb": base,
                "peak_mb": status_mb("VmHWM"),
                "wall_s": wall,
                "cpu_s": cpu,
                "params_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
                "trainable": numel,
            }
        ),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--chunk", type=int, default=None, help="elements per sample per chunk (default: the engine's)")
    ap.add_argument("--kinds", nargs="*", default=["sjlt"], help="projections to extract with at --dim")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: train | kind:dim
    args = ap.parse_args()
    if args.chunk is None:
        from dataflex.signals.hooks import DEFAULT_CHUNK_SIZE

        args.chunk = DEFAULT_CHUNK_SIZE
    if args.one:
        child(args)
        return
    rows = []
    for what in ["train", *(f"{k}:{args.dim}" for k in args.kinds)]:
        cmd = [sys.executable, __file__, "--one", what, *sys.argv[1:]]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"  {what}: peak {r['peak_mb']:.0f} MB (base {r['base_mb']:.0f}), {r['wall_s']:.1f} s", flush=True)
    train = rows[0]
    chunk_mb = args.batch * args.chunk * 4 / 2**20
    print(
        f"\n{args.model} full fine-tuning, {train['trainable']:,} trainable ({train['params_mb']:.0f} MB fp32), "
        f"batch {args.batch} x {args.seq}, one chunk = {args.batch} x {args.chunk:,} fp32 = {chunk_mb:.0f} MB"
    )
    print("\n| measurement | wall s | CPU-s | base RSS MB | peak RSS MB | peak - base MB | peak vs train step |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        label = "train step (AdamW)" if r["what"] == "train" else f"extract {r['what'].replace(':', ' d=')}"
        print(
            f"| {label} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['base_mb']:.0f} | {r['peak_mb']:.0f} | "
            f"{r['peak_mb'] - r['base_mb']:.0f} | {r['peak_mb'] - train['peak_mb']:+.0f} MB |"
        )
    for r in rows[1:]:
        kind, dim = r["what"].split(":")
        block_mb = 4096 * (2 * 4 if kind == "sjlt" else int(dim)) * 4 / 2**20
        bound = train["peak_mb"] + chunk_mb + block_mb
        verdict = "met" if r["peak_mb"] <= bound else f"missed by {r['peak_mb'] - bound:.0f} MB"
        print(
            f"target {r['what']}: peak {r['peak_mb']:.0f} MB <= train step {train['peak_mb']:.0f} + chunk "
            f"{chunk_mb:.0f} + block {block_mb:.0f} = {bound:.0f} MB: {verdict}"
        )


if __name__ == "__main__":
    main()
