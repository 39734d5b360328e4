"""The translation: a legacy YAML's keys -> dataflex-run overrides (no model, no data, no run)."""

from __future__ import annotations

import dataclasses
import os
import shlex
from pathlib import Path
from typing import Any

from dataflex.errors import ConfigError
from dataflex.legacy.components import check_weighting_starts, component_params, component_values, run_length
from dataflex.legacy.keys import (
    DATA_KEYS,
    DATAFLEX_KEYS,
    DATAFLEX_STAGES,
    EVAL_KEYS,
    GROUPS,
    MODEL_KEYS,
    OWNED_KEYS,
    TRAIN_TYPES,
    UNUSED_KEYS,
    check_keys,
    check_method,
    check_types,
    llamafactory_default,
    read_legacy,
)
from dataflex.legacy.overrides import (
    compose,
    conf_file,
    diff_overrides,
    group_options,
    override_key,
    render_value,
    resolved,
)
from dataflex.train.build import build_component


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


@dataclasses.dataclass
class Translation:
    """A legacy YAML as dataflex-run overrides.

    Attributes:
        overrides: group choices, then values (``key=``, ``+key=``, ``~key``), then the command
            line's own dataflex-run overrides.
        run_dir: the run directory (``output_dir``), or None for dataflex-run's default.
        run_name: the tracker run name (``run_name``, default the YAML's file name).
        notes: legacy settings that have no effect here, one line each.
        llamafactory_args: for a stage dataflex's components do not train (dpo, rm, kto, ppo) with no
            DataFlex method, the YAML's LLaMA-Factory arguments, run by LLaMA-Factory's own workflow
            (``llamafactory.train.tuner.run_exp``) unchanged; None otherwise.
        source, source_args: the YAML file and its command-line ``key=value`` args (``translate_file``).
    """

    overrides: list[str]
    run_dir: str | None
    run_name: str
    notes: list[str]
    llamafactory_args: dict[str, Any] | None = None
    source: str | None = None
    source_args: list[str] = dataclasses.field(default_factory=list)

    def command(self) -> str:
        """The equivalent ``dataflex-run`` command line (shell-quoted, one override a line), or for a
        LLaMA-Factory fallback the ``llamafactory-cli train`` command that runs the same workflow."""
        if self.llamafactory_args is not None:
            source = self.source or "<this YAML>"
            words = ["llamafactory-cli train", shlex.quote(source), *(shlex.quote(a) for a in self.source_args)]
            return " \\\n    ".join(words)
        args = [*self.overrides, *([f"hydra.run.dir={render_value(self.run_dir)}"] if self.run_dir else [])]
        return " \\\n    ".join(["dataflex-run", *(shlex.quote(a) for a in args)])


