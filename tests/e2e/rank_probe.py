"""Runs dataflex.cli.worker with every component decision recorded per rank (test_ranks.py starts it with
torchrun: ``rank_probe.py RUN_DIR NAME``; each rank saves ``RUN_DIR/rank<R>.pt``).

Ranks that a launcher starts (srun under a SLURM job) get the same recording through the Hydra callback
:class:`ProbeCallback` (``+hydra.callbacks.probe._target_=rank_probe.ProbeCallback
+hydra.callbacks.probe.out_dir=DIR``): it installs the probe in the job's process before the job runs."""

import os
import sys
from pathlib import Path

import torch
from hydra.experimental.callback import Callback

import dataflex.train.build
from dataflex.train.callback import DataFlexCallback

DECISIONS = ("initial_indices", "select", "initial_proportions", "update", "batch_weights")
records = []


def recorded(kind, method, fn):
    def wrapper(*args, **kwargs):
        value = fn(*args, **kwargs)
        ctx = args[0] if args and hasattr(args[0], "global_step") else None
        kept = value.detach().cpu().clone() if torch.is_tensor(value) else value
        records.append({"kind": kind, "method": method, "step": getattr(ctx, "global_step", None), "value": kept})
        return value

    return wrapper


real_build = dataflex.train.build.build_component


def build_component(kind, cfg):
    component = real_build(kind, cfg)
    for method in DECISIONS:
        fn = getattr(component, method, None) if component is not None else None
        if fn is not None:
            setattr(component, method, recorded(kind, method, fn))
    return component


def poison_logits(spec: str) -> None:
    """``RANK:STEP``: NaN logits in that rank's training forward of that step."""
    import dataflex.backend.llamafactory as backend

    poison_rank, poison_step = map(int, spec.split(":"))
    real_build_trainer = backend.build_trainer

    def build_trainer(built, callback, extra=None):
        trainer = real_build_trainer(built, callback, extra)

        def hook(module, inputs, output):
            step = trainer.state.global_step + 1
            if (
                module.training
                and torch.is_grad_enabled()
                and step == poison_step
                and int(os.environ.get("RANK", "0")) == poison_rank
            ):
                return output * float("nan")
            return output

        built.model.get_output_embeddings().register_forward_hook(hook)
        return trainer

    backend.build_trainer = build_trainer


def install(out_dir) -> None:
    """Record every decision of this process's components; at the end of training save them, the final
    DataFlex state and the trained weights to ``out_dir/rank<RANK>.pt``."""
    out = Path(out_dir)
    # Run builds its components through dataflex.preflight, which imports build_component from here when it runs
    dataflex.train.build.build_component = build_component
    if os.environ.get("DATAFLEX_TEST_POISON"):  # "RANK:STEP"
        poison_logits(os.environ["DATAFLEX_TEST_POISON"])

    def on_train_end(self, args, state, control, **kwargs):
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        model = self.trainer.model
        trained = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save(
            {
                "records": records,
                "state": self.state_dict(),
                "world": world,
                "trained": trained,
                "skipped": list(self.trainer.dataflex_nonfinite.skipped),
            },
            out / f"rank{rank}.pt",
        )

    DataFlexCallback.on_train_end = on_train_end


class ProbeCallback(Callback):
    """Hydra callback: installs the probe in the process that runs the job (a SLURM task)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_job_start(self, config, **kwargs) -> None:
        install(self.out_dir)


if __name__ == "__main__":  # torchrun's program: the probe, then the worker
    install(sys.argv[1])
    from dataflex.cli.worker import main

    main(sys.argv[1:])
