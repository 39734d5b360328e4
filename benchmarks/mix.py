"""Benchmark of the mixers' cost per training step: mixer=odm and mixer=doremi vs mixer=none.

Run: ``make bench-mix`` (or ``.venv/bin/python benchmarks/mix.py [--quick] [--model tiny|small] ...``).

The same model, data and trainer for every arm (``data=offline_domains trainer=pt_full``, packed
pretraining), each arm a real ``dataflex.run.Run`` (the project's own path: LLaMA-Factory trainer,
DataFlex mixin, callback, sampler, JSONL tracker), in ONE process:

- ``none``: plain training (LLaMA-Factory's own sampler, no per-sample losses);
- ``static``: the DynamicSampler at the domains' natural sizes plus the per-domain training loss
  logged every step (what any mixer run pays besides its own method);
- ``odm``: EXP3 from the training batches' own losses (no extra forward);
- ``doremi``: the proxy step, with a frozen reference model of the same architecture beside it (the
  model's own initial weights: a trained reference costs exactly the same), one extra no-grad
  forward per micro-batch, and the alpha-weighted loss.

Step time = wall time between consecutive ``on_step_end`` events (data loading, forward, backward,
optimizer, callbacks: everything a step costs), the first ``--warmup`` steps of each run dropped.
Arms run in ``--rounds`` rounds, in a rotated order each round, so that a slow phase of a shared
machine does not fall on one arm only; each arm's figure is the median over all its timed steps,
and the ratio is that median over the ``none`` median. Wall and CPU time (this process, all
threads) are both reported: on a machine shared with other jobs the CPU time is the steadier
measure of the work a step does (``--threads 1`` keeps thread spinning out of it).

Expected: odm within 5% of none (its only extra work is one log-softmax over the logits it already
has); doremi about +1/3 (a forward pass is about a third of forward + backward) and no more. With
LLaMA-Factory's default gradient checkpointing a plain step is two forwards and a backward, so the
reference forward adds about a quarter; ``--no-gradient-checkpointing`` measures the other case.

``--model small`` is a bigger local Llama (hidden 256, 6 layers, the tiny tokenizer), built from a
fixed seed in the output directory, where the LM head is a smaller share of the step.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from transformers import TrainerCallback

ARMS = ("none", "static", "odm", "doremi")


class StepTimer(TrainerCallback):
    """Wall and CPU time of every optimizer step: from one step's end to the next (the first from its
    begin). CPU time is this process's, all threads (``time.process_time``)."""

    def __init__(self):
        self.times: list[tuple[float, float]] = []
        self._last: tuple[float, float] | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._last is None:
            self._last = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        now = (time.perf_counter(), time.process_time())
        self.times.append((now[0] - self._last[0], now[1] - self._last[1]))
        self._last = now