def translate(
    legacy: dict[str, Any],
    passthrough=(),
    name: str = "legacy",
    base_dir: str | os.PathLike = ".",
    env: dict[str, str] | None = None,
) -> Translation:
    """Translate a legacy YAML's keys into dataflex-run overrides (see :mod:`dataflex.legacy`).

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
    check_method(legacy)  # a missing method is named before any of its keys
    check_keys(legacy, name)
    check_types(legacy)
    trainer = dict(legacy)  # what is left after the pops: LLaMA-Factory training arguments, as they are
    flex, owned = _pop(trainer, DATAFLEX_KEYS), _pop(trainer, OWNED_KEYS)
    model_keys, data_keys, eval_keys = _pop(trainer, MODEL_KEYS), _pop(trainer, DATA_KEYS), _pop(trainer, EVAL_KEYS)
    notes: list[str] = []

    train_type = flex.setdefault("train_type", "static")
    for key, why in UNUSED_KEYS.items():
        if trainer.pop(key, None) not in (None, False):
            notes.append(f"{key}: not used ({why})")
    kind = TRAIN_TYPES[train_type]
    stage = trainer.get("stage", llamafactory_default("stage"))
    if stage not in DATAFLEX_STAGES:
        if kind is not None:
            raise ConfigError(
                f"stage: {stage} with train_type: {train_type}: dataflex's selectors, mixers and weighters train "
                f"stage {' or '.join(DATAFLEX_STAGES)} only; use train_type: static to run LLaMA-Factory's own "
                f"{stage} training, or stage: sft / pt with this method"
            )
        return _fallback(legacy, flex, passthrough, name, f"stage: {stage} runs", notes)
    tokenized = legacy.get("tokenized_path")
    if tokenized and kind is None and not _saved_dataset(str(tokenized)):
        # LLaMA-Factory tokenizes the data, saves it there and trains; a later run loads it from there
        why = f"tokenized_path: {tokenized} holds no saved dataset yet, so"
        return _fallback(legacy, flex, passthrough, name, why, notes)
    root, choices = _owned(owned, name, notes)
    if env.get("FORCE_TORCHRUN", "").lower() in ("1", "true"):
        root["nproc"] = int(env.get("NPROC_PER_NODE") or _device_count())

    paths = compose([]).paths
    choices["model"], model, custom_model = _model(model_keys, paths)
    trainer.setdefault("stage", llamafactory_default("stage"))
    choices["data"], data, custom_data = _data(data_keys, trainer["stage"], paths)
    choices["trainer"] = (
        "pt_full"
        if trainer["stage"] == "pt"
        else "sft_full"
        if trainer.get("finetuning_type") == "full"
        else "sft_lora"
    )
    if kind is None:
        ignored = sorted(set(flex) - {"train_type", "components_cfg_file"})
        if ignored:
            notes.append(
                f"{', '.join(ignored)}: no effect with train_type: {train_type} (plain LLaMA-Factory training)"
            )
        params = {}
    else:
        choices[kind], params = component_params(kind, flex, Path(base_dir), notes)
    restart_every = run_length(flex, kind, trainer, notes)
    check_weighting_starts(flex, kind, choices.get(kind) if kind else None, trainer)

    selected = [f"{g}={choices[g]}" for g in GROUPS if choices.get(g)]
    base = resolved(compose(selected))
    values = [f"{k}={render_value(v)}" for k, v in root.items() if base.get(k) != v]
    values += diff_overrides("model", base["model"], model, delete_missing=custom_model)
    values += diff_overrides("data", base["data"], data, delete_missing=custom_data)
    values += diff_overrides("trainer", base["trainer"], trainer, delete_missing=True)
    evaluation = _evaluation(eval_keys, notes, "eval_dataset" in data_keys, trainer.get("logging_steps"))
    values += diff_overrides("eval", base["eval"], evaluation, delete_missing=False)
    if kind is not None:
        world = int(root.get("nproc", 1))
        desired = component_values(
            kind, choices[kind], base[kind], params, flex, trainer, world, data["domains"], notes, restart_every
        )
        values += diff_overrides(kind, base[kind], desired, delete_missing=False)
        values += _pinned(kind, choices[kind], params, values)
    given = {override_key(o) for o in passthrough}
    overrides = [o for o in selected + values if override_key(o) not in given] + list(passthrough)
    validate(overrides)
    return Translation(overrides, owned.get("output_dir"), str(root["run_name"]), notes)


def _pinned(kind: str, option: str, params: dict, values: list[str]) -> list[str]:
    """A component param of components_cfg_file that the conf sets by interpolation (``seed: ${seed}``)
    is kept as given even where it equals the resolved default (the run's own ``seed`` may differ)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.load(conf_file(kind, option))
    given = {override_key(v) for v in values}
    return [
        f"{kind}.{key}={render_value(value)}"
        for key, value in params.items()
        if key in raw and OmegaConf.is_interpolation(raw, key) and f"{kind}.{key}" not in given
    ]


def validate(overrides) -> None:
    """Compose ``overrides`` and build the components, the checks the Run makes before any model loads."""
    cfg = compose(overrides)
    for kind in ("selector", "mixer", "weighter"):
        build_component(kind, cfg.get(kind))


def refusals(translation: Translation) -> None:
    """Every check the Run makes before any model loads (dataflex.preflight), but for the input files
    an earlier step writes (DoReMi's reference model), which the Run checks when it starts: what
    `dataflex-cli migrate` runs, so that it refuses what `train` refuses."""
    from dataflex.preflight import preflight

    if translation.llamafactory_args is None:
        preflight(resolved(compose(translation.overrides)), check_inputs=False)


def _saved_dataset(path: str) -> bool:
    from llamafactory.extras.misc import has_tokenized_data

    return has_tokenized_data(path)


def _fallback(legacy: dict, flex: dict, passthrough, name: str, why: str, unused: list[str]) -> Translation:
    """What dataflex's Run does not do, with no DataFlex method (another stage; LLaMA-Factory's tokenize-and-save
    run): LLaMA-Factory's own workflow, the YAML's LLaMA-Factory keys unchanged."""
    stage = legacy.get("stage", llamafactory_default("stage"))
    notes = [
        (
            f"{why} LLaMA-Factory's own workflow unchanged (llamafactory.train.tuner.run_exp); "
            "its outputs are LLaMA-Factory's, in output_dir"
        ),
        *unused,
    ]
    ignored = sorted(set(flex) - {"train_type"})
    if ignored:
        notes.append(f"{', '.join(ignored)}: no effect with stage: {stage} (plain LLaMA-Factory training)")
    if passthrough:
        notes.append(f"{' '.join(passthrough)}: dataflex-run overrides, not used by LLaMA-Factory's {stage} workflow")
    args = {k: v for k, v in legacy.items() if k not in DATAFLEX_KEYS and k not in UNUSED_KEYS}
    return Translation([], legacy.get("output_dir"), str(legacy.get("run_name") or name), notes, llamafactory_args=args)


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


def _evaluation(keys: dict, notes: list[str], eval_dataset: bool = False, logging_steps: Any = None) -> dict:
    """The ``eval`` group's values from LLaMA-Factory's evaluation keys (the others get a note unless
    they hold LLaMA-Factory's default). ``eval_strategy: steps`` evaluates every ``eval_steps`` (else
    ``logging_steps``, as transformers does), with an ``eval_dataset`` its loss, as LLaMA-Factory does."""
    values = {}
    steps = keys.get("eval_steps") or logging_steps or llamafactory_default("logging_steps")
    if keys.get("eval_strategy") == "steps" and isinstance(steps, int) and steps > 0:
        values["every_n_steps"] = steps
        if eval_dataset:
            values["loss"] = True
        keys.pop("eval_strategy"), keys.pop("eval_steps", None)
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
    return (
        None,
        {
            "name": Path(str(nop)).name or str(nop),
            "asset": None,
            "name_or_path": nop,
            "template": keys.get("template"),
            **extra,
        },
        True,
    )


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
    folder = dataset_dir or llamafactory_default("dataset_dir")
    if not str(folder).startswith("REMOTE:"):  # LLaMA-Factory's hub-hosted dataset_info stays remote
        folder = str(Path(folder).expanduser().absolute())
    return (
        None,
        {
            "name": "custom",
            "asset": None,
            "stage": stage,
            "dataset_dir": folder,
            "validation": None,
            **values,
            "eval": None,
        },
        True,
    )


def _device_count() -> int:
    import torch

    return max(torch.cuda.device_count(), 1)


def translate_file(path: str | os.PathLike, args=()) -> Translation:
    """Read and translate a legacy YAML (with its command-line args)."""
    legacy, passthrough = read_legacy(path, list(args))
    translation = translate(legacy, passthrough, name=Path(path).stem, base_dir=Path(path).parent)
    translation.source, translation.source_args = str(path), [a for a in args if a not in passthrough]
    return translation
