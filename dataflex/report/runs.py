"""Runs: finding run directories and reading what each one wrote (metrics, config, proportions)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataflex.report.selection import Composition, read_composition

PREFIX = "mixer/proportion/"
OVERLAP = "selector/overlap"
DOMAIN_WEIGHT = "weighter/domain_weight/"
TOKENS = "train/num_input_tokens_seen"
#: the decision-cost keys of metrics.json (dataflex.train.timing)
DECISION_KEYS = ("decision_seconds", "train_seconds", "decision_share", "decision_overhead")
SKIP_DIRS = {".submitit", "wandb", "checkpoints", "model", "selections", ".hydra"}


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (a torn last line from a kill is skipped)."""
    records = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _series(records: list[dict], key: str) -> dict[int, float]:
    """``key`` by step; a resumed run logs some steps twice and the later record wins."""
    out: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and record.get("step") is not None:
            out[int(record["step"])] = float(value)
    return out


def proportions_by_step(records: list[dict], prefix: str = PREFIX) -> dict[int, dict[str, float]]:
    """Each logged mixer decision: step -> {domain: proportion} (the later record of a step wins).
    ``prefix`` picks another per-domain series (DoReMi's ``mixer/doremi/alpha/``)."""
    by_step: dict[int, dict[str, float]] = {}
    for record in records:
        values = {k[len(prefix) :]: float(v) for k, v in record.items() if k.startswith(prefix)}
        if values and record.get("step") is not None:
            by_step[int(record["step"])] = values
    return by_step


def held_by_step(by_step: dict[int, dict[str, float]], last_step: int) -> dict[str, list[float]]:
    """Each domain's value at steps 0..last_step, each decision held until the next one (a domain
    missing from a decision is 0 there); {} when there is no decision."""
    if not by_step:
        return {}
    current = by_step[min(by_step)]
    out: dict[str, list[float]] = {domain: [] for domain in current}
    for step in range(last_step + 1):
        current = by_step.get(step, current)
        for domain, values in out.items():
            values.append(current.get(domain, 0.0))
    return out


# -- runs and arms -------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """What one run directory says, read from its files."""

    run_dir: Path
    arm: str
    seed: Any
    method: str
    finished: bool
    eval: dict[str, float]
    tokens: int | None
    tokens_exact: bool
    wall_time_s: float | None
    global_step: int | None
    losses: dict[int, float] = field(default_factory=dict)
    proportions: dict[int, dict[str, float]] = field(default_factory=dict)
    overlap: dict[int, float] = field(default_factory=dict)
    #: decision cost from metrics.json (``decision_seconds``, ``decision_seconds/<kind>``, ``train_seconds``, ...)
    decision: dict[str, float] = field(default_factory=dict)
    #: what each selection round chose, by domain (None: no round saved)
    composition: Composition | None = None
    #: a weighter's B·w per domain and step after its warm-up (1 = the batch average)
    domain_weights: dict[str, dict[int, float]] = field(default_factory=dict)


