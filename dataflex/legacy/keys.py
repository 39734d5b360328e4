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
    "train_type",
    "component_name",
    "components_cfg_file",
    "component_overrides",
    "warmup_step",
    "update_step",
    "update_times",
    "train_step",
    "static_mix",
    "mixture_sample_rule",
    "init_mixture_proportions",
)
# Keys the original defines for its methods dataflex does not have (dynamic_moe): accepted, with a note.
# ``freeze_gate`` freezes every parameter whose name holds "gate" (MoE routers; the original's mix trainer
# only); ``mixer_eval_dataset`` are the dynamic_moe mixer's per-domain evaluation sets.
UNUSED_KEYS = {
    "freeze_gate": "the original's MoE gate freezing, for its dynamic_moe mixer; not available here",
    "mixer_eval_dataset": "the evaluation sets of the original's dynamic_moe mixer; no mixer here reads them",
}
# Every method of the original DataFlex (its registry at OpenDCAI/DataFlex 3c13e37), by config group.
ORIGINAL_METHODS = {
    "selector": ("cluster_less", "custom", "delta_loss", "less", "loss", "near", "nice", "random", "tsds"),
    "mixer": ("doremi", "dynamic_moe", "odm", "random", "static"),
    "weighter": ("adapt", "custom", "loss"),
}
# train_type -> the config group component_name picks (None: plain LLaMA-Factory training).
# static_full and dynamic_weighting are spellings the original also uses.
TRAIN_TYPES = {
    "static": None,
    "static_full": None,
    "dynamic_select": "selector",
    "dynamic_mix": "mixer",
    "dynamic_weight": "weighter",
    "dynamic_weighting": "weighter",
}
# the LLaMA-Factory stages dataflex's Run trains (the others fall back to LLaMA-Factory's own workflow)
DATAFLEX_STAGES = ("sft", "pt")
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
    "eval_strategy",
    "eval_steps",
    "per_device_eval_batch_size",
    "do_eval",
    "val_size",
    "eval_on_start",
    "eval_delay",
    "eval_accumulation_steps",
    "load_best_model_at_end",
    "metric_for_best_model",
    "greater_is_better",
    "early_stopping_steps",
    "compute_accuracy",
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
    valid = sorted({*llamafactory_fields(), *DATAFLEX_KEYS, *UNUSED_KEYS})
    unknown = [f"'{key}'{did_you_mean(key, valid)}" for key in legacy if key not in valid]
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {where}; a legacy YAML holds "
            f"LLaMA-Factory arguments (llamafactory/hparams/*.py) and the DataFlex keys {', '.join(DATAFLEX_KEYS)}"
        )


def _check_yaml(path: Path) -> None:
    """The file is YAML holding a mapping of keys (one line naming the problem otherwise)."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        hint = "; YAML indents with spaces, not tabs" if "\\t" in str(problem) or "\t" in str(problem) else ""
        raise ConfigError(f"{path} is not valid YAML: {problem}{where}{hint}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{path} does not hold a mapping of keys (it holds {type(loaded).__name__} {str(loaded)[:40]!r}); "
            "a training YAML is `key: value` lines"
        )


def check_method(legacy: dict[str, Any]) -> None:
    """The method first (before any other key is checked): ``train_type`` is one of the original's, and
    a dynamic one's ``component_name`` is a method dataflex has; one line naming the missing method."""
    train_type = legacy.get("train_type", "static")
    if not isinstance(train_type, str) or train_type not in TRAIN_TYPES:
        raise ConfigError(
            f"train_type: '{train_type}' is not one of {', '.join(TRAIN_TYPES)}{did_you_mean(train_type, TRAIN_TYPES)}"
        )
    kind, option = TRAIN_TYPES[train_type], legacy.get("component_name")
    if kind is None or not isinstance(option, str) or (kind == "mixer" and legacy.get("static_mix")):
        return
    from dataflex.legacy.overrides import conf_file, group_options

    option = option.lower()
    if conf_file(kind, option).is_file():
        return
    available = ", ".join(o for o in group_options(kind) if o != "none") or "none yet"
    if option in ORIGINAL_METHODS[kind]:
        raise ConfigError(
            f"{option}: the original DataFlex's {option} {kind} (component_name: {option}) is not available in "
            f"dataflex (no dataflex/conf/{kind}/{option}.yaml); {kind}s here: {available}"
        )
    raise ConfigError(
        f"component_name: {option}: no {kind} config dataflex/conf/{kind}/{option}.yaml (not a method of the "
        f"original DataFlex or of dataflex){did_you_mean(option, group_options(kind))}; {kind}s here: {available}"
    )


def check_types(legacy: dict[str, Any]) -> None:
    """The DataFlex keys' types (LLaMA-Factory checks its own keys): one line naming the key."""
    ints = ("warmup_step", "update_step", "update_times", "train_step")
    for key in ints:
        value = legacy.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{key} must be an int (a number of optimizer steps), got {value!r}")
    if legacy.get("static_mix") is not None and not isinstance(legacy["static_mix"], bool):
        raise ConfigError(f"static_mix must be true or false, got {legacy['static_mix']!r}")
    proportions = legacy.get("init_mixture_proportions")
    if proportions is not None and (
        not isinstance(proportions, list)
        or not all(isinstance(p, (int, float)) and not isinstance(p, bool) and p >= 0 for p in proportions)
    ):
        raise ConfigError(f"init_mixture_proportions must list one number >= 0 per dataset, got {proportions!r}")
    for key in ("component_overrides",):
        if legacy.get(key) is not None and not isinstance(legacy[key], dict):
            raise ConfigError(f"{key} must be a mapping of the component's params, got {legacy[key]!r}")
    for key in ("train_type", "component_name", "components_cfg_file", "mixture_sample_rule"):
        if legacy.get(key) is not None and not isinstance(legacy[key], str):
            raise ConfigError(f"{key} must be a string, got {legacy[key]!r}")


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
    if path.is_dir():
        raise ConfigError(
            f"{path} is a directory; give the training YAML file in it (dataflex-cli train {path}/<name>.yaml)"
        )
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    _check_yaml(path)
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
