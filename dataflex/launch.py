"""The one launch path: a composed config runs in this process, or on ``nproc`` processes through torchrun.

`dataflex-run`, `dataflex-cli train` and the LESS offline recipe all call :func:`launch`. Under
torchrun every worker (``python -m dataflex.cli.worker RUN_DIR RUN_NAME``) reads the resolved config
from ``RUN_DIR/launch_config.yaml`` and runs the same :class:`dataflex.run.Run`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dataflex.config import to_dict
from dataflex.logs import get_logger, quiet_libraries
from dataflex.nodes import rendezvous_args, slurm_rank_env
from dataflex.preflight import preflight
from dataflex.utils import atomic_write_text

LAUNCH_FILE = "launch_config.yaml"
log = get_logger(__name__)


def needs_torchrun(cfg: Any) -> bool:
    """Several processes or nodes, or DeepSpeed (LLaMA-Factory only runs DeepSpeed distributed)."""
    return (
        int(cfg.get("nproc", 1) or 1) > 1
        or int(cfg.get("nnodes", 1) or 1) > 1
        or bool((cfg.get("trainer") or {}).get("deepspeed"))
    )


def torchrun_command(cfg: Any, run_dir: Path, run_name: str) -> list[str]:
    """The torchrun command line that starts this node's workers (``--standalone`` on one node, a
    c10d rendezvous across ``nnodes``: :func:`dataflex.nodes.rendezvous_args`)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous_args(cfg, run_dir),
        "-m",
        "dataflex.cli.worker",
        str(run_dir),
        run_name,
    ]


def launch(cfg: Any, run_dir: str | os.PathLike, run_name: str) -> dict[str, Any]:
    """Run the job here, or through torchrun when :func:`needs_torchrun`; return its metrics.

    Args:
        cfg: the composed config (DictConfig or plain dict).
        run_dir: the run directory.
        run_name: the tracker run name.

    Raises:
        SystemExit: the workers exited with a non-zero status (their messages are already on stderr).
    """
    run_dir = Path(run_dir)
    if not cfg.get("verbose", False):
        quiet_libraries()
    slurm_env = slurm_rank_env(cfg, dict(os.environ))
    if slurm_env is not None:  # a task of a multi-task SLURM job: this process is one rank
        from dataflex.cli.worker import run_worker

        preflight(to_dict(cfg))
        os.environ.update(slurm_env)
        run_worker(cfg, run_dir, run_name)
        return json.loads((run_dir / "metrics.json").read_text()) if slurm_env["RANK"] == "0" else {}
    if not needs_torchrun(cfg):  # the Run makes the preflight checks itself
        # deferred: importing the Run pulls in transformers and LLaMA-Factory (seconds), which
        # `dataflex-run --help`, `--cfg job` and `dataflex-cli migrate` never need
        from dataflex.run import Run

        return Run(cfg, run_dir, run_name).fit()
    import torch  # deferred with the Run: only to know whether the workers get DeepSpeed's CPU accelerator

    preflight(to_dict(cfg))  # once, before torchrun starts N workers that would each fail
    command = torchrun_command(cfg, run_dir, run_name)  # bad node settings stop here, before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.create(cfg) if not OmegaConf.is_config(cfg) else cfg
    atomic_write_text(run_dir / LAUNCH_FILE, OmegaConf.to_yaml(resolved, resolve=True))
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    log.info("launching: %s", " ".join(command))
    code = subprocess.call(command, env=env)
    if code != 0:
        sys.exit(code)
    return json.loads((run_dir / "metrics.json").read_text())
