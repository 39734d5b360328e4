"""The legacy format: the original DataFlex / LLaMA-Factory training YAML's keys, read and checked."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
from pathlib import Path
from typing import Any

from dataflex.config import register_resolvers
from dataflex.errors import ConfigError

# The original DataFlex's own keys (its DynamicFinetuningArguments and data arguments).
DATAFLEX_KEYS = (
    "train_type", "component_name", "components_cfg_file", "component_overrides", "warmup_step",
    "update_step", "update_times", "train_step", "static_mix", "mixture_sample_rule", "init_mixture_proportions",
)
# train_type -> the config group component_name picks (None: plain LLaMA-Factory training).
# static_full and dynamic_weighting are spellings the original also uses.
TRAIN_TYPES = {
    "static": None, "static_full": None,
    "dynamic_select": "selector", "dynamic_mix": "mixer", "dynamic_weight": "weighter", "dynamic_weighting": "weighter",
}
SCHEDULE = {"warmup_step": "warmup_steps", "update_step": "update_every", "update_times": "num_updates"}
SAMPLE_RULES = ("mixture", "stratified", "uniform")
SECTIONS = {"selector": "selectors", "mixer": "mixers", "weighter": "weighters"}  # of components_cfg_file
# Params every original component carried, with no counterpart here (per-method ones are declared by the
# components themselves: ``legacy_keys``, ``legacy_unused`` and ``legacy_defaults`` class attributes).
UNUSED_EVERYWHERE = {"cache_dir": "outputs live in the run directory"}
# LLaMA-Factory keys that dataflex owns (run directory, seed, tracking, resume): translated, not passed.
OWNED_KEYS = ("seed", "output_dir", "run_name", "do_train", "report_to", "plot_loss", "resume_from_checkpoint")
MODEL_KEYS = ("model_name_or_path", "template", "trust_remote_code")
DATA_KEYS = ("dataset", "dataset_dir", "cutoff_len", "max_samples", "eval_dataset")
# LLaMA-Factory's evaluation during training: dataflex evaluates its own held-out sets (the `eval` group).
EVAL_KEYS = (
    "eval_strategy", "eval_steps", "per_device_eval_batch_size", "do_eval", "val_size", "eval_on_start",
    "eval_delay", "eval_accumulation_steps", "load_best_model_at_end", "metric_for_best_model",
    "greater_is_better", "early_stopping_steps", "compute_accuracy",
)
GROUPS = ("model", "data", "trainer", "selector", "mixer", "weighter", "logger")
# Top-level names of the dataflex config: `name=value` on the command line is then a dataflex-run override.
DATAFLEX_ROOT = (*GROUPS, "paths", "eval", "experiment", "local", "nproc", "hydra")

def did_you_mean(word: Any, options) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or an empty string."""
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


@functools.cache
def llamafactory_fields() -> dict[str, dataclasses.Field]:
    """Every key LLaMA-Factory's training parser accepts (its argument dataclasses), by name."""
    from llamafactory.hparams.parser import _TRAIN_ARGS

    return {f.name: f for cls in _TRAIN_ARGS for f in dataclasses.fields(cls) if f.init}


def llamafactory_default(name: str) -> Any:
    """LLaMA-Factory's default for one of its keys."""
    field = llamafactory_fields()[name]
    return None if field.default is dataclasses.MISSING else field.default


def check_keys(legacy: dict[str, Any], where: str) -> None:
    """Raise ConfigError naming every key that is neither LLaMA-Factory's nor DataFlex's."""
    valid = sorted({*llamafactory_fields(), *DATAFLEX_KEYS})
    unknown = [f"'{key}'{did_you_mean(key, valid)}" for key in legacy if key not in valid]
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {where}; a legacy YAML holds "
            f"LLaMA-Factory arguments (llamafactory/hparams/*.py) and the DataFlex keys {', '.join(DATAFLEX_KEYS)}"
        )


def read_legacy(path: str | os.PathLike, args=()) -> tuple[dict[str, Any], list[str]]:
    """Load a legacy YAML with its command-line ``key=value`` args merged in.

    An arg whose key is a plain name (``learning_rate=1e-3``) sets that YAML key, typed as
    ``llamafactory-cli`` types it (OmegaConf); the others (``eval.max_samples=8``, ``nproc=2``,
    ``model=tiny``, ``+x=...``, ``~x``) are dataflex-run overrides, returned to be applied after the
    translation. Interpolations are resolved: ``${dataflex_home:}`` is the offline asset cache
    (``$DATAFLEX_HOME``), ``${oc.env:VAR,default}`` an environment variable.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    yaml_args, passthrough = [], []
    for arg in args:
        key = arg.split("=", 1)[0]
        if "=" in arg and re.fullmatch(r"[A-Za-z_]\w*", key) and key not in DATAFLEX_ROOT:
            yaml_args.append(arg)
        elif "=" in arg or arg.startswith("~"):
            passthrough.append(arg)
        else:
            raise ConfigError(f"argument '{arg}' is not key=value")
    register_resolvers()
    try:
        loaded = OmegaConf.load(path)
        if not OmegaConf.is_dict(loaded):
            raise ConfigError(f"{path} does not hold a mapping of keys")
        legacy = OmegaConf.to_container(OmegaConf.merge(loaded, OmegaConf.from_dotlist(yaml_args)), resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {str(err).splitlines()[0]}") from None
    return legacy, passthrough
