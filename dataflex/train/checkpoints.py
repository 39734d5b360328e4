"""Checkpoints on disk: which are complete, and what a selector reads back from one.

A checkpoint is complete once the DataFlex callback wrote its state (:data:`STATE_FILE`, the last
file of a save); :func:`complete_checkpoints` is the one place that lists them, for resuming a run
(:func:`newest_complete_checkpoint`) and for reading a warm-up run (:func:`warmup_checkpoints`).
:func:`load_trainable_weights` and :func:`checkpoint_adam_state` read a checkpoint's trained
weights and Adam moments; :func:`for_each_warmup_checkpoint` runs a pass under each warm-up
checkpoint in turn and :func:`warmup_checkpoint_weights` gives their learning-rate weights (the
offline recipes of LESS and NICE score with every warm-up checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dataflex.errors import ConfigError
from dataflex.logs import get_logger
from dataflex.signals.features import checkpoint_weight_vector
from dataflex.signals.gradients import trainable_parameters
from dataflex.signals.optimizer import unwrap_optimizer

#: the callback's state in every checkpoint; written last, so its presence marks a complete save
STATE_FILE = "dataflex_state.pt"
log = get_logger(__name__)


def has_dataflex_state(checkpoint_dir: str | os.PathLike) -> bool:
    """A checkpoint is complete only once the callback wrote its state (the last file written)."""
    return (Path(checkpoint_dir) / STATE_FILE).is_file()


def _safetensors_damage(path: Path) -> str | None:
    """Why a safetensors file cannot be read (None if its header and data extent are whole).
    Reads only the header: a truncated file ends before the last tensor's data."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return "header runs past the end of the file (truncated)"
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "unreadable safetensors header"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return "truncated (tensor data ends early)" if 8 + n + end > size else None


def _torch_file_damage(path: Path) -> str | None:
    """Why a ``torch.save`` file cannot be read: torch writes a zip archive whose directory is at
    its end, so a truncated or empty file has none (checked without loading the tensors)."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError):
        return "not a complete torch file (empty or truncated)"
    return None


def checkpoint_damage(checkpoint_dir: str | os.PathLike) -> str | None:
    """What is damaged in a complete-looking checkpoint, or None when every file it resumes from
    reads: the DataFlex state loads, ``trainer_state.json`` parses, every torch file (optimizer,
    scheduler, RNG states, DeepSpeed shards) is a whole archive, every safetensors file is whole."""
    ckpt = Path(checkpoint_dir)
    try:
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable state is damage, named below
        return f"{STATE_FILE} does not load ({type(e).__name__})"
    if not isinstance(state, dict):
        return f"{STATE_FILE} holds no DataFlex state"
    trainer_state = ckpt / "trainer_state.json"
    if not trainer_state.is_file():
        return "trainer_state.json is missing"
    try:
        json.loads(trainer_state.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is not valid JSON (truncated)"
    for path in sorted(ckpt.rglob("*")):
        if not path.is_file() or path.name == STATE_FILE:
            continue
        if path.suffix in (".pt", ".pth", ".bin"):
            why = _torch_file_damage(path)
        elif path.suffix == ".safetensors":
            why = _safetensors_damage(path)
        else:
            continue
        if why:
            return f"{path.relative_to(ckpt)}: {why}"
    return None


def checkpoint_run_id(checkpoint_dir: str | os.PathLike) -> str | None:
    """The run id stamped into a checkpoint's DataFlex state (None for a checkpoint without one)."""
    state = torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=False)
    return state.get("run_id") if isinstance(state, dict) else None


def complete_checkpoints(checkpoint_root: str | os.PathLike, remove_incomplete: bool = False) -> list[tuple[int, Path]]:
    """The complete ``checkpoint-N`` directories under ``checkpoint_root``, ``[(N, path)]`` by step.

    Args:
        checkpoint_root: a run's ``checkpoints`` directory (none there: an empty list).
        remove_incomplete: delete the checkpoints a kill interrupted (no DataFlex state), so neither
            this run nor LLaMA-Factory's own auto-resume ever trusts one.
    """
    root = Path(checkpoint_root)
    if not root.is_dir():
        return []
    found = []
    for path in root.glob("checkpoint-*"):
        suffix = path.name.rsplit("-", 1)[-1]
        if not suffix.isdigit():
            continue
        if has_dataflex_state(path):
            found.append((int(suffix), path))
        elif remove_incomplete:
            log.info("removing incomplete checkpoint %s (interrupted save)", path)
            shutil.rmtree(path)
    return sorted(found)


