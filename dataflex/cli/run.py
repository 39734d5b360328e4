"""`dataflex-run`: compose the Hydra config and run it.

    dataflex-run                                   # the embedded offline default (LoRA SFT of smollm2_135m)
    dataflex-run model=tiny                        # seconds, for tests
    dataflex-run model=tiny trainer=pt_full data=offline_domains
    dataflex-run model=tiny trainer=deepspeed_z2 nproc=2   # several processes (torchrun, gloo on CPU)
    dataflex-run nproc=8 nnodes=2 master_addr=node01 hydra.run.dir=/shared/runs/x   # on each of 2 nodes
    dataflex-run --cfg job model=mistral7b         # print the composed config
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dataflex.config import register_resolvers, to_dict
from dataflex.errors import ConfigError, DataFlexError
from dataflex.preflight import preflight
from dataflex.utils import atomic_write_text

LAUNCH_FILE = "launch_config.yaml"


def fail(message: str, code: int = 2):
    """One clear line on stderr and a non-zero exit; the traceback only with HYDRA_FULL_ERROR=1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise
    print(f"dataflex: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def needs_launcher(cfg: DictConfig) -> bool:
    """Several processes or nodes, or DeepSpeed (LLaMA-Factory only runs DeepSpeed distributed)."""
    return int(cfg.get("nproc", 1)) > 1 or int(cfg.get("nnodes", 1) or 1) > 1 or bool(cfg.trainer.get("deepspeed"))


def _wait_for(host: str, port: int, timeout_s: float) -> bool:
    """True once a TCP connection to ``host:port`` succeeds within ``timeout_s``."""
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, max(timeout_s, 0.1))):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(1.0)


def rendezvous_args(cfg: DictConfig, run_dir: Path) -> list[str]:
    """torchrun's node arguments: ``--standalone`` on one node; with ``nnodes`` > 1 a c10d rendezvous at
    ``master_addr:master_port`` (node_rank 0 hosts it; every other node waits up to ``rdzv_timeout``
    seconds for it to answer, then stops with one line). The rendezvous id is the run directory, the
    same on every node (``hydra.run.dir`` on a shared file system)."""
    import hashlib
    import socket

    from dataflex.errors import ConfigError

    nproc, nnodes = int(cfg.get("nproc", 1)), cfg.get("nnodes", 1)
    nnodes = 1 if nnodes is None else int(nnodes)
    if nnodes < 1:
        raise ConfigError(f"nnodes must be >= 1, got {nnodes}")
    if nnodes == 1:
        return ["--standalone", f"--nproc_per_node={nproc}"]
    master, port = cfg.get("master_addr"), int(cfg.get("master_port") or 29500)
    node_rank = int(cfg.get("node_rank") or 0)
    if not master:
        raise ConfigError(f"nnodes={nnodes} needs master_addr=<address of the node with node_rank=0>, the same on "
                          "every node (and the same hydra.run.dir on a shared file system)")
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f"node_rank must lie in [0, {nnodes}), got {node_rank}")
    try:
        socket.getaddrinfo(master, port)
    except OSError:
        raise ConfigError(f"master_addr={master} does not resolve to an address; give the host name or IP of the node "
                          "with node_rank=0") from None
    timeout = float(cfg.get("rdzv_timeout") or 300)
    if node_rank > 0 and not _wait_for(master, port, timeout):
        raise ConfigError(f"cannot reach the master {master}:{port} within {timeout:.0f} s; start node_rank=0 first, "
                          "check master_addr/master_port and that the port is open between the nodes")
    rdzv_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
    return [f"--nnodes={nnodes}", f"--nproc_per_node={nproc}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={master}:{port}", f"--rdzv-id={rdzv_id}", f"--rdzv-conf=join_timeout={int(timeout)}"]


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``gpu[07-08],cpu1`` -> ``gpu07``), as ``scontrol show hostnames``."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            end = i
            break
    token = nodelist[:end]
    if "[" not in token:
        return token
    prefix, rest = token.split("[", 1)
    inside, suffix = rest.split("]", 1)
    return prefix + inside.split(",")[0].split("-")[0] + suffix


