"""Runs dataflex.cli.worker with every component decision recorded per rank (test_ranks.py starts it with
torchrun: ``rank_probe.py RUN_DIR NAME``; each rank saves ``RUN_DIR/rank<R>.pt``)."""

import os
import sys
from pathlib import Path

import torch

import dataflex.config
import dataflex.run
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


real_build = dataflex.config.build_component


def build_component(kind, cfg):
    component = real_build(kind, cfg)
    for method in DECISIONS:
        fn = getattr(component, method, None) if component is not None else None
        if fn is not None:
            setattr(component, method, recorded(kind, method, fn))
    return component


dataflex.run.build_component = build_component
dataflex.config.build_component = build_component  # Run builds its components through preflight, which imports it here


# DATAFLEX_TEST_POISON="RANK:STEP": NaN logits in that rank's training forward of that step
poison = os.environ.get("DATAFLEX_TEST_POISON")
if poison:
    import dataflex.backend.llamafactory as backend

    poison_rank, poison_step = map(int, poison.split(":"))
    real_build_trainer = backend.build_trainer

    def build_trainer(built, callback, extra=None):
        trainer = real_build_trainer(built, callback, extra)

        def hook(module, inputs, output):
            step = trainer.state.global_step + 1
            if module.training and torch.is_grad_enabled() and step == poison_step \
                    and int(os.environ.get("RANK", "0")) == poison_rank:
                return output * float("nan")
            return output

        built.model.get_output_embeddings().register_forward_hook(hook)
        return trainer

    backend.build_trainer = build_trainer


def on_train_end(self, args, state, control, **kwargs):
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    model = self.trainer.model
    trained = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"records": records, "state": self.state_dict(), "world": world, "trained": trained,
                "skipped": list(self.trainer.dataflex_nonfinite.skipped)},
               Path(sys.argv[1]) / f"rank{rank}.pt")


DataFlexCallback.on_train_end = on_train_end

from dataflex.cli.worker import main  # noqa: E402 - after the patches above, as torchrun's program

main(sys.argv[1:])
