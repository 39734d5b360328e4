"""Runs across several nodes: torchrun's rendezvous arguments, and the rank environment of one task of
a multi-task SLURM job (srun starts every rank; no torchrun). Used by :mod:`dataflex.launch`."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from dataflex.errors import ConfigError


def _wait_for(host: str, port: int, timeout_s: float) -> bool:
    """True once a TCP connection to ``host:port`` succeeds within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, max(timeout_s, 0.1))):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(1.0)


def rendezvous_args(cfg: Any, run_dir: Path) -> list[str]:
    """torchrun's node arguments: ``--standalone`` on one node; with ``nnodes`` > 1 a c10d rendezvous at
    ``master_addr:master_port`` (node_rank 0 hosts it; every other node waits up to ``rdzv_timeout``
    seconds for it to answer, then stops with one line). The rendezvous id is the run directory, the
    same on every node (``hydra.run.dir`` on a shared file system)."""
    nproc, nnodes = int(cfg.get("nproc", 1)), cfg.get("nnodes", 1)
    nnodes = 1 if nnodes is None else int(nnodes)
    if nnodes < 1:
        raise ConfigError(f"nnodes must be >= 1, got {nnodes}")
    if nnodes == 1:
        return ["--standalone", f"--nproc_per_node={nproc}"]
    master, port = cfg.get("master_addr"), int(cfg.get("master_port") or 29500)
    node_rank = int(cfg.get("node_rank") or 0)
    if not master:
        raise ConfigError(
            f"nnodes={nnodes} needs master_addr=<address of the node with node_rank=0>, the same on "
            "every node (and the same hydra.run.dir on a shared file system)"
        )
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f"node_rank must lie in [0, {nnodes}), got {node_rank}")
    try:
        socket.getaddrinfo(master, port)
    except OSError:
        raise ConfigError(
            f"master_addr={master} does not resolve to an address; give the host name or IP of the node "
            "with node_rank=0"
        ) from None
    timeout = float(cfg.get("rdzv_timeout") or 300)
    if node_rank > 0 and not _wait_for(master, port, timeout):
        raise ConfigError(
            f"cannot reach the master {master}:{port} within {timeout:.0f} s; start node_rank=0 first, "
            "check master_addr/master_port and that the port is open between the nodes"
        )
    rdzv_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
    return [
        f"--nnodes={nnodes}",
        f"--nproc_per_node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={master}:{port}",
        f"--rdzv-id={rdzv_id}",
        f"--rdzv-conf=join_timeout={int(timeout)}",
    ]


def _scontrol(*args: str) -> str:
    """``scontrol ARGS``'s output, or "" where scontrol is missing or fails."""
    try:
        return subprocess.run(["scontrol", *args], capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def node_address(node: str) -> str:
    """The address the other tasks reach SLURM node ``node`` at: its NodeAddr (``scontrol show node``),
    which a cluster sets where node names are not host names; the name itself otherwise."""
    fields = dict(f.split("=", 1) for f in _scontrol("show", "node", "-o", node).split() if "=" in f)
    address = fields.get("NodeAddr")
    return address if address and address != "(null)" else node


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


def slurm_rank_env(cfg: Any, environ: dict[str, str]) -> dict[str, str] | None:
    """The torch.distributed environment of one task of a multi-task SLURM job (``hydra.launcher.nodes=N
    hydra.launcher.tasks_per_node=G``: srun starts every rank, no torchrun), or None outside one.

    The master is the first host of ``SLURM_JOB_NODELIST`` (at its NodeAddr); ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` come
    from ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``. Each task is one process, so ``nproc`` must
    equal the tasks per node."""
    ntasks = int(environ.get("SLURM_NTASKS", "1") or 1)
    if ntasks <= 1 or "SLURM_PROCID" not in environ or "TORCHELASTIC_RUN_ID" in environ:
        return None
    nnodes = int(environ.get("SLURM_NNODES", environ.get("SLURM_JOB_NUM_NODES", "1")) or 1)
    per_node = ntasks // nnodes
    nproc = int(cfg.get("nproc", 1))
    if nproc != per_node:
        raise ConfigError(
            f"the SLURM job runs {per_node} task(s) per node (hydra.launcher.tasks_per_node) but "
            f"nproc={nproc}; each task is one process: set nproc={per_node}"
        )
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or "localhost"
    hosts = _scontrol("show", "hostnames", nodelist).split()
    master = node_address(hosts[0] if hosts else first_host(nodelist))
    port = int(cfg.get("master_port") or 29500) + int(environ.get("SLURM_JOB_ID", "0") or 0) % 1000
    return {
        "MASTER_ADDR": master,
        "MASTER_PORT": str(port),
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": str(ntasks),
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(per_node),
        "GROUP_RANK": environ.get("SLURM_NODEID", "0"),
    }
