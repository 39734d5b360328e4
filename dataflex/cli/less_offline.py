"""`python -m dataflex.cli.less_offline`: the LESS paper's offline recipe in one command.

    python -m dataflex.cli.less_offline                              # experiment=less_offline is implied
    python -m dataflex.cli.less_offline model=tiny selector.proj_dim=1024    # seconds-to-minutes on a CPU
    python -m dataflex.cli.less_offline less_offline.warmup_epochs=2 selector.budget=0.1
    python -m dataflex.cli.less_offline selector.warmup_dir=outputs/runs/X/warmup   # reuse a warm-up
    python -m dataflex.cli.less_offline experiment=nice_offline      # NICE's offline recipe, same warm-up

Takes the same overrides as `dataflex-run` (the `train` config plus `experiment=less_offline`,
which selects `selector=less_offline` and adds the `less_offline` block) and runs two steps in the
run directory (`hydra.run.dir=...`):

1. warm-up, in `<run dir>/warmup`: the run's model and trainer (LoRA by default) on a seeded random
   `less_offline.warmup_fraction` of the pool (the paper: 5%) for `less_offline.warmup_epochs`
   epochs (the paper: 4), one checkpoint per epoch (an epoch is ceil(k / global batch) optimizer
   steps over the k warm-up samples), every step's learning rate logged, no evaluation.
   Skipped when `selector.warmup_dir` is given.
2. selection and training, in `<run dir>`: a `dataflex-run` with `selector=less_offline` reading
   the warm-up's checkpoints: per checkpoint, Adam training features of the pool and gradient
   features of `data.validation`, learning-rate-weighted score, top k (`selector.budget`),
   written to `less_offline.json` and `selections/round_000.json`; then the model is trained
   from where it was built on those samples, for `less_offline.train_epochs` epochs over them
   (null: the trainer's own `max_steps`) and evaluated as any run.

Rerunning the same command with the same run directory resumes: a finished warm-up (its
`metrics.json`) is reused, an interrupted one resumes from its newest checkpoint, and the final
run resumes as `dataflex-run` does. `nproc=N` launches each step through torchrun as `dataflex-run`
does (the tests cover one process only). With `experiment=nice_offline` step 2 is
`selector=nice_offline` (one NICE round under every warm-up checkpoint, learning-rate-weighted,
written to `nice_offline.json`); the warm-up is the same. The Adam features read the warm-up's torch `optimizer.pt`,
which DeepSpeed checkpoints do not have: warm up without DeepSpeed (or use gradient_type=sgd).
"""

from __future__ import annotations

import copy
import math
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dataflex.config import ConfigError, register_resolvers, to_dict
from dataflex.launch import launch
from dataflex.logs import get_logger

TARGET = "dataflex.selectors.less.LessOfflineSelector"
#: the offline selectors this recipe runs (LESS's, and NICE's with experiment=nice_offline)
TARGETS = (TARGET, "dataflex.selectors.nice.NiceOfflineSelector")
WARMUP_DIR = "warmup"
#: the recipe's settings when the config has no `less_offline` block (the paper's)
DEFAULTS = {"warmup_fraction": 0.05, "warmup_epochs": 4, "train_epochs": None}
log = get_logger(__name__)


def recipe_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The `less_offline` block over :data:`DEFAULTS`, checked."""
    given = dict(cfg.get("less_offline") or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"less_offline: unknown key(s) {unknown}; valid keys: {', '.join(DEFAULTS)}")
    settings = {**DEFAULTS, **given}
    epochs = settings["warmup_epochs"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"less_offline.warmup_epochs must be an int >= 1, got {epochs!r}")
    train = settings["train_epochs"]
    if train is not None and (isinstance(train, bool) or not isinstance(train, (int, float)) or train <= 0):
        raise ConfigError(f"less_offline.train_epochs must be > 0 or null, got {train!r}")
    return settings


def global_batch(cfg: dict[str, Any]) -> int:
    """Samples per optimizer step over all processes."""
    trainer = cfg["trainer"]
    return int(trainer.get("per_device_train_batch_size", 8)) * int(trainer.get("gradient_accumulation_steps", 1)) * int(cfg.get("nproc", 1))


def pool_size(cfg: dict[str, Any], scratch: Path) -> int:
    """The number of rows of the run's training pool, tokenised as the run will (no model loaded)."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.model import load_tokenizer

    from dataflex.backend.llamafactory import build_hparams, build_pool, check_datasets, parse_hparams
    from dataflex.data.assets import ensure

    ensure([a for a in (cfg["model"].get("asset"), cfg["data"].get("asset")) if a])
    hparams = build_hparams(cfg, scratch, resume_from=None)
    check_datasets(hparams["dataset"].split(","), hparams["dataset_dir"])
    model_args, data_args, training_args, finetuning_args, _ = parse_hparams(hparams)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    pool = build_pool(template, model_args, data_args, training_args, finetuning_args.stage, tokenizer_module)
    return len(pool)


