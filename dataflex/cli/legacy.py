"""`dataflex-cli`: run an original DataFlex / LLaMA-Factory training YAML through the same Run.

    dataflex-cli train examples/selectors/loss.yaml                          # like `llamafactory-cli train`
    dataflex-cli train examples/selectors/loss.yaml learning_rate=1e-3 max_steps=4   # YAML keys
    dataflex-cli train examples/selectors/loss.yaml eval.max_samples=8       # dataflex-run overrides
    dataflex-cli migrate examples/selectors/loss.yaml    # print the equivalent dataflex-run command
    dataflex-cli version                                 # versions of the stack

The YAML is translated into `dataflex-run` Hydra overrides, composed from the shipped conf with
Hydra's compose API, and run by the same `Run`, so a legacy YAML gets exactly the defaults and the
validation of `dataflex-run`:

- LLaMA-Factory keys: `model_name_or_path` picks the shipped `model` option with that name or path
  (otherwise the model group is set to the path), with `template`/`trust_remote_code`; `dataset`
  (comma-separated, one domain each), `dataset_dir`, `cutoff_len`, `max_samples` set `data` (the
  shipped option whose datasets they are, else a custom data config), `eval_dataset` the selectors'
  target set (`data.validation`); `seed`, `run_name`, `output_dir` (the run directory) and
  `report_to: wandb` (`logger=wandb`) are dataflex's own. Every other key goes to `trainer` as it
  is, and the trainer holds ONLY the YAML's keys, so LLaMA-Factory's defaults apply to the rest, as
  under `llamafactory-cli`: `train_type: static` is plain LLaMA-Factory training.
- DataFlex keys: `train_type` picks the axis (`dynamic_select` -> `selector=`, `dynamic_mix` ->
  `mixer=`, `dynamic_weight` -> `weighter=`) and `component_name` the option; the component's
  `params` in `components_cfg_file` (then `component_overrides`) set its keys;
  `warmup_step`/`update_step`/`update_times` -> `warmup_steps`/`update_every`/`num_updates`; a
  selector without a budget selects what one window trains (global batch x `update_step`), as the
  original; `static_mix`, `mixture_sample_rule` and `init_mixture_proportions` set the mixer's
  proportions. The run length follows the original (`train_step`, else
  `warmup_step + update_step * update_times`) unless the YAML sets `max_steps`.

A key that is neither is an error naming it, with the closest valid key (the original dropped it
silently); so is a component whose config (`dataflex/conf/<group>/<name>.yaml`) does not exist.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import os
import re
import shlex
import sys
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from dataflex.cli.run import fail
from dataflex.config import ConfigError, register_resolvers
from dataflex.train.build import build_component

# -- the legacy format -------------------------------------------------------------------------------

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
# Component params of the original under another name here, and those with no counterpart.
RENAMED = {"window_size": "window"}
DROPPED = {
    "cache_dir": "outputs live in the run directory",
    "save_interval": "nothing is cached between rounds",
    "num_eval_samples": "rewards come from the training batches' own losses",
    "eval_batch_size": "rewards come from the training batches' own losses",
    "indices_path": "neighbours are computed in the run",
    "probs_path": "sampling probabilities are computed in the run",
}
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


# -- Hydra overrides ---------------------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z_/.][A-Za-z0-9_\-./]*")


def render_value(value: Any) -> str:
    """``value`` in Hydra's override grammar (strings quoted only where they must be)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        if _BARE.fullmatch(value) and value.lower() not in ("null", "true", "false", "inf", "nan"):
            return value
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{render_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot express {value!r} as a dataflex-run override")


def diff_overrides(prefix: str, base: dict, desired: dict, delete_missing: bool) -> list[str]:
    """The overrides that turn ``base`` into ``desired`` under ``prefix`` (``key=``, ``+key=``, ``~key``)."""
    out = []
    for key, value in desired.items():
        path = f"{prefix}.{key}"
        if key not in base:
            out.append(f"+{path}={render_value(value)}")
        elif isinstance(value, dict) and isinstance(base[key], dict) and value:
            out.extend(diff_overrides(path, base[key], value, delete_missing))
        elif value != base[key] or (type(value) is not type(base[key]) and base[key] is not None):
            out.append(f"{path}={render_value(value)}")  # 1 and 1.0 are equal but not the same setting
    if delete_missing:
        out.extend(f"~{prefix}.{key}" for key in base if key not in desired)
    return out


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def compose(overrides):
    """The shipped ``train.yaml`` composed with ``overrides``, as ``dataflex-run`` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_resolvers()
    try:
        with initialize_config_module(config_module="dataflex.conf", version_base="1.3"):
            return hydra_compose(config_name="train", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise ConfigError(" ".join(lines[:3])) from None


def _resolved(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def conf_file(group: str, option: str) -> Path:
    """``dataflex/conf/<group>/<option>.yaml`` (whether it exists or not)."""
    return Path(str(resources.files("dataflex.conf"))) / group / f"{option}.yaml"


def group_options(group: str) -> list[str]:
    """The option names of a shipped config group (``selector`` -> ``['delta_loss', 'loss', ...]``)."""
    return sorted(p.stem for p in conf_file(group, "x").parent.glob("*.yaml"))


def _same_location(a: Any, b: Any) -> bool:
    """Equal names, or two spellings of one existing local path."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return a == b or (pa.exists() and pb.exists() and pa.resolve() == pb.resolve())


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _pop(d: dict, keys) -> dict:
    return {k: d.pop(k) for k in keys if k in d}


# -- the translation ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Translation:
    """A legacy YAML as dataflex-run overrides.

    Attributes:
        overrides: group choices, then values (``key=``, ``+key=``, ``~key``), then the command
            line's own dataflex-run overrides.
        run_dir: the run directory (``output_dir``), or None for dataflex-run's default.
        run_name: the tracker run name (``run_name``, default the YAML's file name).
        notes: legacy settings that have no effect here, one line each.
    """

    overrides: list[str]
    run_dir: str | None
    run_name: str
    notes: list[str]

    def command(self) -> str:
        """The equivalent ``dataflex-run`` command line (shell-quoted, one override a line)."""
        args = [*self.overrides, *([f"hydra.run.dir={render_value(self.run_dir)}"] if self.run_dir else [])]
        return " \\\n    ".join(["dataflex-run", *(shlex.quote(a) for a in args)])


def translate(legacy: dict[str, Any], passthrough=(), name: str = "legacy", base_dir: str | os.PathLike = ".",
              env: dict[str, str] | None = None) -> Translation:
    """Translate a legacy YAML's keys into dataflex-run overrides (see the module docstring).

    Args:
        legacy: the YAML's keys (``read_legacy``).
        passthrough: dataflex-run overrides from the command line, applied last (one replaces a
            translated override of the same key).
        name: the run name when the YAML sets none (the YAML's file name).
        base_dir: the YAML's directory (``components_cfg_file`` may be relative to it).
        env: the environment (``FORCE_TORCHRUN``/``NPROC_PER_NODE`` set ``nproc``, as for llamafactory-cli).

    Raises:
        ConfigError: an unknown key (with the closest valid one), a component without a config, or
            values the composed config or the component refuses.
    """
    env = os.environ if env is None else env
    check_keys(legacy, name)
    trainer = dict(legacy)  # what is left after the pops: LLaMA-Factory training arguments, as they are
    flex, owned = _pop(trainer, DATAFLEX_KEYS), _pop(trainer, OWNED_KEYS)
    model_keys, data_keys, eval_keys = _pop(trainer, MODEL_KEYS), _pop(trainer, DATA_KEYS), _pop(trainer, EVAL_KEYS)
    notes: list[str] = []

    train_type = flex.setdefault("train_type", "static")
    if train_type not in TRAIN_TYPES:
        raise ConfigError(f"train_type: '{train_type}' is not one of {', '.join(TRAIN_TYPES)}{did_you_mean(train_type, TRAIN_TYPES)}")
    kind = TRAIN_TYPES[train_type]
    root, choices = _owned(owned, name, notes)
    if env.get("FORCE_TORCHRUN", "").lower() in ("1", "true"):
        root["nproc"] = int(env.get("NPROC_PER_NODE") or _device_count())

    paths = compose([]).paths
    choices["model"], model, custom_model = _model(model_keys, paths)
    trainer.setdefault("stage", llamafactory_default("stage"))
    choices["data"], data, custom_data = _data(data_keys, trainer["stage"], paths)
    choices["trainer"] = "pt_full" if trainer["stage"] == "pt" else "sft_full" if trainer.get("finetuning_type") == "full" else "sft_lora"
    if kind is None:
        ignored = sorted(set(flex) - {"train_type", "components_cfg_file"})
        if ignored:
            notes.append(f"{', '.join(ignored)}: no effect with train_type: {train_type} (plain LLaMA-Factory training)")
        params = {}
    else:
        choices[kind], params = _component(kind, flex, Path(base_dir), notes)
    _run_length(flex, kind, trainer, notes)

    selected = [f"{g}={choices[g]}" for g in GROUPS if choices.get(g)]
    base = _resolved(compose(selected))
    values = [f"{k}={render_value(v)}" for k, v in root.items() if base.get(k) != v]
    values += diff_overrides("model", base["model"], model, delete_missing=custom_model)
    values += diff_overrides("data", base["data"], data, delete_missing=custom_data)
    values += diff_overrides("trainer", base["trainer"], trainer, delete_missing=True)
    values += diff_overrides("eval", base["eval"], _evaluation(eval_keys, notes), delete_missing=False)
    if kind is not None:
        world = int(root.get("nproc", 1))
        desired = _component_values(kind, choices[kind], base[kind], params, flex, trainer, world, data["domains"], notes)
        values += diff_overrides(kind, base[kind], desired, delete_missing=False)
    given = {_override_key(o) for o in passthrough}
    overrides = [o for o in selected + values if _override_key(o) not in given] + list(passthrough)
    validate(overrides)
    return Translation(overrides, owned.get("output_dir"), str(root["run_name"]), notes)


def validate(overrides) -> None:
    """Compose ``overrides`` and build the components, the checks the Run makes before any model loads."""
    cfg = compose(overrides)
    for kind in ("selector", "mixer", "weighter"):
        build_component(kind, cfg.get(kind))


def _owned(owned: dict, name: str, notes: list[str]) -> tuple[dict, dict]:
    """The root keys and the logger choice from the keys dataflex owns."""
    if owned.get("do_train") is False:
        raise ConfigError("do_train: false; dataflex-cli train always trains (evaluation runs before and after)")
    if owned.get("resume_from_checkpoint"):
        raise ConfigError(
            "resume_from_checkpoint: a run resumes by itself from the newest complete checkpoint of its "
            "output_dir; remove the key and rerun with the same output_dir"
        )
    root = {"run_name": owned.get("run_name") or name}
    if "seed" in owned:
        root["seed"] = owned["seed"]
    report_to = [r for r in _as_list(owned.get("report_to")) if r != "none"]
    choices = {"logger": "wandb"} if {"wandb", "all"} & set(report_to) else {}
    others = [r for r in report_to if r not in ("wandb", "all")]
    if others:
        notes.append(f"report_to {others}: dataflex tracks in metrics.jsonl, and in W&B with report_to: wandb")
    if owned.get("plot_loss"):
        notes.append("plot_loss: the loss curve is in metrics.jsonl")
    return root, choices


def _evaluation(keys: dict, notes: list[str]) -> dict:
    """The ``eval`` group's values from LLaMA-Factory's evaluation keys (the others get a note unless
    they hold LLaMA-Factory's default)."""
    values = {}
    steps = keys.get("eval_steps")
    if keys.get("eval_strategy") == "steps" and isinstance(steps, int) and steps > 0:
        values["every_n_steps"] = steps
        del keys["eval_strategy"], keys["eval_steps"]
    if "per_device_eval_batch_size" in keys:
        values["batch_size"] = keys.pop("per_device_eval_batch_size")
    ignored = [k for k, v in keys.items() if v != llamafactory_default(k)]
    if ignored:
        notes.append(
            f"{', '.join(ignored)}: not used; dataflex evaluates the data config's held-out sets before and "
            "after training (and every eval.every_n_steps steps), not LLaMA-Factory's eval loop"
        )
    return values


def _shipped(group: str, option: str, paths) -> dict:
    """A shipped model/data option with ``${paths.*}`` resolved (those groups have no defaults list)."""
    from omegaconf import OmegaConf

    root = OmegaConf.create({"paths": paths, group: OmegaConf.load(conf_file(group, option))})
    return OmegaConf.to_container(root, resolve=True)[group]


def _model(keys: dict, paths) -> tuple[str | None, dict, bool]:
    """(shipped option or None, the model group's values, whether they replace the option's)."""
    nop = keys.get("model_name_or_path")
    if not nop:
        raise ConfigError("model_name_or_path is required (a shipped model name such as tiny, a path or a hub id)")
    extra = {k: keys[k] for k in ("template", "trust_remote_code") if k in keys}
    for option in group_options("model"):
        cfg = _shipped("model", option, paths)
        if nop == option or _same_location(nop, cfg.get("name_or_path")):
            return option, {**cfg, **extra}, False
    return None, {"name": Path(str(nop)).name or str(nop), "asset": None, "name_or_path": nop,
                  "template": keys.get("template"), **extra}, True


def _data(keys: dict, stage: str, paths) -> tuple[str | None, dict, bool]:
    """(shipped option or None, the data group's values, whether they replace the option's)."""
    names = _as_list(keys.get("dataset"))
    if not names:
        raise ConfigError("dataset is required (comma-separated LLaMA-Factory dataset names, one domain each)")
    values = {
        "domains": names,
        "cutoff_len": keys.get("cutoff_len", llamafactory_default("cutoff_len")),
        "max_samples": keys.get("max_samples", llamafactory_default("max_samples")),
    }
    if "eval_dataset" in keys:
        values["validation"] = keys["eval_dataset"]
    dataset_dir = keys.get("dataset_dir")
    for option in group_options("data"):
        cfg = _shipped("data", option, paths)
        known = {*(cfg.get("domains") or []), *(cfg.get("registry") or {})}
        if set(names) <= known and (dataset_dir is None or _same_location(dataset_dir, cfg.get("dataset_dir"))):
            return option, {**cfg, **values}, False
    folder = Path(dataset_dir or llamafactory_default("dataset_dir")).expanduser().absolute()
    return None, {"name": "custom", "asset": None, "stage": stage, "dataset_dir": str(folder),
                  "validation": None, **values, "eval": None}, True


def _component(kind: str, flex: dict, base_dir: Path, notes: list[str]) -> tuple[str, dict]:
    """The component's option name and its params (``components_cfg_file``, then ``component_overrides``)."""
    option = str(flex.get("component_name") or "").lower()
    if kind == "mixer" and flex.get("static_mix"):
        if option not in ("", "static"):
            notes.append(f"component_name: {option} has no effect with static_mix: true (mixer=static)")
        option = "static"
    if not option:
        raise ConfigError(f"train_type: {flex['train_type']} needs component_name (the {kind})")
    if not conf_file(kind, option).is_file():
        available = [o for o in group_options(kind) if o != "none"]
        raise ConfigError(
            f"component_name: {option}: no {kind} config dataflex/conf/{kind}/{option}.yaml "
            f"(not available in this version){did_you_mean(option, available)}; available: {', '.join(available) or 'none yet'}"
        )
    params: dict[str, Any] = {}
    if flex.get("components_cfg_file"):
        given = Path(flex["components_cfg_file"]).expanduser()  # relative to the YAML, else to the working directory
        path = next((p for p in (base_dir / given, given) if p.is_file()), None)
        if path is None:
            raise ConfigError(f"components_cfg_file {given} not found (looked in {base_dir} and {Path.cwd()})")
        import yaml

        entry = ((yaml.safe_load(path.read_text()) or {}).get(SECTIONS[kind]) or {}).get(option)
        if entry is None:
            raise ConfigError(
                f"components_cfg_file {path} has no {SECTIONS[kind]}.{option} entry; add one "
                f"(its params may be empty) or drop components_cfg_file to use conf/{kind}/{option}.yaml"
            )
        params.update((entry or {}).get("params") or {})
    params.update(flex.get("component_overrides") or {})
    out = {}
    for key, value in params.items():
        if key in DROPPED:
            notes.append(f"{SECTIONS[kind]}.{option}.{key}: not used ({DROPPED[key]})")
        else:
            out[RENAMED.get(key, key)] = value
    return option, out


def _component_values(kind: str, option: str, base: dict, params: dict, flex: dict, trainer: dict, world: int,
                      domains: list[str], notes: list[str]) -> dict:
    """The component group's values: its conf, its params, then the DataFlex schedule and mixture keys."""
    desired = {**base, **params}
    for legacy_key, key in SCHEDULE.items():
        if legacy_key not in flex:
            continue
        if key not in base:
            notes.append(f"{legacy_key}: {kind}={option} has no {key}")
            continue
        if key in params and params[key] != flex[legacy_key]:
            notes.append(f"{legacy_key}: {flex[legacy_key]} overrides {SECTIONS[kind]}.{option}.{key}: {params[key]}")
        desired[key] = flex[legacy_key]
    if kind == "selector" and "budget" in base and "budget" not in params and (flex.get("update_step") or 0) > 0:
        # The original selects exactly what one window trains: update_step global batches.
        batch = trainer.get("per_device_train_batch_size", llamafactory_default("per_device_train_batch_size"))
        accumulation = trainer.get("gradient_accumulation_steps", llamafactory_default("gradient_accumulation_steps"))
        desired["budget"] = int(batch) * int(accumulation) * world * int(flex["update_step"])
    if kind == "selector" and option == "loss" and "rule" not in params:
        desired["rule"] = "tercile"  # the original loss selector: a weighted draw by loss tercile
    if kind == "mixer":
        _mixture(option, base, desired, flex, domains)
    else:
        ignored = [k for k in ("mixture_sample_rule", "init_mixture_proportions", "static_mix") if k in flex]
        if ignored:
            notes.append(f"{', '.join(ignored)}: no effect with train_type: {flex['train_type']}")
    return desired


def _mixture(option: str, base: dict, desired: dict, flex: dict, domains: list[str]) -> None:
    """``mixture_sample_rule``/``init_mixture_proportions`` onto the mixer's proportions."""
    proportions = flex.get("init_mixture_proportions")
    if "initial_proportions" not in base and "initial_proportions" in desired:  # the original ODM's param
        given = desired.pop("initial_proportions")
        proportions = given if proportions is None else proportions
    rule = flex.get("mixture_sample_rule") or ("mixture" if proportions is not None else None)
    if rule is not None and rule not in SAMPLE_RULES:
        raise ConfigError(f"mixture_sample_rule: '{rule}' is not one of {', '.join(SAMPLE_RULES)}{did_you_mean(rule, SAMPLE_RULES)}")
    if proportions is not None:
        proportions = [float(p) for p in proportions]
        if len(proportions) != len(domains):
            raise ConfigError(f"init_mixture_proportions has {len(proportions)} entries but dataset names {len(domains)} domains")
    if rule == "mixture" and proportions is None:
        raise ConfigError("mixture_sample_rule: mixture needs init_mixture_proportions (one per dataset)")
    if rule == "uniform":
        proportions = [1.0] * len(domains)
    if option == "static":
        if rule is not None:  # stratified: the static mixer's default, proportional to domain sizes
            desired.update(proportions=proportions, proportions_file=None)
        return
    if "initial_proportions" in base:
        if proportions is not None or rule == "stratified":
            desired["initial_proportions"] = proportions
        return
    if rule == "stratified" or (proportions is not None and len(set(proportions)) > 1):
        raise ConfigError(
            f"mixer={option} starts from uniform proportions, so mixture_sample_rule: {rule} "
            f"{proportions or ''} cannot be honoured; use equal init_mixture_proportions or "
            "mixture_sample_rule: uniform, or static_mix: true for a fixed mixture"
        )


def _run_length(flex: dict, kind: str | None, trainer: dict, notes: list[str]) -> None:
    """``max_steps`` as the original sets it: ``train_step``, else ``warmup_step + update_step * update_times``
    (a selector or a dynamic mixer); ``max_steps`` in the YAML wins."""
    if kind is None:
        return
    steps = None
    if flex.get("train_step"):
        steps = int(flex["train_step"])
    elif kind in ("selector", "mixer") and not flex.get("static_mix"):
        times, every = int(flex.get("update_times", 1)), int(flex.get("update_step", 0))
        if times > 0 and every > 0:
            steps = int(flex.get("warmup_step", 0)) + every * times
    if steps is None:
        return
    if trainer.get("max_steps", -1) > 0:
        if trainer["max_steps"] != steps:
            notes.append(f"max_steps: {trainer['max_steps']} wins over the DataFlex run length {steps}")
        return
    trainer["max_steps"] = steps


def _device_count() -> int:
    import torch

    return max(torch.cuda.device_count(), 1)


def translate_file(path: str | os.PathLike, args=()) -> Translation:
    """Read and translate a legacy YAML (with its command-line args)."""
    legacy, passthrough = read_legacy(path, list(args))
    return translate(legacy, passthrough, name=Path(path).stem, base_dir=Path(path).parent)


# -- the commands ------------------------------------------------------------------------------------

VERSIONED = ("dataflex", "llamafactory", "torch", "transformers", "datasets", "peft", "trl", "accelerate",
             "deepspeed", "hydra-core")


def versions() -> dict[str, str]:
    """Python's and the installed stack's versions (``not installed`` where absent); nothing is imported."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_translation(translation: Translation) -> dict:
    """Compose the translated overrides and run them as dataflex-run runs a job; return the metrics."""
    from dataflex.cli.run import launch_distributed, needs_launcher
    from dataflex.run import Run

    cfg = compose(translation.overrides)
    if translation.run_dir:
        run_dir = Path(translation.run_dir).expanduser().absolute()
    else:
        run_dir = Path(cfg.paths.output_root).absolute() / "runs" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "dataflex_run_command.sh").write_text(translation.command() + "\n")
    print(f"[dataflex] {translation.command()}", flush=True)
    if needs_launcher(cfg):
        return launch_distributed(cfg, run_dir, translation.run_name)
    return Run(cfg, run_dir, translation.run_name).fit()


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every dataflex error
        print(f"dataflex: error: {message} (see dataflex-cli --help)", file=sys.stderr, flush=True)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dataflex-cli", description="Run original DataFlex / LLaMA-Factory training YAML with dataflex.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser("train", help="train from a legacy YAML")
    migrate = commands.add_parser("migrate", help="print the equivalent dataflex-run command")
    for sub in (train, migrate):
        sub.add_argument("config", help="a LLaMA-Factory / DataFlex training YAML")
        sub.add_argument("overrides", nargs="*", help="key=value: a YAML key, or a dataflex-run override")
    commands.add_parser("version", help="print the versions of the stack")
    return parser


def main(argv: list[str] | None = None) -> None:
    from dataflex.errors import DataFlexError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if args.command == "version":
        for name, value in versions().items():
            print(f"{name:<14}{value}")
        return
    try:
        translation = translate_file(args.config, args.overrides)
        for note in translation.notes:
            print(f"dataflex: note: {note}", file=sys.stderr, flush=True)
        if args.command == "migrate":
            print(translation.command())
        else:
            run_translation(translation)
    except DataFlexError as err:
        fail(str(err))


if __name__ == "__main__":
    main()