def newest_complete_checkpoint(checkpoint_root: Path, remove_incomplete: bool = False) -> str | None:
    """The newest complete and intact ``checkpoint-N`` (see :func:`complete_checkpoints` and
    :func:`checkpoint_damage`), or None.

    A damaged checkpoint (a file truncated or emptied after its save, e.g. by a full disk or a copy)
    is named and, with ``remove_incomplete`` (the main process), set aside as
    ``checkpoint-N.damaged`` (kept for inspection, never resumed from); the next older intact one is
    used. When every checkpoint is damaged the run says so and starts from step 0.
    """
    found = complete_checkpoints(checkpoint_root, remove_incomplete)
    damaged = 0
    for _, path in reversed(found):
        why = checkpoint_damage(path)
        if why is None:
            if damaged:
                log.info("resuming from the newest intact checkpoint, %s", path)
            return str(path)
        damaged += 1
        aside, n = path.with_name(path.name + ".damaged"), 1
        while aside.exists():
            n += 1
            aside = path.with_name(f"{path.name}.damaged-{n}")
        if remove_incomplete:
            path.rename(aside)
        log.warning("checkpoint %s is damaged (%s); set aside as %s", path, why, aside.name)
    if damaged:
        log.warning("no intact checkpoint under %s: training starts from step 0", checkpoint_root)
    return None


def warmup_checkpoints(warmup_dir: str | Path, steps: Sequence[int] | None = None) -> list[tuple[int, Path]]:
    """The complete checkpoints of a warm-up run directory, ``[(step, path)]`` by step.

    Args:
        warmup_dir: a run directory (its ``checkpoints/checkpoint-N``) or a checkpoints directory.
        steps: keep only these steps (None: all complete checkpoints).

    Raises:
        ConfigError: no such directory, no complete checkpoint, or a requested step missing.
    """
    root = Path(warmup_dir)
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    if not root.is_dir():
        raise ConfigError(f"selector.warmup_dir={warmup_dir} is not a directory; point it at a finished warm-up run")
    found = dict(complete_checkpoints(root))
    if not found:
        raise ConfigError(f"selector.warmup_dir={warmup_dir} holds no complete checkpoint; run the warm-up first")
    if steps is not None:
        missing = [int(s) for s in steps if int(s) not in found]
        if missing:
            raise ConfigError(
                f"selector.checkpoints: no checkpoint at step(s) {missing} in {root}; found {sorted(found)}"
            )
        found = {int(s): found[int(s)] for s in steps}
    return sorted(found.items())


def load_trainable_weights(model: torch.nn.Module, checkpoint_dir: str | Path) -> None:
    """Load a checkpoint's trained weights into ``model`` in place: a LoRA adapter
    (``adapter_model.safetensors``) into the PEFT model, or full weights (``model.safetensors``,
    sharded or not). Every trainable parameter must be in the file."""
    from safetensors.torch import load_file

    ckpt = Path(checkpoint_dir)
    adapter, full = ckpt / "adapter_model.safetensors", ckpt / "model.safetensors"
    index = ckpt / "model.safetensors.index.json"
    if adapter.is_file():
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        if not hasattr(model, "peft_config"):
            raise ConfigError(f"{ckpt} holds a LoRA adapter but this run trains no adapter; use the warm-up's trainer")
        state = load_file(adapter)
        expected = set(get_peft_model_state_dict(model))
        if set(state) != expected:
            odd = sorted(set(state) ^ expected)[:3]
            raise ConfigError(
                f"{ckpt}: the adapter's weights differ from this run's LoRA layout ({odd}); "
                "use the warm-up's trainer settings"
            )
        set_peft_model_state_dict(model, state)
        return
    if full.is_file():
        state = load_file(full)
    elif index.is_file():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(ckpt / shard))
    else:
        raise ConfigError(f"{ckpt} has no adapter_model.safetensors or model.safetensors to load")
    missing = [n for n in trainable_parameters(model) if n not in state]
    if missing:
        raise ConfigError(f"{ckpt} lacks trainable weight(s) {missing[:3]}; the warm-up trained another model")
    model.load_state_dict(state, strict=False)