def warmup_config(cfg: dict[str, Any], pool: int) -> dict[str, Any]:
    """The warm-up run: a random subset, one checkpoint per epoch over it, every step's rate logged."""
    from dataflex.selectors.base import resolve_budget

    settings = recipe_settings(cfg)
    k = resolve_budget(settings["warmup_fraction"], pool, "less_offline.warmup_fraction")
    per_epoch = math.ceil(k / global_batch(cfg))
    warm = copy.deepcopy(cfg)
    warm["trainer"].update(
        max_steps=settings["warmup_epochs"] * per_epoch,
        save_strategy="steps",
        save_steps=per_epoch,
        save_total_limit=None,  # keep every epoch's checkpoint
        save_only_model=False,  # the Adam state is part of the feature
        logging_steps=1,  # the exact mean learning rate of every epoch
    )
    warm["selector"] = {"_target_": "dataflex.selectors.random.RandomSelector", "name": "random", "budget": k, "seed": cfg["seed"]}
    warm["mixer"] = {"name": "none"}
    warm["eval"] = {**(cfg.get("eval") or {}), "before": False, "after": False, "every_n_steps": 0}
    return warm


def final_config(cfg: dict[str, Any], warmup_dir: Path | str, pool: int | None) -> dict[str, Any]:
    """The selection + training run: the offline selector pointed at the warm-up; with
    ``train_epochs``, ``max_steps`` = that many epochs over the selection."""
    from dataflex.selectors.base import resolve_budget

    final = copy.deepcopy(cfg)
    final["selector"]["warmup_dir"] = str(Path(warmup_dir).resolve())
    epochs = recipe_settings(cfg)["train_epochs"]
    if epochs is not None:
        k = resolve_budget(final["selector"]["budget"], pool, "selector.budget")
        final["trainer"]["max_steps"] = math.ceil(epochs * k / global_batch(cfg))
    return final


def run_recipe(cfg: Any, run_dir: str | os.PathLike, run_name: str = "less_offline") -> dict[str, Any]:
    """Both steps (warm-up unless ``selector.warmup_dir`` is set, then selection + training).

    Returns:
        The final run's metrics.
    """
    cfg = to_dict(cfg)
    run_dir = Path(run_dir)
    selector = cfg.get("selector") or {}
    if selector.get("_target_") not in TARGETS:
        raise ConfigError(
            f"the LESS offline recipe needs selector=less_offline (got selector={selector.get('name', 'none')}); "
            "use experiment=less_offline (or experiment=nice_offline for NICE's offline recipe)"
        )
    settings = recipe_settings(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    pool = None
    warmup_dir = selector.get("warmup_dir")
    if not warmup_dir:
        warmup_dir = run_dir / WARMUP_DIR
        if not (warmup_dir / "metrics.json").is_file():
            pool = pool_size(cfg, warmup_dir)
            log.info("LESS warm-up in %s", warmup_dir)
            launch(warmup_config(cfg, pool), warmup_dir, f"{run_name},less_warmup")
    if settings["train_epochs"] is not None and pool is None:
        pool = pool_size(cfg, run_dir)
    log.info("LESS selection from %s, then training in %s", warmup_dir, run_dir)
    return launch(final_config(cfg, warmup_dir, pool), run_dir, run_name)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from dataflex.cli.run import fail
    from dataflex.errors import DataFlexError

    hydra_cfg = HydraConfig.get()
    run_name = cfg.get("run_name") or hydra_cfg.job.override_dirname or "less_offline"
    try:
        metrics = run_recipe(cfg, Path(hydra_cfg.runtime.output_dir), run_name)
    except DataFlexError as err:
        fail(str(err))
    loss = (metrics or {}).get("final_train_loss")
    return float(loss) if loss is not None else None


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    register_resolvers()
    if not any(a.lstrip("+~").startswith("experiment=") for a in sys.argv[1:]):
        sys.argv.append("experiment=less_offline")
    _hydra_main()


if __name__ == "__main__":
    main()
