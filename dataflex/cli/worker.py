"""One process of a multi-process run (started by `dataflex-run nproc=N` through torchrun).

python -m torch.distributed.run --standalone --nproc_per_node=N -m dataflex.cli.worker RUN_DIR RUN_NAME
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import OmegaConf


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    run_dir, run_name = Path(argv[0]), argv[1]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_worker(OmegaConf.load(run_dir / "launch_config.yaml"), run_dir, run_name)


def run_worker(cfg, run_dir: Path, run_name: str) -> None:
    """This process's part of the run (RANK/WORLD_SIZE/MASTER_ADDR/... already in the environment)."""
    if cfg.trainer.get("deepspeed"):
        # ZeRO-3 needs the process group before the model is built (LLaMA-Factory loads the model
        # under deepspeed.zero.Init); initialise it first, as ENVIRONMENT.md measured.
        import deepspeed
        import torch

        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")

    from dataflex.cli.run import fail
    from dataflex.errors import DataFlexError
    from dataflex.run import Run

    try:
        Run(cfg, run_dir, run_name).fit()
    except DataFlexError as err:
        fail(str(err))
    except KeyboardInterrupt:  # the launcher says where to resume from, once
        sys.exit(130)
    finally:
        # Leave the process group explicitly: left to interpreter teardown, DeepSpeed's CPU comm
        # threads can abort a finished worker ("terminate called without an active exception").
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