def domain_weight_series(records: list[dict], after_step: int = 0) -> dict[str, dict[int, float]]:
    """Each ``weighter/domain_weight/<domain>`` series after ``after_step`` (a weighter's warm-up, uniform
    by construction): domain -> {step: the mean relative weight B·w of the domain's rows in that step}.
    A step without the domain's rows has no value; the later record of a step wins."""
    by_domain: dict[str, dict[int, float]] = {}
    for record in records:
        step = record.get("step")
        if step is None or int(step) <= after_step:
            continue
        for key, value in record.items():
            if key.startswith(DOMAIN_WEIGHT) and isinstance(value, (int, float)):
                by_domain.setdefault(key[len(DOMAIN_WEIGHT) :], {})[int(step)] = float(value)
    return dict(sorted(by_domain.items()))


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run directory (one holding ``metrics.jsonl``) at or below ``paths``, sorted."""
    found: set[Path] = set()
    for path in map(Path, paths):
        if not path.is_dir():
            from dataflex.config import ConfigError

            raise ConfigError(f"{path} is not a directory; give a sweep directory or a run directory")
        if (path / "metrics.jsonl").is_file():
            found.add(path.resolve())
            continue
        for jsonl in path.rglob("metrics.jsonl"):
            if not SKIP_DIRS.intersection(jsonl.relative_to(path).parts[:-1]):
                found.add(jsonl.parent.resolve())
    return sorted(found)


_SEED_ITEM = re.compile(r"^seed[=_]\S+$")


def arm_and_seed(run_dir: Path, config: dict) -> tuple[str, Any]:
    """The arm a run belongs to (its directory name without a ``seed=N`` item, or its parent's
    name for a ``seed=N`` directory) and its seed (from its config, else its directory)."""
    name = run_dir.name
    items = name.split(",")
    kept = [item for item in items if not _SEED_ITEM.match(item)]
    seed = config.get("seed")
    if seed is None:
        dropped = [item for item in items if _SEED_ITEM.match(item)]
        seed = dropped[0].split("=", 1)[-1].split("_", 1)[-1] if dropped else None
    arm = ",".join(kept) if kept else run_dir.parent.name
    return arm, seed


def method_of(config: dict) -> str:
    """``selector=loss``, ``mixer=odm``, ``selector=loss+mixer=odm``; ``plain`` without components."""
    parts = []
    for kind in ("selector", "mixer", "weighter"):
        component = config.get(kind) or {}
        if isinstance(component, dict) and component.get("_target_"):
            parts.append(f"{kind}={component.get('name') or component['_target_'].rsplit('.', 1)[-1]}")
    return "+".join(parts) or "plain"


def _estimated_tokens(config: dict, steps: int | None) -> int | None:
    """An upper bound when the run did not count its tokens: steps x global batch x cutoff_len."""
    trainer, data = config.get("trainer") or {}, config.get("data") or {}
    try:
        per_step = (
            int(trainer.get("per_device_train_batch_size", 1))
            * int(trainer.get("gradient_accumulation_steps", 1))
            * int(config.get("nproc", 1) or 1)
            * int(data["cutoff_len"])
        )
    except (KeyError, TypeError, ValueError):
        return None
    return per_step * steps if steps is not None else None


def load_run(run_dir: str | os.PathLike) -> RunRecord:
    """Read one run directory (finished or not)."""
    import yaml

    run_dir = Path(run_dir)
    config_path = run_dir / "dataflex_config.yaml"
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    records = read_metrics(run_dir)
    final_path = run_dir / "metrics.json"
    final = json.loads(final_path.read_text()) if final_path.is_file() else {}
    if final:
        evals = dict(final.get("eval_after") or {})
    else:  # unfinished: whatever eval_after it logged (none, usually)
        evals = {}
        for record in records:
            evals.update({k[len("eval_after/") :]: v for k, v in record.items() if k.startswith("eval_after/")})
    losses = _series(records, "train/loss")
    steps = final.get("global_step", max(losses) if losses else None)
    counted = _series(records, TOKENS)
    tokens = int(counted[max(counted)]) if counted else _estimated_tokens(config, steps)
    arm, seed = arm_and_seed(run_dir, config)
    return RunRecord(
        run_dir=run_dir,
        arm=arm,
        seed=seed,
        method=method_of(config),
        finished=bool(final),
        eval={k: float(v) for k, v in evals.items() if isinstance(v, (int, float))},
        tokens=tokens,
        tokens_exact=bool(counted),
        wall_time_s=final.get("wall_time_s"),
        global_step=steps,
        losses=losses,
        proportions=proportions_by_step(records),
        overlap=_series(records, OVERLAP),
        decision={
            k: float(v)
            for k, v in final.items()
            if (k in DECISION_KEYS or k.startswith("decision_seconds/")) and isinstance(v, (int, float))
        },
        composition=read_composition(run_dir),
        domain_weights=domain_weight_series(records, int((config.get("weighter") or {}).get("warmup_steps") or 0)),
    )