def slurm_rank_env(cfg: DictConfig, environ: dict[str, str]) -> dict[str, str] | None:
    """The torch.distributed environment of one task of a multi-task SLURM job (``hydra.launcher.nodes=N
    hydra.launcher.tasks_per_node=G``: srun starts every rank, no torchrun), or None outside one.

    The master is the first host of ``SLURM_JOB_NODELIST``; ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` come
    from ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``. Each task is one process, so ``nproc`` must
    equal the tasks per node."""
    from dataflex.errors import ConfigError

    ntasks = int(environ.get("SLURM_NTASKS", "1") or 1)
    if ntasks <= 1 or "SLURM_PROCID" not in environ or "TORCHELASTIC_RUN_ID" in environ:
        return None
    nnodes = int(environ.get("SLURM_NNODES", environ.get("SLURM_JOB_NUM_NODES", "1")) or 1)
    per_node = ntasks // nnodes
    nproc = int(cfg.get("nproc", 1))
    if nproc != per_node:
        raise ConfigError(f"the SLURM job runs {per_node} task(s) per node (hydra.launcher.tasks_per_node) but "
                          f"nproc={nproc}; each task is one process: set nproc={per_node}")
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or "localhost"
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        hosts = []
    master = hosts[0] if hosts else first_host(nodelist)
    port = int(cfg.get("master_port") or 29500) + int(environ.get("SLURM_JOB_ID", "0") or 0) % 1000
    return {"MASTER_ADDR": master, "MASTER_PORT": str(port), "RANK": environ["SLURM_PROCID"], "WORLD_SIZE": str(ntasks),
            "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"), "LOCAL_WORLD_SIZE": str(per_node),
            "GROUP_RANK": environ.get("SLURM_NODEID", "0")}


def launch_distributed(cfg: DictConfig, run_dir: Path, run_name: str) -> dict:
    """Run the job on ``nproc`` processes with torchrun; the workers read the resolved config."""
    import torch

    launch_args = rendezvous_args(cfg, run_dir)  # bad node settings stop here, before anything is written
    atomic_write_text(run_dir / LAUNCH_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    command = [
        sys.executable, "-m", "torch.distributed.run", *launch_args,
        "-m", "dataflex.cli.worker", str(run_dir), run_name,
    ]
    print(f"[dataflex] launching: {' '.join(command)}", flush=True)
    code = subprocess.call(command, env=env)
    if code != 0:
        sys.exit(code)
    return json.loads((run_dir / "metrics.json").read_text())


def run_job(cfg: DictConfig) -> dict | None:
    from dataflex.run import Run

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    run_name = cfg.get("run_name") or hydra_cfg.job.override_dirname or "default"
    try:
        preflight(to_dict(cfg))  # once, before torchrun starts N workers that would each fail
        slurm_env = slurm_rank_env(cfg, dict(os.environ))
        if slurm_env is not None:  # a task of a multi-task SLURM job: this process is one rank
            from dataflex.cli.worker import run_worker

            os.environ.update(slurm_env)
            run_worker(cfg, run_dir, run_name)
            return json.loads((run_dir / "metrics.json").read_text()) if slurm_env["RANK"] == "0" else None
        if needs_launcher(cfg):
            return launch_distributed(cfg, run_dir, run_name)
        return Run(cfg, run_dir, run_name).fit()
    except DataFlexError as err:
        fail(str(err))
    except KeyboardInterrupt:
        interrupted(run_dir)


def interrupted(run_dir: Path) -> None:
    """Ctrl-C: one line saying where the run can resume from, exit 130 (no traceback)."""
    from dataflex.train.checkpoints import complete_checkpoints

    found = complete_checkpoints(run_dir / "checkpoints")
    where = f"its last complete checkpoint is {found[-1][1]}" if found else "it saved no checkpoint yet"
    print(f"\ndataflex: interrupted; {where}. Rerun the same command to resume.", file=sys.stderr, flush=True)
    sys.exit(130)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = run_job(cfg)
    loss = (metrics or {}).get("final_train_loss")
    return float(loss) if loss is not None else None


def model_path_overrides(argv: list[str]) -> list[str]:
    """``model=/path/to/model`` (a local model directory) becomes ``model=path`` with that directory as
    ``model.name_or_path`` and ``model.name`` (recorded as what it is); a value that looks like a path
    but is no directory is one clear error instead of Hydra's "Could not find 'model//...'"."""
    out = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key != "model" or not value or not ("/" in value or value.startswith(("~", "."))):
            out.append(arg)
            continue
        path = Path(value).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"model={value}: no such model directory; use a model config name (dataflex/conf/model/) "
                 "or the directory of a local model (its config.json, weights and tokenizer)")
        out += ["model=path", f"model.name_or_path={path}", f"model.name={path}"]
    return out


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    register_resolvers()
    try:
        sys.argv[1:] = model_path_overrides(sys.argv[1:])
    except DataFlexError as err:
        fail(str(err))
    _hydra_main()


if __name__ == "__main__":
    main()