def checkpoint_adam_state(
    checkpoint_dir: str | Path, optimizer: Any, model: torch.nn.Module
) -> dict[str, tuple[Tensor, Tensor]]:
    """``{trainable parameter name: (exp_avg, exp_avg_sq)}`` saved in a checkpoint's ``optimizer.pt``.

    The saved state is keyed by position in the optimizer's parameter groups; ``optimizer`` (this
    run's, built by the same trainer for the same model) maps those positions to parameters, as
    ``Optimizer.load_state_dict`` does. A parameter with no saved state gets zeros.

    Raises:
        ConfigError: no ``optimizer.pt`` (DeepSpeed or weights-only checkpoints), no optimizer, a
            different parameter layout, or a state without Adam moments.
    """
    path = Path(checkpoint_dir) / "optimizer.pt"
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: an offline selector (LESS, NICE) with gradient_type=adam reads the warm-up's torch optimizer state "
            "(warm up without DeepSpeed and without save_only_model), or use selector.gradient_type=sgd"
        )
    if optimizer is None:
        raise ConfigError("an offline selector needs the trainer's optimizer to read the warm-up's optimizer state")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    live = unwrap_optimizer(optimizer)
    saved_groups, live_groups = saved["param_groups"], live.param_groups
    if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in live_groups]:
        raise ConfigError(
            f"{path}: the warm-up's optimizer groups {[len(g['params']) for g in saved_groups]} differ from this run's "
            f"{[len(g['params']) for g in live_groups]}; use the same model and trainer settings for both runs"
        )
    names = {id(p): n for n, p in trainable_parameters(model).items()}
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for saved_group, live_group in zip(saved_groups, live_groups):
        for position, param in zip(saved_group["params"], live_group["params"]):
            name = names.get(id(param))
            if name is None:
                continue
            state = saved["state"].get(position) or {}
            if not state:
                zeros = torch.zeros(param.shape, dtype=torch.float32)
                out[name] = (zeros, zeros.clone())
                continue
            if "exp_avg" not in state or "exp_avg_sq" not in state:
                raise ConfigError(
                    f"{path}: no Adam moments for {name!r} (state keys {sorted(state)}); use selector.gradient_type=sgd"
                )
            m, v = state["exp_avg"], state["exp_avg_sq"]
            if m.numel() != param.numel():
                raise ConfigError(
                    f"{path}: saved state of {name!r} has {m.numel()} elements, the parameter {param.numel()}"
                )
            out[name] = (m, v)
    missing = sorted(set(names.values()) - set(out))
    if missing:
        raise ConfigError(
            f"trainable parameter(s) {missing[:3]} are not in the optimizer; cannot read their warm-up state"
        )
    return out


