"""`dataflex-run`: compose the Hydra config and run it.

dataflex-run                                   # the demo (experiment=demo): NEAR finds a planted target
dataflex-run model=tiny                        # seconds, for tests
dataflex-run model=tiny trainer=pt_full data=offline_domains
dataflex-run model=tiny trainer=deepspeed_z2 nproc=2   # several processes (torchrun, gloo on CPU)
dataflex-run nproc=8 nnodes=2 master_addr=node01 hydra.run.dir=/shared/runs/x   # on each of 2 nodes
dataflex-run --cfg job model=mistral7b         # print the composed config
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dataflex.config import register_resolvers
from dataflex.errors import ConfigError, DataFlexError
from dataflex.launch import launch
from dataflex.logs import to_run_log

#: what `dataflex-run` with no arguments runs (`make run`)
DEMO = "demo"


def fail(message: str, code: int = 2):
    """One clear line on stderr and a non-zero exit; the traceback only with HYDRA_FULL_ERROR=1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise
    print(f"dataflex: error: {message}", file=sys.stderr, flush=True)
    to_run_log(f"error: {message}")
    sys.exit(code)


def run_job(cfg: DictConfig) -> dict | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    run_name = cfg.get("run_name") or hydra_cfg.job.override_dirname or "default"
    try:
        return launch(cfg, run_dir, run_name)
    except DataFlexError as err:
        fail(str(err))
    except KeyboardInterrupt:
        interrupted(run_dir)


def interrupted(run_dir: Path) -> None:
    """Ctrl-C: one line saying where the run can resume from, exit 130 (no traceback)."""
    from dataflex.train.checkpoints import complete_checkpoints

    found = complete_checkpoints(run_dir / "checkpoints")
    where = f"its last complete checkpoint is {found[-1][1]}" if found else "it saved no checkpoint yet"
    message = f"interrupted; {where}. Rerun the same command to resume."
    print(f"\ndataflex: {message}", file=sys.stderr, flush=True)
    to_run_log(message)
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
            raise ConfigError(
                f"model={value}: no such model directory; use a model config name (dataflex/conf/model/) "
                "or the directory of a local model (its config.json, weights and tokenizer)"
            )
        out += ["model=path", f"model.name_or_path={path}", f"model.name={path}"]
    return out


def check_output_dirs(argv: list[str], environ: dict[str, str]) -> None:
    """The directories Hydra creates before any of our code runs (``DATAFLEX_OUTPUTS``, ``hydra.run.dir=``,
    ``hydra.sweep.dir=``) must be creatable: one line naming the one that is not, instead of Hydra's traceback."""
    given = [("DATAFLEX_OUTPUTS", environ["DATAFLEX_OUTPUTS"])] if environ.get("DATAFLEX_OUTPUTS") else []
    given += [tuple(a.split("=", 1)) for a in argv if a.split("=", 1)[0] in ("hydra.run.dir", "hydra.sweep.dir")]
    for key, value in given:
        path = Path(value).expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"{key}={value}: {existing} is a file, not a directory; use another directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}={value}: {existing} is not writable; use a writable directory")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    register_resolvers()
    if not sys.argv[1:]:  # no arguments: the demo run (any argument starts from train.yaml's plain defaults)
        sys.argv.append(f"experiment={DEMO}")
    try:
        sys.argv[1:] = model_path_overrides(sys.argv[1:])
        check_output_dirs(sys.argv[1:], dict(os.environ))
    except DataFlexError as err:
        fail(str(err))
    _hydra_main()


if __name__ == "__main__":
    main()