def small_model(out_dir: Path, tiny_dir: Path) -> Path:
    """A bigger Llama than the tiny asset (same tokenizer), built from a fixed seed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = out_dir / "small_model"
    if (path / "model.safetensors").is_file():
        return path
    path.mkdir(parents=True, exist_ok=True)
    for f in tiny_dir.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "config.json", "MANIFEST.json"):
            shutil.copy(f, path / f.name)
    config = AutoConfig.from_pretrained(tiny_dir)
    config.update(
        {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 6,
            "num_attention_heads": 8,
            "num_key_value_heads": 8,
            "head_dim": 32,
        }
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from dataflex.config import register_resolvers

    register_resolvers()
    with initialize_config_module(config_module="dataflex.conf", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def time_arm(arm: str, base: list[str], model_dir: Path, run_dir: Path, steps: int) -> list[tuple[float, float]]:
    """Train one arm for ``steps`` optimizer steps through Run; the per-step (wall, CPU) times."""
    import dataflex.backend.llamafactory as backend
    from dataflex.run import Run

    extra = {
        "none": [],
        "static": ["mixer=static"],
        "odm": ["mixer=odm"],
        "doremi": ["mixer=doremi", f"mixer.reference_dir={model_dir}"],
    }[arm]
    cfg = compose([*base, f"trainer.max_steps={steps}", *extra])
    timer = StepTimer()
    original = backend.build_trainer

    def with_timer(built, callback, extra_callbacks=None):
        return original(built, callback, [*(extra_callbacks or []), timer])

    backend.build_trainer = with_timer
    try:
        Run(cfg, run_dir, run_name=f"bench-mix-{arm}").fit()
    finally:
        backend.build_trainer = original
        shutil.rmtree(run_dir, ignore_errors=True)
    assert len(timer.times) == steps, (arm, len(timer.times))
    return timer.times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("tiny", "small"), default="tiny")
    ap.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS)
    ap.add_argument("--steps", type=int, default=25, help="timed optimizer steps per arm and round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first steps of each run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="per-device batch (packed blocks of --seq tokens)")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--max-samples", type=int, default=200, help="documents per domain")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's); 1 makes the CPU time a clean measure of work on a shared machine",
    )
    ap.add_argument(
        "--no-gradient-checkpointing",
        action="store_true",
        help="turn off LLaMA-Factory's default gradient checkpointing (a step is then 1 forward + backward, not 2)",
    )
    ap.add_argument("--quick", action="store_true", help="a smoke run: 4 timed steps, 1 round")
    ap.add_argument("--out", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds, args.warmup = 4, 1, 1
    if "none" not in args.arms:
        ap.error("--arms must include none (the baseline)")
    if args.threads:
        torch.set_num_threads(args.threads)

    from dataflex.data.assets import asset_path, ensure

    ensure(["tiny", "offline_domains"])
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-mix-"))
    model_dir = asset_path("tiny") if args.model == "tiny" else small_model(out, asset_path("tiny"))
    from transformers import AutoConfig, AutoModelForCausalLM

    params = sum(
        p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)).parameters()
    )
    base = [
        "model=tiny",
        f"model.name_or_path={model_dir}",
        "data=offline_domains",
        "trainer=pt_full",
        f"data.max_samples={args.max_samples}",
        f"data.cutoff_len={args.seq}",
        f"trainer.per_device_train_batch_size={args.batch}",
        "trainer.save_steps=1000000",
        "trainer.warmup_steps=0",
        "+trainer.disable_tqdm=true",
        "eval.before=false",
        "eval.after=false",
        "logger=jsonl",
    ]
    if args.no_gradient_checkpointing:
        base.append("+model.args.disable_gradient_checkpointing=true")
    steps = args.warmup + args.steps
    wall: dict[str, list[float]] = {arm: [] for arm in args.arms}
    cpu: dict[str, list[float]] = {arm: [] for arm in args.arms}
    for r in range(args.rounds):
        order = args.arms[r % len(args.arms) :] + args.arms[: r % len(args.arms)]
        for arm in order:
            t = time_arm(arm, base, model_dir, out / f"{arm}-{r}", steps)[args.warmup :]
            wall[arm] += [w for w, _ in t]
            cpu[arm] += [c for _, c in t]
            print(
                f"[bench-mix] round {r + 1}/{args.rounds} {arm:>6}: median {statistics.median(w for w, _ in t) * 1e3:7.1f} ms/step "
                f"(CPU {statistics.median(c for _, c in t) * 1e3:7.1f} ms)",
                flush=True,
            )
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)

    print()
    print(
        f"machine: {os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    print(
        f"model {args.model} ({params:,} parameters), batch {args.batch} x {args.seq} tokens, "
        f"{args.rounds} rounds x {args.steps} timed steps per arm (first {args.warmup} of each run dropped), "
        f"gradient checkpointing {'off' if args.no_gradient_checkpointing else 'on (the default)'}"
    )
    print()
    print(
        f"{'mixer':>8} | {'wall ms':>8} {'p10':>7} {'p90':>7} {'ratio':>7} | {'CPU ms':>8} {'p10':>7} {'p90':>7} {'ratio':>7}"
    )
    print("-" * 80)
    for arm in args.arms:
        row = f"{arm:>8} |"
        for times in (wall, cpu):
            t = sorted(times[arm])

            def q(f):
                return t[min(len(t) - 1, int(f * len(t)))]  # noqa: B023

            median = statistics.median(t)
            row += (
                f" {median * 1e3:8.1f} {q(0.1) * 1e3:7.1f} {q(0.9) * 1e3:7.1f} "
                f"{median / statistics.median(times['none']):6.3f}x |"
            )
        print(row.rstrip(" |"))
    print(
        "(medians over the timed steps; ratio = the arm's median over none's median; CPU = this process, all threads)"
    )


if __name__ == "__main__":
    main()