# -- a warm-up run's checkpoints, as the offline selectors (LESS, NICE) read them --------------------
def epoch_learning_rates(
    log_history: Sequence[Mapping[str, Any]], checkpoint_steps: Sequence[int]
) -> list[float]:
    """The mean learning rate of the epoch ending at each checkpoint (the checkpoint weights of
    offline LESS and NICE, before normalisation).

    The epoch ending at checkpoint ``c`` is the steps ``(previous checkpoint, c]`` (the first one
    starts after step 0). transformers logs, at step s, the rate the optimizer used FOR step s; with
    ``logging_steps=1`` (what the warm-up of :mod:`dataflex.cli.less_offline` uses) every step is
    logged and this is the exact mean; otherwise it is the mean of the logged steps.

    Args:
        log_history: the trainer's ``log_history`` (``trainer_state.json``): dicts with ``step`` and,
            on training logs, ``learning_rate``.
        checkpoint_steps: increasing global steps of the checkpoints.

    Returns:
        One mean learning rate per checkpoint.

    Raises:
        ValueError: steps not increasing, or an epoch with no logged learning rate.
    """
    steps = [int(s) for s in checkpoint_steps]
    if not steps or any(b <= a for a, b in zip(steps, steps[1:])) or steps[0] <= 0:
        raise ValueError(f"checkpoint steps must be positive and increasing, got {steps}")
    logged: dict[int, float] = {}
    for record in log_history:
        if "learning_rate" in record and "step" in record:
            logged[int(record["step"])] = float(record["learning_rate"])
    means, previous = [], 0
    for step in steps:
        window = [lr for s, lr in logged.items() if previous < s <= step]
        if not window:
            raise ConfigError(
                f"no learning rate was logged between step {previous} and checkpoint-{step}; "
                "rerun the warm-up with trainer.logging_steps=1 or give selector.checkpoint_weights"
            )
        means.append(sum(window) / len(window))
        previous = step
    return means


def check_checkpoint_choice(
    checkpoints: Sequence[int] | None, checkpoint_weights: Sequence[float] | None
) -> tuple[list[int] | None, list[float] | None]:
    """An offline selector's ``checkpoints`` (sorted) and ``checkpoint_weights`` (floats), checked.

    Raises:
        ValueError: a step that is not positive, no step, or weights and steps of different lengths.
        ConfigError: weights that are not finite, negative or all 0.
    """
    if checkpoints is not None and (not list(checkpoints) or any(int(s) <= 0 for s in checkpoints)):
        raise ValueError(f"checkpoints must list positive warm-up steps (or be null), got {checkpoints!r}")
    if checkpoint_weights is not None:
        checkpoint_weight_vector(checkpoint_weights, len(list(checkpoint_weights)))  # finite, >= 0, not all 0
        if checkpoints is not None and len(list(checkpoint_weights)) != len(list(checkpoints)):
            raise ValueError(f"{len(list(checkpoint_weights))} checkpoint_weights for {len(list(checkpoints))} checkpoints")
    return (None if checkpoints is None else sorted(int(s) for s in checkpoints),
            None if checkpoint_weights is None else [float(w) for w in checkpoint_weights])


def warmup_checkpoint_weights(found: Sequence[tuple[int, Path]], explicit: Sequence[float] | None = None) -> list[float]:
    """``w_c`` (before normalisation) of the warm-up checkpoints ``found``: ``explicit`` when given,
    else :func:`epoch_learning_rates` from the last checkpoint's ``trainer_state.json``."""
    if explicit is not None:
        if len(explicit) != len(found):
            raise ConfigError(f"selector.checkpoint_weights has {len(explicit)} entries for {len(found)} checkpoints")
        return [float(w) for w in explicit]
    state_file = Path(found[-1][1]) / "trainer_state.json"
    if not state_file.is_file():
        raise ConfigError(f"{state_file} not found; give selector.checkpoint_weights explicitly")
    return epoch_learning_rates(json.loads(state_file.read_text())["log_history"], [s for s, _ in found])


def for_each_warmup_checkpoint(
    model: torch.nn.Module,
    found: Sequence[tuple[int, Path]],
    fn: Callable[[int, Path, dict[str, tuple[Tensor, Tensor]] | None], Any],
    *,
    optimizer: Any = None,
    adam: bool = False,
) -> list[Any]:
    """``[fn(step, path, adam_state) for each checkpoint]`` with the checkpoint's trained weights
    loaded into ``model`` (:func:`load_trainable_weights`) and, with ``adam``, its Adam moments
    (:func:`checkpoint_adam_state`, else None). The model's own trainable weights are put back
    afterwards, also when ``fn`` raises."""
    own = {n: p.detach().clone() for n, p in trainable_parameters(model).items()}
    out = []
    try:
        for step, path in found:
            load_trainable_weights(model, path)
            state = checkpoint_adam_state(path, optimizer, model) if adam else None
            out.append(fn(step, path, state))
    finally:
        with torch.no_grad():
            for n, p in trainable_parameters(model).items():
                p.copy_(own[n])
    return out
