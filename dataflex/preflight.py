"""Checks of the composed config that need no model: run once before any process starts.

Everything the config alone decides is refused here, in one line naming the key, what it must be
and the value given, before torchrun starts N workers (which would print N tracebacks) and before
a model loads. The component groups' own keys are checked when they are built; this module checks
the run-level keys (seed, nproc), the trainer's LLaMA-Factory keys that would otherwise fail after
the model loaded or be silently replaced by a default, the evaluation, and the schedule of the
methods that act through updates (one that could never update is refused, not run as a no-op).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dataflex.errors import ConfigError

#: trainer keys LLaMA-Factory / HF would turn into a traceback (or a silent default) after the model loads
_POSITIVE_INTS = ("per_device_train_batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps")
_NON_NEGATIVE_NUMBERS = ("learning_rate",)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _need(ok: bool, key: str, what: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {what}, got {value!r}")


def usable_processes() -> int:
    """How many worker processes this machine can run: its GPUs, else its CPU cores."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_run_keys(cfg: Mapping[str, Any]) -> None:
    """``seed`` and ``nproc``: the keys read before anything is built."""
    seed = cfg.get("seed")
    _need(_is_int(seed) and seed >= 0, "seed", "an integer >= 0", seed)
    nproc = cfg.get("nproc", 1)
    _need(_is_int(nproc) and nproc >= 1, "nproc", "an integer >= 1 (processes of the run)", nproc)
    available = usable_processes()
    if nproc > available:
        raise ConfigError(
            f"nproc={nproc} but this machine runs at most {available} processes (its GPUs, else CPU cores); "
            f"use nproc<={available}, or several nodes"
        )


def check_trainer(trainer: Mapping[str, Any]) -> None:
    """The LLaMA-Factory trainer keys whose bad values surface late or not at all."""
    for key in _POSITIVE_INTS:
        if trainer.get(key) is not None:
            _need(_is_int(trainer[key]) and trainer[key] >= 1, f"trainer.{key}", "an integer >= 1", trainer[key])
    for key in _NON_NEGATIVE_NUMBERS:  # 0 is allowed: a frozen run (e.g. DoReMi's reference = proxy check)
        if trainer.get(key) is not None:
            _need(_is_number(trainer[key]) and trainer[key] >= 0, f"trainer.{key}", "a number >= 0", trainer[key])
    max_steps = trainer.get("max_steps")
    if max_steps is not None:
        # HF treats max_steps <= 0 as "unset" and trains num_train_epochs epochs (3 by default) instead
        ok = _is_int(max_steps) and (max_steps >= 1 or (max_steps == -1 and trainer.get("num_train_epochs")))
        _need(ok, "trainer.max_steps", "an integer >= 1 (or -1 with trainer.num_train_epochs set)", max_steps)
    if trainer.get("finetuning_type", "lora") == "lora" and trainer.get("lora_rank") is not None:
        rank = trainer["lora_rank"]
        _need(_is_int(rank) and rank >= 1, "trainer.lora_rank", "an integer >= 1 (LoRA trainers)", rank)


def check_data_and_eval(data: Mapping[str, Any], eval_cfg: Mapping[str, Any]) -> None:
    max_samples = data.get("max_samples")
    if max_samples is not None:
        _need(_is_int(max_samples) and max_samples >= 1, "data.max_samples", "an integer >= 1 or null (all rows)",
              max_samples)
    for key in ("batch_size", "max_samples", "max_new_tokens", "block_size"):
        if eval_cfg.get(key) is not None:
            _need(_is_int(eval_cfg[key]) and eval_cfg[key] >= 1, f"eval.{key}", "an integer >= 1", eval_cfg[key])
    every = eval_cfg.get("every_n_steps")
    if every is not None:
        _need(_is_int(every) and every >= 0, "eval.every_n_steps", "an integer >= 0 (0: off)", every)


def check_template(model: Mapping[str, Any]) -> None:
    """``model.template`` names one of LLaMA-Factory's chat templates."""
    from llamafactory.data.template import TEMPLATES

    template = model.get("template")
    if template is not None and template not in TEMPLATES:
        import difflib

        close = difflib.get_close_matches(str(template), list(TEMPLATES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"model.template={template!r} is not a LLaMA-Factory template; {hint}"
            "see llamafactory/data/template.py for the registered names"
        )


def check_schedules(cfg: Mapping[str, Any]) -> None:
    """A method that acts through updates must get at least one update inside the run."""
    max_steps = (cfg.get("trainer") or {}).get("max_steps")
    for kind in ("selector", "mixer"):
        group = cfg.get(kind) or {}
        cls = _component_class(group.get("_target_"))
        if cls is None or not cls.acts_through_updates:
            continue
        name = f"{kind}={group.get('name', kind)}"
        every, warmup = group.get("update_every", 0), group.get("warmup_steps", 0)
        if warmup == 0 and cls.first_decision_is_own:
            continue  # a one-shot method: its decision at the start is its own
        if _is_int(every) and every <= 0:
            raise ConfigError(
                f"{name} never updates with {kind}.update_every={every}: it would train on its first "
                f"{'(random) subset' if kind == 'selector' else 'proportions'} only; set {kind}.update_every >= 1"
            )
        if _is_int(max_steps) and max_steps >= 1 and _is_int(warmup) and warmup >= max_steps:
            raise ConfigError(
                f"{name} never updates: {kind}.warmup_steps={warmup} >= trainer.max_steps={max_steps}; "
                f"lower {kind}.warmup_steps or raise trainer.max_steps"
            )


def _component_class(target: str | None) -> type | None:
    """The class a component group's ``_target_`` names (None when it names none or nothing
    importable: building the component reports that in its own message)."""
    import importlib

    module, _, name = (target or "").rpartition(".")
    try:
        return getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        return None


def check_validation(cfg: Mapping[str, Any], selector: Any) -> None:
    """A selector that reads the target/validation set needs ``data.validation``."""
    if selector is None or not selector.needs_validation:
        return
    from dataflex.backend.llamafactory import validation_names

    if not validation_names(cfg.get("data") or {}):
        raise ConfigError(
            f"selector={cfg['selector'].get('name', 'selector')} needs a target/validation set: "
            "set data.validation=<registered dataset name(s)> (offline_sft uses offline_sft_val_mcq)"
        )


def check_mixture_domains(cfg: Mapping[str, Any]) -> None:
    mixer, data = cfg.get("mixer") or {}, cfg.get("data") or {}
    if not mixer.get("_target_") or data.get("domain_column"):
        return  # column-defined domains are known once the source is read (the backend checks them)
    domains = list(data.get("domains") or [])
    if len(domains) == 1:
        raise ConfigError(
            f"mixer={mixer.get('name', 'mixer')} mixes domains but data={data.get('name')} has one ({domains[0]}); "
            "use a data config with several domains (e.g. data=offline_domains) or drop the mixer (mixer=none)"
        )


def preflight(cfg: Mapping[str, Any], check_inputs: bool = True) -> dict[str, Any]:
    """Every check above, in the order a user fixes them, with the components built (their keys
    and types checked) before their schedules; raises the first :class:`ConfigError`.

    ``check_inputs=False`` skips the components' :meth:`check_before_start` (the files an earlier
    step writes: a dry run of a chained study checks its later phases before those files exist).

    Returns:
        ``{"selector" | "mixer" | "weighter": component or None}``.
    """
    from dataflex.train.build import build_component

    check_run_keys(cfg)
    check_trainer(cfg.get("trainer") or {})
    check_data_and_eval(cfg.get("data") or {}, cfg.get("eval") or {})
    components = {kind: build_component(kind, cfg.get(kind)) for kind in ("selector", "mixer", "weighter")}
    check_schedules(cfg)
    check_validation(cfg, components["selector"])
    for kind, component in components.items():
        if component is not None and check_inputs:
            where = f"{kind}={(cfg.get(kind) or {}).get('name', kind)}"
            try:
                component.check_before_start()
            except ConfigError as err:
                message = str(err)
                raise ConfigError(message if message.startswith(f"{kind}=") else f"{where}: {message}") from None
    check_mixture_domains(cfg)
    check_template(cfg.get("model") or {})
    return components
